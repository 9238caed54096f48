"""HTTP/1.1 for authorization checks: a small asyncio protocol on ``httptools``.

Chosen by measurement over aiohttp (docs/http-front-door.md, "Transport"): a
check is one short request with no body to read and a small answer, so what
costs is the framework around the parse. This protocol parses with llhttp (C),
calls the handler synchronously from ``data_received`` (it reads the snapshot and
returns), and writes the whole answer in one call.

A handler may instead return an awaitable of its answer, for the rare check that
must wait (a token whose new signing key is being fetched). It runs at once, and
answers stay in request order: a pipelined request's answer waits behind the
pending one, and reading pauses while ``MAX_PENDING`` answers are queued.

What it guards against, all answered with a short response and no traceback:

- headers larger than ``MAX_HEADER_BYTES`` (Envoy's own limit, 60 KiB): 431;
- headers (or a body) that take longer than ``HEADER_TIMEOUT`` to arrive: 408
  (slow clients cannot hold connections open a byte at a time);
- a body longer than ``MAX_BODY_BYTES``: 413; shorter bodies are read and dropped
  (no front door reads one);
- anything llhttp cannot parse: 400.

Each of those closes the connection. Keep-alive connections that stay idle for
``IDLE_TIMEOUT`` are closed; pipelined requests are answered in order. A client
that stops reading its answers pauses reading, so nothing buffers without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import NamedTuple, cast

import httptools
import structlog
from cryptography import x509

from authz.errors import AuthzError
from authz.request.view import join_header

__all__ = [
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_PENDING",
    "CheckProtocol",
    "Connections",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "certificate_principal",
    "encode_response",
    "prepared",
    "with_headers",
]

log = structlog.get_logger("authz.http")

MAX_HEADER_BYTES = 60 * 1024
"""Request line plus headers, as Envoy's ``max_request_headers_kb`` default (60 KiB)."""
MAX_BODY_BYTES = 1024 * 1024
"""A body is never kept; one longer than this is refused (413) rather than drained."""
HEADER_TIMEOUT = 10.0
"""Seconds a request may take from its first byte to its last."""
IDLE_TIMEOUT = 75.0
"""Seconds a keep-alive connection may wait for its next request (nginx's default);
proxies keep their own idle timeout below it (the generated Envoy configuration: 60 s)."""
LINGER = 2.0
"""Seconds a refused client may go on sending before its connection is cut."""
SWEEP_INTERVAL = 1.0
"""How often the timeouts are checked: one timer per listener, none per request."""
MAX_PENDING = 16
"""Answers a connection may queue behind one its handler has not finished (pipelined
requests) before it stops reading. Requests already read are still parsed, so the
queue can exceed it by what one read held; what is not read waits in the kernel."""


class HttpRequest(NamedTuple):
    """One parsed request: what a front door turns into a ``RequestView``."""

    method: str
    target: str
    """The request-target as sent (origin form: path and query)."""
    headers: Mapping[str, str]
    """Lower-cased names; repeated headers joined as ``RequestView`` joins them."""
    peer_ip: str
    peer_port: int | None
    peer_principal: str = ""
    """Mutual TLS: the client certificate's URI SAN, else its subject (``""`` without)."""


class HttpResponse(NamedTuple):
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    wire: bytes = b""
    """The whole keep-alive answer, encoded in advance (``prepared``), or empty."""


def prepared(response: HttpResponse) -> HttpResponse:
    """``response`` carrying its keep-alive encoding: an answer given many times (a
    decision-cache hit) is then written without encoding it again."""
    return response._replace(wire=encode_response(response, close=False))


