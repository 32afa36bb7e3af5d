"""Every named set of choices, defined once: the config's validation, the CLI's choices and help, and tune's
search-space check read them from here.

Each set is an ordered mapping name -> one-line description; :func:`help_text` renders it for ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SelectRule:
    """How best.pt is chosen after each validation: the metric in the epoch record and its better direction."""

    metric: str  # the key in the epoch record (metrics.jsonl)
    mode: str  # "min" | "max"
    text: str  # as said in logs and reports

    @property
    def direction(self) -> str:
        """Optuna's name for the mode."""
        return "minimize" if self.mode == "min" else "maximize"


# best.pt (config ``select``) and tune's ``--objective`` (a study optimises what its trials select by)
SELECT_RULES = {
    "val_loss": SelectRule("val_loss", "min", "lowest validation loss"),
    "val_auroc": SelectRule("val_auroc_mean", "max", "highest validation mean AUROC"),
}
SELECT_HELP = {"val_loss": "lowest, the paper", "val_auroc": "highest mean"}

LOSS_WEIGHTINGS = {
    "none": "unweighted BCE (the CheXNet paper's 14-class loss)",
    "balanced": "class-balanced BCE (w+ = N/(P+N), w- = P/(P+N) per class, CheXNet's pneumonia weighting)",
    "pos_ratio": "BCE with positives weighted N/P per class (torch pos_weight)",
}

INPUT_TRANSFORMS = {
    "resize": "the whole cached image resized to the input size (the CheXNet paper)",
    "crop": "random crops in training, the centre crop at evaluation (later reimplementations)",
}

# test-time augmentation -> the dataset mode that produces it (chexnet.data.dataset)
TTA_MODES = {
    "none": "eval",
    "hflip": "hflip",
    "tencrop": "tencrop",
}
TTA_HELP = {
    "none": "the image as it is",
    "hflip": "the mean of the image and its mirror image",
    "tencrop": "ten crops: four corners and the centre, and their mirror images (runs trained with crop only)",
}
# chexnet predict and serve work on single files (no ten-crop: it needs a run trained on crops and a cache row)
FILE_TTA_MODES = ("none", "hflip")


# chexnet prepare --dataset: the sources of chexnet.data.sources (a test holds the registry to this)
DATASETS = {
    "nih": "NIH ChestX-ray14: Data_Entry_2017*.csv, images_*/images/ (or images/), official split lists if present",
    "chexpert": "CheXpert v1.0 (small or full): train.csv and valid.csv (the test split), in DATA or its "
                "CheXpert-v1.0-small/ or CheXpert-v1.0/ folder; frontal images unless --view",
    "vindr": "VinDr-CXR: PhysioNet's annotations/annotations_{train,test}.csv or Kaggle's train.csv, with "
             "train/ and test/ *.dicom; image labels from the readers' boxes",
    "mimic": "MIMIC-CXR-JPG 2.0/2.1: mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz and files/pNN/pSUBJECT/"
             "sSTUDY/*.jpg; official split, study labels per image; frontal images unless --view",
    "rsna": "RSNA Pneumonia Detection Challenge: stage_2_train_labels.csv (+ stage_2_detailed_class_info.csv) and "
            "stage_2_train_images/*.dcm; Pneumonia from Target, random 70/10/20 split by image",
    "padchest": "PadChest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz) and its 16-bit PNGs in the "
                "numbered folders 0/ .. 54/ (or flat); report terms matched whole; frontal images unless --view",
    "csv": "a hospital's own export: a CSV of image paths, patient ids and label columns, described by a YAML "
           "file (--mapping FILE); its split column, or a random 70/10/20 split by patient",
    "nih-google": "NIH ChestX-ray14 images (DATA, as for nih) with Google's expert labels (--expert-labels): "
                  "Fracture, Pneumothorax, Airspace opacity, Nodule or mass; the files' val / test splits",
}

# train's source_sampling: how a combined cache's sources (chexnet combine) share an epoch
SOURCE_SAMPLINGS = {
    "proportional": "every train image once per epoch, so each source in proportion to its size",
    "balanced": "each source the same share of an epoch (images drawn with replacement, weight 1 / its "
                "source's train images)",
}

# train's --strategy: how the workers' gradients become one update (chexnet.ps for the parameter servers)
STRATEGIES = {
    "allreduce": "every process a worker; DDP's bucketed ring all-reduce of the gradients (default)",
    "ps": "--ps-servers K of the processes hold shards of the parameters and the optimizer; the other N - K "
          "are workers that push gradients to them and pull the updated parameters (trains what N - K "
          "all-reduce processes train)",
}

# train's --compile-mode: torch.compile's modes (with --compile)
COMPILE_MODES = {
    "default": "inductor's default: fused kernels, no CUDA graphs",
    "reduce-overhead": "CUDA graphs as well (less launch overhead for small batches; more memory)",
    "max-autotune": "autotuned matmul/convolution kernels and CUDA graphs (minutes of compiling)",
}

# tune's --pruner
PRUNERS = {
    "median": "stop a trial worse than the median of earlier trials at the same epoch",
    "hyperband": "Hyperband's successive halving over epochs",
    "none": "never prune",
}


# the config fields that take one of a set of values (TrainConfig validation, train's flags, search spaces)
CONFIG_CHOICES = {
    "head_bias_init": ("zeros", "ones"),
    "input_transform": tuple(INPUT_TRANSFORMS),
    "loss_weighting": tuple(LOSS_WEIGHTINGS),
    "source_sampling": tuple(SOURCE_SAMPLINGS),
    "select": tuple(SELECT_RULES),
    "train_crop": ("random", "random_resized"),
    "optimizer": ("adam", "adamw", "sgd", "adadelta"),
    "lr_scaling": ("linear", "sqrt", "none", "auto"),
    "schedule": ("plateau", "cosine", "step", "none"),
    "precision": ("fp32", "bf16", "fp16", "auto"),
    "grad_compression": ("none", "bf16", "fp16"),
    "strategy": tuple(STRATEGIES),
    "compile_mode": tuple(COMPILE_MODES),
}


def help_text(choices: dict, names=None) -> str:
    """``a: text | b: text`` for ``--help`` (``names``: a subset, in this order)."""
    names = list(choices) if names is None else list(names)
    return " | ".join(f"{n}: {choices[n]}" for n in names)
