"""``chexnet serve``'s application: FastAPI routes over one model, dynamic batching and Prometheus metrics.

Routes: ``POST /v1/predict`` (one multipart ``file``: the object ``chexnet predict --format json`` prints, with
the model's identity, timing and request id), ``POST /v1/heatmap?finding=NAME`` (Grad-CAM overlay, PNG),
``POST /v1/image`` (the decoded X-ray as PNG, for the viewer: browsers cannot show DICOM), ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and the viewer at ``/``.

The model loads during start-up, before the process accepts connections; if it fails to load, the server stays
up and ``/readyz`` and every ``/v1`` route answer 503 with the reason. Everything that touches the network
runs on one model thread; decoding runs in worker threads; the event loop only moves bytes.

Memory stays bounded under any load: at most ``max_uploads`` uploads are read or decoded at once and at most
``max_queue`` decoded images wait for a forward pass; beyond either, 503 with ``Retry-After`` at once. A body
over ``max_upload_mb`` is refused from its Content-Length before it is read (or where it crosses the limit),
and one that does not arrive within ``body_timeout_s`` is answered 408. Headers (their size and deadline) and
connections are guarded below the app, in :mod:`chexnet.serve.protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from chexnet.data.imageio import ImageReadError
from chexnet.serve.batcher import Batcher, QueueFull
from chexnet.serve.config import ServeConfig, read_token
from chexnet.serve.telemetry import AccessLog, Metrics, log
from chexnet.serve.uploads import UploadError, check_declared_size, read_upload

IMAGE_STATUS = {"too_many_pixels": 413}  # every other unreadable upload is 422
RETRY = {"Retry-After": "1"}  # on the 503s of a full server (uploads, queue)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                               "object-src 'none'; frame-ancestors 'none'"}


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


class State:
    """What the routes share: the settings, the model once loaded, the batcher, the metrics."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.token = read_token(cfg.token_file) if cfg.token_file else None
        self.model = None
        self.load_error: str | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="chexnet-model")
        self.batcher: Batcher | None = None
        self.uploads = 0  # being read or decoded now (at most cfg.max_uploads)
        self.metrics = Metrics(lambda: self.batcher.depth() if self.batcher else 0, lambda: self.uploads)

    @contextmanager
    def upload_slot(self):
        """One of ``max_uploads``, held while an upload is read and decoded: 503 with Retry-After when all are
        taken (by slow clients, say), so that uploads in memory stay bounded and a full server answers at once."""
        if self.uploads >= self.cfg.max_uploads:
            raise ApiError(503, "busy", f"{self.uploads} uploads are being read already (--max-uploads); retry "
                                        f"shortly", RETRY)
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    def ready_model(self):
        if self.model is None:
            raise ApiError(503, "not_ready", f"model not loaded: {self.load_error}" if self.load_error
                           else "model still loading; retry shortly (GET /readyz says when)",
                           {"Retry-After": "2"} if not self.load_error else None)
        return self.model


def _load(state: State) -> None:
    from chexnet.serve.model import ServedModel

    try:
        state.model = ServedModel(state.cfg)
        log.info("model ready: %s %s (%s)", state.model.identity["run"], state.model.identity["checkpoint"],
                 state.model.engine)
    except Exception as exc:  # shown by /readyz and every /v1 route; the server stays up to say so
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load: %s", state.load_error)


