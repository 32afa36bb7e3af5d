"""``chexnet prepare --dataset chexpert`` on CheXpert's real metadata rows with generated images.

Real rows of ``../shared/data/chexpert/train.csv.gz`` (as released: small-version paths, 1 / 0 / -1 / blank, laterals)
become train.csv, and rows of other patients, renamed into ``valid/``, become valid.csv: the cache must hold the
frontal images only, valid.csv's as the test split, labels under the chosen policies exactly as the reader gives
them, and missing values as empty cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data.cache import load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources.chexpert import LABELS, read_chexpert_csv
from tests.helpers import CHEXPERT_CSV, make_chexpert_folder

pytestmark = pytest.mark.skipif(not CHEXPERT_CSV.is_file(), reason=f"{CHEXPERT_CSV} not found (the project's shared data)")


@pytest.fixture(scope="module")
def chexpert_folder(tmp_path_factory) -> Path:
    return make_chexpert_folder(tmp_path_factory.mktemp("chexpert"))


@pytest.mark.parametrize("uncertain,blank", [("ignore", "negative"), ("mixed,Pneumonia=zeros", "missing")])
def test_prepare_keeps_frontal_images_and_the_labels_the_policies_give(chexpert_folder, tmp_path, uncertain, blank):
    folder = chexpert_folder / "CheXpert-v1.0-small"
    meta = prepare(chexpert_folder, tmp_path / "c", size=32, workers=1, progress=False, dataset="chexpert",
                   options={"uncertain": uncertain, "blank": blank})
    _, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == list(LABELS) and meta["arguments"]["options"] == {"blank": blank, "uncertain": uncertain}
    want = pd.concat([read_chexpert_csv(folder / n, uncertain=uncertain, blank=blank) for n in ("train.csv", "valid.csv")])
    frontal = want[want["frontal"]].set_index("image")
    assert meta["source"]["excluded_by_view"] == int((~want["frontal"]).sum()) > 0
    assert sorted(index["image"]) == sorted(frontal.index) and meta["failed"] == []
    got = index.set_index("image").loc[frontal.index]
    np.testing.assert_array_equal(got[list(LABELS)].to_numpy(np.float64), frontal[list(LABELS)].to_numpy(np.float64))
    assert (got["split"] == "test").to_numpy().tolist() == frontal.index.str.startswith("valid/").tolist()
    assert set(index.loc[index["split"] != "test", "split"]) <= {"train", "val"}
    assert got["patient_id"].tolist() == frontal["patient_id"].tolist()  # text: patient00001
    np.testing.assert_array_equal(got["age"].to_numpy(), frontal["age"].to_numpy())
    missing = sum(c[label]["missing"] for c in meta["label_counts"].values() for label in LABELS)
    assert missing == int(frontal[list(LABELS)].isna().to_numpy().sum()) > 0
    if blank == "missing":
        assert ",," in (tmp_path / "c" / "index.csv").read_text()


def test_the_cli_prints_and_records_the_label_policies(chexpert_folder, tmp_path, capsys):
    from chexnet import cli

    assert cli.main(["prepare", "--dataset", "chexpert", "--data", str(chexpert_folder), "--out", str(tmp_path / "c"),
                     "--size", "32", "--workers", "1", "--uncertain", "ones"]) == 0
    out = capsys.readouterr().out
    assert "chexpert options: --uncertain ones, --blank negative" in out
    assert "labels (positive / negative / missing per split):" in out and "Effusion" in out
    assert load_cache(tmp_path / "c")[2]["arguments"]["options"] == {"blank": "negative", "uncertain": "ones"}
    assert cli.main(["prepare", "--data", str(chexpert_folder), "--out", str(tmp_path / "n"), "--blank", "missing"]) == 2
    assert "dataset 'nih' takes no option blank" in capsys.readouterr().err
    assert not (tmp_path / "n" / "meta.json").exists()


def test_the_dataset_choices_are_the_registered_sources():
    from chexnet.choices import DATASETS
    from chexnet.data import sources

    from chexnet.cli import build_parser

    assert list(DATASETS) == list(sources.SOURCES) == list(sources.OPTIONS)
    args = build_parser().parse_args(["prepare", "--data", "d", "--out", "o"])
    for name, options in sources.OPTIONS.items():
        for option in options:  # each source's option is a prepare flag, default None (the source's default)
            assert getattr(args, option) is None, (name, option)


def test_the_readme_shows_the_code_s_source_x_label_table():
    from chexnet.data.sources import label_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert label_table_markdown() in readme, "README's source x label table differs from the code's: regenerate it"
