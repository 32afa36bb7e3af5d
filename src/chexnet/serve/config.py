"""The server's settings (one dataclass), carried to uvicorn's worker processes in an environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from chexnet.data.imageio import DEFAULT_MAX_PIXELS

ENV = "CHEXNET_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    model: str  # a run directory, or an exported .onnx file
    checkpoint: str = "best"  # run directories only: best | last | PATH
    threshold: float | None = None  # None: the model's validation thresholds
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 10.0
    token_file: str | None = None
    max_upload_mb: float = 50.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int = 1
    trust_changed: bool = False  # run directories only: load a checkpoint whose SHA-256 run.json does not record
    raw: bool = False  # run directories only: the model's own probabilities, not the run's calibrator's
    operating_point: str | None = None  # a threshold rule evaluate stored (thresholds.json / the ONNX metadata)
    # slow and hostile clients (see chexnet.serve.protocol and the app's upload routes)
    header_timeout_s: float = 10.0  # request line + headers must arrive within this; else 408 and closed
    body_timeout_s: float = 60.0  # an upload's body must arrive within this once its headers have; else 408
    max_header_kb: int = 16  # request line + headers; 431 over it (h11_max_incomplete_event_size)
    max_uploads: int = 32  # uploads being read or decoded at once (each up to max_upload_mb); 503 over it
    max_queue: int = 128  # decoded images waiting for a forward pass; 503 over it
    max_connections: int = 512  # open connections (uvicorn's limit_concurrency); 503 over it

    @property
    def onnx(self) -> bool:
        return Path(self.model).suffix.lower() == ".onnx"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> "ServeConfig":
        """Errors a user can fix, raised before the server starts (naming the flag or file)."""
        path = Path(self.model)
        if self.onnx:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such ONNX file")
        elif not path.is_dir():
            raise FileNotFoundError(f"{path}: not a run directory (chexnet train --out) or an .onnx file")
        elif not (path / "checkpoints").is_dir():
            raise FileNotFoundError(f"{path}: no checkpoints/ folder; is it a run directory (chexnet train --out)?")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must not be negative, got {self.max_wait_ms}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        for flag, value in (("--header-timeout", self.header_timeout_s), ("--body-timeout", self.body_timeout_s)):
            if not value > 0:
                raise ValueError(f"{flag} must be positive seconds, got {value}")
        for flag, value, least in (("--max-header-kb", self.max_header_kb, 1), ("--max-uploads", self.max_uploads, 1),
                                   ("--max-queue", self.max_queue, 1), ("--max-connections", self.max_connections, 2)):
            if value < least:
                raise ValueError(f"{flag} must be at least {least}, got {value}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.token_file is not None:
            read_token(self.token_file)
        return self

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        text = os.environ.get(ENV)
        if not text:
            raise RuntimeError(f"{ENV} is not set: start the server with chexnet serve")
        return cls(**json.loads(text))


def read_token(path: str) -> bytes:
    """The bearer token: the file's first line, stripped. Empty or unreadable files are errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--token-file {path}: cannot read it ({exc.strerror or exc})") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ValueError(f"--token-file {path}: the token (first line) must be at least 16 characters; "
                         f"make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))' > {path}")
    return token.encode("utf-8")
