"""Regenerate ``src/chexnet/resources/label_stats.json`` from NIH's real metadata.

Usage (stdlib only; run from the repository root)::

    python tools/make_label_stats.py ../shared/data/nih/Data_Entry_2017_v2020.csv.gz \
        src/chexnet/resources/label_stats.json

The JSON holds the summary statistics that :mod:`chexnet.data.synthetic` samples from, so the
package never reads the real data at run time:

- ``combinations``: every distinct ``Finding Labels`` string with its image count (label
  prevalence *and* co-occurrence), labels in NIH's canonical order, most frequent first;
- ``label_counts``: per-pathology image counts (for checks; derivable from ``combinations``);
- ``images_per_patient``: histogram ``{"k": number of patients with k images}``;
- ``age_histogram``: patient age at the image, 5-year bins from 0 (ages above 100 are dropped);
- ``sex`` and ``view``: image counts per ``Patient Gender`` and ``View Position``.
"""

from __future__ import annotations

import collections
import csv
import gzip
import json
import sys
from pathlib import Path

PATHOLOGIES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
AGE_BIN = 5
MAX_AGE = 100


def summarize(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    combos: collections.Counter = collections.Counter()
    per_patient: collections.Counter = collections.Counter()
    ages = [0] * (MAX_AGE // AGE_BIN + 1)
    sex: collections.Counter = collections.Counter()
    view: collections.Counter = collections.Counter()
    order = {name: i for i, name in enumerate(PATHOLOGIES)}
    with opener(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            tokens = [t.strip() for t in row["Finding Labels"].split("|")]
            if tokens != ["No Finding"]:
                tokens = sorted(tokens, key=order.__getitem__)  # KeyError = unknown label: fail loudly
            combos["|".join(tokens)] += 1
            per_patient[int(row["Patient ID"])] += 1
            age = int(row["Patient Age"].rstrip("YMD"))
            if age <= MAX_AGE:
                ages[age // AGE_BIN] += 1
            sex[row["Patient Gender"].strip()] += 1
            view[row["View Position"].strip()] += 1
    label_counts = {name: 0 for name in PATHOLOGIES}
    for text, n in combos.items():
        for tok in text.split("|"):
            if tok in label_counts:
                label_counts[tok] += n
    hist = collections.Counter(per_patient.values())
    return {
        "source": path.name,
        "images": sum(combos.values()),
        "patients": len(per_patient),
        "pathologies": list(PATHOLOGIES),
        "label_counts": label_counts,
        "combinations": dict(sorted(combos.items(), key=lambda kv: (-kv[1], kv[0]))),
        "images_per_patient": {str(k): hist[k] for k in sorted(hist)},
        "age_histogram": {"bin_width": AGE_BIN, "counts": ages},
        "sex": dict(sorted(sex.items())),
        "view": dict(sorted(view.items())),
    }


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    stats = summarize(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(stats, indent=1) + "\n")
    print(f"{argv[1]}: {stats['images']} images, {stats['patients']} patients, "
          f"{len(stats['combinations'])} label combinations")


if __name__ == "__main__":
    main(sys.argv[1:])
