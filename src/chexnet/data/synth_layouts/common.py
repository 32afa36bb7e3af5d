"""What every layout writer shares: the NIH-layout draft it reads, the site shift, and the file writers
(CSV, plain or gzip; 16-bit PNG; DICOM)."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from chexnet.labels import PATHOLOGIES


def site_shift(img: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` (uint8) as another site would acquire it: contrast, noise, collimation (see the package)."""
    if shift <= 0:
        return img
    x = (img.astype(np.float64) / 255.0) ** (1.0 + 0.6 * shift) * 255.0
    x += rng.normal(0.0, 10.0 * shift, x.shape)
    border = int(round(0.08 * shift * min(img.shape)))
    if border:
        x[:border], x[-border:], x[:, :border], x[:, -border:] = 0, 0, 0, 0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def check_shift(shift: float) -> float:
    if not 0 <= shift <= 1:
        raise ValueError(f"shift must be within [0, 1], got {shift}")
    return float(shift)


@dataclass(frozen=True)
class DraftImage:
    """One image of the draft: its NIH metadata, findings and boxes (pixels of the image)."""

    image: str
    path: Path
    patient_id: int
    follow_up: int
    age: float  # NaN when unknown
    sex: str  # M / F / ''
    view: str  # PA / AP
    test: bool  # on the draft's test list
    findings: tuple[str, ...]  # NIH names, PATHOLOGIES order; () for No Finding
    boxes: tuple[tuple[str, float, float, float, float], ...] = field(default=())  # (finding, x, y, w, h)

    def pixels(self) -> np.ndarray:
        return np.asarray(Image.open(self.path).convert("L"))

    def boxes_of(self, *findings: str) -> list[tuple[float, float, float, float]]:
        return [b[1:] for b in self.boxes if b[0] in findings]


def read_draft(nih_dir: str | Path) -> list[DraftImage]:
    """The synthetic NIH-layout folder (:func:`chexnet.data.synthetic.generate`), in its metadata's order."""
    import pandas as pd

    from chexnet.data.sources.nih import find_images, read_metadata

    nih_dir = Path(nih_dir)
    meta = read_metadata(nih_dir / "Data_Entry_2017.csv")
    test_list = nih_dir / "test_list.txt"
    test = set(test_list.read_text().split()) if test_list.is_file() else set()
    files = find_images(nih_dir)
    boxes: dict[str, list] = {}
    bbox = nih_dir / "BBox_List_2017.csv"
    if bbox.is_file():
        raw = pd.read_csv(bbox, skiprows=1, header=None, dtype=str, keep_default_na=False).iloc[:, :6]
        for image, finding, *xywh in raw.itertuples(index=False):
            finding = "Infiltration" if finding == "Infiltrate" else finding
            boxes.setdefault(image, []).append((finding, *map(float, xywh)))
    out = []
    for r in meta.to_dict("records"):
        out.append(DraftImage(
            image=r["image"], path=files[r["image"]], patient_id=int(r["patient_id"]),
            follow_up=int(r.get("follow_up", 0) or 0), age=float(r["age"]), sex=str(r["sex"] or ""),
            view=str(r["view"] or ""), test=r["image"] in test,
            findings=tuple(p for p in PATHOLOGIES if r[p]), boxes=tuple(boxes.get(r["image"], ()))))
    return out


def write_csv(path: Path, header, rows, *, delimiter: str = ",", gz: bool | None = None) -> Path:
    """``rows`` (sequences, or dicts keyed by ``header``) under ``header``; gzip-compressed (no timestamp, so the
    bytes depend on the content only) when ``gz`` or the name ends ``.gz``."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[h] for h in header] if isinstance(row, dict) else row)
    data = buf.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz if gz is not None else path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def to_bits(img: np.ndarray, bits: int) -> np.ndarray:
    """uint8 -> uint16 holding ``bits``-bit values (0 .. 2**bits - 1, 0 and 255 kept at the ends)."""
    top = (1 << bits) - 1
    return ((img.astype(np.uint32) * top + 127) // 255).astype(np.uint16)


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit grayscale PNG of ``values`` (uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(path)
    return path


def write_image(path: Path, img: np.ndarray, **options) -> Path:
    """An 8-bit grayscale PNG or JPEG (by the suffix; ``options`` go to PIL, e.g. ``quality``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **options)
    return path


SOP_CLASSES = {"DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
               "CR": "1.2.840.10008.5.1.4.1.1.1"}  # Computed Radiography Image Storage


def write_dicom(path: Path, pixels: np.ndarray, *, uid_seed: str, modality: str = "DX",
                photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs) -> Path:
    """An uncompressed DICOM file (explicit VR little endian) of ``pixels`` (uint8, or uint16 with ``bits_stored``
    bits); ``attrs`` are header fields (PatientSex=..., ...). UIDs are derived from ``uid_seed`` (reproducible)."""
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = SOP_CLASSES[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    bits = bits_stored or ds.BitsAllocated
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    with warnings.catch_warnings():  # e.g. RSNA's PatientAge "58" is not DICOM's AS spelling (it is written so)
        warnings.simplefilter("ignore")
        for key, value in attrs.items():
            setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.save_as(path, write_like_original=False)
    return path


def note(record: list | None, image: str, draft: DraftImage, *, split: str | None = None, view: str = "",
         excluded: bool = False, age: float | None = None, sex: str | None = None) -> None:
    """Append to ``record`` (when given) what a writer wrote for one image, as the source should read it back:
    ``image`` (the source's name for it: the cache's ``image``), ``draft`` (the NIH image it came from),
    ``split`` (None where the source draws it), ``view``, ``excluded`` (left out by the source's default view
    rule), ``age`` and ``sex`` (None where the layout has none)."""
    if record is not None:
        record.append({"image": image, "draft": draft.image, "split": split, "view": view, "excluded": excluded,
                       "age": age, "sex": sex})


def hex_id(rng: np.random.Generator, chars: int = 32) -> str:
    return rng.bytes((chars + 1) // 2).hex()[:chars]


def dicom_age(age: float) -> str:
    """DICOM's age string (``058Y``); '' when unknown."""
    return "" if age != age else f"{int(age):03d}Y"


def jitter_box(box, side: tuple[int, int], rng: np.random.Generator, sd: float) -> tuple[float, ...]:
    """(x_min, y_min, x_max, y_max) of an (x, y, w, h) box moved by a reader: each edge by N(0, sd x side),
    kept inside the image and at least one pixel wide."""
    h_img, w_img = side
    x, y, w, h = box
    edges = np.array([x, y, x + w, y + h], dtype=np.float64)
    if sd > 0:
        edges += rng.normal(0.0, sd * max(side), 4)
    x0, x1 = np.clip(sorted(edges[[0, 2]]), 0, w_img - 1)
    y0, y1 = np.clip(sorted(edges[[1, 3]]), 0, h_img - 1)
    return float(x0), float(y0), float(max(x1, x0 + 1)), float(max(y1, y0 + 1))
