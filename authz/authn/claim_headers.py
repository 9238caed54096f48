"""``outputClaimToHeaders`` values, spelled exactly as Envoy 1.40's jwt_authn spells them.

Envoy (``authenticator.cc``, ``addJWTClaimToHeader``) reads the claim from the
payload as a protobuf ``Value`` and writes:

- a string as it is (an empty one writes no header);
- a bool as ``true``/``false``;
- a number that is whole and in ``[0, 2^64)`` as that integer (of the double: JSON
  numbers are doubles there, so ``12345678901234567`` is ``12345678901234568``);
  any other number with ``%f`` (six decimals: ``1.500000``, ``-7.000000``);
- a list or an object as the standard base64 (padded) of its JSON, as protobuf's
  JSON printer writes it: no spaces, numbers in their shortest ``%.15g``/``%.17g``
  form (``3``, ``1e+21``), ``<``/``>`` and a few invisible characters escaped;
- ``null`` or an absent claim: no header.

Measured against ``envoy`` 1.40 by tests/e2e/test_jwt_matrix.py (every shape, and
each one under a nested path).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["claim_value", "protobuf_json"]

_TWO_64 = 2.0**64
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t"}
_ESCAPED_RANGES = (
    (0x00, 0x1F), (0x3C, 0x3C), (0x3E, 0x3E), (0x7F, 0x7F), (0xAD, 0xAD), (0x600, 0x603),
    (0x6DD, 0x6DD), (0x70F, 0x70F), (0x17B4, 0x17B5), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x206A, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),
)
"""Code points protobuf's JSON printer writes as ``\\u`` and four hex digits (besides the
short escapes)."""


def _escaped(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _ESCAPED_RANGES)


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        short = _SHORT.get(ch)
        if short is not None:
            out.append(short)
        elif _escaped(ch):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _number(value: float) -> str:
    """protobuf's ``SimpleDtoa``: ``%.15g`` when it reads back the same, else ``%.17g``."""
    if not math.isfinite(value):
        return '"NaN"' if math.isnan(value) else ('"Infinity"' if value > 0 else '"-Infinity"')
    short = f"{value:.15g}"
    return short if float(short) == value else f"{value:.17g}"


def protobuf_json(value: Any) -> str:
    """``value`` (decoded JSON) as protobuf's ``MessageToJsonString`` prints a ``Value``.

    Object members keep the token's order; protobuf prints a ``Struct``'s members in
    its map's order, which no client can rely on (compare objects parsed)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_string(str(k))}:{protobuf_json(v)}"
                              for k, v in value.items()) + "}"
    return "[" + ",".join(protobuf_json(v) for v in value) + "]"


def claim_value(payload: Mapping[str, Any], claim: str) -> str | None:
    """The header value ``outputClaimToHeaders`` sends for ``claim`` (a dotted path into
    objects), or None when Envoy sends no header."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and 0 <= number < _TWO_64:
            return str(int(number))
        return f"{number:f}"
    return base64.b64encode(protobuf_json(value).encode()).decode()
