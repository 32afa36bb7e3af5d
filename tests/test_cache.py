"""prepare / load_cache: exact rows, aligned index, failures recorded, resumable after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import chexnet.data.prepare as writer
from chexnet.data.cache import INDEX_COLUMNS, CacheError, load_cache
from chexnet.data.imageio import read_xray, resize_area
from chexnet.data.prepare import prepare
from chexnet.data.sources.nih import find_images, read_metadata
from chexnet.labels import PATHOLOGIES

SIZE = 32


def cache_files(out: Path) -> tuple[bytes, bytes, dict]:
    """(images.u8 bytes, index.csv bytes, meta without the 'created' block)."""
    meta = json.loads((out / "meta.json").read_text())
    meta.pop("created")
    return (out / "images.u8").read_bytes(), (out / "index.csv").read_bytes(), meta


def assert_rows_match_images(out: Path, data: Path) -> None:
    images, index, meta = load_cache(out)
    files = find_images(data)
    assert images.shape == (len(index), meta["size"], meta["size"]) == (meta["count"], SIZE, SIZE)
    for i, name in enumerate(index["image"]):
        np.testing.assert_array_equal(images[i], resize_area(read_xray(files[name]), SIZE), err_msg=name)


def break_images(data: Path) -> dict[str, str]:
    """Truncate one PNG, replace one by text, delete one; return {image: expected reason fragment}."""
    folder = data / "images_001" / "images"
    names = sorted(p.name for p in folder.iterdir())
    cut, text, gone = names[1], names[4], names[7]
    raw = (folder / cut).read_bytes()
    (folder / cut).write_bytes(raw[: len(raw) // 2])
    (folder / text).write_text("not a PNG at all\n" * 10)
    (folder / gone).unlink()
    return {cut: "truncated or corrupt", text: "not a recognized image", gone: "file not found"}


# --------------------------------------------------------------------------- content


def test_prepare_rows_equal_direct_decode_and_index_matches_metadata(tiny_nih, tmp_path):
    meta = prepare(tiny_nih, tmp_path / "c", size=SIZE, workers=1, progress=False)
    assert_rows_match_images(tmp_path / "c", tiny_nih)
    images, index, loaded = load_cache(tmp_path / "c", size=SIZE)
    assert loaded == meta and not images.flags.writeable
    assert list(index.columns) == INDEX_COLUMNS
    assert meta["count"] == 24 and meta["failed"] == [] and meta["labels"] == list(PATHOLOGIES)
    assert meta["format_version"] == 2 and index["patient_id"].map(type).eq(str).all()
    train_counts = meta["label_counts"]["train"].values()
    assert sum(c["positive"] + c["negative"] for c in train_counts) == 14 * meta["splits"]["train"]["images"]

    md = read_metadata(tiny_nih / "Data_Entry_2017.csv").set_index("image").loc[index["image"]]
    np.testing.assert_array_equal(index[list(PATHOLOGIES)].to_numpy(), md[list(PATHOLOGIES)].to_numpy())
    np.testing.assert_array_equal(index["patient_id"], md["patient_id"].astype(str))  # text in the cache
    np.testing.assert_array_equal(index["view"], md["view"])
    np.testing.assert_array_equal(index["age"], md["age"])

    test_list = (tiny_nih / "test_list.txt").read_text().split()
    assert meta["source"]["split_mode"] == "official"
    assert sorted(index.loc[index["split"] == "test", "image"]) == sorted(test_list)
    assert sum(s["images"] for s in meta["splits"].values()) == 24
    for name, counts in meta["splits"].items():
        rows = index[index["split"] == name]
        assert counts == {"images": len(rows), "patients": rows["patient_id"].nunique()}
    assert meta["splits"]["test"] == {"images": 6, "patients": 2}
    assert index.groupby("patient_id")["split"].nunique().max() == 1  # patient-disjoint


def test_parallel_equals_serial(tiny_nih, tmp_path):
    prepare(tiny_nih, tmp_path / "one", size=SIZE, workers=1, progress=False)
    prepare(tiny_nih, tmp_path / "two", size=SIZE, workers=2, progress=False)
    assert cache_files(tmp_path / "one") == cache_files(tmp_path / "two")


def test_random_split_mode_flat_layout_and_view_filter(make_nih, tmp_path):
    data = make_nih("flat", patients=10, flat=True, lists=False)
    meta = prepare(data, tmp_path / "c", size=SIZE, workers=1, progress=False)
    assert meta["source"]["split_mode"] == "random" and meta["count"] == 30
    assert all(meta["splits"][s]["images"] > 0 for s in ("train", "val", "test"))
    _, index, _ = load_cache(tmp_path / "c")
    assert index.groupby("patient_id")["split"].nunique().max() == 1

    pa = prepare(data, tmp_path / "pa", size=SIZE, workers=1, view="pa", progress=False)
    _, index, _ = load_cache(tmp_path / "pa")
    assert set(index["view"]) == {"PA"} and pa["arguments"]["view"] == "PA"
    assert pa["count"] + pa["source"]["excluded_by_view"] == 30


# --------------------------------------------------------------------------- failures


def test_bad_images_are_recorded_left_out_and_not_fatal(tiny_nih, tmp_path, capsys):
    expected = break_images(tiny_nih)
    meta = prepare(tiny_nih, tmp_path / "c", size=SIZE, workers=2, progress=True)
    assert meta["count"] == 21 and meta["failed_count"] == 3
    reasons = {f["image"]: f["reason"] for f in meta["failed"]}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name]
    _, index, _ = load_cache(tmp_path / "c")
    assert not set(expected) & set(index["image"])
    assert sum(s["images"] for s in meta["splits"].values()) == 21
    assert_rows_match_images(tmp_path / "c", tiny_nih)
    out = capsys.readouterr().out
    assert "3 image(s) failed" in out and all(name in out for name in expected)


def test_nothing_readable_is_an_error(make_nih, tmp_path):
    data = make_nih("bad", patients=2, per_patient=1)
    for png in (data / "images_001" / "images").iterdir():
        png.write_text("garbage")
    with pytest.raises(CacheError, match="none of the 2 images could be read"):
        prepare(data, tmp_path / "c", size=SIZE, workers=1, progress=False)


# --------------------------------------------------------------------------- re-runs


def test_rerun_same_arguments_is_a_noop(tiny_nih, tmp_path, capsys):
    out = tmp_path / "c"
    first = prepare(tiny_nih, out, size=SIZE, workers=1, progress=False)
    stamp = (out / "images.u8").stat().st_mtime_ns
    again = prepare(tiny_nih, out, size=SIZE, workers=2, progress=True)  # workers is not an argument of the cache
    assert again == first and (out / "images.u8").stat().st_mtime_ns == stamp
    assert "nothing to do" in capsys.readouterr().out


def test_rerun_other_arguments_errors_or_overwrites(tiny_nih, tmp_path):
    out = tmp_path / "c"
    prepare(tiny_nih, out, size=SIZE, workers=1, progress=False)
    with pytest.raises(CacheError, match=r"size: 32 there, 16 now"):
        prepare(tiny_nih, out, size=16, workers=1, progress=False)
    with pytest.raises(CacheError, match=r"seed: 0 there, 3 now"):
        prepare(tiny_nih, out, size=SIZE, seed=3, workers=1, progress=False)
    meta = prepare(tiny_nih, out, size=16, workers=1, progress=False, overwrite=True)
    assert meta["size"] == 16 and load_cache(out, size=16)[0].shape == (24, 16, 16)


@pytest.mark.parametrize("broken", [False, True], ids=["all-ok-rename", "with-failures-copy"])
def test_crash_during_finalization_then_rerun(tiny_nih, tmp_path, monkeypatch, broken):
    if broken:
        break_images(tiny_nih)
    prepare(tiny_nih, tmp_path / "ref", size=SIZE, workers=1, progress=False)
    real_write = writer.atomic_write

    def crash_on_meta(path, data):
        if path.name == "meta.json":
            raise KeyboardInterrupt("simulated kill before meta.json")
        real_write(path, data)

    monkeypatch.setattr(writer, "atomic_write", crash_on_meta)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny_nih, tmp_path / "c", size=SIZE, workers=1, progress=False)
    with pytest.raises(CacheError, match="incomplete cache"):
        load_cache(tmp_path / "c")
    monkeypatch.setattr(writer, "atomic_write", real_write)
    prepare(tiny_nih, tmp_path / "c", size=SIZE, workers=1, progress=False)
    assert cache_files(tmp_path / "c") == cache_files(tmp_path / "ref")
    assert not (tmp_path / "c" / "work").exists()


KILLABLE = textwrap.dedent("""
    import sys, time
    import chexnet.data.prepare as writer
    writer.COMMIT_SECONDS = 0.0   # commit after every chunk
    writer.MAX_CHUNK = 2
    real = writer.read_cache_row
    def slow(path, size):
        time.sleep(0.05)
        return real(path, size)
    writer.read_cache_row = slow
    writer.prepare(sys.argv[1], sys.argv[2], size=int(sys.argv[3]), workers=1, progress=False)
