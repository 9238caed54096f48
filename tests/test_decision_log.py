from __future__ import annotations

import pytest
import structlog

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.decision import Decision, Reason
from authz.decision_log import REDACTED, DecisionLog, trace_context
from authz.envoy.request_view import view_from_check_request
from authz.request.view import RequestView

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl"


def view(**headers: str) -> RequestView:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path, http.id = "GET", "api", f"/x?access_token={TOKEN}", "r-1"
    for k, v in headers.items():
        http.headers[k.replace("_", "-")] = v
    req.attributes.source.address.socket_address.address = "10.1.2.3"
    return view_from_check_request(req, "default")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
         {"trace_id": "a" * 32, "span_id": "b" * 16}),
        ({"x-b3-traceid": "t1", "x-b3-spanid": "s1"}, {"trace_id": "t1", "span_id": "s1"}),
        ({"b3": "t2-s2-1"}, {"trace_id": "t2", "span_id": "s2"}),
        ({"traceparent": "garbage"}, {}),
        ({}, {}),
    ],
)
def test_trace_context(headers: dict[str, str], expected: dict[str, str]) -> None:
    assert trace_context(headers) == expected


def test_fields_have_what_operators_need_and_no_secret() -> None:
    v = view(authorization=f"Bearer {TOKEN}", cookie=f"session={TOKEN}", x_team="blue",
             traceparent="00-" + "c" * 32 + "-" + "d" * 16 + "-01")
    d = Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED,
                      policy="ns[default]-policy[p]-rule[0]", dry_run=("deny x",))
    dl = DecisionLog("all", headers=["authorization", "cookie", "x-team"], redact=["x-team"])
    fields = dl.fields(v, d, 0.000321)
    assert fields["request_id"] == "r-1"  # http.id when there is no x-request-id
    assert (fields["method"], fields["host"], fields["path"]) == ("GET", "api", "/x")
    assert fields["decision"] == "deny" and fields["status"] == 403
    assert fields["reason"] == "rbac_denied" and fields["policy"].endswith("rule[0]")
    assert fields["dry_run"] == ["deny x"] and fields["latency_ms"] == 0.321
    assert fields["source_ip"] == "10.1.2.3" and fields["scope"] == "default"
    assert fields["trace_id"] == "c" * 32
    assert fields["headers"] == {"authorization": REDACTED, "cookie": REDACTED,
                                 "x-team": REDACTED}
    assert TOKEN not in repr(fields)


@pytest.mark.parametrize(
    ("mode", "allowed_logged", "denied_logged"),
    [("all", True, True), ("deny", False, True), ("none", False, False)],
)
def test_modes(mode: str, allowed_logged: bool, denied_logged: bool) -> None:
    dl = DecisionLog(mode)
    assert dl.wanted(Decision.allow()) is allowed_logged
    assert dl.wanted(Decision.deny(403, "", Reason.RBAC_DENIED)) is denied_logged


def test_sample_mode_logs_every_deny_and_some_allows() -> None:
    dl = DecisionLog("sample", sample_rate=0.25)
    dl._random.seed(7)
    picked = sum(dl.wanted(Decision.allow()) for _ in range(4000))
    assert 800 < picked < 1200
    assert all(dl.wanted(Decision.deny(401, "", Reason.JWT_INVALID)) for _ in range(50))


def test_emit_writes_one_line() -> None:
    with structlog.testing.capture_logs() as logs:
        DecisionLog("all").emit(view(), Decision.allow(), 0.001)
        DecisionLog("deny").emit(view(), Decision.allow(), 0.001)
    assert [entry["event"] for entry in logs] == ["decision"]


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        DecisionLog("loud")


def test_batched_lines_match_the_json_of_every_other_line() -> None:
    import asyncio
    import io
    import json

    from authz.decision_log import JsonLineBatcher

    sink = io.StringIO()

    async def emit_some() -> None:
        dl = DecisionLog("all", batcher=JsonLineBatcher(sink, interval=0.01))
        for _ in range(3):
            dl.emit(view(), Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED), 0.001)
        assert sink.getvalue() == ""  # nothing written on the request path
        await asyncio.sleep(0.05)

    structlog.contextvars.bind_contextvars(worker=1)
    try:
        asyncio.run(emit_some())
    finally:
        structlog.contextvars.unbind_contextvars("worker")
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert len(lines) == 3
    assert {k: lines[0][k] for k in ("event", "level", "decision", "status", "worker")} == {
        "event": "decision", "level": "info", "decision": "deny", "status": 403, "worker": 1}
    assert lines[0]["timestamp"].endswith("Z") and "T" in lines[0]["timestamp"]


def test_batched_lines_flush_when_full_and_on_demand() -> None:
    import io

    from authz.decision_log import JsonLineBatcher

    sink = io.StringIO()
    batcher = JsonLineBatcher(sink, max_lines=2)
    dl = DecisionLog("all", batcher=batcher)
    dl.emit(view(), Decision.allow(), 0.001)  # no event loop: written at once
    assert sink.getvalue().count("\n") == 1
    dl.flush()
    assert sink.getvalue().count("\n") == 1


def test_batched_writes_hold_whole_lines_within_pipe_buf() -> None:
    from authz.decision_log import PIPE_BUF, JsonLineBatcher

    class Writes:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> None:
            self.writes.append(text)

        def flush(self) -> None:
            pass

    sink = Writes()
    batcher = JsonLineBatcher(sink, max_lines=1000)  # type: ignore[arg-type]
    dl = DecisionLog("all", batcher=batcher)

    async def emit_many() -> None:
        for _ in range(200):  # ~300 bytes a line: several PIPE_BUF pieces
            dl.emit(view(), Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED), 0.001)
        dl.flush()

    import asyncio
    import json

    asyncio.run(emit_many())
    assert len(sink.writes) > 10
    for piece in sink.writes:
        assert len(piece.encode()) <= PIPE_BUF and piece.endswith("\n")
        assert all(json.loads(line)["event"] == "decision" for line in piece.splitlines())
    assert sum(piece.count("\n") for piece in sink.writes) == 200


def test_a_line_longer_than_pipe_buf_is_written_alone() -> None:
    from authz.decision_log import pipe_chunks

    assert list(pipe_chunks(["a" * 10, "b" * 20, "c" * 5], limit=16)) == [
        "a" * 10 + "\n", "b" * 20 + "\n", "c" * 5 + "\n"]
    assert list(pipe_chunks(["a", "b", "c"], limit=4)) == ["a\nb\n", "c\n"]


def test_decision_lines_and_other_lines_come_from_one_renderer(
        capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import json

    from authz.decision_log import JsonLineBatcher
    from authz.observe import configure_logging

    saved = structlog.get_config()
    configure_logging("json", "info")
    try:
        structlog.get_logger("authz").info("server_ready", version="x")
        sink = io.StringIO()
        DecisionLog("all", batcher=JsonLineBatcher(sink)).emit(view(), Decision.allow(), 0.001)
    finally:
        structlog.configure(**saved)
    other = json.loads(capsys.readouterr().err.splitlines()[-1])
    decision = json.loads(sink.getvalue())
    # The same processors add the same keys after the event's own, in the same order.
    assert list(other)[-3:] == list(decision)[-3:] == ["event", "level", "timestamp"]
