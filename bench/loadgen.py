"""A small, fast closed-loop HTTP/2 gRPC load generator for one unary method.

Why not h2load: h2load sends one fixed body, so it cannot cycle 10,000 distinct
CheckRequests. This speaks just enough HTTP/2 over raw sockets:

- connection preface, our SETTINGS (huge initial stream window, no push) and a
  connection WINDOW_UPDATE so the server never waits for us;
- a constant HPACK header block made only of static-table references and
  literals *without indexing* (so no dynamic-table state is ever shared);
- one DATA frame per request = gRPC 5-byte prefix + a pre-serialized message,
  pre-encoded per message; only the stream id is patched in per request;
- replies: SETTINGS/PING are acked, WINDOW_UPDATEs feed the send window, and a
  stream is done at END_STREAM. A stream that ended with a trailers HEADERS
  frame after a DATA frame is a success; one that ended without DATA (gRPC
  "trailers-only", i.e. a non-OK grpc-status) or with RST_STREAM is an error.
  Every ``--sample-every``-th reply message is decoded (``--decode check``) to
  count CheckResponse status codes, so a run that silently got the wrong
  answer shows it.

``concurrency`` streams are kept in flight, spread over ``connections``
connections (closed loop: a stream that ends is replaced at once, cycling
through the messages). Latency is measured per request from the moment its
frames are queued to the moment its END_STREAM is parsed.

Protocol with a parent process: one line ``warm`` when warm-up starts,
``start`` when the measured window begins, ``end`` when it ends, then one JSON
line: {requests, errors, rps, p50_ms, p99_ms, ...}.

Messages file (``--messages``): each message as a 4-byte big-endian length
followed by its bytes (see ``write_messages``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
MAX_WINDOW = 2**31 - 1
FRAME_HEADER = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"


def write_messages(path: Path, messages: Iterable[bytes]) -> int:
    count = 0
    with open(path, "wb") as fh:
        for message in messages:
            fh.write(struct.pack(">I", len(message)) + message)
            count += 1
    return count


def read_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1 integer with an N-bit prefix; ``first`` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(text: str) -> bytes:
    raw = text.encode()
    return hpack_int(len(raw), 7, 0x00) + raw  # H bit 0: no Huffman


def literal(name: str | int, value: str) -> bytes:
    """Literal header field without indexing (RFC 7541 6.2.2), name indexed or new."""
    if isinstance(name, int):
        return hpack_int(name, 4, 0x00) + hpack_string(value)
    return b"\x00" + hpack_string(name) + hpack_string(value)


def header_block(path: str, authority: str) -> bytes:
    return b"".join([
        b"\x83",                    # :method POST (static 3)
        b"\x86",                    # :scheme http (static 6)
        literal(4, path),           # :path
        literal(1, authority),      # :authority
        literal(31, "application/grpc"),  # content-type
        literal("te", "trailers"),
        literal(58, "bench-loadgen"),     # user-agent
    ])


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack((len(payload) << 8) | ftype, flags, stream_id) + payload


@dataclass
class Template:
    """HEADERS + DATA frames of one request; the stream id is patched in place."""

    buf: bytearray
    data_offset: int
    data_len: int


def templates(messages: Sequence[bytes], path: str, authority: str) -> list[Template]:
    block = header_block(path, authority)
    out = []
    for message in messages:
        grpc_message = b"\x00" + struct.pack(">I", len(message)) + message
        if len(grpc_message) > 16384:
            raise SystemExit("loadgen: a message is larger than one 16 KiB DATA frame")
        head = frame(HEADERS, END_HEADERS, 1, block)
        body = frame(DATA, END_STREAM, 1, grpc_message)
        out.append(Template(bytearray(head + body), len(head), len(grpc_message)))
    return out


@dataclass
class Stats:
    measuring: bool = False
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    warm_requests: int = 0
    sent: int = 0
    """Requests put on the wire, warm-up included (to continue the cycle next run)."""
    status_counts: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    sampled: int = 0


class Connection:
    """One HTTP/2 connection with its streams in flight."""

    def __init__(self, address: tuple[str, int], templates_: list[Template], first: int,
                 stats: Stats, sample_every: int, decode: Any) -> None:
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.templates = templates_
        self.next_message = first % len(templates_)
        self.stats = stats
        self.sample_every = sample_every
        self.decode = decode
        self.next_sid = 1
        self.streams: dict[int, list[Any]] = {}  # sid -> [start, got_data, first DATA bytes]
        self.inbuf = bytearray()
        self.outbuf = bytearray(PREFACE)
        self.send_window = 65535
        self.stream_window = 65535
        self.pending = 0  # requests waiting for connection send window
        self.unacked = 0
        self.completed = 0
        self.closed: str | None = None
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, MAX_WINDOW)
        self.outbuf += frame(SETTINGS, 0, 0, settings)
        self.outbuf += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))

    def launch(self, count: int = 1) -> None:
        self.pending += count
        self._flush_pending()

    def _flush_pending(self) -> None:
        now = time.perf_counter()
        templates_ = self.templates
        n = len(templates_)
        while self.pending:
            tmpl = templates_[self.next_message]
            if tmpl.data_len > self.send_window or tmpl.data_len > self.stream_window:
                return
            self.pending -= 1
            self.stats.sent += 1
            self.next_message = (self.next_message + 1) % n
            sid = self.next_sid
            self.next_sid += 2
            buf = tmpl.buf
            struct.pack_into(">I", buf, 5, sid)
            struct.pack_into(">I", buf, tmpl.data_offset + 5, sid)
            self.outbuf += buf
            self.send_window -= tmpl.data_len
            self.streams[sid] = [now, False, None]

    def flush(self) -> bool:
        """Send what we can; True when everything queued went out."""
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except BlockingIOError:
                return False
            del self.outbuf[:sent]
        return not self.outbuf

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.closed = "connection closed by server"
            return
        inbuf = self.inbuf
        inbuf += data
        off, size = 0, len(inbuf)
        unpack = FRAME_HEADER.unpack_from
        finished = 0
        while size - off >= 9:
            lt, flags, sid = unpack(inbuf, off)
            length = lt >> 8
            if size - off - 9 < length:
                break
            ftype = lt & 0xFF
            start = off + 9
            off = start + length
            sid &= 0x7FFFFFFF
            if ftype == DATA:
                self.unacked += length
                stream = self.streams.get(sid)
                if stream is not None:
                    if not stream[1]:
                        stream[1] = True
                        stream[2] = bytes(inbuf[start:start + length])
                    if flags & END_STREAM:
                        finished += self._done(sid, "DATA with END_STREAM")
            elif ftype == HEADERS:
                if flags & END_STREAM:
                    finished += self._done(sid, None)
            elif ftype == WINDOW_UPDATE:
                (inc,) = struct.unpack_from(">I", inbuf, start)
                if sid == 0:
                    self.send_window += inc & 0x7FFFFFFF
            elif ftype == SETTINGS:
                if not flags & ACK:
                    for i in range(start, start + length, 6):
                        key, value = struct.unpack_from(">HI", inbuf, i)
                        if key == 0x4:
                            self.stream_window = value
                    self.outbuf += frame(SETTINGS, ACK, 0, b"")
            elif ftype == PING:
                if not flags & ACK:
                    self.outbuf += frame(PING, ACK, 0, bytes(inbuf[start:start + 8]))
            elif ftype == RST_STREAM:
                finished += self._done(sid, "RST_STREAM")
            elif ftype == GOAWAY:
                self.closed = "GOAWAY from server"
        del inbuf[:off]
        if self.unacked > 1 << 30:
            self.outbuf += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked))
            self.unacked = 0
        if finished and self.closed is None:
            self.launch(finished)
        elif self.pending:
            self._flush_pending()

    def _done(self, sid: int, error: str | None) -> int:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return 0
        stats = self.stats
        if error is None and not stream[1]:
            error = "trailers-only (non-OK grpc-status)"
        if stats.measuring:
            stats.latencies.append(time.perf_counter() - stream[0])
            if error is None:
                stats.requests += 1
                self.completed += 1
                if self.decode is not None and self.completed % self.sample_every == 1:
                    stats.sampled += 1
                    key = self.decode(stream[2])
                    stats.status_counts[key] = stats.status_counts.get(key, 0) + 1
            else:
                stats.errors += 1
                stats.error_kinds[error] = stats.error_kinds.get(error, 0) + 1
        else:
            stats.warm_requests += 1
        return 1


def check_status_decoder() -> Any:
    """Decode a gRPC-framed CheckResponse into its status code (and HTTP status if denied)."""
    from authz._proto.envoy.service.auth.v3 import external_auth_pb2

    def decode(payload: bytes | None) -> str:
        if payload is None or len(payload) < 5:
            return "undecodable"
        (n,) = struct.unpack_from(">I", payload, 1)
        if len(payload) < 5 + n:
            return "split"
        resp = external_auth_pb2.CheckResponse.FromString(payload[5:5 + n])
        if resp.status.code == 0:
            return "OK"
        return f"http {resp.denied_response.status.code}"

    return decode


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(address: tuple[str, int], messages: Sequence[bytes], *, concurrency: int,
        connections: int, duration: float, warmup: float, path: str = CHECK_PATH,
        sample_every: int = 16, decode: Any = None, start: int = 0) -> dict[str, Any]:
    connections = max(1, min(connections, concurrency))
    stats = Stats()
    tmpls = templates(messages, path, f"{address[0]}:{address[1]}")
    selector = selectors.DefaultSelector()
    conns = []
    for i in range(connections):
        # Each connection starts at its own place in the message cycle.
        conn = Connection(address, tmpls, start + i * len(tmpls) // connections, stats,
                          sample_every, decode)
        share = concurrency // connections + (1 if i < concurrency % connections else 0)
        conn.launch(share)
        conns.append(conn)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    say("warm")
    t0 = time.perf_counter()
    warm_end = t0 + warmup
    end = warm_end + duration
    cpu_start = 0.0
    wants_write: set[Connection] = set()
    for conn in conns:
        if not conn.flush():
            wants_write.add(conn)
            selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
    failure: str | None = None
    now = t0
    if warmup <= 0:
        stats.measuring = True
        say("start")
        cpu_start = cpu_self()
    while now < end and failure is None:
        timeout = (warm_end if not stats.measuring else end) - now
        for key, events in selector.select(max(0.0, timeout)):
            conn = key.data
            if events & selectors.EVENT_READ:
                conn.on_readable()
                if conn.closed:
                    failure = conn.closed
                    break
            if conn.flush():
                if conn in wants_write:
                    wants_write.discard(conn)
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
            elif conn not in wants_write:
                wants_write.add(conn)
                selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        now = time.perf_counter()
        if not stats.measuring and now >= warm_end:
            stats.measuring = True
            say("start")
            cpu_start = cpu_self()
            warm_end = now
            end = now + duration
    elapsed = (now - warm_end) if stats.measuring else 0.0
    cpu_used = cpu_self() - cpu_start
    stats.measuring = False
    say("end")
    for conn in conns:
        conn.sock.close()
    lat = sorted(stats.latencies)
    ms = 1000.0
    return {
        "requests": stats.requests,
        "errors": stats.errors,
        "error_kinds": stats.error_kinds,
        "rps": stats.requests / elapsed if elapsed else 0.0,
        "p50_ms": percentile(lat, 0.50) * ms,
        "p90_ms": percentile(lat, 0.90) * ms,
        "p99_ms": percentile(lat, 0.99) * ms,
        "p999_ms": percentile(lat, 0.999) * ms,
        "max_ms": (lat[-1] * ms) if lat else float("nan"),
        "mean_ms": (sum(lat) / len(lat) * ms) if lat else float("nan"),
        "duration_s": elapsed,
        "warmup_requests": stats.warm_requests,
        "next_start": (start + stats.sent) % len(messages),
        "concurrency": concurrency,
        "connections": connections,
        "messages": len(messages),
        "status_sampled": stats.status_counts,
        "loadgen_cpu_util": cpu_used / elapsed if elapsed else 0.0,
        "failure": failure,
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument("--messages", required=True, type=Path,
                        help="file of length-prefixed serialized request messages")
    parser.add_argument("--path", default=CHECK_PATH, help="gRPC method path")
    parser.add_argument("--concurrency", type=int, default=32, help="streams in flight")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    parser.add_argument("--decode", choices=("check", "none"), default="check",
                        help="decode sampled replies as CheckResponse status codes")
    parser.add_argument("--sample-every", type=int, default=16)
    parser.add_argument("--start", type=int, default=0,
                        help="message to start the cycle at (a previous run's next_start: "
                        "continue a cycle of distinct tokens instead of replaying its head)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    host, _, port = args.target.rpartition(":")
    messages = read_messages(args.messages)
    if not messages:
        parser.error("no messages")
    decode = check_status_decoder() if args.decode == "check" else None
    result = run((host, int(port)), messages, concurrency=args.concurrency,
                 connections=args.connections, duration=args.duration, warmup=args.warmup,
                 path=args.path, sample_every=args.sample_every, decode=decode,
                 start=args.start)
    print(json.dumps(result), flush=True)
    return 0 if result["failure"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
