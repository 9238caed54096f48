"""The value grammar of Istio policies: path templates, CIDRs, ports.

Validation (``authz.policy``) and the compiled matchers (``authz.rbac.match``)
read the same grammar, so it lives here, below both.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "MATCH_ANY_TEMPLATE",
    "MATCH_ONE_TEMPLATE",
    "PORT_TEXT",
    "TEMPLATE_LITERAL",
    "Network",
    "is_path_template",
    "parse_cidr",
    "parse_port",
]

MATCH_ONE_TEMPLATE = "{*}"
MATCH_ANY_TEMPLATE = "{**}"
TEMPLATE_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")
"""A literal segment allowed next to a template operator (Istio ``IsValidLiteral``)."""


def is_path_template(value: str) -> bool:
    return MATCH_ONE_TEMPLATE in value or MATCH_ANY_TEMPLATE in value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(value: str) -> Network:
    """An IP (as /32 or /128) or a CIDR. Host bits are masked, as Envoy's CidrRange does.

    Raises ValueError for anything else.
    """
    address, slash, bits = value.partition("/")
    if "%" in address:
        raise ValueError(f"{value!r}: scoped IPv6 addresses are not allowed")
    ip = ipaddress.ip_address(address)  # no blanks, no leading zeros, as Go's parser
    if not slash:
        return ipaddress.ip_network(ip)
    if not PORT_TEXT.fullmatch(bits) or int(bits) > ip.max_prefixlen:
        raise ValueError(f"{value!r}: invalid prefix length {bits!r}")
    return ipaddress.ip_network(f"{ip}/{int(bits)}", strict=False)


PORT_TEXT = re.compile(r"[0-9]+")


def parse_port(value: str) -> int:
    """A decimal port in [0, 65535] (Istio ``ValidatePorts``). Raises ValueError."""
    if not PORT_TEXT.fullmatch(value):
        raise ValueError(f"port {value!r} is not a decimal number")
    port = int(value)
    if port > 65535:
        raise ValueError(f"port {value!r} is out of range [0, 65535]")
    return port
