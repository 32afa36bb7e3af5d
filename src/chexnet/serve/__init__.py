"""``chexnet serve``: an HTTP inference service (FastAPI on uvicorn) for a trained run or an ONNX export.

See :mod:`chexnet.serve.app` for the routes. This module starts uvicorn: the settings travel to the app (and to
each of ``--workers`` processes) in an environment variable, and SIGTERM or Ctrl-C finish the requests in
flight, then exit with status 0.
"""

from __future__ import annotations

import os
import signal
import sys

from chexnet.serve.config import ENV, ServeConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
KEEP_ALIVE_S = 5  # an idle kept-alive connection closes after it (uvicorn's timeout_keep_alive)


def serve(cfg: ServeConfig) -> int:
    from chexnet.environment import require

    for module in ("fastapi", "python_multipart", "prometheus_client"):  # the app's imports, checked before it starts
        require(module, "serve", "chexnet serve")
    uvicorn = require("uvicorn", "serve", "chexnet serve")
    cfg.check()
    os.environ[ENV] = cfg.to_env()
    from chexnet.serve.protocol import GuardedH11Protocol  # passed as a class: uvicorn takes one in every version

    if cfg.host not in LOCAL_HOSTS:
        print(f"chexnet serve: listening on {cfg.host}, beyond this machine. Put a TLS reverse proxy in front "
              f"(uploads are medical images){'' if cfg.token_file else ' and use --token-file'}.", file=sys.stderr)
    print(f"chexnet serve: http://{cfg.host}:{cfg.port}/ (viewer), /v1/predict, /metrics; Ctrl-C or SIGTERM stops "
          f"after the requests in flight", file=sys.stderr)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; a handler that does
    # nothing turns that into a normal return, so a SIGTERM stop exits 0 as supervisors expect.
    previous = {s: signal.signal(s, lambda sig, frame: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # h11 with chexnet's guards (header deadline, 431, 503 + Retry-After, unread bodies: see protocol.py)
        uvicorn.run("chexnet.serve.app:app_from_env", factory=True, host=cfg.host, port=cfg.port,
                    workers=cfg.workers if cfg.workers > 1 else None, access_log=False, log_level="info",
                    timeout_graceful_shutdown=60, server_header=False,
                    http=GuardedH11Protocol, timeout_keep_alive=KEEP_ALIVE_S,
                    h11_max_incomplete_event_size=cfg.max_header_kb * 1024, limit_concurrency=cfg.max_connections)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
