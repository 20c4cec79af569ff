"""Running the app under uvicorn: in the foreground (``twinloop serve``) or in a thread.

The thread form serves tests and benchmarks: a real server on a real loopback socket,
driven by real clients.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from twinloop.kernel.errors import TwinLoopError

log = logging.getLogger("twinloop.api")


def serve(config_path: Path | None, data_dir: Path | None, host: str | None = None, port: int | None = None) -> None:
    """Load settings, build Runtime → Service → app, and serve until SIGINT/SIGTERM.

    Raises:
        ConfigError: Bad settings, or a non-loopback ``host`` without API keys (checked
            before any model loads).
    """
    import uvicorn

    from twinloop.api.app import create_app
    from twinloop.api.auth import check_bind
    from twinloop.api.logs import configure_json_logging
    from twinloop.kernel.config import load_settings
    from twinloop.runtime import Runtime
    from twinloop.serving.service import Service

    api_overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = load_settings(config_path, data_dir=data_dir, api=api_overrides or None)
    check_bind(settings.api)  # before loading models: a refused bind must fail in milliseconds
    configure_json_logging()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars on stderr would break the JSON-lines log
    service = Service(Runtime(settings))
    app = create_app(service, settings)
    log.info("listening", extra={"host": settings.api.host, "port": settings.api.port})
    # log_config=None keeps our JSON handler; uvicorn's access log is off (ours has route
    # templates and request ids, and no query strings).
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_config=None, access_log=False,
                proxy_headers=False, server_header=False)


class ServerThread:
    """A uvicorn server for ``app`` on a loopback port, in a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``. Port 0 picks a free one.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, lifespan: str = "on",
                 start_timeout_s: float = 60.0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan, server_header=False)
        self.server = uvicorn.Server(config)
        self.start_timeout_s = start_timeout_s
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TwinLoopError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
