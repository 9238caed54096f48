"""Which workload a request is for: the namespace and labels policies select on.

Istio selects policies by the workload a sidecar serves. A single ext_authz server
serves many routes, so each Envoy route says which workload it fronts through
``ExtAuthzPerRoute.check_settings.context_extensions``:

- ``namespace``: the workload namespace;
- ``labels``: ``k=v,k2=v2``, the workload labels ``selector.matchLabels`` match.

Without a ``namespace`` key the namespace comes from the destination principal
(``spiffe://<td>/ns/<ns>/sa/<sa>``, the identity of the sidecar Envoy runs as),
else from the configured default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from authz.errors import UsageError

__all__ = [
    "LABELS_KEY", "NAMESPACE_KEY", "Scope", "ScopeError", "namespace_from_spiffe", "parse_labels",
    "parse_scope", "resolve_scope",
]

NAMESPACE_KEY = "namespace"
LABELS_KEY = "labels"


class ScopeError(UsageError, ValueError):
    """A scope (namespace and ``k=v,k2=v2`` labels) that cannot be read. From a
    route's context extensions the request is denied: fix the route's
    ``context_extensions``. From ``--labels`` or ``--route`` it is a usage error
    (exit 2): write the labels as ``k=v,k2=v2``."""


@dataclass(frozen=True, slots=True)
class Scope:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    key: tuple[str, tuple[tuple[str, str], ...]] = field(
        init=False, repr=False, compare=False)
    """Hashable identity (namespace, sorted labels): what per-scope memos key on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, tuple(sorted(self.labels.items()))))

    def __str__(self) -> str:
        if not self.labels:
            return self.namespace
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.namespace}[{labels}]"


def parse_labels(text: str) -> Mapping[str, str]:
    """Parse ``k=v,k2=v2`` (blanks around items ignored; an empty text is no labels)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ScopeError(f"label {item!r} is not of the form key=value")
        labels[key] = value
    return MappingProxyType(labels)


def namespace_from_spiffe(principal: str) -> str | None:
    """The ``<ns>`` of ``spiffe://<td>/ns/<ns>/sa/<sa>``, or None for other forms."""
    if not principal.startswith("spiffe://"):
        return None
    parts = principal[len("spiffe://") :].split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and parts[2]:
        return parts[2]
    return None


def resolve_scope(
    context_extensions: Mapping[str, str], destination_principal: str, default_namespace: str,
    parse: Callable[[str, str, str, str], Scope] | None = None,
) -> Scope:
    """The request's scope. ``parse``: ``parse_scope`` or the snapshot's memoized copy
    of it (``Snapshot.scope``): routes and the identity Envoy runs as repeat on every
    request, so each distinct scope is parsed once (a ``ScopeError`` is not
    remembered: it is raised again)."""
    return (parse or parse_scope)(
        context_extensions.get(NAMESPACE_KEY, ""), context_extensions.get(LABELS_KEY, ""),
        destination_principal, default_namespace)


def parse_scope(namespace: str, labels: str, destination_principal: str,
           default_namespace: str) -> Scope:
    namespace = namespace.strip()
    if not namespace:
        namespace = namespace_from_spiffe(destination_principal) or default_namespace
    return Scope(namespace=namespace, labels=parse_labels(labels))
