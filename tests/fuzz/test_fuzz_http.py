"""Fuzzing the HTTP front door: raw bytes into ``CheckProtocol`` (through a transport
that records what the protocol writes), and structured check requests for each door
through the real ``AuthorizationService.check_http`` and a snapshot that decides.

Raw bytes: ``data_received`` never raises; every answer is well-formed HTTP/1.1 (a
status line, token header names, values without CR/LF/NUL, one ``content-length``
matching the body, none after a HEAD); answers come in order, one per request the
handler saw, at most one refusal (400, 408, 413 or 431) after them and nothing after
a closing answer; 500 only for a request whose handler failed; how the bytes are
split over reads changes nothing; a head that keeps growing past the limit is
refused without waiting for its end.

Check requests: never an exception or a 500; 200, or a deny the docs allow (401,
403); no emitted header name or value carries CR, LF or NUL; the memoized encoding
is the answer's own."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from authz.config import Settings
from authz.decision_log import DecisionLog, JsonLineBatcher
from authz.http.frontdoors import LABELS_HEADER, NAMESPACE_HEADER, SOURCE_HEADER, XFCC
from authz.http.protocol import (
    MAX_HEADER_BYTES,
    CheckProtocol,
    Connections,
    HttpRequest,
    HttpResponse,
    encode_response,
    prepared,
)
from authz.observe import Metrics
from authz.pipeline.snapshot import SnapshotStore, compile_snapshot
from authz.policy.load import parse_text
from authz.server import AuthorizationService
from tests.attacks.corpus import good_claims, jwks_a, policy, signed
from tests.fuzz.conftest import COUNTS, fuzz
from tests.fuzz.test_fuzz import KEYS, RBAC, header_values, json_values, tokens

ISS_C = "https://c.example"
HTTP_RULES = json.dumps({
    "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
    "metadata": {"name": "http-doors", "namespace": "default"},
    "spec": {"jwtRules": [{
        "issuer": ISS_C, "jwks": json.dumps(jwks_a(KEYS)),
        "fromHeaders": [{"name": "x-token", "prefix": "Tok "}], "fromParams": ["access_token"],
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
    }]},
})
"""Beside the gRPC fuzz snapshot's rules: a token from a header of its own (which
nginx and Traefik answers echo) or the query, and a payload header."""
SNAPSHOT = compile_snapshot(parse_text(policy(KEYS), "ra.json") + parse_text(RBAC, "rbac.yaml")
                            + parse_text(HTTP_RULES, "http.json"), 1)
DECISION_LINES = io.StringIO()
SERVICE = AuthorizationService(
    SnapshotStore(SNAPSHOT), Settings(), Metrics(),
    DecisionLog("all", headers=("x-name", "authorization", "x-token", "x-request-id", XFCC),
                batcher=JsonLineBatcher(DECISION_LINES), token_headers=lambda: frozenset(
                    SNAPSHOT.authenticator.all_token_headers)))
SERVICE.ready = True
DENY_STATUSES = frozenset({401, 403})
"""docs/http-front-door.md, "Answers": a decision is 200, 401 or 403 at every door."""
REFUSALS = frozenset({400, 408, 413, 431})
"""docs/http-front-door.md, "Transport": the protocol's own answers."""


# -- the answers on the wire ---------------------------------------------------
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n\x00]*\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ([^\r\n\x00]*)\r\n")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    wire: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name]
        assert len(values) <= 1, f"repeated {name}: {self.wire!r}"
        return values[0] if values else None


def parse_answers(out: bytes, head_only: Callable[[int], bool]) -> list[Answer]:
    """Every answer in ``out``, which must hold nothing else; ``head_only(i)``: the
    i-th answer is to a HEAD request (a ``content-length`` and no body)."""
    answers: list[Answer] = []
    pos = 0
    while pos < len(out):
        start = pos
        line = _STATUS_LINE.match(out, pos)
        assert line, f"no status line at {pos}: {out[pos:pos + 80]!r}"
        pos = line.end()
        headers = []
        while not out.startswith(b"\r\n", pos):
            header = _HEADER_LINE.match(out, pos)
            assert header, f"bad header line at {pos}: {out[pos:pos + 80]!r}"
            headers.append((header[1].decode(), header[2].decode("utf-8", "surrogateescape")))
            pos = header.end()
        pos += 2
        lengths = [v for n, v in headers if n.lower() == "content-length"]
        assert len(lengths) == 1 and lengths[0].isdigit(), f"content-length {lengths}"
        size = 0 if head_only(len(answers)) else int(lengths[0])
        assert pos + size <= len(out), f"body cut short: {out[start:]!r}"
        body = out[pos:pos + size]
        pos += size
        answers.append(Answer(int(line[1]), tuple(headers), body, out[start:pos]))
    return answers


