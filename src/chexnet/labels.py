"""Label names: NIH's 14 pathologies, the label vocabulary shared by all sources, and each source's name table.

``PATHOLOGIES`` are the 14 ChestX-ray14 pathologies in NIH's canonical order (the model's outputs today);
:func:`parse_findings` reads NIH's "Finding Labels".

``VOCABULARY`` is every label a source can provide: NIH's 14 first (same order, same spellings, so index
``i < 14`` means the same thing in both), then the other findings that CheXpert, MIMIC-CXR, PadChest, VinDr-CXR
and RSNA report. A label value is 1, 0 or missing (NaN in memory).

``SOURCE_NAMES[source]`` says, for each label name a source's files use, what it is in the vocabulary: one
label, several labels (a tuple: the source lumps them together), or none: :data:`KEEP_OWN` (kept as an extra
column under the source's own name) or :data:`DROP` (left out). Names are matched exactly, never by substring.
:func:`map_source_labels` applies a table to the names found in a file and says what was kept and dropped.

CheXpert (``chexpert``; MIMIC-CXR's CheXpert/NegBio label files use the same 14 names):

| CheXpert name              | vocabulary                 |
|----------------------------|----------------------------|
| No Finding                 | No Finding                 |
| Enlarged Cardiomediastinum | Enlarged Cardiomediastinum |
| Cardiomegaly               | Cardiomegaly               |
| Lung Opacity               | Lung Opacity               |
| Lung Lesion                | Lung Lesion                |
| Edema                      | Edema                      |
| Consolidation              | Consolidation              |
| Pneumonia                  | Pneumonia                  |
| Atelectasis                | Atelectasis                |
| Pneumothorax               | Pneumothorax               |
| Pleural Effusion           | Effusion                   |
| Pleural Other              | Pleural Other              |
| Fracture                   | Fracture                   |
| Support Devices            | Support Devices            |

VinDr-CXR (``vindr``; its ``class_name`` values):

| VinDr-CXR name     | vocabulary                                       |
|--------------------|--------------------------------------------------|
| Aortic enlargement | (kept as its own name: no vocabulary label)      |
| Atelectasis        | Atelectasis                                      |
| Calcification      | (kept as its own name)                           |
| Cardiomegaly       | Cardiomegaly                                     |
| Consolidation      | Consolidation                                    |
| ILD                | (kept as its own name)                           |
| Infiltration       | Infiltration                                     |
| Lung Opacity       | Lung Opacity                                     |
| Nodule/Mass        | Nodule and Mass (both set from the one finding)  |
| Other lesion       | (dropped: a catch-all of lesions of any kind)    |
| Pleural effusion   | Effusion                                         |
| Pleural thickening | Pleural_Thickening                               |
| Pneumothorax       | Pneumothorax                                     |
| Pulmonary fibrosis | Fibrosis                                         |
| No finding         | No Finding                                       |

PadChest (``padchest``; terms of its ``Labels`` lists, matched whole, never by substring; any term not listed
is dropped, see :mod:`chexnet.data.sources.padchest`):

| PadChest terms                                                            | vocabulary         |
|---------------------------------------------------------------------------|--------------------|
| normal                                                                    | No Finding         |
| atelectasis; total, lobar, segmental, laminar, round atelectasis; atelectasis basal | Atelectasis |
| cardiomegaly                                                              | Cardiomegaly       |
| pleural effusion, loculated pleural effusion, loculated fissural effusion, empyema | Effusion   |
| hydropneumothorax                                                         | Effusion and Pneumothorax |
| infiltrates; interstitial, reticular / reticulonodular interstitial, ground glass, alveolar pattern; miliary opacities | Infiltration |
| mass, pulmonary mass                                                      | Mass               |
| nodule, multiple nodules                                                  | Nodule             |
| pneumonia, atypical pneumonia                                             | Pneumonia          |
| pneumothorax                                                              | Pneumothorax       |
| consolidation, air bronchogram                                            | Consolidation      |
| pulmonary edema                                                           | Edema              |
| emphysema                                                                 | Emphysema          |
| pulmonary fibrosis                                                        | Fibrosis           |
| pleural thickening, apical / calcified pleural thickening                 | Pleural_Thickening |
| hiatal hernia                                                             | Hernia             |
| fracture; rib, callus rib, clavicle, humeral, vertebral fracture          | Fracture           |
| endotracheal, tracheostomy, NSG, chest drain, ventriculoperitoneal drain, gastrostomy, nephrostomy tube; double J stent; catheter, central venous catheter (all kinds); electrical device, pacemaker, single / dual chamber device, dai | Support Devices |
| soft tissue / breast / mediastinal / pleural mass, pericardial effusion, subcutaneous emphysema, pseudonodule | (dropped: listed because a substring match would take them) |
"""

