"""chexnet serve under slow and hostile clients: a real server on 127.0.0.1 and raw sockets that send headers or a
body a byte at a time, send nothing, or send too much. Good requests are answered while they hold connections,
and the guards cut them off; oversized headers and bodies are refused before they are read; a full server says
503 with Retry-After. Every wait is bounded; the slow sockets stop by themselves."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import threading
import time

import httpx
import pytest

from tests.integration.serving import LiveServer, good_images

pytest.importorskip("fastapi", reason="chexnet serve needs chexnet[serve]")
pytest.importorskip("uvicorn", reason="chexnet serve needs chexnet[serve]")

TIMEOUT_S = 8  # --header-timeout and --body-timeout: generous beside the 10 good requests made meanwhile
MAX_UPLOADS = 12
MAX_CONNECTIONS = 48


@pytest.fixture(scope="module")
def guarded(trained_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("slow_clients") / "serve.log"
    with LiveServer(trained_run, "--header-timeout", TIMEOUT_S, "--body-timeout", TIMEOUT_S, "--max-uploads",
                    MAX_UPLOADS, "--max-connections", MAX_CONNECTIONS, "--max-wait-ms", 2, log=log) as server:
        server.wait_ready()
        yield server


class Slow:
    """One raw connection: ``header`` dribbles a request's headers, ``body`` sends its headers at once and then
    dribbles the body, ``idle`` sends nothing. Stops sending once the server answers."""

    def __init__(self, port: int, kind: str):
        self.kind, self.got, self.reset, self.closed_at, self.last_sent = kind, b"", False, None, 0.0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.opened_at = time.monotonic()
        self.pending = b""
        if kind == "header":
            self.pending = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 10_000
        elif kind == "body":
            self.sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                              b"boundary=xyz\r\nContent-Length: 100000\r\n\r\n")
            self.pending = b"--xyz\r\n" + b"a" * 99_990
        self.sock.setblocking(False)

    def close(self, reset: bool = False) -> None:
        self.reset = self.reset or reset
        self.closed_at = time.monotonic()
        self.sock.close()

    def status(self) -> int | None:
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", self.got)
        return int(m.group(1)) if m else None

    def body(self) -> dict:
        return json.loads(self.got.split(b"\r\n\r\n", 1)[1])


def dribble(conns: list[Slow], stop: threading.Event, period: float = 0.2) -> None:
    """A byte from each connection every ``period`` s until the server answers or closes it."""
    while not stop.is_set():
        live = [c for c in list(conns) if c.closed_at is None]
        if not live:
            stop.wait(period)
            continue
        readable, _, _ = select.select([c.sock for c in live], [], [], period)
        now = time.monotonic()
        for c in live:
            if c.sock in readable:
                try:
                    data = c.sock.recv(65536)
                except ConnectionResetError:
                    c.close(reset=True)
                    continue
                if data:
                    c.got += data
                else:
                    c.close()
            elif c.pending and not c.got and now - c.last_sent >= period:
                try:
                    c.sock.send(c.pending[:1])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    c.close(reset=True)
                    continue
                c.pending, c.last_sent = c.pending[1:], now


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_metric(url: str, name: str, value: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (got := metric(url, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {got}, not {value}, after {timeout} s"
        time.sleep(0.1)


def test_good_requests_are_answered_while_slow_clients_hold_connections(guarded, tiny_cache):
    url, port = guarded.url, guarded.port
    image = good_images(tiny_cache, 1)[0]
    files = {"file": (image.name, image.read_bytes())}
    conns = [Slow(port, kind) for kind in ["header"] * 10 + ["body"] * 10 + ["idle"] * 10]
    stop = threading.Event()
    thread = threading.Thread(target=dribble, args=(conns, stop), daemon=True)
    thread.start()
    try:
        wait_metric(url, "chexnet_uploads_in_flight", 10)  # the body dribblers are being read, slowly
        with httpx.Client(timeout=30) as http:
            for _ in range(10):
                r = http.post(url + "/v1/predict", files=files)
                assert r.status_code == 200, r.text
            # answered while all 30 slow connections were held (the guards fire TIMEOUT_S after they began)
            assert [c.kind for c in conns if c.closed_at is not None] == [], guarded.text()[-2000:]
            assert metric(url, "chexnet_uploads_in_flight") == 10

            # two more slow uploads take every upload slot: a good request is refused at once, with Retry-After
            conns += [Slow(port, "body") for _ in range(MAX_UPLOADS - 10)]
            wait_metric(url, "chexnet_uploads_in_flight", MAX_UPLOADS)
            r = http.post(url + "/v1/predict", files=files)
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["kind"] == "busy", r.text
            assert http.get(url + "/healthz").status_code == 200  # what needs no upload slot is still served

            deadline = time.monotonic() + 4 * TIMEOUT_S + 20  # every slow connection is cut, in bounded time
            while any(c.closed_at is None for c in conns):
                assert time.monotonic() < deadline, [(c.kind, c.got[:40]) for c in conns if c.closed_at is None]
                time.sleep(0.2)
            r = http.post(url + "/v1/predict", files=files)
            assert r.status_code == 200, r.text
    finally:
        stop.set()
        thread.join(10)
        for c in conns:
            if c.closed_at is None:
                c.close()
    for c in conns:  # not cut early: each lived at least (about) its deadline
        assert c.closed_at - c.opened_at > TIMEOUT_S - 1, (c.kind, c.closed_at - c.opened_at)
    headers = [c for c in conns if c.kind == "header"]
    bodies = [c for c in conns if c.kind == "body"]
    idle = [c for c in conns if c.kind == "idle"]
    # a dribbler whose last byte crossed the server's close may see a reset instead of the answer
    assert all(c.status() == 408 or c.reset for c in headers) and any(c.status() == 408 for c in headers)
    assert all(c.body()["kind"] == "header_timeout" for c in headers if c.status() == 408)
    assert all(c.status() == 408 or c.reset for c in bodies) and any(c.status() == 408 for c in bodies)
    assert all(c.body()["kind"] == "body_timeout" for c in bodies if c.status() == 408)
    assert all(c.got == b"" and not c.reset for c in idle)  # nothing asked, nothing said: closed
    assert metric(url, "chexnet_uploads_in_flight") == 0
    assert metric(url, 'chexnet_connections_cut_total{reason="idle"}') >= 10
    assert metric(url, 'chexnet_connections_cut_total{reason="header_timeout"}') >= 1
    assert metric(url, 'chexnet_connections_cut_total{reason="unread_body"}') >= 1


def _exchange(port: int, data: bytes, timeout: float = 15) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; (what came back, seconds until the first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        got, first = b"", None
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            first = first or time.monotonic() - t0
            got += chunk
    return got, first


def test_oversized_headers_and_bodies_are_refused_before_they_are_read(guarded):
    got, _ = _exchange(guarded.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000
                       + b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["kind"] == "headers_too_large"
    # a 10 GB upload by Content-Length: answered 413 without a byte of body sent, then the connection closes
    got, _ = _exchange(guarded.port, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"multipart/form-data; boundary=xyz\r\nContent-Length: 10000000000\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 413 "), got[:200]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["kind"] == "upload_too_large"
    assert httpx.get(guarded.url + "/healthz", timeout=10).status_code == 200


def test_connections_over_the_limit_get_503_with_retry_after(guarded):
    held = [socket.create_connection(("127.0.0.1", guarded.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # the server has accepted them
        r = httpx.get(guarded.url + "/healthz", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["kind"] == "busy", r.text
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while httpx.get(guarded.url + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(guarded.url, 'chexnet_connections_cut_total{reason="over_connection_limit"}') >= 1


# ---- in this process: the pieces that need no server

def test_a_body_that_does_not_arrive_in_time_is_408():
    from chexnet.serve.uploads import UploadError, read_upload

    class Dribbling:
        headers = {"content-type": "multipart/form-data; boundary=xyz", "content-length": "1000"}

        async def stream(self):
            yield b"--xyz\r\n"
            await asyncio.sleep(30)
            yield b"never"

    with pytest.raises(UploadError) as err:
        asyncio.run(read_upload(Dribbling(), 10_000, timeout=0.2))
    assert err.value.status == 408 and err.value.kind == "body_timeout" and "--body-timeout" in err.value.message


def test_a_full_queue_refuses_with_queue_full():
    from chexnet.serve.batcher import Batcher, QueueFull

    async def go():
        b = Batcher(lambda rows: rows, None, max_batch=4, max_queue=2)  # not started: nothing leaves the queue
        waiting = [asyncio.ensure_future(b.submit(i)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(2)
        await b.stop()
        return await asyncio.gather(*waiting, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))


def test_a_full_queue_answers_503_with_retry_after(trained_run, tiny_cache, monkeypatch):
    from fastapi.testclient import TestClient

    from chexnet.serve.app import create_app
    from chexnet.serve.batcher import Batcher
    from chexnet.serve.config import ServeConfig

    image = good_images(tiny_cache, 1)[0]
    with TestClient(create_app(ServeConfig(str(trained_run), max_queue=4).check())) as client:
        info = client.get("/v1/model").json()
        assert info["batching"]["max_queue"] == 4 and info["input"]["max_uploads"] == 32
        monkeypatch.setattr(Batcher, "full", lambda self: True)
        r = client.post("/v1/predict", files={"file": (image.name, image.read_bytes())})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["kind"] == "queue_full", r.text
        monkeypatch.undo()
        assert client.post("/v1/predict", files={"file": (image.name, image.read_bytes())}).status_code == 200


@pytest.mark.parametrize("flag, field, value", [("--header-timeout", "header_timeout_s", 0),
                                                ("--body-timeout", "body_timeout_s", -1),
                                                ("--max-uploads", "max_uploads", 0),
                                                ("--max-queue", "max_queue", 0),
                                                ("--max-header-kb", "max_header_kb", 0),
                                                ("--max-connections", "max_connections", 1)])
def test_limit_flags_are_checked(trained_run, flag, field, value):
    from chexnet.serve.config import ServeConfig

    with pytest.raises(ValueError, match=re.escape(flag)):
        ServeConfig(str(trained_run), **{field: value}).check()