# -- raw bytes into CheckProtocol ----------------------------------------------
class Transport:
    """What the protocol uses of an ``asyncio.Transport``; keeps what it writes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not (self.closed or self.eof), "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.1.2.3", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclass
class Echo:
    """A handler whose answers say which request they answer; ``/boom`` fails."""

    seen: list[HttpRequest] = field(default_factory=list)
    sent: list[HttpResponse | None] = field(default_factory=list)
    """What it answered each request (None: it raised)."""
    service: bool = False
    """Answer with the real ``check_http`` instead (its answers are not numbered)."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        n = len(self.seen)
        self.seen.append(request)
        if self.service:
            response = SERVICE.check_http(request)
        elif "boom" in request.target:
            self.sent.append(None)
            raise RuntimeError("a handler bug")
        else:
            response = HttpResponse((200, 401, 403, 404, 503)[n % 5], (("x-n", str(n)),),
                                    str(n).encode() * (n % 3))
            response = prepared(response) if n % 2 else response
        self.sent.append(response)
        return response


def run(stream: bytes, cuts: list[int], service: bool) -> tuple[Echo, Transport, list[bool]]:
    """Feed ``stream`` split at ``cuts``; then the header timeout passes. Also says,
    per read, whether the connection was still open after it."""
    handler = Echo(service=service)
    proto = CheckProtocol(Connections(handler))
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    open_after = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        proto.data_received(stream[a:b])
        open_after.append(not (transport.closed or transport.eof))
    proto.expire(time.monotonic() + 3600)  # slow requests: 408
    proto.connection_lost(None)
    return handler, transport, open_after


METHODS = [b"GET", b"HEAD", b"POST", b"OPTIONS", b"PUT", b"DELETE", b"PATCH", b"CONNECT",
           b"get", b"PRI", b"G\x00T", b""]
REQUEST_TARGETS = [b"/envoy/a?b=c", b"/envoy", b"/nginx?namespace=ns&labels=app%3Dx",
                   b"/traefik", b"/readyz", b"/boom", b"*", b"http://h/envoy/x",
                   b"/envoy/\xff\xfe%00", b"/a b", b"", b"/envoy/" + b"x" * 70_000]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.9", b"HTTP/1", b"http/1.1", b""]
FRAMING = {
    b"content-length": [b"0", b"5", b"-1", b"1e2", b"5, 5", b"5,6", b" 3", b"0x10",
                        b"99999999999999999999", b"1048577"],
    b"transfer-encoding": [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity",
                           b"Chunked", b"chunked, chunked"],
    b"connection": [b"close", b"keep-alive", b"upgrade", b"Upgrade, close", b"te"],
    b"upgrade": [b"websocket", b"h2c", b"TLS/1.2"],
    b"expect": [b"100-continue"],
}
PLAIN_NAMES = [b"host", b"authorization", b"x-original-url", b"x-original-method",
               b"x-forwarded-uri", b"x-forwarded-for", b"x-authz-labels", b"x-authz-namespace",
               b"x-forwarded-client-cert", b"x-token", b"x-request-id", b"Host", b"X-Name"]
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
BAD_NAMES = [b"x y", b"", b"x\x00", b"x:y", b" host", b"\xff"]
header_bytes = st.binary(max_size=40) | st.sampled_from(
    [b"", b" ", b"\xff\xfe", b"a\rb", b"a\nb", b"a\x00b", b"\t v \t", b"Bearer a.b.c"])


@dataclass(frozen=True)
class Message:
    data: bytes
    head: int
    """Bytes up to and including the blank line ending the head."""
    exact: bool
    """Well-formed, framed as its headers say: the parser must see one request."""
    line: tuple[str, str]
    """Its method and target as the handler must see them."""


