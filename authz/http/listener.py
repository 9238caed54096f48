"""The HTTP check listener: bind (with ``SO_REUSEPORT`` under ``--workers``), serve,
and drain like the gRPC listener: stop accepting, close connections with no
request in progress, let the others finish within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import structlog

from authz.errors import ListenError
from authz.http.protocol import HEADER_TIMEOUT, Connections, Handler

__all__ = ["HttpCheckListener"]

log = structlog.get_logger("authz.http")

BACKLOG = 1024


class HttpCheckListener:
    """One listening socket and the connections it accepted."""

    def __init__(self, handler: Handler) -> None:
        self.connections = Connections(handler)
        self.port: int | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool,
                    tls: ssl.SSLContext | None = None) -> int:
        """Bind and listen; the bound port (``port`` 0 picks one). With ``tls`` the
        port speaks TLS only; a handshake must finish within ``HEADER_TIMEOUT``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ListenError(f"cannot bind HTTP check address {where}: "
                              f"{exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.connections.protocol, sock=sock, backlog=BACKLOG, ssl=tls,
            ssl_handshake_timeout=HEADER_TIMEOUT if tls is not None else None)
        self.port = int(sock.getsockname()[1])
        return self.port

    def begin_drain(self) -> None:
        """From now on each answer closes its connection (``connection: close``), so
        clients reconnect, and find another server once this one's readiness fails;
        HTTP/1.1 has no GOAWAY to say so otherwise."""
        self.connections.draining = True

    async def stop(self, grace: float) -> None:
        """Stop accepting; answer what is in progress (at most ``grace`` seconds),
        closing each connection after its answer; then close what is left."""
        if self._server is None:
            return
        self._server.close()
        self.connections.close_idle()
        # During a drain every connection closes after its answer: all gone = drained.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connections.all_closed.wait(), grace)
        left = len(self.connections.open)
        if left:
            log.warning("http_drain_timeout", connections=left)
        self.connections.abort_all()
        self.connections.stop()
        self._server = None
