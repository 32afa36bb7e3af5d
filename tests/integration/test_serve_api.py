"""chexnet serve's API in-process (FastAPI's TestClient): every route, every bad input, tokens, privacy, and
parity with chexnet predict."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from chexnet.labels import PATHOLOGIES
from tests.integration.serving import IDENTIFIERS, TOKEN, broken_files, dicom_bytes, good_images, png_bytes

pytest.importorskip("fastapi", reason="chexnet serve needs chexnet[serve]")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")


@pytest.fixture
def serve_client(tmp_path):
    from fastapi.testclient import TestClient

    from chexnet.serve.app import create_app
    from chexnet.serve.config import ServeConfig

    @contextmanager
    def make(model, **options):
        app = create_app(ServeConfig(str(model), **options).check())
        with TestClient(app) as client:  # the model is loaded when start-up is over
            assert client.get("/readyz").status_code == 200, client.get("/readyz").json()
            yield client

    return make


def _predict_json(predict_cli, *args) -> dict:
    rc, out, err = predict_cli(*args, "--format", "json")
    assert rc == 0, err
    return {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in out.splitlines() if line}


def _post(client, data: bytes, name: str = "x.png", url: str = "/v1/predict", field: str = "file", **kw):
    return client.post(url, files={field: (name, data, "application/octet-stream")}, **kw)


def test_routes_and_predict_parity_with_the_cli(trained_run, copy_run, tiny_cache, serve_client, predict_cli):
    from chexnet.evaluate import evaluate_run

    run = copy_run(trained_run)
    evaluate_run(run, "best", "val", "none", batch_size=8, n_resamples=10)  # validation thresholds for the findings
    paths = good_images(tiny_cache, 6)
    expected = _predict_json(predict_cli, run, *paths)
    with serve_client(run, max_batch=4, max_wait_ms=5) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"
        info = client.get("/v1/model").json()
        assert info["labels"] == list(PATHOLOGIES) and info["engine"] == "torch" and info["heatmaps"]
        assert info["preprocessing"]["input_size"] == 32 and info["input"]["field"] == "file"
        assert "validation thresholds" in info["threshold_source"] and len(info["sha256"]) == 64
        for path in paths:
            got = _post(client, path.read_bytes(), path.name)
            assert got.status_code == 200, got.text
            body = got.json()
            want = expected[path.name]
            assert body["path"] == path.name and body["error"] is None
            worst = max(abs(body["probabilities"][n] - want["probabilities"][n]) for n in PATHOLOGIES)
            assert worst <= 1e-5, worst
            # the server's findings are its own probabilities at or above the thresholds it describes, exactly
            thresholds = info["thresholds"]
            assert body["findings"] == [n for n in PATHOLOGIES if body["probabilities"][n] >= thresholds[n]]
            # and the CLI's, except where a probability is within the engines' 1e-5 of its threshold (a threshold
            # is one of the validation images' own probabilities: p == t can fall either way across batch shapes)
            clear = [n for n in PATHOLOGIES if abs(want["probabilities"][n] - thresholds[n]) > 1e-5]
            assert [n for n in body["findings"] if n in clear] == [n for n in want["findings"] if n in clear]
            assert body["model"]["checkpoint"] == "best.pt" and body["model"]["labels"] == list(PATHOLOGIES)
            assert body["model"]["trained"].startswith("best.pt (epoch ")
            assert set(body["timing_ms"]) >= {"decode", "queue", "inference", "total", "batch_size"}
            assert got.headers["x-request-id"] == body["request_id"]
        page = client.get("/")
        assert page.status_code == 200 and "viewer.js" in page.text and "http" not in page.text.split("<body>")[1]
        assert client.get("/static/viewer.js").status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        shown = _post(client, paths[0].read_bytes(), paths[0].name, "/v1/image")
        assert shown.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(shown.content)).size == Image.open(paths[0]).size
        metrics = client.get("/metrics").text
        assert 'chexnet_requests_total{route="/v1/predict",status="200"} 6.0' in metrics
        assert "chexnet_batch_size_count" in metrics and "chexnet_queue_depth 0.0" in metrics
        assert "chexnet_request_latency_seconds_bucket" in metrics


def test_heatmap_route(trained_run, tiny_cache, serve_client):
    pytest.importorskip("captum", reason="heatmaps need chexnet[cam]")
    path = good_images(tiny_cache, 1)[0]
    with serve_client(trained_run) as client:
        got = _post(client, path.read_bytes(), path.name, "/v1/heatmap?finding=effusion")
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/png" and got.headers["x-finding"] == "Effusion"
        overlay = Image.open(io.BytesIO(got.content))
        assert overlay.size == Image.open(path).size and overlay.mode == "RGB"
        assert 0.0 <= float(got.headers["x-probability"]) <= 1.0
        for query, words in (("", "say which finding"), ("?finding=Dragons", "unknown finding 'Dragons'")):
            bad = _post(client, path.read_bytes(), path.name, "/v1/heatmap" + query)
            assert bad.status_code == 400 and words in bad.json()["error"], bad.text


def test_onnx_server_predicts_and_refuses_heatmaps(exported, trained_run, tiny_cache, serve_client, predict_cli):
    paths = good_images(tiny_cache, 3)
    expected = _predict_json(predict_cli, "--onnx", exported, *paths)
    with serve_client(exported) as client:
        described = client.get("/v1/model").json()
        assert described["engine"] == "onnxruntime" and described["checkpoint"] == exported.name
        # the run and checkpoint come from the export's metadata, not from the ONNX file's name
        assert described["run"] == trained_run.resolve().name and described["trained"].startswith("best.pt (epoch ")
        for path in paths:
            body = _post(client, path.read_bytes(), path.name).json()
            worst = max(abs(body["probabilities"][n] - expected[path.name]["probabilities"][n]) for n in PATHOLOGIES)
            assert worst <= 1e-5, worst
        refused = _post(client, paths[0].read_bytes(), paths[0].name, "/v1/heatmap?finding=Effusion")
        assert refused.status_code == 400 and refused.json()["kind"] == "heatmap_unavailable"
        assert "serve the run directory" in refused.json()["error"]


def test_bad_uploads_are_clear_4xx_and_the_server_stays_up(trained_run, tiny_cache, serve_client, tmp_path):
    good = good_images(tiny_cache, 1)[0].read_bytes()
    with serve_client(trained_run, max_upload_mb=0.25, max_pixels=50_000) as client:
        for name, (data, kind) in broken_files(tmp_path, good).items():
            got = _post(client, data, name)
            assert got.status_code == 422 and got.json()["kind"] == kind, (name, got.text)
            assert got.json()["error"]
        huge = _post(client, png_bytes(300), "huge.png")  # 90,000 pixels, over --max-pixels
        assert huge.status_code == 413 and huge.json()["kind"] == "too_many_pixels", huge.text
        big = _post(client, np.random.default_rng(0).bytes(300_000), "big.png")  # over --max-upload-mb
        assert big.status_code == 413 and "--max-upload-mb" in big.json()["error"], big.text
        wrong = _post(client, good, "x.png", field="image")
        assert wrong.status_code == 400 and "no 'file' field" in wrong.json()["error"] and "'image'" in wrong.json()["error"]
        empty = client.post("/v1/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
        assert empty.status_code == 400 and "empty request body" in empty.json()["error"]
        raw = client.post("/v1/predict", content=good, headers={"content-type": "image/png"})
        assert raw.status_code == 400 and "multipart/form-data" in raw.json()["error"]
        garbled = client.post("/v1/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=x"})
        assert garbled.status_code in (400,) and garbled.json()["kind"] == "bad_request", garbled.text
        assert _post(client, good).status_code == 200  # still serving
        metrics = client.get("/metrics").text
        for kind in ("not_an_image", "truncated", "no_pixel_data", "unsupported_encoding", "too_many_pixels",
                     "upload_too_large", "bad_request"):
            assert f'chexnet_request_errors_total{{kind="{kind}"}}' in metrics, kind
        assert not re.search(r'route="/v1/[a-z]+",status="5', metrics)  # (/readyz said 503 while loading)


def test_tokens(trained_run, tiny_cache, serve_client, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    good = good_images(tiny_cache, 1)[0].read_bytes()
    with serve_client(trained_run, token_file=str(token_file)) as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for route, call in (("/v1/model", lambda **kw: client.get("/v1/model", **kw)),
                            ("/v1/predict", lambda **kw: _post(client, good, **kw)),
                            ("/v1/heatmap", lambda **kw: _post(client, good, url="/v1/heatmap?finding=Mass", **kw)),
                            ("/v1/image", lambda **kw: _post(client, good, url="/v1/image", **kw))):
            missing = call()
            assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer"), route
            assert call(headers={"Authorization": "Basic abc"}).status_code == 401, route
            assert call(headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"}).status_code == 403, route
            assert call(headers={"Authorization": "Bearer " + TOKEN}).status_code == 200, route
    short = tmp_path / "short"
    short.write_text("abc\n")
    from chexnet.serve.config import ServeConfig

    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeConfig(str(trained_run), token_file=str(short)).check()


def test_dicom_identifiers_never_reach_answers_or_logs(trained_run, serve_client, tmp_path, caplog):
    data = dicom_bytes(tmp_path)
    caplog.set_level(logging.DEBUG)
    texts = []
    with serve_client(trained_run) as client:
        for url in ("/v1/predict", "/v1/image", "/v1/heatmap?finding=Mass", "/v1/model"):
            got = client.get(url) if url == "/v1/model" else _post(client, data, "study.dcm", url)
            assert got.status_code == 200, (url, got.text)
            texts.append(got.content.decode("latin-1") + json.dumps(dict(got.headers)))
        texts.append(client.get("/metrics").text)
    texts.append(caplog.text)
    assert "request id=" in caplog.text  # the access log is on, and says only id, size, status, latency
    everything = "\n".join(texts)
    for value in IDENTIFIERS.values():
        assert value not in everything and value.replace("^", " ") not in everything, value


def test_uploads_are_not_written_to_disk(trained_run, tiny_cache, serve_client, monkeypatch):
    """A 2 MB upload (python-multipart and Starlette spool parts over 1 MB to temporary files) stays in memory."""
    import tempfile

    import starlette.formparsers

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    side = 1448
    noisy = np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG", compress_level=0)
    assert buf.tell() > 2_000_000
    with serve_client(trained_run) as client:
        for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
            monkeypatch.setattr(tempfile, name, refuse)
        monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
        got = _post(client, buf.getvalue(), "big.png")
        assert got.status_code == 200, got.text


def test_batcher_groups_requests_and_isolates_a_failing_one():
    from concurrent.futures import ThreadPoolExecutor

    from chexnet.serve.batcher import Batcher

    sizes = []

    def infer(rows):
        if (rows == 255).all(axis=(1, 2)).any():
            raise RuntimeError("poisoned row")
        return rows.mean(axis=(1, 2))[:, None].repeat(2, axis=1)

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(infer, pool, max_batch=4, max_wait_ms=200, on_batch=lambda n, s: sizes.append(n))
            batcher.start()
            rows = [np.full((4, 4), v, np.uint8) for v in (1, 2, 3, 255, 5, 6)]
            results = await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
            await batcher.stop()
            return results

    results = asyncio.run(scenario())
    assert sizes == [4, 2]  # full batch at once, then the rest after max_wait
    assert isinstance(results[3], RuntimeError)
    for v, (probs, timing) in zip((1, 2, 3), results[:3]):
        assert probs[0] == v and timing.batch_size == 4
    assert [r[0][0] for r in results[4:]] == [5, 6]


def test_serve_cli_errors_name_the_problem(tmp_path, chexnet_main):
    def fails(*args):
        proc = chexnet_main("serve", *args, check=False)
        assert proc.returncode == 2
        return proc.stderr

    assert "not a run directory" in fails(tmp_path / "nope")
    assert "no such ONNX file" in fails(tmp_path / "nope.onnx")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert "--max-batch" in fails(tmp_path / "run", "--max-batch", "0")
    assert "--token-file" in fails(tmp_path / "run", "--token-file", tmp_path / "missing")
    assert "--threshold" in fails(tmp_path / "run", "--threshold", "often")


def test_a_model_that_fails_to_load_is_reported_not_served(tmp_path):
    from fastapi.testclient import TestClient

    from chexnet.serve.app import create_app
    from chexnet.serve.config import ServeConfig

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # passes the CLI's checks, has no best.pt
    with TestClient(create_app(ServeConfig(str(tmp_path / "run")).check())) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed" and ready.json()["error"]
        got = _post(client, png_bytes(8))
        assert got.status_code == 503 and got.json()["kind"] == "not_ready" and "not loaded" in got.json()["error"]


def test_without_the_serve_extra_the_error_names_the_pip_install(trained_run, tmp_path, chexnet_cli):
    import os

    fake = tmp_path / "no_fastapi" / "fastapi"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no fastapi here')\n")
    proc = chexnet_cli("serve", trained_run, check=False,
                       PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    assert proc.returncode == 2 and "pip install 'chexnet[serve]'" in proc.stderr, proc.stderr


def test_without_captum_heatmaps_are_a_clear_400(trained_run, tiny_cache, serve_client, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    path = good_images(tiny_cache, 1)[0]
    with serve_client(trained_run) as client:
        assert client.get("/v1/model").json()["heatmaps"] is False
        got = _post(client, path.read_bytes(), path.name, "/v1/heatmap?finding=Mass")
        assert got.status_code == 400 and "pip install 'chexnet[cam]'" in got.json()["error"], got.text