def with_headers(response: HttpResponse, extra: tuple[tuple[str, str], ...]) -> HttpResponse:
    """``response`` with ``extra`` headers after its own; a ``prepared`` one's encoding
    is extended, not redone (the new lines go before the blank line ending its head)."""
    status, headers, body, wire = response
    if wire:
        cut = len(wire) - len(body) - 2
        lines = "".join([f"{name}: {value}\r\n" for name, value in extra])
        wire = b"".join((wire[:cut], lines.encode("utf-8", "surrogateescape"), wire[cut:]))
    return HttpResponse(status, headers + extra, body, wire)


Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]
"""Answers one request, synchronously (it must not block: no I/O) or, rarely, with an
awaitable of the answer, which the connection runs at once and answers in order."""

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_CLOSE_HEAD = b"connection: close\r\n"


def encode_response(response: HttpResponse, close: bool, head_only: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response; ``content-length`` always, so the
    connection can carry the next one."""
    status, headers, body, _ = response
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"content-length: {len(body)}\r\n")
    head = "".join(lines).encode("utf-8", "surrogateescape")
    if close:
        head += _CLOSE_HEAD
    return head + b"\r\n" if head_only else head + b"\r\n" + body


def certificate_principal(der: bytes) -> str:
    """A client certificate's identity as Envoy (and the gRPC port) name it: its URI
    SAN (a SPIFFE id in a mesh), else its subject in RFC 4514 form."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    return str(uris[0]) if uris else cert.subject.rfc4514_string()


def _plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, (("content-type", "text/plain"),), text.encode())


_BAD_REQUEST = _plain(400, "authz: malformed HTTP request\n")
_TIMEOUT = _plain(408, "authz: request not received in time\n")
_TOO_LARGE = _plain(413, "authz: request body too large\n")
_HEADERS_TOO_LARGE = _plain(431, "authz: request headers too large\n")
_INTERNAL = _plain(500, "authz: internal error\n")


