"""Istio's authz builder golden files as conformance cases.

``../shared/conformance/istio-authz-builder`` holds Istio's
``pilot/pkg/security/authz/builder/testdata`` verbatim: ``X-in.yaml`` is the
AuthorizationPolicy input and ``X-out.yaml`` / ``X-outN.yaml`` the Envoy HTTP
filters Istio's builder generated from it (see ``MANIFEST.txt``). The files are
read in place, never copied into this project.

What the golden files do not carry comes from Istio's ``builder_test.go``
(``TestGenerator_GenerateHTTP``): the trust-domain bundle of the alias cases,
the shared input of the CUSTOM provider cases, and the proxy (namespace ``foo``,
labels ``app: httpbin, version: v1``) the policies were listed for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.shared_data import missing_message, shared_path

BUILDER = "conformance/istio-authz-builder"
"""Where the goldens are in the shared corpus (``tests/shared_data.py``)."""
BUILDER_DIR = shared_path(BUILDER)

#: The workload builder_test.go lists policies for (``node()``): every golden is for it.
NAMESPACE = "foo"
LABELS: Mapping[str, str] = {"app": "httpbin", "version": "v1"}

#: builder_test.go ``tdBundle`` per golden (trustdomain.NewBundle(domain, aliases)).
#: Every other case has an empty bundle, i.e. no alias expansion, which is what our
#: server does with its default trust domain ``cluster.local`` and no aliases.
TRUST_DOMAINS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "simple-policy-td-aliases": ("td1", ("cluster.local",)),
    "simple-policy-multiple-td-aliases": ("td1", ("cluster.local", "some-td")),
    "simple-policy-principal-with-wildcard": ("td1", ("foobar",)),
    "td-aliases-source-principal": ("new-td", ("old-td", "some-trustdomain")),
}

CUSTOM_REASON = (
    "CUSTOM action: Istio delegates these requests to an external ext_authz provider from "
    "meshConfig extensionProviders (Go code in builder_test.go, not in the goldens); this "
    "server is such a provider and does not evaluate CUSTOM policies itself")
TCP_REASON = (
    "TCP golden: the output is a network filter (envoy.filters.network.rbac / ext_authz) on a "
    "TCP filter chain; this server answers HTTP ext_authz Checks only")
OUT_RE = re.compile(r"^(?P<stem>.+)-out(?P<n>\d*)\.yaml$")


@dataclass(frozen=True)
class Case:
    """One golden: the policies Istio was given and the HTTP filters it produced."""

    id: str
    input: Path | None
    outputs: tuple[Path, ...]
    skip: str | None = None
    trust_domain: str | None = None
    trust_domain_aliases: tuple[str, ...] = ()
    policies: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)

    def filters(self) -> list[dict[str, Any]]:
        """The golden HTTP filters, in Istio's order (out1 before out2)."""
        out = []
        for path in self.outputs:
            doc = yaml.safe_load(path.read_text())
            if not isinstance(doc, dict) or "name" not in doc:
                raise ValueError(f"{path}: not an HttpFilter")
            out.append(doc)
        return out

    def server_args(self) -> list[str]:
        args: list[str] = []
        if self.trust_domain:
            args += ["--trust-domain", self.trust_domain]
        for alias in self.trust_domain_aliases:
            args += ["--trust-domain-alias", alias]
        return args


def missing_reason() -> str | None:
    """Why the goldens cannot be used, or None when they are there."""
    if not (BUILDER_DIR / "http").is_dir():
        return missing_message(f"{BUILDER}/http")
    return None


def load_policies(path: Path) -> tuple[Mapping[str, Any], ...]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return tuple(d for d in docs if d.get("kind") == "AuthorizationPolicy")


def _groups(directory: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*-out*.yaml")):
        m = OUT_RE.match(path.name)
        if m:
            groups.setdefault(m["stem"], []).append(path)
    for paths in groups.values():
        paths.sort(key=lambda p: int(OUT_RE.match(p.name)["n"] or 0))  # type: ignore[index]
    return groups


def _http_case(stem: str, outputs: list[Path], groups: Mapping[str, list[Path]]) -> Case:
    directory = outputs[0].parent
    base = stem.removeprefix("extended-")
    if base.startswith("custom-"):
        return Case(stem, None, tuple(outputs), skip=CUSTOM_REASON)
    if stem.startswith("extended-"):
        originals = groups.get(base, [])
        if len(originals) == len(outputs) and all(
                a.read_bytes() == b.read_bytes() for a, b in zip(originals, outputs, strict=True)):
            return Case(stem, None, tuple(outputs), skip=(
                f"byte-identical to the {base} goldens (see MANIFEST.txt), which run as "
                f"case {base!r}"))
    source = directory / f"{base}-in.yaml"
    if not source.exists():
        return Case(stem, None, tuple(outputs), skip=f"no input {source.name} for this golden")
    policies = load_policies(source)
    if any((p.get("spec") or {}).get("action") == "CUSTOM" for p in policies):
        return Case(stem, source, tuple(outputs), skip=CUSTOM_REASON)
    domain, aliases = TRUST_DOMAINS.get(base, (None, ()))
    return Case(stem, source, tuple(outputs), trust_domain=domain,
                trust_domain_aliases=aliases, policies=policies)


def discover() -> list[Case]:
    """Every golden output group, http first; skipped ones carry the reason."""
    if missing_reason():
        return []
    groups = _groups(BUILDER_DIR / "http")
    cases = [_http_case(stem, outputs, groups) for stem, outputs in groups.items()]
    tcp = BUILDER_DIR / "tcp"
    if tcp.is_dir():
        cases += [Case(f"tcp/{stem}", None, tuple(outputs), skip=TCP_REASON)
                  for stem, outputs in _groups(tcp).items()]
    return cases
