"""Helpers for the serve tests: uploads (good and broken, as bytes) and a real ``chexnet serve`` process."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import free_port, subprocess_env
from tests.dicom_files import IDENTIFIERS, write_dicom  # noqa: F401  (the serve tests import it here)

TOKEN = "s3cret-token-for-tests-0123456789"


def good_images(tiny_cache: Path, n: int = 6) -> list[Path]:
    from chexnet.data.sources.nih import find_images

    found = find_images(tiny_cache.parent / "data")
    return [found[k] for k in sorted(found)[:n]]


def dicom_bytes(tmp: Path, **attrs) -> bytes:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:96, 0:80]
    body = (1500 + 1500 * np.exp(-((x - 40) ** 2 + (y - 48) ** 2) / 900.0) + rng.normal(0, 40, (96, 80))).clip(0, 4095)
    return write_dicom(tmp / "id.dcm", body.astype(np.uint16), "MONOCHROME2", 12, **{**IDENTIFIERS, **attrs}).read_bytes()


def broken_files(tmp: Path, good: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the error kind the server must answer with)."""
    import pydicom
    from pydicom.encaps import encapsulate

    tmp.mkdir(parents=True, exist_ok=True)
    path = write_dicom(tmp / "p.dcm", np.full((32, 32), 900, np.uint16), **IDENTIFIERS)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    nopix = buf.getvalue()
    jls = pydicom.dcmread(path)
    jls.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no decoder exists
    jls.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    jls["PixelData"].VR = "OB"
    jls.save_as(tmp / "jls.dcm", enforce_file_format=True)
    return {"notes.png": (b"this is a text file, not an image\n", "not_an_image"),
            "truncated.png": (good[: len(good) // 2], "truncated"),
            "nopixels.dcm": (nopix, "no_pixel_data"),
            "jpegls.dcm": ((tmp / "jls.dcm").read_bytes(), "unsupported_encoding"),
            "empty.png": (b"", "not_an_image")}


def png_bytes(side: int, value: int = 0) -> bytes:
    """A flat ``side`` x ``side`` gray PNG (the synthetic set's encoder)."""
    from chexnet.data.synthetic import png_bytes as encode

    return encode(np.full((side, side), value, np.uint8))


class LiveServer:
    """``python -m chexnet serve MODEL ARGS`` on a free 127.0.0.1 port; ``stop()`` sends SIGTERM."""

    def __init__(self, model: Path, *args, log: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "chexnet", "serve", str(model), "--port", str(self.port),
                                      *map(str, args)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=subprocess_env(**env), start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> "LiveServer":
        from chexnet.serve.loadgen import wait_ready

        try:
            wait_ready(self.url, self.proc, timeout)
        except RuntimeError as exc:
            raise AssertionError(f"chexnet serve: {exc}:\n{self.text()}") from None
        return self

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
