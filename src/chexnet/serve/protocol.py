"""uvicorn's h11 protocol with the guards a server facing slow or hostile clients needs, which uvicorn lacks.

``chexnet serve`` runs uvicorn with ``http="chexnet.serve.protocol:GuardedH11Protocol"`` (one per connection,
in every worker process; the settings come from the same environment variable as the app's):

- **Header deadline** (``--header-timeout``): the request line and headers must arrive within that many seconds
  of the connection opening, or of the first byte of a later request on a kept-alive connection. A connection
  that sends them a few bytes at a time is answered 408 and closed; one that sends nothing is closed. uvicorn
  itself times out only idle kept-alive connections (``timeout_keep_alive``), never a request being sent.
- **Header size** (``--max-header-kb``): a request line and headers over it are answered 431 before more is
  buffered. (uvicorn's ``h11_max_incomplete_event_size``, set to the same, bounds only headers still incomplete,
  and its answer is a 400.)
- **Connections** (``--max-connections``, uvicorn's ``limit_concurrency``): requests beyond it are answered
  503 with ``Retry-After`` (uvicorn's own 503 has none).
- **Unread bodies**: after an answer given without reading the whole body (413 from Content-Length, 408, 503,
  a route that takes no body), uvicorn would read and discard the rest for as long as the client sends it.
  Here the connection is half-closed after the answer, what the client still sends is dropped, and it is
  closed ``LINGER_S`` later (closing at once could reset the connection before the client reads the answer).

The body's own deadline (``--body-timeout``) is the app's (:func:`chexnet.serve.uploads.read_upload`), which
answers 408 in JSON.
"""

from __future__ import annotations

import functools
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from chexnet.serve.config import ServeConfig
from chexnet.serve.telemetry import CONNECTION_CUTS as CUTS  # /metrics: chexnet_connections_cut_total{reason}

LINGER_S = 2.0
RETRY_AFTER_S = 1


@functools.lru_cache(maxsize=1)
def _settings() -> ServeConfig:
    return ServeConfig.from_env()


def _raw_response(status: int, reason: str, body: dict) -> bytes:
    """An answer written past h11, which has no request to answer yet (its state stays IDLE)."""
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n").encode("latin-1") + data


async def _over_connection_limit(scope, receive, send) -> None:
    CUTS["over_connection_limit"] += 1
    body = json.dumps({"error": "the server has as many connections as it takes (--max-connections); retry "
                       "shortly", "kind": "busy", "request_id": None}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        cfg = _settings()
        self.header_timeout = cfg.header_timeout_s
        self.max_header_bytes = cfg.max_header_kb * 1024
        self.max_connections = self.limit_concurrency  # checked here, to answer with Retry-After
        self.limit_concurrency = None
        self.served_app = self.app
        self.header_timer = None
        self.linger_timer = None
        self.lingering = False

    # --- the header deadline
    def _arm_header_timer(self) -> None:
        if self.header_timer is None and not self.transport.is_closing():
            self.header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timed_out(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it ends
            CUTS["header_timeout"] += 1
            self.transport.write(_raw_response(408, "Request Timeout", {
                "error": f"the request line and headers did not arrive within {self.header_timeout:g} s "
                         f"(--header-timeout)", "kind": "header_timeout", "request_id": None}))
            self._linger()
        else:
            CUTS["idle"] += 1
            self.transport.close()

    def _linger(self) -> None:
        """Half-close after the answer, drop whatever the client still sends, close ``LINGER_S`` later (closing
        with unread bytes would reset the connection, and the client could lose the answer)."""
        self._unset_keepalive_if_required()
        self._cancel_header_timer()
        self.lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # answered already; the rest of the body goes nowhere
            return
        if self.conn.their_state is h11.IDLE and self._headers_too_large(data):
            return self._refuse_headers()
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.conn.their_state is h11.IDLE:  # a request begun, its headers incomplete
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    # --- connections over the limit: 503 with Retry-After
    def handle_events(self) -> None:
        if self.max_connections is not None:
            busy = len(self.connections) >= self.max_connections or len(self.tasks) >= self.max_connections
            self.app = _over_connection_limit if busy else self.served_app
        super().handle_events()

    # --- headers over --max-header-kb: 431, before more is buffered. h11's own limit (uvicorn's
    # h11_max_incomplete_event_size, set to the same) bounds only headers still incomplete: headers over it that
    # arrive in one read would pass.
    def _headers_too_large(self, data: bytes) -> bool:
        head = self.conn.trailing_data[0] + data[: self.max_header_bytes + 4]
        end = head.find(b"\r\n\r\n", 0, self.max_header_bytes + 4)
        return end == -1 and len(head) > self.max_header_bytes

    def _refuse_headers(self) -> None:
        CUTS["headers_too_large"] += 1
        self.transport.write(_raw_response(431, "Request Header Fields Too Large", {
            "error": f"request line and headers over {self.max_header_bytes // 1024} KiB (--max-header-kb)",
            "kind": "headers_too_large", "request_id": None}))
        self._linger()

    # --- an answer given before the whole body was read: half-close, drop the rest, close soon after
    def on_response_complete(self) -> None:
        unread = self.conn.their_state is h11.SEND_BODY
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            CUTS["unread_body"] += 1
            self._linger()