from __future__ import annotations

import enum
from typing import Iterable, NamedTuple, Union

import numpy as np

PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NUM_CLASSES = len(PATHOLOGIES)
_INDEX = {name: i for i, name in enumerate(PATHOLOGIES)}


class LabelError(ValueError):
    """A "Finding Labels" value that cannot be parsed."""


def parse_findings(text: str, where: str = "") -> np.ndarray:
    """Parse one NIH "Finding Labels" value ("A|B", "No Finding") into a 0/1 uint8 vector.

    Tokens are matched exactly (never by substring). ``where`` names the row for errors.
    """
    vec = np.zeros(NUM_CLASSES, dtype=np.uint8)
    tokens = [t.strip() for t in str(text).split("|")]
    for tok in tokens:
        if tok == NO_FINDING:
            if len(tokens) > 1:
                raise LabelError(f"{where}: 'No Finding' combined with other labels in {text!r}")
            continue
        idx = _INDEX.get(tok)
        if idx is None:
            raise LabelError(f"{where}: unknown finding label {tok!r} in {text!r}; known: {', '.join(PATHOLOGIES)}, {NO_FINDING}")
        vec[idx] = 1
    return vec


def format_findings(vec) -> str:
    """Inverse of :func:`parse_findings`."""
    names = [PATHOLOGIES[i] for i, v in enumerate(vec) if v]
    return "|".join(names) if names else NO_FINDING


# ----------------------------------------------------------------------------------------------------------
# The vocabulary shared by all sources, and each source's names in it.

VOCABULARY: tuple[str, ...] = (
    *PATHOLOGIES,  # NIH ChestX-ray14's 14, first and unchanged (the current model's outputs keep their indices)
    "Lung Opacity",  # CheXpert, MIMIC-CXR, VinDr-CXR, RSNA Pneumonia (its positive class is "Lung Opacity")
    "Lung Lesion",  # CheXpert, MIMIC-CXR (nodule or mass when the report does not say which)
    "Enlarged Cardiomediastinum",  # CheXpert, MIMIC-CXR
    "Fracture",  # CheXpert, MIMIC-CXR, PadChest
    "Support Devices",  # CheXpert, MIMIC-CXR, PadChest (tubes, lines, pacemakers)
    "Pleural Other",  # CheXpert, MIMIC-CXR (pleural findings other than effusion)
    NO_FINDING,  # CheXpert, MIMIC-CXR, VinDr-CXR ("No finding"), NIH (as the absence of all 14)
)
# Nothing else is needed for the core labels: PadChest's core findings are NIH's 14 plus Fracture and Support
# Devices; VinDr-CXR's Aortic enlargement, Calcification and ILD have no counterpart in any other source here
# and are kept under their own names instead (see SOURCE_NAMES["vindr"]).
VOCABULARY_INDEX = {name: i for i, name in enumerate(VOCABULARY)}


class Unmapped(enum.Enum):
    """A source label with no vocabulary label: kept under its own name, or dropped."""

    KEEP_OWN = "keep_own"
    DROP = "drop"

    def __repr__(self) -> str:
        return self.name


KEEP_OWN = Unmapped.KEEP_OWN  # no vocabulary label; kept as an extra column under the source's own name
DROP = Unmapped.DROP  # no vocabulary label; left out

Target = Union[str, tuple[str, ...], Unmapped]  # one label, several labels, or KEEP_OWN / DROP

