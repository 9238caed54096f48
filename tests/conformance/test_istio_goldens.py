"""Our server against real Envoy RBAC built from Istio's authz builder goldens.

For every HTTP golden of ``pilot/pkg/security/authz/builder/testdata`` the same
generated requests go through

* a real Envoy whose filter chain is the golden output (Istio's RBAC filters,
  behind Envoy's jwt_authn configured as Istio translates RequestAuthentication),
* a real Envoy with ext_authz in front of this server, loaded with the golden's
  input policies (and the same RequestAuthentication),

and both must answer with the same HTTP status. See docs/conformance.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance.generate import Request, generate
from tests.conformance.goldens import BUILDER, Case, discover, missing_reason
from tests.conformance.harness import (
    STATS,
    CaseRun,
    Suite,
    max_requests,
    plan,
    seed,
    send,
    workdir,
)
from tests.shared_data import require_shared

pytestmark = pytest.mark.e2e

CONCURRENCY = 24
MISSING = missing_reason()
CASES = discover()


@dataclass(frozen=True)
class Gap:
    """A real difference between this server and Istio's RBAC that this suite found.

    Its requests are left out of ``test_golden`` for the listed cases and checked by
    ``test_known_gap`` instead, marked ``xfail(strict=True)``: the gap stays visible,
    and the day it is fixed the XPASS fails and asks for this entry to go.
    """

    id: str
    cases: tuple[str, ...]
    reason: str
    applies: Callable[[Request], bool]


def _repeated_header(req: Request) -> bool:
    names = [k.lower() for k, _ in req.headers]
    return len(set(names)) < len(names)


KNOWN_GAPS: tuple[Gap, ...] = (
    Gap("repeated-header", ("multiple-policies",),
        "a header sent twice (x-abc: zz and x-abc: abc1): Envoy 1.40 RBAC's header matcher "
        "matches `request.headers[X-abc]` value abc1 against each occurrence (200), authz "
        "matches the occurrences joined with ',' ('zz,abc1', 403); ext_authz's headers map "
        "only carries the joined value (docs/envoy-contract.md, Repeated headers)",
        _repeated_header),
)


def _gaps_for(case_id: str) -> list[Gap]:
    return [g for g in KNOWN_GAPS if case_id in g.cases]


def _params() -> list[object]:
    if MISSING is not None:
        return [pytest.param(None, id="goldens-missing")]
    out: list[object] = []
    for case in CASES:
        marks: list[pytest.MarkDecorator] = []
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def _selected(request: pytest.FixtureRequest) -> list[Case]:
    wanted: set[str] = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        case = params.get("case")
        if isinstance(case, Case) and not case.skip:
            wanted.add(case.id)
        if isinstance(params.get("case_id"), str):
            wanted.add(params["case_id"])
    return [c for c in CASES if c.id in wanted]


@pytest.fixture(scope="module")
def suite(request: pytest.FixtureRequest) -> Iterator[Suite]:
    if MISSING is not None:
        require_shared(f"{BUILDER}/http")  # skips, or fails under CI
    cases = _selected(request)
    if not cases:
        pytest.skip("no runnable golden case selected")
    generated = {
        c.id: generate(c.policies, random.Random(f"{seed()}:{c.id}"),
                       (c.trust_domain or "cluster.local", *c.trust_domain_aliases),
                       limit=max_requests())
        for c in cases
    }
    print(f"\nauthz conformance seed {seed()} (AUTHZ_CONFORMANCE_SEED)")
    rig = Suite(plan(cases, generated), workdir())
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


@dataclass
class Outcome:
    request: Request
    golden: str
    ours: str


async def run_case(rig: Suite, run: CaseRun, requests: list[Request]) -> list[Outcome]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(req: Request) -> Outcome:
        tls = rig.pki.client_context(req.peer) if run.generated.tls else None
        token = rig.token(req)
        async with gate:
            golden, ours = await asyncio.gather(send(run.golden, req, token, tls),
                                                send(run.ours, req, token, tls))
        return Outcome(req, golden, ours)

    return list(await asyncio.gather(*(one(r) for r in requests)))


def _report(case: Case, run: CaseRun, bad: list[Outcome], total: int) -> str:
    lines = [f"case {case.id}: {len(bad)} of {total} requests differ "
             f"(seed {seed()}, rerun with AUTHZ_CONFORMANCE_SEED={seed()}; "
             f"policies {case.input}, goldens {', '.join(p.name for p in case.outputs)})"]
    for o in bad[:25]:
        lines.append(f"  golden RBAC {o.golden} vs authz {o.ours}: {o.request.describe()}")
    if len(bad) > 25:
        lines.append(f"  ... and {len(bad) - 25} more")
    return "\n".join(lines)


@pytest.mark.parametrize("case", _params())
async def test_golden(case: Case | None, suite: Suite) -> None:
    if case is None:
        require_shared(f"{BUILDER}/http")
        pytest.fail("the goldens are there, yet no case was collected")
    run = suite.runs[case.id]
    gaps = _gaps_for(case.id)
    requests = [r for r in run.requests() if not any(g.applies(r) for g in gaps)]
    started = time.monotonic()
    outcomes = await run_case(suite, run, requests)
    elapsed = time.monotonic() - started
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o.golden] = statuses.get(o.golden, 0) + 1
    bad = [o for o in outcomes if o.golden != o.ours]
    if dump := os.environ.get("AUTHZ_CONFORMANCE_DUMP"):
        path = Path(dump) / f"{case.id}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{o.golden}\t{o.ours}\t{o.request.describe()}\n"
                                for o in outcomes))
    STATS.append(
        f"{case.id}: {len(outcomes)} requests in {elapsed:.1f}s, golden statuses "
        f"{dict(sorted(statuses.items()))}, {len(bad)} differ"
        + (f"; cannot match: {'; '.join(sorted(set(run.generated.unreachable.values())))}"
           if run.generated.unreachable else "")
        + (f"; skipped ports: {run.skipped_ports}" if run.skipped_ports else "")
        + (f"; known gaps (test_known_gap): {', '.join(g.id for g in gaps)}" if gaps else ""))
    errors = [o for o in outcomes if o.golden.startswith("error") and o.ours.startswith("error")]
    assert len(errors) < len(outcomes), f"case {case.id}: no request got an HTTP answer"
    assert not bad, _report(case, run, bad, len(outcomes))


@pytest.mark.parametrize("gap,case_id", [
    pytest.param(g, c, id=f"{g.id}-{c}", marks=pytest.mark.xfail(strict=True, reason=g.reason))
    for g in KNOWN_GAPS for c in g.cases if MISSING is None])
async def test_known_gap(gap: Gap, case_id: str, suite: Suite) -> None:
    run = suite.runs[case_id]
    requests = [r for r in run.requests() if gap.applies(r)]
    if not requests:
        pytest.skip(f"seed {seed()} generated no request for gap {gap.id}")
    outcomes = await run_case(suite, run, requests)
    bad = [o for o in outcomes if o.golden != o.ours]
    assert not bad, _report(run.case, run, bad, len(outcomes))
