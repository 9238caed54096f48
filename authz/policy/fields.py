"""What every Istio policy kind validates the same way: helpers, selector, targetRefs.

Messages follow Istio's CRD validation (``spec.targetRef.name: Required value``)
so a user sees what ``kubectl apply`` would have said.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authz.policy.errors import PolicyError
from authz.policy.load import Resource

__all__ = ["FieldParser", "TargetRef", "attaches", "type_name"]

MAX_TARGET_REFS = 16
_TARGET_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_TARGET_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    name: str
    group: str = ""
    namespace: str = ""


GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""The label Istio puts on a Gateway-API gateway's pods: the route's scope key for targetRefs."""
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


def attaches(
    policy_namespace: str,
    selector: Mapping[str, str] | None,
    target_refs: Sequence[TargetRef],
    scope_namespace: str,
    scope_labels: Mapping[str, str],
) -> bool:
    """Istio's ShouldAttachPolicy, for a sidecar workload or a Gateway-API gateway.

    A scope whose labels carry ``gateway.networking.k8s.io/gateway-name=<gw>`` is
    that gateway: policies in its namespace with a ``targetRef`` to Gateway ``<gw>``
    attach. Selector policies attach as for any workload (Istio's default,
    ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY=true). Other targetRefs (Service,
    ServiceEntry, GatewayClass) are for waypoints, which this server is not.
    The caller has already limited policies to the root and scope namespaces.
    """
    if target_refs:
        gateway = scope_labels.get(GATEWAY_NAME_LABEL)
        return gateway is not None and policy_namespace == scope_namespace and any(
            ref.kind == "Gateway" and ref.group == GATEWAY_API_GROUP and ref.name == gateway
            for ref in target_refs)
    if not selector:
        return True
    return all(scope_labels.get(k) == v for k, v in selector.items())


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class FieldParser:
    """Walks one resource, collecting every error instead of stopping at the first."""

    def __init__(self, resource: Resource) -> None:
        self.res = resource
        self.errors: list[PolicyError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(self.res.error(path, message))

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"must be a mapping, got {type_name(value)}")
        return None

    def known(self, data: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(f"{path}.{key}", f"unknown field {key!r} (known: {', '.join(allowed)})")

    def string(self, value: Any, path: str) -> str | None:
        if isinstance(value, str):
            return value
        self.error(path, f"must be a string, got {type_name(value)} (quote it)")
        return None

    def items(self, value: Any, path: str, limit: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            self.error(path, f"must be a list, got {type_name(value)}")
            return []
        if limit is not None and len(value) > limit:
            self.error(path, f"at most {limit} items are allowed, got {len(value)}")
        return value

    def selector(self, value: Any) -> Mapping[str, str] | None:
        if value is None:
            return None
        data = self.mapping(value, "spec.selector")
        if data is None:
            return None
        self.known(data, ("matchLabels",), "spec.selector")
        labels_raw = data.get("matchLabels")
        if labels_raw is None:
            return MappingProxyType({})
        labels = self.mapping(labels_raw, "spec.selector.matchLabels") or {}
        out: dict[str, str] = {}
        for key, raw in labels.items():
            path = f"spec.selector.matchLabels.{key}"
            if key == "":
                self.error(path, "key must not be empty")
            elif "*" in key:
                self.error(path, "wildcard not allowed in label key match")
            text = self.string(raw, path)
            if text is None:
                continue
            if "*" in text:
                self.error(path, "wildcard not allowed in label value match")
            elif len(text) > 63:
                self.error(path, "label value longer than 63 characters")
            out[str(key)] = text
        return MappingProxyType(out)

    def target_refs(self, spec: Mapping[str, Any]) -> tuple[TargetRef, ...]:
        raw: list[tuple[str, Any]] = []
        if spec.get("targetRef") is not None:
            raw.append(("spec.targetRef", spec["targetRef"]))
        if spec.get("targetRefs") is not None:
            items = self.items(spec["targetRefs"], "spec.targetRefs", MAX_TARGET_REFS)
            raw.extend((f"spec.targetRefs[{i}]", item) for i, item in enumerate(items))
        refs: list[TargetRef] = []
        for path, value in raw:
            data = self.mapping(value, path)
            if data is None:
                continue
            self.known(data, ("group", "kind", "name", "namespace"), path)
            kind = self.string(data.get("kind", ""), f"{path}.kind") or ""
            name = self.string(data.get("name", ""), f"{path}.name") or ""
            group = self.string(data.get("group", ""), f"{path}.group") or ""
            namespace = self.string(data.get("namespace", ""), f"{path}.namespace") or ""
            if not kind:
                self.error(f"{path}.kind", f"{path}.kind: Required value")
            elif not _TARGET_KIND.fullmatch(kind) or len(kind) > 63:
                self.error(f"{path}.kind", f"{path}.kind in body should match "
                           f"'{_TARGET_KIND.pattern}'")
            if not name:
                self.error(f"{path}.name", f"{path}.name: Required value")
            elif len(name) > 253:
                self.error(f"{path}.name", "at most 253 characters")
            if not _TARGET_GROUP.match(group) or len(group) > 253:
                self.error(f"{path}.group", f"{path}.group in body should match "
                           f"'{_TARGET_GROUP.pattern}'")
            if namespace:
                self.error(f"{path}.namespace",
                           "cross namespace referencing is not currently supported")
            refs.append(TargetRef(kind=kind, name=name, group=group, namespace=namespace))
        return tuple(refs)