SOURCE_NAMES: dict[str, dict[str, Target]] = {
    "chexpert": {  # CheXpert's 14 observations (train.csv / valid.csv columns), in the file's order
        "No Finding": NO_FINDING,
        "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
        "Cardiomegaly": "Cardiomegaly",
        "Lung Opacity": "Lung Opacity",
        "Lung Lesion": "Lung Lesion",
        "Edema": "Edema",
        "Consolidation": "Consolidation",
        "Pneumonia": "Pneumonia",
        "Atelectasis": "Atelectasis",
        "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion",  # NIH's name for the same finding
        "Pleural Other": "Pleural Other",
        "Fracture": "Fracture",
        "Support Devices": "Support Devices",
    },
    "vindr": {  # VinDr-CXR's 14 classes (class_id 0-13) and No finding (14), as spelled in its class_name
        "Aortic enlargement": KEEP_OWN,  # not "Enlarged Cardiomediastinum" (that is wider); no other source has it
        "Atelectasis": "Atelectasis",
        "Calcification": KEEP_OWN,  # any calcification (vascular, nodal, pleural): no vocabulary label
        "Cardiomegaly": "Cardiomegaly",
        "Consolidation": "Consolidation",
        "ILD": KEEP_OWN,  # interstitial lung disease: wider than Fibrosis, not Infiltration
        "Infiltration": "Infiltration",
        "Lung Opacity": "Lung Opacity",
        "Nodule/Mass": ("Nodule", "Mass"),  # one class for both: a positive sets both (read: nodule or mass)
        "Other lesion": DROP,  # a catch-all for any other lesion (bone, soft tissue, ...); not one finding
        "Pleural effusion": "Effusion",
        "Pleural thickening": "Pleural_Thickening",
        "Pneumothorax": "Pneumothorax",
        "Pulmonary fibrosis": "Fibrosis",
        "No finding": NO_FINDING,
    },
    "vindr-physionet": {},  # VinDr-CXR's PhysioNet release: the 14 classes above and its 8 further local labels
    # (filled below), used by the vindr source for that layout
    "nih-google": {  # Google's expert labels of NIH images (Majkowska et al. 2020), the files' four columns in order
        "Fracture": "Fracture",
        "Pneumothorax": "Pneumothorax",
        "Airspace opacity": KEEP_OWN,  # no one NIH label: a model is scored by max(Consolidation, Pneumonia,
        # Infiltration), chexnet.data.sources.nih_google.DERIVED_SCORES (chexnet's rule, not the paper's)
        "Nodule or mass": KEEP_OWN,  # scored by max(Nodule, Mass) (DERIVED_SCORES); not set into Nodule and Mass:
        # an expert "YES" does not say which of the two it is
    },
    "padchest": {  # PadChest's Labels terms that name a vocabulary label or a kind of it (PadChest's term tree),
        # matched as whole terms; every other PadChest term is dropped (chexnet.data.sources.padchest). The DROP
        # entries are terms that contain a label's word but are not that finding (a substring match takes them).
        "normal": NO_FINDING,
        "atelectasis": "Atelectasis",
        "total atelectasis": "Atelectasis",
        "lobar atelectasis": "Atelectasis",
        "segmental atelectasis": "Atelectasis",
        "laminar atelectasis": "Atelectasis",
        "round atelectasis": "Atelectasis",
        "atelectasis basal": "Atelectasis",
        "cardiomegaly": "Cardiomegaly",
        "pleural effusion": "Effusion",
        "loculated pleural effusion": "Effusion",
        "loculated fissural effusion": "Effusion",  # pleural fluid within a fissure
        "empyema": "Effusion",  # an infected pleural effusion (under pleural effusion in PadChest's tree)
        "hydropneumothorax": ("Effusion", "Pneumothorax"),  # fluid and air in the pleural space: both
        "infiltrates": "Infiltration",
        "interstitial pattern": "Infiltration",  # these patterns sit under "infiltrates" in PadChest's tree
        "reticular interstitial pattern": "Infiltration",
        "reticulonodular interstitial pattern": "Infiltration",
        "ground glass pattern": "Infiltration",
        "alveolar pattern": "Infiltration",
        "miliary opacities": "Infiltration",
        "mass": "Mass",
        "pulmonary mass": "Mass",
        "nodule": "Nodule",
        "multiple nodules": "Nodule",
        "pneumonia": "Pneumonia",
        "atypical pneumonia": "Pneumonia",
        "pneumothorax": "Pneumothorax",
        "consolidation": "Consolidation",
        "air bronchogram": "Consolidation",  # the sign of an air-space consolidation
        "pulmonary edema": "Edema",
        "emphysema": "Emphysema",
        "pulmonary fibrosis": "Fibrosis",
        "pleural thickening": "Pleural_Thickening",
        "apical pleural thickening": "Pleural_Thickening",
        "calcified pleural thickening": "Pleural_Thickening",
        "hiatal hernia": "Hernia",
        "fracture": "Fracture",
        "rib fracture": "Fracture",
        "callus rib fracture": "Fracture",  # a healing rib fracture
        "clavicle fracture": "Fracture",
        "humeral fracture": "Fracture",
        "vertebral fracture": "Fracture",
        # Support Devices: tubes, drains, lines, catheters and cardiac electrical devices (not prostheses, valves,
        # surgical material or foreign bodies)
        "endotracheal tube": "Support Devices",
        "tracheostomy tube": "Support Devices",
        "NSG tube": "Support Devices",  # nasogastric tube
        "chest drain tube": "Support Devices",
        "ventriculoperitoneal drain tube": "Support Devices",
        "gastrostomy tube": "Support Devices",
        "nephrostomy tube": "Support Devices",
        "double J stent": "Support Devices",
        "catheter": "Support Devices",
        "central venous catheter": "Support Devices",
        "central venous catheter via jugular vein": "Support Devices",
        "central venous catheter via subclavian vein": "Support Devices",
        "central venous catheter via umbilical vein": "Support Devices",
        "reservoir central venous catheter": "Support Devices",
        "electrical device": "Support Devices",
        "pacemaker": "Support Devices",
        "single chamber device": "Support Devices",
        "dual chamber device": "Support Devices",
        "dai": "Support Devices",  # implantable defibrillator (Spanish DAI)
        "soft tissue mass": DROP,  # not a lung mass
        "breast mass": DROP,
        "mediastinal mass": DROP,
        "pleural mass": DROP,
        "pericardial effusion": DROP,  # not pleural
        "subcutaneous emphysema": DROP,  # air in the soft tissues, not lung emphysema
        "pseudonodule": DROP,  # something that looks like a nodule and is not (nipple shadow, vessel end on)
    },
}