@st.composite
def messages(draw: st.DrawFn) -> Message:
    exact = True
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(REQUEST_TARGETS) | st.binary(max_size=30).map(
        lambda b: b"/envoy/" + b))
    version = draw(st.sampled_from(VERSIONS))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    exact &= (method in (b"GET", b"HEAD", b"POST", b"OPTIONS", b"PUT", b"DELETE", b"PATCH")
              and _VISIBLE.fullmatch(target) is not None and target[:1] == b"/"
              and version == b"HTTP/1.1" and eol == b"\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 2:
            name = draw(st.sampled_from(sorted(FRAMING)))
            headers.append((name, draw(st.sampled_from(FRAMING[name]))))
            exact = False
        elif kind < 7:
            headers.append((draw(st.sampled_from(PLAIN_NAMES)), draw(header_bytes)))
        elif kind < 8:
            headers.append((draw(st.sampled_from(BAD_NAMES) | st.binary(max_size=8)),
                            draw(header_bytes)))
            exact = False
        elif kind < 9:  # obs-fold: a continuation line
            headers.append((b"x-fold", b"a" + eol + b" b"))
            exact = False
        else:  # huge: near and over the 60 KiB head limit
            size = draw(st.sampled_from([MAX_HEADER_BYTES - 200, MAX_HEADER_BYTES + 1,
                                         2 * MAX_HEADER_BYTES]) | st.integers(0, 3 * 65536))
            headers.append((b"x-big", b"v" * size))
    exact &= all(_FIELD_VALUE.fullmatch(v) is not None for _, v in headers)
    body = draw(st.binary(max_size=30))
    mode = draw(st.sampled_from(["none", "length", "chunked", "bad-chunked", "wrong-length"]))
    if mode == "none" or (mode == "length" and not body):
        body = b""
    elif mode == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif mode == "wrong-length":
        headers.append((b"Content-Length", str(len(body) + draw(st.integers(-3, 3))).encode()))
        exact = False
    else:
        cut = draw(st.integers(0, len(body)))
        ext = draw(st.sampled_from([b"", b";x=y", b" ;", b";" + b"e" * 100]))
        pieces = [p for p in (body[:cut], body[cut:]) if p]
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces)
        body += b"0\r\n" + draw(st.sampled_from([b"", b"x-trailer: t\r\n"])) + b"\r\n"
        headers.append((b"Transfer-Encoding", b"chunked"))
        if mode == "bad-chunked":
            body = draw(st.sampled_from([body.replace(b"\r\n", b"\n", 1), b"zz\r\n" + body,
                                         body[:-2], b"fffffffffffffffffff\r\n" + body]))
            exact = False
        exact &= ext != b" ;"
    head = b"%s %s %s%s" % (method, target, version, eol)
    head += b"".join(name + b": " + value + eol for name, value in headers) + eol
    return Message(head + body, len(head), exact,
                   (method.decode("latin-1"), target.decode("utf-8", "surrogateescape")))


Lines = list[tuple[str, str]] | None


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, Lines, int | None]:
    """(bytes, the request lines the handler must see if the stream is exact, where
    the head left unfinished began or None): pipelined messages, maybe cut short,
    maybe with bytes after them, maybe mutated; or anything at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300)), None, None
    msgs = draw(st.lists(messages(), min_size=1, max_size=4))
    stream = b"".join(m.data for m in msgs)
    lines: Lines = [m.line for m in msgs] if all(m.exact for m in msgs) else None
    unfinished = None
    if draw(st.integers(0, 5)) == 0:  # a header line that does not end
        if lines is None:  # after requests that are answered, not refused
            stream, lines = b"", []
        unfinished = len(stream)
        stream += b"GET /envoy/x HTTP/1.1\r\nx-big: " + b"v" * draw(
            st.integers(MAX_HEADER_BYTES // 2, 3 * MAX_HEADER_BYTES))
    elif draw(st.integers(0, 3)) == 0:  # cut short inside the last message
        last = msgs[-1]
        start = len(stream) - len(last.data)
        cut = draw(st.integers(0, len(last.data) - 1))
        stream = stream[:start + cut]
        if cut >= 1 and cut < last.head:
            unfinished = start
    elif draw(st.integers(0, 3)) == 0:  # trailing garbage
        stream += draw(st.binary(min_size=1, max_size=30))
        lines = None
    if draw(st.integers(0, 4)) == 0:  # one edit anywhere
        at = draw(st.integers(0, len(stream)))
        stream = stream[:at] + draw(st.binary(max_size=3)) + stream[at + draw(st.integers(0, 3)):]
        lines, unfinished = None, None
    return stream, lines, unfinished


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, Lines, int | None, list[int]]:
    """A stream and where it is split into reads: anywhere, or in reads of sizes that
    repeat (a byte per read, a socket's reads; at most about 2,000 reads)."""
    stream, lines, unfinished = draw(streams())
    if draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))))
        return stream, lines, unfinished, [c for c in cuts if 0 < c < len(stream)]
    sizes = draw(st.lists(st.sampled_from([1, 3, 100, 1024, 4096, 65536]) | st.integers(1, 2**18),
                          min_size=1, max_size=4))
    floor = len(stream) // 2000 + 1
    cuts, pos = [], 0
    for i in range(len(stream)):
        pos += max(sizes[i % len(sizes)], floor)
        if pos >= len(stream):
            break
        cuts.append(pos)
    return stream, lines, unfinished, cuts


