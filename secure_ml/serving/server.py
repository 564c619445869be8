"""Run a ``Service`` on uvicorn: in the foreground (``secure-ml serve``) or on a background thread (tests, benchmark).

The listening socket is bound here, before uvicorn starts, so a busy port is one clear error and port 0
gives a free port whose number is known. The HTTP parser is pinned to h11: its framing rules are the
ones the body-limit layer documents (Transfer-Encoding wins over Content-Length). ``server.limit_concurrency``
(128 by default, never unbounded) caps open connections plus running tasks: beyond it uvicorn answers
503 itself.
"""

import socket
import threading
import time
from typing import Optional

import uvicorn

from secure_ml.errors import ConfigError
from secure_ml.serving.app import Service


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (else Nagle adds ~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--port: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(service: Service, log_level: str = "warning") -> uvicorn.Config:
    cfg = service.cfg.server
    return uvicorn.Config(
        service.asgi,
        http="h11",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        limit_concurrency=cfg.limit_concurrency,
        timeout_keep_alive=int(max(1, cfg.timeout_keep_alive_s)),
        server_header=False,
        date_header=True,
    )


def serve_forever(service: Service, sock: socket.socket, log_level: str = "warning") -> None:
    uvicorn.Server(uvicorn_config(service, log_level)).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(service) as srv: httpx.get(srv.url + "/health")``: uvicorn on 127.0.0.1, a free port."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 20.0):
        self.service = service
        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(service, "error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.startup_timeout_s = startup_timeout_s

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        self.stop()
