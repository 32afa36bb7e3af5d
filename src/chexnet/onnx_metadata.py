"""The metadata keys of a ``chexnet export`` ONNX file (``custom_metadata_map`` in onnxruntime), defined once:
export writes them, ``predict --onnx`` and ``serve`` read them. Values are strings:

* ``chexnet_preprocessing``: the :class:`~chexnet.preprocess.Preprocessing` spec (JSON);
* ``chexnet_labels``: the output order (JSON list);
* ``chexnet_thresholds``: the validation operating points from ``chexnet evaluate`` for this checkpoint (JSON,
  ``null`` if the run was not evaluated), and ``chexnet_threshold_method`` (JSON);
* ``chexnet_calibration``: the calibrator the graph applies after the sigmoid (JSON: method, slope, intercept per
  label, checkpoint, epoch, global_step; ``null``: the model's own probabilities); the thresholds are then on
  calibrated probabilities, and ``chexnet_thresholds_raw`` holds them before it;
* ``chexnet_threshold_rules``: every operating-point rule evaluated ({rule: {label: threshold}}, on the
  probabilities the graph outputs), for ``predict --onnx --operating-point RULE``;
* ``chexnet_quantization`` (int8 exports only, ``chexnet export --quantize int8``): how (method, ops, calibration
  split, images, seed, cache) and the check against the fp32 graph on the val split (max |dp|, AUROC change per
  label), JSON;
* ``chexnet_run`` (the run folder's name), ``chexnet_arch``, ``chexnet_checkpoint`` (``best.pt (epoch E, step S)``),
  ``chexnet_version``, ``chexnet_input`` (the input contract in words).

Imports nothing: the ONNX path of ``chexnet predict`` runs without torch.
"""

PREPROCESSING = "chexnet_preprocessing"
LABELS = "chexnet_labels"
THRESHOLDS = "chexnet_thresholds"
THRESHOLD_METHOD = "chexnet_threshold_method"
RUN = "chexnet_run"
ARCH = "chexnet_arch"
CHECKPOINT = "chexnet_checkpoint"
VERSION = "chexnet_version"
INPUT = "chexnet_input"
CALIBRATION = "chexnet_calibration"
THRESHOLD_RULES = "chexnet_threshold_rules"
THRESHOLDS_RAW = "chexnet_thresholds_raw"
QUANTIZATION = "chexnet_quantization"
