"""Which rules a set of requests exercised: fed by explanations, never by the engine.

``authz test --coverage`` passes every case's ``Explanation`` to a ``Coverage``;
the serving path has no recorder and pays nothing. A rule counts each case that
reached it, split by outcome: an AuthorizationPolicy rule matched or was evaluated
and did not match; a jwtRule verified a token or rejected one. A rule is covered
when both outcomes were seen, so a DENY rule no case made deny, or a jwtRule no
case sent a bad token to, shows up as half covered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from authz.explain.walk import Explanation, Locator
from authz.pipeline.snapshot import Snapshot
from authz.policy.errors import Location

__all__ = ["Coverage", "CoverageItem"]


@dataclass(slots=True)
class CoverageItem:
    """One rule and what the cases did to it."""

    kind: str
    """``rule`` (AuthorizationPolicy) or ``jwtRule``."""
    name: str
    location: Location | None
    positive: int = 0
    """Cases where the rule matched (a jwtRule: verified a token)."""
    negative: int = 0
    """Cases where it was evaluated and did not match (a jwtRule: rejected a token)."""

    @property
    def outcomes(self) -> int:
        return int(self.positive > 0) + int(self.negative > 0)

    @property
    def reached(self) -> bool:
        return self.positive + self.negative > 0

    def words(self) -> tuple[str, str]:
        return ("matched", "not matched") if self.kind == "rule" else ("verified", "rejected")

    def to_json(self) -> dict[str, Any]:
        yes, no = self.words()
        return {"kind": self.kind, "name": self.name,
                "location": str(self.location) if self.location else None,
                yes.replace(" ", "_"): self.positive, no.replace(" ", "_"): self.negative,
                "covered": self.outcomes == 2}


@dataclass(slots=True)
class Coverage:
    """Every rule of the snapshots given, with counts; ``record`` adds one case."""

    items: dict[tuple[str, str], CoverageItem] = field(default_factory=dict)

    def add_snapshot(self, snapshot: Snapshot, locate: Locator | None = None) -> None:
        """List every rule up front, so rules no case reached appear with zeros."""
        for policy in snapshot.authorization.policies:
            if policy.action.value == "CUSTOM" or policy.target_refs:
                continue  # never evaluated by this server (see authz.policy.authorization)
            ref = f"AuthorizationPolicy {policy.ref}"
            for i in range(len(policy.rules)):
                name = policy.rule_name(i)
                where = locate(ref, f"spec.rules[{i}]") if locate else None
                self.items.setdefault(("rule", name), CoverageItem(
                    "rule", name, where or policy.location))
        for rule in snapshot.jwt_rules:
            head, _, index = rule.source.rpartition(" ")
            where = locate(head, f"spec.{index}") if locate and head else None
            self.items.setdefault(("jwtRule", rule.source),
                                  CoverageItem("jwtRule", rule.source, where))

    def record(self, explanation: Explanation) -> None:
        for jr in explanation.jwt_rules:
            item = self.items.get(("jwtRule", jr.source))
            if item is not None:
                item.positive += jr.verified
                item.negative += jr.rejected
        for policy in explanation.policies:
            for rule in policy.rules:
                item = self.items.get(("rule", rule.name))
                if item is not None and rule.evaluated:
                    if rule.matched:
                        item.positive += 1
                    else:
                        item.negative += 1

    @property
    def percent(self) -> float:
        total = 2 * len(self.items)
        if not total:
            return 100.0
        return 100.0 * sum(i.outcomes for i in self.items.values()) / total

    def ordered(self) -> Iterable[CoverageItem]:
        return sorted(self.items.values(), key=lambda i: (
            i.location.file if i.location else "", i.location.line if i.location else 0,
            i.name))

    def text(self) -> str:
        lines = [f"coverage: {self.percent:.1f}% of rule outcomes "
                 f"({sum(i.outcomes for i in self.items.values())}/{2 * len(self.items)}; "
                 "each rule should both match and not match, each jwtRule both verify and "
                 "reject a token)"]
        for item in self.ordered():
            yes, no = item.words()
            where = f"{item.location}: " if item.location else ""
            state = ("NOT REACHED" if not item.reached else
                     "covered" if item.outcomes == 2 else "half covered")
            lines.append(f"  {where}{item.name}: {yes} {item.positive}, {no} {item.negative}"
                         f"  [{state}]")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"percent": round(self.percent, 1),
                "items": [i.to_json() for i in self.ordered()]}
