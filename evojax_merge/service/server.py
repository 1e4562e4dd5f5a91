"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread (tests).

``ServerThread`` binds its socket itself before uvicorn starts, so a free port (``port=0``) is
known at once and cannot be taken by someone else in between.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

# uvicorn's own access log would repeat ours; ours omits the query string and never sees a body.
_UVICORN = {"access_log": False, "log_level": "warning", "timeout_graceful_shutdown": 5}


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8010) -> None:
    """Serve ``app`` until interrupted."""
    uvicorn.run(app, host=host, port=port, **_UVICORN)


class ServerThread:
    """A real uvicorn server on ``host`` in a daemon thread; a context manager.

        with ServerThread(app) as server:
            httpx.get(server.url + "/v1/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **_UVICORN))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self.start_timeout = start_timeout

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit, wait for the thread, close the socket."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.url} did not stop within {timeout}s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
