"""``chexnet localize`` on VinDr-CXR and RSNA caches: the boxes ``chexnet prepare`` kept in the cache's boxes.csv
(with the original sizes, so the data folder is not needed), scored box by box, each reader's box on its own.

The suite's tiny trained run predicts NIH's 14 labels, so VinDr's Nodule, Mass, Effusion and Cardiomegaly boxes
and RSNA's Pneumonia boxes are scored; VinDr's Aortic enlargement (no output of the model) is not.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest


@pytest.fixture
def cache_size(trained_run):
    from chexnet.runs import load_run_model

    return load_run_model(trained_run, "best", require_spec=True).spec.cache_size


def _localize(chexnet_main, run, cache, examples=3):
    proc = chexnet_main("localize", run, "--cache", cache, "--split", "all", "--examples", str(examples))
    out = run / "eval" / "localize"
    return proc, pd.read_csv(out / "localize.csv", index_col=0), pd.read_csv(out / "boxes.csv", keep_default_na=False)


def test_localize_reads_a_vindr_caches_boxes_without_the_data_folder(trained_run, copy_run, chexnet_main, tmp_path,
                                                                   cache_size):
    from chexnet.data.prepare import prepare
    from tests.test_vindr import BOXED_EXPECTED, make_vindr_folder

    data = make_vindr_folder(tmp_path / "vindr")
    prepare(data, tmp_path / "cache", size=cache_size, workers=1, progress=False, dataset="vindr")
    shutil.rmtree(data)  # the sizes are in boxes.csv: nothing is read from the data folder
    run = copy_run(trained_run)
    _, table, per_box = _localize(chexnet_main, run, tmp_path / "cache")
    scored = [b[:3] for b in BOXED_EXPECTED if b[1] != "Aortic enlargement"]  # the run has no such output
    assert [tuple(r) for r in per_box[["image", "finding", "reader"]].itertuples(index=False)] == scored
    assert table.loc["All", "n"] == 5 and table.loc["Effusion", "n"] == 2  # two readers' boxes: both count
    assert {"Nodule", "Mass", "Cardiomegaly"} <= set(table.index) and "Aortic enlargement" not in table.index
    examples = sorted(p.name for p in (run / "eval" / "localize" / "examples").glob("*.png"))
    assert examples == ["P_Effusion_R1.png", "P_Mass_R1.png", "P_Nodule_R1.png"]


def test_localize_reads_an_rsna_caches_boxes_and_names_a_missing_list(trained_run, copy_run, chexnet_main, tmp_path,
                                                                      cache_size):
    from chexnet.data.cache import load_cache
    from chexnet.data.prepare import prepare
    from chexnet.localize import _pairs
    from tests.test_rsna import make_rsna_folder

    data = make_rsna_folder(tmp_path / "rsna")
    cache = tmp_path / "cache"
    prepare(data, cache, size=cache_size, workers=1, progress=False, dataset="rsna")
    run = copy_run(trained_run)
    _, table, per_box = _localize(chexnet_main, run, cache, examples=0)
    boxes = pd.read_csv(cache / "boxes.csv", keep_default_na=False)
    assert per_box[["image", "finding"]].values.tolist() == boxes[["image", "finding"]].values.tolist()
    assert list(table.index) == ["Pneumonia", "All"] and table.loc["All", "n"] == len(boxes) == 3

    _, index, meta = load_cache(cache)
    (cache / "boxes.csv").unlink()  # e.g. a cache prepared before boxes were kept
    with pytest.raises(FileNotFoundError, match="has no boxes.csv .*BBox_List_2017.csv.*--overwrite"):
        _pairs(index, meta, cache, "all", None, None, None, ["Pneumonia"])


def test_a_malformed_box_list_names_the_file_and_row(tmp_path):
    from chexnet.localize import read_cache_boxes

    path = tmp_path / "boxes.csv"
    head = "image,finding,reader,x,y,w,h,height,width\n"
    path.write_text(head + "a.dcm,Effusion,R1,1,2,3,4,10,12\na.dcm,Effusion,R2,1,2,0,4,10,12\n")
    with pytest.raises(ValueError, match=r"boxes.csv row 3: box width and height must be positive"):
        read_cache_boxes(path)
    path.write_text(head + "a.dcm,Effusion,R1,1,2,3,4,ten,12\n")
    with pytest.raises(ValueError, match=r"boxes.csv row 2: height is not a number"):
        read_cache_boxes(path)
    path.write_text("image,finding,x,y,w,h\n")
    with pytest.raises(ValueError, match=r"boxes.csv row 1 \(header\): missing column\(s\) reader, height, width"):
        read_cache_boxes(path)
    path.write_text(head + "a.dcm,Effusion,,1,2,3,4,10,12\n")
    got = read_cache_boxes(path)
    assert got.iloc[0].tolist() == ["a.dcm", "Effusion", "", 1.0, 2.0, 3.0, 4.0, 10, 12]
