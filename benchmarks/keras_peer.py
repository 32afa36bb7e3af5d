"""The Keras + Horovod report's model, trained on random data: the peer chexnet is measured against.

Runs in its own virtual environment with TensorFlow (``make bench-peer`` creates ``.venv-keras``); imports
neither torch nor chexnet. The model is the report's, line for line::

    base = DenseNet121(include_top=False, weights=None, input_shape=(S, S, 3))
    x = GlobalAveragePooling2D()(base.output)
    out = Dense(14, activation="sigmoid", bias_initializer="ones")(x)
    model.compile(optimizer=Adadelta(1.0), loss="binary_crossentropy")

TensorFlow's intra-op pool is pinned to the usable cores and its inter-op pool to 1 (a fair peer: with TF's
defaults the same script ran 1.2 to 3.9 img/s on these machines, 4.5 pinned). Prints one JSON line: img/s over
the timed steps (after ``--warmup`` steps that include graph building).

    .venv-keras/bin/python benchmarks/keras_peer.py --batch 16 --size 224 --steps 6 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(args.size, args.size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    out = keras.layers.Dense(14, activation="sigmoid", bias_initializer="ones", dtype="float32")(x)
    model = keras.Model(base.input, out)
    model.compile(optimizer=keras.optimizers.Adadelta(learning_rate=1.0), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((args.batch, args.size, args.size, 3), dtype=np.float32)
    ys = (rng.random((args.batch, 14)) < 0.2).astype(np.float32)
    for _ in range(args.warmup):
        model.train_on_batch(xs, ys)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(xs, ys)
    seconds = time.perf_counter() - t0
    print(json.dumps({"engine": "keras", "tensorflow": tf.__version__, "keras": keras.__version__,
                      "precision": args.precision, "batch": args.batch, "size": args.size, "threads": args.threads,
                      "img_per_s": args.batch * args.steps / seconds}))


if __name__ == "__main__":
    main()