def create_app(cfg: ServeConfig) -> FastAPI:
    state = State(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        state.batcher = Batcher(lambda rows: state.model.probabilities(rows), state.model_thread, cfg.max_batch,
                                cfg.max_wait_ms, state.metrics.on_batch, cfg.max_queue)
        state.batcher.start()
        # loaded before this process accepts a connection: with --workers N no worker takes requests it cannot
        # answer yet (the socket is shared); a model that fails to load leaves the server up to say why
        await loop.run_in_executor(state.model_thread, _load, state)
        yield
        await state.batcher.stop()
        state.model_thread.shutdown(wait=True)

    app = FastAPI(title="chexnet", summary="CheXNet chest X-ray classifier", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.chexnet = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        state.metrics.errors.labels(exc.kind).inc()
        body = {"error": exc.message, "kind": exc.kind, "request_id": request.scope.get("state", {}).get("request_id")}
        return JSONResponse(body, exc.status, headers=exc.headers)

    def authorize(request: Request) -> None:
        if state.token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "this server needs 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": 'Bearer realm="chexnet"'})
        if not hmac.compare_digest(given.strip().encode("utf-8"), state.token):
            raise ApiError(403, "forbidden", "wrong token")

    def refuse_early(request: Request, queue: bool = True) -> None:
        """What can be refused before a byte of the body is read: too large by Content-Length, a full queue."""
        try:
            check_declared_size(request, cfg.max_upload_bytes)
        except UploadError as exc:
            raise ApiError(exc.status, exc.kind, exc.message) from None
        if queue and state.batcher.full():
            raise ApiError(503, "queue_full", f"{state.batcher.depth()} images wait for a forward pass already "
                                              f"(--max-queue); retry shortly", RETRY)

    async def submit(row):
        try:
            return await state.batcher.submit(row)
        except QueueFull as exc:
            raise ApiError(503, "queue_full", f"{exc}; retry shortly", RETRY) from None

    async def upload_and_decode(request: Request, keep_original: bool = False, row: bool = True):
        """Read and decode the upload; the caller holds an upload slot."""
        model = state.ready_model()
        try:
            upload = await read_upload(request, cfg.max_upload_bytes, timeout=cfg.body_timeout_s)
        except UploadError as exc:
            raise ApiError(exc.status, exc.kind, exc.message) from None
        started = time.perf_counter()
        try:
            row, original = await asyncio.to_thread(model.decode, upload.data, upload.name, keep_original, row)
        except ImageReadError as exc:
            raise ApiError(IMAGE_STATUS.get(exc.kind, 422), exc.kind, exc.reason) from None
        except Exception as exc:  # a decoder bug: this request fails, the server does not
            raise ApiError(422, "invalid", f"cannot decode {upload.name}: {type(exc).__name__}: {exc}") from None
        return model, upload, row, original, (time.perf_counter() - started) * 1000

    def finding_of(model, finding: str | None) -> str:
        if not model.heatmaps:
            raise ApiError(400, "heatmap_unavailable", "heatmaps need the 'captum' package: pip install 'chexnet[cam]'"
                           if model.engine == "torch" else "heatmaps need the torch model: this server runs an ONNX "
                                                           "export; serve the run directory instead")
        if not finding:
            raise ApiError(400, "bad_request", f"say which finding: ?finding=NAME, one of {', '.join(model.labels)}")
        match = {n.lower(): n for n in model.labels}.get(finding.lower())
        if match is None:
            raise ApiError(400, "bad_request", f"unknown finding {finding!r}; one of {', '.join(model.labels)}")
        return match

    v1 = [Depends(authorize)]

    @app.post("/v1/predict", dependencies=v1, summary="14 probabilities and the findings above threshold")
    async def predict(request: Request):
        t0 = time.perf_counter()
        state.ready_model()
        refuse_early(request)
        with state.upload_slot():
            model, upload, row, _, decode_ms = await upload_and_decode(request)
        probs, timing = await submit(row)
        return {**model.result(upload.name, probs),
                "model": model.identity,
                "timing_ms": {"decode": round(decode_ms, 2), "queue": round(timing.queue_ms, 2),
                              "inference": round(timing.inference_ms, 2), "batch_size": timing.batch_size,
                              "total": round((time.perf_counter() - t0) * 1000, 2)},
                "request_id": request.scope["state"]["request_id"]}

    @app.post("/v1/heatmap", dependencies=v1, summary="Grad-CAM overlay of one finding (PNG)",
              response_class=Response)
    async def heatmap(request: Request, finding: str | None = None):
        from chexnet.serve.model import png_bytes

        name = finding_of(state.ready_model(), finding)
        refuse_early(request)
        with state.upload_slot():  # held to the end: the decoded original stays in memory until the overlay is drawn
            model, _, row, original, _ = await upload_and_decode(request, keep_original=True)
            probs, _ = await submit(row)  # the probabilities /v1/predict gives, for the caption
            image = await asyncio.get_running_loop().run_in_executor(state.model_thread, model.heatmap, row,
                                                                     original, name, probs)
            png = await asyncio.to_thread(png_bytes, image)
        prob = float(probs[model.labels.index(name)])
        return Response(png, media_type="image/png", headers={"X-Finding": name, "X-Probability": f"{prob:.6f}"})

    @app.post("/v1/image", dependencies=v1, summary="the decoded X-ray as PNG (the viewer shows DICOM with it)",
              response_class=Response)
    async def image(request: Request):
        from chexnet.serve.model import gray_png

        state.ready_model()
        refuse_early(request, queue=False)
        with state.upload_slot():
            _, _, _, original, _ = await upload_and_decode(request, keep_original=True, row=False)
            png = await asyncio.to_thread(gray_png, original)
        return Response(png, media_type="image/png")

    @app.get("/v1/model", dependencies=v1, summary="labels, thresholds and the input contract")
    async def model_info():
        model = state.ready_model()
        return {**model.describe(),
                "input": {"field": "file", "formats": ["PNG", "JPEG", "TIFF", "DICOM"],
                          "max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                          "body_timeout_s": cfg.body_timeout_s, "max_uploads": cfg.max_uploads},
                "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue}}

    @app.get("/healthz", summary="liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: 200 once the model is loaded")
    async def readyz():
        if state.model is not None:
            return {"status": "ready", **{k: state.model.identity[k] for k in ("run", "checkpoint", "engine")}}
        return JSONResponse({"status": "failed" if state.load_error else "loading", "error": state.load_error}, 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    static = resources.files("chexnet.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def viewer():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    app.add_middleware(AccessLog, metrics=state.metrics, headers=SECURITY_HEADERS)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (``chexnet.serve.app:app_from_env``): the settings come from chexnet serve."""
    import os

    cfg = ServeConfig.from_env()
    if cfg.workers > 1 and not cfg.onnx:  # share the cores between the worker processes (an ONNX server has no torch)
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    _configure_logging()
    return create_app(cfg)


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s chexnet.serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
