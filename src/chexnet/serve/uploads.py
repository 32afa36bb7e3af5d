"""One multipart upload, read into memory with a size limit. Nothing is written to disk.

Starlette's own form parser spools parts over 1 MB to temporary files; X-rays are larger than that, and
uploads must not touch the disk, so the body is streamed into memory here (stopping at the limit) and split
with python-multipart's streaming parser.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath


class UploadError(Exception):
    """A request whose upload cannot be used: ``status`` (400, 408 or 413), ``kind`` (for counters) and a message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass
class Upload:
    name: str  # the file's base name as the client gave it (used in messages and the answer's "path")
    data: bytes | bytearray


def _filename(raw: str | None) -> str:
    if not raw:
        return "upload"
    name = PureWindowsPath(PurePosixPath(raw).name).name  # base name only, whatever the client's OS
    return name[:200] or "upload"


def check_declared_size(request, limit: int) -> None:
    """413 from the Content-Length header alone, before a byte of the body is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, "upload_too_large", f"upload of {int(declared):,} bytes is over the limit of "
                                                   f"{limit:,} bytes (--max-upload-mb)")


async def read_upload(request, limit: int, field: str = "file", timeout: float | None = None) -> Upload:
    """The part named ``field`` of a ``multipart/form-data`` request, at most ``limit`` bytes of body in all,
    the whole body within ``timeout`` seconds (408 after it: a client sending a few bytes at a time)."""
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(400, "bad_request", f"expected a multipart/form-data upload with a '{field}' field "
                                              f"(e.g. curl -F {field}=@xray.png), got content type "
                                              f"{ctype.decode('latin-1') or 'none'}")
    check_declared_size(request, limit)
    try:
        return await asyncio.wait_for(_read_parts(request, limit, field, params[b"boundary"]), timeout)
    except asyncio.TimeoutError:
        raise UploadError(408, "body_timeout", f"the upload did not arrive within {timeout:g} s "
                                               f"(--body-timeout)") from None


async def _read_parts(request, limit: int, field: str, boundary: bytes) -> Upload:
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[dict] = []
    header = {"field": b"", "value": b""}

    def on_part_begin():
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data, start, end):
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data})
    size = 0
    try:
        async for chunk in request.stream():  # parsed as it arrives: the body is never held twice
            size += len(chunk)
            if size > limit:
                raise UploadError(413, "upload_too_large", f"upload is over the limit of {limit:,} bytes "
                                                           f"(--max-upload-mb)")
            if chunk:
                parser.write(chunk)
        if size:
            parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends
        raise UploadError(400, "bad_request", f"malformed multipart body ({type(exc).__name__}: {exc})") from None
    if not size:
        raise UploadError(400, "bad_request", f"empty request body: send the X-ray as the '{field}' field")
    names = []
    for part in parts:
        _, disp = parse_options_header(part["headers"].get("content-disposition"))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        names.append(name)
        if name == field:
            filename = disp.get(b"filename")
            return Upload(_filename(filename.decode("utf-8", "replace") if filename else None), part["data"])
    got = ", ".join(repr(n) for n in names) if names else "no fields"
    raise UploadError(400, "bad_request", f"no '{field}' field in the upload (got {got}); send the X-ray as "
                                          f"-F {field}=@xray.png")