class LabelMapping(NamedTuple):
    """What :func:`map_source_labels` found: unpacks as ``(mapping, kept_own, dropped)``."""

    mapping: dict[str, tuple[str, ...]]  # source name -> its vocabulary label(s), in the names' order
    kept_own: list[str]  # source names with no vocabulary label, kept under their own name
    dropped: list[str]  # source names with no vocabulary label, left out

    def labels(self) -> list[str]:
        """The vocabulary labels the mapped names provide, in vocabulary order."""
        found = {label for targets in self.mapping.values() for label in targets}
        return [name for name in VOCABULARY if name in found]

    def summary(self) -> dict:
        """A JSON-serializable description (for meta.json and printing)."""
        return {"mapped": {name: list(t) for name, t in self.mapping.items()},
                "kept_own": list(self.kept_own), "dropped": list(self.dropped)}

    def describe(self) -> list[str]:
        """One line per source name, e.g. ``Pleural Effusion -> Effusion``, for ``prepare`` to print."""
        lines = [f"{name} -> {' + '.join(t)}" for name, t in self.mapping.items()]
        lines += [f"{name} -> (kept as {name!r}: not in the vocabulary)" for name in self.kept_own]
        lines += [f"{name} -> (dropped: not in the vocabulary)" for name in self.dropped]
        return lines


SOURCE_NAMES["vindr-physionet"] = {
    **{k: v for k, v in SOURCE_NAMES["vindr"].items() if k != "No finding"},
    "Clavicle fracture": "Fracture",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Enlarged PA": KEEP_OWN,  # an enlarged pulmonary artery: no vocabulary label
    "Lung cavity": KEEP_OWN,  # not Lung Lesion (that is CheXpert's nodule/mass class): a cavity is kept apart
    "Lung cyst": KEEP_OWN,
    "Mediastinal shift": KEEP_OWN,
    "Rib fracture": "Fracture",
    "No finding": NO_FINDING,
}


def map_source_labels(source: str, names: Iterable[str]) -> LabelMapping:
    """Map the label ``names`` a ``source``'s file uses through ``SOURCE_NAMES[source]``.

    Returns ``(mapping, kept_own, dropped)`` (a :class:`LabelMapping`): ``mapping`` is source name -> tuple of
    vocabulary labels (one, or several where the source lumps findings together, e.g. VinDr's ``Nodule/Mass``);
    ``kept_own`` and ``dropped`` list the names with no vocabulary label. Every name lands in exactly one of
    the three, in the order given (repeats are counted once). Several source names may map to one vocabulary
    label; a source then combines them (1 if any is 1, else 0 if any is 0, else missing).

    Names are matched exactly. An unknown ``source``, or a name not in its table, raises :class:`LabelError`
    (a ValueError) naming it and the known ones.
    """
    table = SOURCE_NAMES.get(source)
    if table is None:
        raise LabelError(f"no label table for source {source!r}; known: {', '.join(sorted(SOURCE_NAMES))}")
    mapping: dict[str, tuple[str, ...]] = {}
    kept_own: list[str] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if name not in table:
            raise LabelError(f"source {source!r}: unknown label name {name!r}; known: {', '.join(table)}")
        target = table[name]
        if target is KEEP_OWN:
            kept_own.append(name)
        elif target is DROP:
            dropped.append(name)
        else:
            mapping[name] = (target,) if isinstance(target, str) else tuple(target)
    return LabelMapping(mapping, kept_own, dropped)