""")


def test_sigkill_then_resume_equals_uninterrupted_run(make_nih, tmp_path, monkeypatch):
    data = make_nih("nih60", patients=20, per_patient=3)
    break_images(data)
    out, ref = tmp_path / "killed", tmp_path / "ref"
    status_file = out / "work" / "status.u8"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(data), str(out), str(SIZE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"prepare finished before it could be killed: {proc.stdout.read()!r}"
            assert time.monotonic() < deadline, "prepare made no progress"
            if status_file.exists() and (np.fromfile(status_file, np.uint8) == writer.DONE).sum() >= 8:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    status = np.fromfile(status_file, np.uint8)
    assert (status == writer.PENDING).any(), "killed too late to test resuming"
    with pytest.raises(CacheError, match="incomplete cache"):
        load_cache(out)

    plan = pd.read_csv(data / "Data_Entry_2017.csv")  # plan order == metadata order (official lists keep all)
    finished = {str(find_images(data).get(n, "")) for n in plan["Image Index"][status != writer.PENDING]}
    read_again = []
    real = writer.read_cache_row
    monkeypatch.setattr(writer, "read_cache_row", lambda p, s: read_again.append(str(p)) or real(p, s))
    meta = prepare(data, out, size=SIZE, workers=1, progress=False)
    assert read_again and not finished & set(read_again), "finished rows were processed again"
    assert meta["created"]["runs"] == 2

    monkeypatch.setattr(writer, "read_cache_row", real)
    prepare(data, ref, size=SIZE, workers=1, progress=False)
    assert cache_files(out) == cache_files(ref)
    assert not (out / "work").exists()


def test_cache_from_before_the_dataset_argument_still_loads_and_reruns(tiny_nih, tmp_path):
    out = tmp_path / "c"
    assert prepare(tiny_nih, out, size=SIZE, workers=1, progress=False)["arguments"]["dataset"] == "nih"
    old = json.loads((out / "meta.json").read_text())
    del old["arguments"]["dataset"]  # as written before sources existed
    (out / "meta.json").write_text(json.dumps(old))
    assert load_cache(out)[2] == old
    assert prepare(tiny_nih, out, size=SIZE, workers=1, progress=False) == old  # nothing to do
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: .*nih"):
        prepare(tiny_nih, tmp_path / "d", dataset="nope", progress=False)
    assert not (tmp_path / "d").exists()


def test_a_version_1_cache_still_loads(tiny_nih, tmp_path):
    """Version 1 (before labels could be missing): 'pathologies' instead of 'labels', integer patient ids."""
    out = tmp_path / "c"
    prepare(tiny_nih, out, size=SIZE, workers=1, progress=False)
    _, new_index, _ = load_cache(out)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 1
    meta["pathologies"] = meta.pop("labels")
    del meta["label_counts"]
    (out / "meta.json").write_text(json.dumps(meta))
    _, index, loaded = load_cache(out)
    assert loaded["format_version"] == 1 and index["patient_id"].dtype == np.int64
    assert index["patient_id"].astype(str).tolist() == new_index["patient_id"].tolist()
    pd.testing.assert_frame_equal(index.drop(columns="patient_id"), new_index.drop(columns="patient_id"))
    meta["format_version"] = 3
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"version 3; this chexnet reads 'chexnet-cache' versions \(1, 2\)"):
        load_cache(out)


def test_missing_labels_are_empty_cells_on_disk_and_nan_in_memory(tiny_nih, tmp_path, monkeypatch, capsys):
    """A source whose labels may be missing: a label it lacks and one with unknown values; counts per split."""
    from chexnet.data import sources
    from chexnet.data.dataset import open_split
    from chexnet.data.sources.nih import read_source

    def partial(data_dir, **options):
        table = read_source(data_dir, **options).drop(columns=["Hernia"])
        table["Edema"] = table["Edema"].astype(np.float64)
        table.loc[table.index[::2], "Edema"] = np.nan  # every other image: Edema unknown
        return table

    monkeypatch.setitem(sources.SOURCES, "partial", partial)
    meta = prepare(tiny_nih, tmp_path / "c", size=SIZE, workers=1, progress=True, dataset="partial")
    assert meta["labels"] == [n for n in PATHOLOGIES if n != "Hernia"]
    text = (tmp_path / "c" / "index.csv").read_text().splitlines()
    header, first = text[0].split(","), text[1].split(",")
    assert "Hernia" not in header and first[header.index("Edema")] == "" and first[header.index("Effusion")] in "01"
    _, index, _ = load_cache(tmp_path / "c")
    assert index["Edema"].isna().sum() == 12 and index["Effusion"].notna().all()
    counts = meta["label_counts"]
    assert sum(counts[s]["Edema"]["missing"] for s in counts) == 12
    for s in counts:
        n = meta["splits"][s]["images"]
        assert all(c["positive"] + c["negative"] + c["missing"] == n for c in counts[s].values())
    assert "labels (positive / negative / missing per split):" in capsys.readouterr().out
    ds = open_split(tmp_path / "c", index, meta, "train", "eval", SIZE, labels=["Edema", "Hernia", "Effusion"])
    assert np.isnan(ds.labels[:, 1]).all() and np.isfinite(ds.labels[:, 2]).all()  # no Hernia: missing
    assert np.isnan(ds.labels[:, 0]).any() and np.isfinite(ds.labels[:, 0]).any()
    bad = (tmp_path / "c" / "index.csv").read_text().replace(",,", ",7,", 1)
    (tmp_path / "c" / "index.csv").write_text(bad)
    with pytest.raises(CacheError, match=r"row 2, column 'Edema': 7 is not 1, 0 or empty \(missing\)"):
        load_cache(tmp_path / "c")


def test_resume_with_other_arguments_is_refused(make_nih, tmp_path, monkeypatch):
    data = make_nih("d", patients=4, per_patient=2)
    monkeypatch.setattr(writer, "_finalize", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare(data, tmp_path / "c", size=SIZE, workers=1, progress=False)
    monkeypatch.undo()
    with pytest.raises(CacheError, match=r"interrupted prepare with other inputs \(val_fraction"):
        prepare(data, tmp_path / "c", size=SIZE, val_fraction=0.3, workers=1, progress=False)
    meta = prepare(data, tmp_path / "c", size=SIZE, workers=1, progress=False)
    assert meta["count"] == 8


# --------------------------------------------------------------------------- load_cache errors


def test_load_cache_errors(tiny_nih, tmp_path):
    with pytest.raises(CacheError, match="not a chexnet cache"):
        load_cache(tmp_path)
    out = tmp_path / "c"
    prepare(tiny_nih, out, size=SIZE, workers=1, progress=False)
    with pytest.raises(CacheError, match="cache images are 32x32 but size 224 was requested"):
        load_cache(out, size=224)
    with open(out / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CacheError, match=r"size mismatch: 100 bytes, expected .* = 24576"):
        load_cache(out)
    (out / "meta.json").unlink()
    with pytest.raises(CacheError, match="no meta.json"):
        load_cache(out)


def test_bad_arguments(tiny_nih, tmp_path):
    with pytest.raises(ValueError, match="view must be one of"):
        prepare(tiny_nih, tmp_path / "c", view="LL", progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(tiny_nih, tmp_path / "c", val_fraction=1.5, progress=False)
    with pytest.raises(CacheError, match="data folder not found"):
        prepare(tmp_path / "nowhere", tmp_path / "c", progress=False)


def test_verify_finds_a_changed_row_and_a_changed_index_and_adds_digests_where_missing(tmp_path, tiny_nih,
                                                                                      chexnet_main):
    import json

    from chexnet.data.cache import DIGESTS, verify_cache

    cache = tmp_path / "c"
    prepare(tiny_nih, cache, size=SIZE, workers=1, progress=False)
    assert verify_cache(cache, progress=False) == {"rows": 24, "checked": True, "added": False, "bad_rows": [],
                                                   "index_changed": False, "boxes_changed": False}
    images = np.memmap(cache / "images.u8", dtype=np.uint8, mode="r+", shape=(24, SIZE, SIZE))
    images[7, 3, 3] ^= 0x40  # one bit of one pixel, as a disk error would
    images.flush()
    del images
    name = load_cache(cache)[1]["image"].iat[7]
    proc = chexnet_main("prepare", "--verify", cache, check=False)
    assert proc.returncode == 1 and f"1 row(s) differ from their digests, e.g. row 7 ({name})" in proc.stderr
    lines = (cache / "index.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[-1] = {"M": "F", "F": "M"}[cells[-1]]  # a patient's sex edited by hand
    (cache / "index.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert verify_cache(cache, progress=False)["index_changed"]

    (cache / DIGESTS).unlink()  # a cache from before digests: they are added, and then compared
    meta = json.loads((cache / "meta.json").read_text())
    del meta["digests"]
    (cache / "meta.json").write_text(json.dumps(meta))
    proc = chexnet_main("prepare", "--verify", cache)
    assert "recorded them now" in proc.stdout and (cache / DIGESTS).is_file()
    assert "all 24 rows" in chexnet_main("prepare", "--verify", cache).stdout


def test_an_index_whose_splits_differ_from_meta_is_refused_at_load(tmp_path, tiny_nih):
    cache = tmp_path / "c"
    prepare(tiny_nih, cache, size=SIZE, workers=1, progress=False)
    lines = (cache / "index.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",train,", ",test,").replace(",val,", ",test,")
    (cache / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match=r"index.csv: its splits have .* images but meta.json says"):
        load_cache(cache)