@given(split_streams(), st.integers(0, 3))
def _protocol_property(case: tuple[bytes, Lines, int | None, list[int]], which: int) -> None:
    COUNTS["http bytes"] += 1
    stream, lines, unfinished, cuts = case
    service = which == 0
    handler, transport, open_after = run(stream, cuts, service)
    DECISION_LINES.seek(0)
    DECISION_LINES.truncate()
    seen, sent = handler.seen, handler.sent
    answers = parse_answers(bytes(transport.out),
                            lambda i: i < len(seen) and seen[i].method == "HEAD")
    # One answer per request the handler saw, in order; then at most one refusal.
    assert len(seen) <= len(answers) <= len(seen) + 1, (len(seen), answers)
    for i, answer in enumerate(answers):
        closing = answer.header("connection") == "close"
        assert not closing or i == len(answers) - 1, "an answer after a closing one"
        if i >= len(seen):
            assert answer.status in REFUSALS and closing, answer
            assert transport.eof or transport.closed
            continue
        response = sent[i]
        if response is None:
            assert answer.status == 500, answer
            continue
        assert answer.status != 500 or service, answer
        assert answer.status == response.status
        if service:
            assert answer.status in {200, 404, 503} | DENY_STATUSES, answer
        else:
            assert answer.header("x-n") == str(i)
            assert answer.body == (b"" if seen[i].method == "HEAD" else response.body)
    if lines is not None:
        # Well-framed requests: the handler saw them as sent, in order, none twice.
        assert [(r.method, r.target) for r in seen] == lines[:len(seen)]
    if unfinished is not None:
        # A head still growing past the limit is refused without waiting for its end.
        ends = [*cuts, len(stream)]
        first = next(i for i, end in enumerate(ends) if end > unfinished)
        fed = 0
        for i in range(first + 1, len(ends)):
            fed += ends[i] - ends[i - 1]
            if fed > MAX_HEADER_BYTES + 1:
                assert not open_after[i], f"{fed} bytes of an unfinished head and no 431"
                break
    # How the bytes were split over reads changes nothing but, for a head over the
    # limit, that its 431 may come before the byte llhttp would refuse with 400.
    if cuts:
        whole = Echo(service=service)
        proto = CheckProtocol(Connections(whole))
        other = Transport()
        proto.connection_made(other)  # type: ignore[arg-type]
        proto.data_received(stream)
        assert [(r.method, r.target) for r in whole.seen] == [
            (r.method, r.target) for r in seen]
        alone = parse_answers(bytes(other.out),
                              lambda i: i < len(seen) and seen[i].method == "HEAD")
        assert [a.wire for a in alone[:len(seen)]] == [a.wire for a in answers[:len(seen)]]
        last, split_last = alone[len(seen):], answers[len(seen):]
        if not last:  # the whole read ends mid-request: the split one also met the timeout
            assert [a.status for a in split_last] in ([], [408], [431])
        else:
            assert split_last == last or (split_last[0].status, last[0].status) == (431, 400)


def test_http_bytes_into_the_protocol() -> None:
    fuzz(_protocol_property)


