"""What an AuthorizationPolicy's ``when`` keys and field values may hold.

A ``when[].key`` is parsed once into an ``Attribute`` and its names (a header, a
claim path, Envoy metadata), and every value Istio validates (paths, CIDRs, ports,
service accounts, trust domains) is checked here the way ``ValidateAuthorizationPolicy``
checks it (reference B.3): the rules of the language, apart from walking a resource
(authorization.py) and from matching requests (rbac/).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType

from authz.policy import grammar

__all__ = [
    "CONDITION_CHECKS",
    "MAX_SERVICE_ACCOUNT_LENGTH",
    "OPERATION_CHECKS",
    "SOURCE_CHECKS",
    "Attribute",
    "bracket_names",
    "check_cidr",
    "check_path",
    "check_port",
    "check_service_account",
    "check_trust_domain",
    "parse_condition_key",
]

MAX_SERVICE_ACCOUNT_LENGTH = 320


class Attribute(StrEnum):
    """The ``when[].key`` attributes Istio accepts (reference B.3)."""

    REQUEST_HEADER = "request.headers"
    SOURCE_IP = "source.ip"
    REMOTE_IP = "remote.ip"
    SOURCE_NAMESPACE = "source.namespace"
    SOURCE_PRINCIPAL = "source.principal"
    SOURCE_SERVICE_ACCOUNT = "source.serviceAccount"
    SOURCE_TRUST_DOMAIN = "source.trustDomain"
    REQUEST_PRINCIPAL = "request.auth.principal"
    REQUEST_AUDIENCES = "request.auth.audiences"
    REQUEST_PRESENTER = "request.auth.presenter"
    REQUEST_CLAIMS = "request.auth.claims"
    DESTINATION_IP = "destination.ip"
    DESTINATION_PORT = "destination.port"
    CONNECTION_SNI = "connection.sni"
    ENVOY_METADATA = "experimental.envoy.filters"


_PLAIN_KEYS = {a.value: a for a in Attribute}
_BRACKETED = (Attribute.REQUEST_HEADER, Attribute.REQUEST_CLAIMS)
_RETIRED_KEYS = ("destination.namespace", "destination.labels", "destination.name",
                 "destination.user")


def bracket_names(text: str) -> tuple[str, ...] | None:
    """``[a][b]`` -> (a, b); anything else that is ``[...]`` -> the whole content
    as one name (Istio ``extractNameInNestedBrackets``); None if not bracketed."""
    names: list[str] = []
    pos = 0
    while pos < len(text):
        end = -1
        if text[pos] == "[":
            for i in range(pos + 1, len(text)):
                if text[i] == "[":
                    break
                if text[i] == "]":
                    end = i
                    break
        if end == -1:
            if text.startswith("[") and text.endswith("]") and len(text) >= 2:
                return (text[1:-1],)
            return None
        names.append(text[pos + 1 : end])
        pos = end + 1
    return tuple(names) if names else None


def _map_key_ok(key: str) -> bool:
    """Istio ``validateMapKey``: ``a[b]`` with a non-empty ``b``."""
    open_at = key.find("[")
    return key.endswith("]") and 0 < open_at < len(key) - 2


def parse_condition_key(key: str) -> tuple[Attribute, tuple[str, ...]]:
    """Split a ``when`` key into its attribute and names. Raises ValueError."""
    if key in _PLAIN_KEYS and key not in _BRACKETED and key != Attribute.ENVOY_METADATA:
        return _PLAIN_KEYS[key], ()
    for retired in _RETIRED_KEYS:
        if key == retired or key.startswith(retired + "["):
            raise ValueError(f"attribute {key!r} is no longer supported")
    if key.startswith(Attribute.REQUEST_HEADER + "["):
        if not _map_key_ok(key):
            raise ValueError(f"bad key {key!r}: should have the form request.headers[Name]")
        return Attribute.REQUEST_HEADER, (key[len(Attribute.REQUEST_HEADER) + 1 : -1].lower(),)
    if key.startswith(Attribute.REQUEST_CLAIMS + "["):
        names = bracket_names(key[len(Attribute.REQUEST_CLAIMS) :])
        if not _map_key_ok(key) or names is None:
            raise ValueError(f"bad key {key!r}: should have the form request.auth.claims[a][b]")
        return Attribute.REQUEST_CLAIMS, names
    if key.startswith(Attribute.ENVOY_METADATA + "."):
        if not _map_key_ok(key):
            raise ValueError(
                f"bad key {key!r}: should have the form experimental.envoy.filters.<f>[<key>]"
            )
        open_at = key.index("[")
        return Attribute.ENVOY_METADATA, (key[len("experimental.") : open_at],
                                          key[open_at + 1 : -1])
    raise ValueError(f"unknown attribute {key!r}")


def check_path(value: str) -> str | None:
    """Istio ``CheckValidPathTemplate`` (+ Envoy needs templates to start with ``/``)."""
    template = grammar.is_path_template(value)
    if template and not value.startswith("/"):
        return f"path template {value!r} must start with '/'"
    any_seen = False
    for segment in value.strip("/").split("/"):
        if segment in (grammar.MATCH_ONE_TEMPLATE, grammar.MATCH_ANY_TEMPLATE):
            if any_seen:
                return f"invalid path {value!r}: {{**}} is not the last operator"
            any_seen = segment == grammar.MATCH_ANY_TEMPLATE
            continue
        if "{" in segment or "}" in segment:
            return f"invalid path {value!r}: '{{' or '}}' outside a supported template"
        if template and not grammar.TEMPLATE_LITERAL.fullmatch(segment):
            return f"invalid path {value!r}: segment {segment!r} is not a valid literal"
    return None


def check_cidr(value: str) -> str | None:
    try:
        grammar.parse_cidr(value)
    except ValueError:
        return f"invalid IP address or CIDR range {value!r}"
    return None


def check_port(value: str) -> str | None:
    try:
        grammar.parse_port(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_service_account(value: str) -> str | None:
    if len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
        return f"service account longer than {MAX_SERVICE_ACCOUNT_LENGTH} characters"
    if "*" in value:
        return f"service account {value!r}: wildcards are not supported"
    parts = value.split("/")
    if len(parts) > 2 or not all(parts):
        return f"service account {value!r} must be <namespace>/<name> or <name>"
    return None


def check_trust_domain(value: str) -> str | None:
    if value.count("*") > 1:
        return f"trust domain {value!r}: at most one '*' is supported"
    return None


SOURCE_CHECKS: Mapping[str, Callable[[str], str | None]] = MappingProxyType({
    "ipBlocks": check_cidr, "notIpBlocks": check_cidr,
    "remoteIpBlocks": check_cidr, "notRemoteIpBlocks": check_cidr,
    "serviceAccounts": check_service_account, "notServiceAccounts": check_service_account,
    "trustDomains": check_trust_domain, "notTrustDomains": check_trust_domain,
})
OPERATION_CHECKS: Mapping[str, Callable[[str], str | None]] = MappingProxyType({
    "ports": check_port, "notPorts": check_port, "paths": check_path, "notPaths": check_path,
})
CONDITION_CHECKS: Mapping[Attribute, Callable[[str], str | None]] = MappingProxyType({
    Attribute.SOURCE_IP: check_cidr,
    Attribute.REMOTE_IP: check_cidr,
    Attribute.DESTINATION_IP: check_cidr,
    Attribute.DESTINATION_PORT: check_port,
    Attribute.SOURCE_SERVICE_ACCOUNT: check_service_account,
    Attribute.SOURCE_TRUST_DOMAIN: check_trust_domain,
})
