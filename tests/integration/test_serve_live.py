"""A real ``chexnet serve`` process on 127.0.0.1: a bounded load test with a third of the files bad, and a
graceful SIGTERM."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from chexnet.labels import PATHOLOGIES
from tests.integration.serving import LiveServer, broken_files, good_images

pytest.importorskip("fastapi", reason="chexnet serve needs chexnet[serve]")
pytest.importorskip("uvicorn", reason="chexnet serve needs chexnet[serve]")


def test_load_mixed_good_and_bad_files(trained_run, tiny_cache, tmp_path):
    """20 concurrent clients, 400 uploads, a third of them broken: no 5xx, every good answer right, batching seen,
    server memory stable. Bounded: 400 requests or 180 s, whichever first."""
    from chexnet.predict import TorchPredictor, predict_files
    from chexnet.serve.loadgen import Sample, mean_batch_size, run_load

    paths = good_images(tiny_cache, 8)
    expected = {r.path.rsplit("/", 1)[-1]: r.probabilities
                for r in predict_files(TorchPredictor(trained_run), paths, batch_size=1, progress=False)}
    good = [Sample(p.name, p.read_bytes()) for p in paths]
    bad = [Sample(name, data) for name, (data, _) in broken_files(tmp_path / "bad", good[0].data).items()]
    bad.append(Sample("wrong_field.png", good[0].data, field="image"))
    samples = []  # two good, one bad, repeating: a third of the requests are bad
    for i in range(max(len(good), len(bad))):
        samples += [good[i % len(good)], good[(i + 3) % len(good)], bad[i % len(bad)]]
    with LiveServer(trained_run, "--max-batch", "16", "--max-wait-ms", "20", log=tmp_path / "serve.log") as server:
        server.wait_ready()
        warm = run_load(server.url, samples, requests=100, concurrency=20, timeout_s=120)
        rss_warm = server.rss_mib()
        report = run_load(server.url, samples, requests=400, concurrency=20, timeout_s=180)
        rss_end = server.rss_mib()
        metrics = httpx.get(server.url + "/metrics").text
        log = server.text()
    assert not warm.transport_errors and not report.transport_errors, report.transport_errors[:3]
    assert len(report.answers) == 400
    assert not [a for a in report.answers + warm.answers if a.status >= 500], log[-3000:]
    for a in report.answers:
        s = samples[a.sample]
        if s in good:
            assert a.status == 200, (s.name, a.body)
            worst = max(abs(a.body["probabilities"][n] - expected[s.name][n]) for n in PATHOLOGIES)
            assert worst <= 1e-5, (s.name, worst)
        else:
            assert 400 <= a.status < 500 and a.body["error"], (s.name, a.status, a.body)
    n_bad = sum(samples[a.sample] not in good for a in report.answers)
    assert 120 <= n_bad <= 140
    assert mean_batch_size(metrics) > 1.0, metrics
    assert rss_end - rss_warm < 60, (rss_warm, rss_end)
    summary = report.summary()
    print(f"load: {summary}, mean batch {mean_batch_size(metrics):.2f}, RSS {rss_warm:.0f} -> {rss_end:.0f} MiB")


def test_sigterm_finishes_the_request_in_flight_then_exits_0(trained_run, tiny_cache, tmp_path):
    path = good_images(tiny_cache, 1)[0]
    server = LiveServer(trained_run, "--max-wait-ms", "3000", "--max-batch", "8", log=tmp_path / "serve.log")
    try:
        server.wait_ready()
        answer = {}

        def ask():
            r = httpx.post(server.url + "/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
            answer["status"], answer["body"] = r.status_code, r.json()

        t = threading.Thread(target=ask)
        t.start()
        deadline = time.monotonic() + 30
        while "chexnet_queue_depth 1.0" not in httpx.get(server.url + "/metrics").text:  # it waits for a batch
            assert time.monotonic() < deadline and t.is_alive(), server.text()
            time.sleep(0.05)
        started = time.monotonic()
        rc = server.stop()
        t.join(30)
    finally:
        server.stop()
    assert answer.get("status") == 200 and len(answer["body"]["probabilities"]) == 14, (answer, server.text())
    assert rc == 0, server.text()
    assert time.monotonic() - started < 30
    assert "Shutting down" in server.text() or "Finished server process" in server.text()


def test_two_worker_processes_answer_and_stop_cleanly(trained_run, tiny_cache, tmp_path):
    path = good_images(tiny_cache, 1)[0]
    with LiveServer(trained_run, "--workers", "2", log=tmp_path / "serve.log") as server:
        server.wait_ready()
        answers = [httpx.post(server.url + "/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
                   for _ in range(6)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert len({json.dumps(a.json()["probabilities"], sort_keys=True) for a in answers}) == 1
        rc = server.stop()
    assert rc == 0, server.text()
    assert server.text().count("Finished server process") == 2, server.text()