# -- structured check requests through check_http ------------------------------
def _wire_text(value: str | bytes, refused: re.Pattern[str] | None = None) -> str:
    """What the protocol makes of bytes on the wire (UTF-8, others surrogate-escaped),
    without the characters llhttp refuses there (``refused``): a check request only
    ever comes from the protocol."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "surrogateescape")
    return refused.sub("", text) if refused else text


_NOT_IN_VALUES = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
"""llhttp refuses every control character but HTAB in a header value (no obs-fold)."""
_NOT_IN_TARGETS = re.compile("[\x00-\x20\x7f]")
_NOT_IN_NAMES = re.compile("[^!#$%&'*+\\-.^_`|~0-9a-z]")


claim_text = st.text(max_size=40) | st.sampled_from(
    ["\r\nx-injected: 1", "a\x00b", "é", "\u2028", "\x7f", " ", ",", "\udcff"])
nasty_text = claim_text | st.binary(max_size=40)
claims = st.fixed_dictionaries({
    "iss": st.sampled_from(["https://a.example", ISS_C]),
    "name": json_values | claim_text, "sub": json_values | claim_text,
    "groups": st.sampled_from([["admins"], ["x"], "admins"]) | json_values,
})
signed_tokens = st.builds(lambda c: signed(good_claims(**c), KEYS.a), claims)
token_values = (signed_tokens | tokens).map(lambda t: f"Bearer {t}") | header_values
xfcc_values = st.sampled_from([
    'By=spiffe://cluster.local/ns/default/sa/s;URI=spiffe://cluster.local/ns/x/sa/y',
    'By="spiffe://cluster.local/ns/a,b/sa/s";URI=x', 'By=spiffe://x/ns/;', '"', '\\', ';,;,',
    'Hash=1;By=spiffe://cluster.local/ns/default/sa/s,By=spiffe://cluster.local/ns//sa/x',
]) | st.text(alphabet=';,="\\=bByURIspife:/', max_size=40)
scope_values = st.sampled_from(["default", "app=x", "app", "a=b,c=d", "=", ",", "a=b=c"]) \
    | nasty_text
address_values = st.sampled_from(["10.1.2.3", "::1", "[::1]:80", "1.2.3.4:8080", "999.1.1.1",
                                  "fe80::1%eth0", "1.2.3.4, 10.0.0.1", "unknown"]) | nasty_text
HEADERS_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "authorization": token_values, "x-token": signed_tokens.map(lambda t: f"Tok {t}"),
    "host": nasty_text | st.sampled_from(["h", "h:80", "[::1]:9"]),
    "x-original-url": st.sampled_from(["http://h/admin", "https://h:8/r?access_token=x",
                                       "//h/x", "http://[::1/x", "http://h/a#f", "h/x"])
    | nasty_text,
    "x-original-uri": st.sampled_from(["/admin", "/r?a=b", "/%2e%2e/admin", "admin"])
    | nasty_text,
    "x-original-method": st.sampled_from(["GET", "POST", "", "g e t"]) | nasty_text,
    "x-forwarded-method": st.sampled_from(["GET", "OPTIONS"]) | nasty_text,
    "x-forwarded-uri": st.sampled_from(["/admin", "/private/x", "/r?access_token=x"])
    | nasty_text,
    "x-forwarded-host": nasty_text, "x-forwarded-proto": st.sampled_from(["http", "https"])
    | nasty_text,
    "x-forwarded-for": address_values, "x-real-ip": address_values,
    SOURCE_HEADER: address_values, "x-authz-destination-address": address_values,
    NAMESPACE_HEADER: scope_values, LABELS_HEADER: scope_values, XFCC: xfcc_values,
    "x-name": nasty_text, "x-sub": nasty_text, "x-payload": nasty_text,
    "x-envoy-auth-headers-to-remove": nasty_text, "x-request-id": nasty_text,
    "traceparent": nasty_text, "cookie": nasty_text, "content-length": nasty_text,
    "access-control-request-method": st.sampled_from(["GET", ""]),
    "origin": nasty_text,
}
header_names = st.sampled_from(sorted(HEADERS_BY_NAME)) | st.text(min_size=1, max_size=12).map(
    lambda n: _NOT_IN_NAMES.sub("", n.lower())).filter(bool)
query_values = st.sampled_from(["namespace=default", "labels=app%3Dx", "labels=app",
                                "namespace=&labels=", "access_token=x.y.z", "%zz", "&&=",
                                "labels=a%3Db%2Cc"]) | nasty_text.map(
    lambda t: quote(_wire_text(t), safe="=&%", errors="surrogateescape"))
door_targets = st.one_of(
    st.builds(lambda p: "/envoy" + p, st.sampled_from(
        ["", "/", "/admin", "?x", "/r?access_token=x", "/private/x", "/a/../admin", "//x",
         "/%2e%2e/", "/a#frag"]) | st.builds(lambda sep, t: sep + _wire_text(t),
                                             st.sampled_from("/?"), nasty_text)),
    st.builds(lambda door, q: f"/{door}?{q}" if q else f"/{door}",
              st.sampled_from(["nginx", "traefik"]), st.none() | query_values),
)


@st.composite
def check_http_requests(draw: st.DrawFn) -> HttpRequest:
    headers: dict[str, str] = {}
    for name in draw(st.lists(header_names, max_size=8)):
        strategy = HEADERS_BY_NAME.get(name, nasty_text)
        headers[name] = _wire_text(draw(strategy), _NOT_IN_VALUES)
    return HttpRequest(
        draw(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH",
                              "CONNECT", "TRACE", "PROPFIND", "SEARCH", "PURGE"])),
        _NOT_IN_TARGETS.sub("", draw(door_targets)), MappingProxyType(headers),
        draw(st.sampled_from(["10.1.2.3", "::1", ""]) | st.text(max_size=15)),
        draw(st.none() | st.integers(0, 65535)),
        # What a mutual-TLS client certificate names (a URI SAN or a subject), or none.
        draw(st.sampled_from(["", "spiffe://cluster.local/ns/edge/sa/ingress",
                              "spiffe://cluster.local/ns/", "CN=proxy,O=x"])
             | st.text(max_size=40)))


_UNSAFE = re.compile("[\r\n\x00]")


def _check_answer(request: HttpRequest) -> HttpResponse:
    response = SERVICE.check_http(request)
    assert response.status == 200 or response.status in DENY_STATUSES, response
    for name, value in response.headers:
        assert not _UNSAFE.search(name) and not _UNSAFE.search(value), (name, value)
    encoded = encode_response(response, close=False)
    [answer] = parse_answers(encoded, lambda i: False)
    assert answer.status == response.status and answer.body == response.body
    if response.wire:  # the memoized encoding says the same (its lines may be in another order)
        [memo] = parse_answers(response.wire, lambda i: False)
        assert (memo.status, sorted(memo.headers), memo.body) == (
            answer.status, sorted(answer.headers), answer.body)
    return response


@given(check_http_requests())
def _doors_property(request: HttpRequest) -> None:
    COUNTS["http doors"] += 1
    _check_answer(request)
    lines = DECISION_LINES.getvalue().splitlines()
    DECISION_LINES.seek(0)
    DECISION_LINES.truncate()
    for line in lines:
        json.loads(line)


def test_http_front_doors() -> None:
    fuzz(_doors_property)


def test_the_fuzzed_doors_can_allow_and_deny() -> None:
    """The snapshot the doors meet really decides, and echoes: no vacuous pass."""
    def ask(target: str, **headers: str) -> HttpResponse:
        return _check_answer(HttpRequest("GET", target, MappingProxyType(headers),
                                         "10.1.2.3", 1))

    good = signed(good_claims(groups=["admins"]), KEYS.a)
    assert ask("/envoy/r", authorization=f"Bearer {good}").status == 200
    assert ask("/nginx", authorization="Bearer x.y.z").status == 401
    assert ask("/traefik", **{"x-forwarded-uri": "/admin"}).status == 403
    other = signed(good_claims(ISS_C, sub="bob"), KEYS.a)
    allowed = ask("/nginx", **{"x-token": f"Tok {other}", "x-original-uri": "/r", "host": "h"})
    assert allowed.status == 200 and ("x-sub", "bob") in allowed.headers
    injected = signed(good_claims(name="a\r\nx-injected: 1"), KEYS.a)
    assert ask("/envoy/r", authorization=f"Bearer {injected}").status == 401
    assert ask("/envoy", **{LABELS_HEADER: "app"}).status == 403


def test_the_raw_byte_rig_sees_answers() -> None:
    """Two pipelined requests, a byte per read: two numbered answers; a request
    whose handler fails: 500; a 61 KiB header: 431."""
    stream = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /boom HTTP/1.1\r\n\r\n"
    transport = run(stream, list(range(1, len(stream))), False)[1]
    answers = parse_answers(bytes(transport.out), lambda i: i == 1)
    assert [(a.status, a.header("x-n"), a.body) for a in answers] == [
        (200, "0", b""), (401, "1", b""), (500, None, b"authz: internal error\n")]
    big = b"GET / HTTP/1.1\r\nx: " + b"v" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert parse_answers(bytes(run(big, [], False)[1].out), lambda i: False)[0].status == 431