class _Refused(AuthzError):
    """Raised inside a parser callback to stop parsing; ``response`` says why. Never
    leaves the protocol: the client gets the response, nobody else sees it."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class Connections:
    """Every open connection of one listener: the timeout sweep and the drain."""

    def __init__(self, handler: Handler, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, sweep_interval: float = SWEEP_INTERVAL
                 ) -> None:
        self.handler = handler
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.sweep_interval = sweep_interval
        self.open: set[CheckProtocol] = set()
        self.draining = False
        self.all_closed = asyncio.Event()
        """Set once draining and the last connection is gone."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def protocol(self) -> CheckProtocol:
        """The protocol factory for ``loop.create_server``."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()
        return CheckProtocol(self)

    def _schedule(self) -> None:
        if self._loop is not None:
            self._sweeper = self._loop.call_later(self.sweep_interval, self.sweep)

    def sweep(self) -> None:
        """Answer 408 to requests that are too slow; close idle connections."""
        now = time.monotonic()
        for conn in list(self.open):
            conn.expire(now)
        self._schedule()

    def close_idle(self) -> None:
        """Drain: from now on every answer closes its connection, and connections
        with no request in progress close now."""
        self.draining = True
        for conn in list(self.open):
            conn.close_if_idle()
        if not self.open:
            self.all_closed.set()

    def busy(self) -> int:
        """Connections with a request partly received or an answer not yet sent."""
        return sum(1 for conn in self.open if not conn.idle())

    def lost(self, conn: CheckProtocol) -> None:
        self.open.discard(conn)
        if self.draining and not self.open:
            self.all_closed.set()

    def abort_all(self) -> None:
        for conn in list(self.open):
            conn.abort()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Queued:
    """An answer waiting for its turn: one still being computed (``task``), or one
    ready behind it (``response``). ``linger``: a refusal, which ends the connection."""

    __slots__ = ("close", "head_only", "linger", "response", "task")

    def __init__(self, response: HttpResponse | None, task: asyncio.Future[HttpResponse] | None,
                 head_only: bool, close: bool, linger: bool = False) -> None:
        self.response = response
        self.task = task
        self.head_only = head_only
        self.close = close
        self.linger = linger


class CheckProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, owner: Connections) -> None:
        self._owner = owner
        self._handler = owner.handler
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peer_ip = ""
        self._peer_port: int | None = None
        self._principal = ""
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._name = b""
        self._header_bytes = 0
        self._body_bytes = 0
        self._in_head = False
        self._heads = 0
        """Request heads begun on this connection."""
        self._head_reads = 0
        """Bytes of the reads that fell wholly inside the head in progress."""
        self._started: float | None = None
        """When the request in progress began (None: between requests)."""
        self._last_active = time.monotonic()
        self._closing = False
        self._lingering: float | None = None
        self._paused = False
        self._queue: deque[_Queued] = deque()
        """Answers not yet written, in request order: non-empty only behind an answer
        the handler has not finished."""
        self._held = False
        """Reading paused because ``MAX_PENDING`` answers are queued."""
        self._close_after = False
        """Close once the queue is written (the parser stopped behind a pending answer)."""

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = self._transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer_ip, self._peer_port = str(peer[0]), int(peer[1])
        tls = self._transport.get_extra_info("ssl_object")
        if tls is not None:  # asyncio calls this once the handshake is done
            der = tls.getpeercert(binary_form=True)
            if der:
                self._principal = certificate_principal(der)
        self._owner.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        queued, self._queue = self._queue, deque()
        for entry in queued:  # nobody to answer: stop what still waits
            if entry.task is not None:
                entry.task.cancel()
        self._owner.lost(self)

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests.
        if self._transport is not None and not self._paused:
            self._paused = True
            if not self._held:
                self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            if not self._held:
                self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        in_head, heads = self._in_head, self._heads
        try:
            self._parser.feed_data(data)
        except _Refused as exc:
            self._refuse(exc.response)
        except httptools.HttpParserUpgrade:
            # An Upgrade request was answered in on_message_complete; the
            # connection is not upgraded, so it ends here.
            self._close()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.response)
            else:
                self._refuse(_INTERNAL)
        except httptools.HttpParserError:
            self._refuse(_BAD_REQUEST)
        else:
            if in_head and self._in_head and heads == self._heads:
                # httptools keeps an unfinished header line without bound and calls
                # on_header (which counts) only once it ends: count what arrives
                # inside a head, or a header line that never ends fills the memory.
                self._head_reads += len(data)
                if self._head_reads > MAX_HEADER_BYTES:
                    self._refuse(_HEADERS_TOO_LARGE)

    # -- httptools callbacks -------------------------------------------------
    def on_message_begin(self) -> None:
        self._started = time.monotonic()
        self._url = []
        self._headers = {}
        self._header_bytes = 0
        self._body_bytes = 0
        self._in_head = True
        self._heads += 1
        self._head_reads = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", "surrogateescape")
        headers = self._headers
        headers[key] = join_header(key, headers[key], text) if key in headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _Refused(_TOO_LARGE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _Refused(_TOO_LARGE)

    def on_message_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        request = HttpRequest(
            method, b"".join(self._url).decode("utf-8", "surrogateescape"),
            MappingProxyType(self._headers), self._peer_ip, self._peer_port, self._principal)
        try:
            response = self._handler(request)
        except Exception as exc:  # the handler answers its own failures; this is a bug
            log.error("http_handler_failed", error=type(exc).__name__)
            response = _INTERNAL
        close = (self._owner.draining or not parser.should_keep_alive()
                 or parser.should_upgrade())
        self._started = None
        self._last_active = time.monotonic()
        if self._queue or response.__class__ is not HttpResponse:
            self._enqueue(response, method == "HEAD", close)
        elif self._transport is not None:
            head_only = method == "HEAD"
            self._transport.write(
                response.wire if response.wire and not close and not head_only
                else encode_response(response, close, head_only))
        if close:
            self._close()
            raise _Closed

    # -- answers in order ------------------------------------------------------
    def _enqueue(self, answer: HttpResponse | Awaitable[HttpResponse], head_only: bool,
                 close: bool) -> None:
        """Queue an answer behind the ones not yet written; a pending one starts now."""
        if isinstance(answer, HttpResponse):
            self._queue.append(_Queued(answer, None, head_only, close))
        else:
            task = asyncio.ensure_future(answer)
            self._queue.append(_Queued(None, task, head_only, close))
            task.add_done_callback(self._landed)
        if len(self._queue) >= MAX_PENDING and not self._held and self._transport is not None:
            self._held = True
            if not self._paused:
                self._transport.pause_reading()

    def _landed(self, task: asyncio.Future[HttpResponse]) -> None:
        if self._transport is not None:  # else connection_lost cancelled it
            self._flush()

    def _flush(self) -> None:
        """Write the answers at the head of the queue that are ready, in order."""
        queue = self._queue
        while queue and self._transport is not None:
            entry = queue[0]
            response = entry.response
            if entry.task is not None:
                if not entry.task.done():
                    break
                error = (asyncio.CancelledError() if entry.task.cancelled()
                         else entry.task.exception())
                if error is not None:  # the handler answers its own failures: a bug
                    log.error("http_handler_failed", error=type(error).__name__)
                    response = _INTERNAL
                else:
                    response = entry.task.result()
            assert response is not None
            queue.popleft()
            close = entry.close or (not queue and (self._close_after or (
                self._owner.draining and self._started is None)))
            self._last_active = time.monotonic()
            self._transport.write(
                response.wire if response.wire and not close and not entry.head_only
                else encode_response(response, close, entry.head_only))
            if close:
                queue.clear()
                if entry.linger:
                    self._linger()
                else:
                    self._closing = True
                    self._transport.close()
                return
        if self._held and len(queue) < MAX_PENDING and self._transport is not None:
            self._held = False
            if not self._paused:
                self._transport.resume_reading()

    # -- helpers -------------------------------------------------------------
    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refused(_HEADERS_TOO_LARGE)

    def _refuse(self, response: HttpResponse) -> None:
        if response is _CLOSED or self._transport is None:
            return
        if response.status >= 500:
            log.error("http_request_failed", status=response.status)
        if self._queue:  # after the answers still owed, in order
            self._closing = True
            self._started = None
            self._queue.append(_Queued(response, None, False, True, linger=True))
            return
        self._transport.write(encode_response(response, close=True))
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal without losing the answer: a client still sending (a
        body we refused) would get a reset instead of our answer if we closed with its
        bytes unread. Send the answer and our FIN, drop what still arrives, and close
        when the client does, or after ``LINGER`` seconds."""
        self._closing = True
        self._started = None
        self._lingering = time.monotonic()
        transport = self._transport
        if transport is not None:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def _close(self) -> None:
        self._closing = True
        self._started = None
        if self._queue:  # answers still owed: the last one written closes
            self._close_after = True
            return
        if self._transport is not None:
            self._transport.close()  # after what was written is sent

    def idle(self) -> bool:
        """No request in progress and every answer sent."""
        if self._transport is None:
            return True
        if self._queue or self._transport.get_write_buffer_size():
            return False
        return self._started is None or self._closing

    def close_if_idle(self) -> None:
        if self._started is None and not self._queue:
            self._close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def expire(self, now: float) -> None:
        if self._closing:
            if self._lingering is not None and now - self._lingering > LINGER:
                self.abort()
            return
        if self._started is not None:
            if now - self._started > self._owner.header_timeout:
                self._refuse(_TIMEOUT)
        elif not self._queue and now - self._last_active > self._owner.idle_timeout:
            self._close()


_CLOSED = HttpResponse(0)


class _Closed(_Refused):
    """Stops the parser after an answer that closed the connection (pipelined bytes
    after it are not requests we will answer)."""

    def __init__(self) -> None:
        super().__init__(_CLOSED)
