"""What a log line may show of a header value that can carry a token.

A token must never reach a log, whatever header an operator asks to see
(``--decision-log-header``) and at any log level. A value is shown as a short
fingerprint instead (``[sha256:0123456789ab]``: enough to tell two requests'
tokens apart or match one against a token you hold, useless to replay):

- the whole value of a header a ``jwtRules`` entry reads tokens from (and
  ``authorization``, the default place), whether or not the value parses;
- in any other header, every substring shaped like a JWS or JWE (two to four
  dots between base64url runs, the first of which decodes to a JSON object).

Headers on the sensitive list are replaced by ``[redacted]`` before any of this.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_TOKEN_HEADERS", "REDACTED", "fingerprint", "header_values", "scrub_tokens"]

REDACTED = "[redacted]"
DEFAULT_TOKEN_HEADERS = frozenset({"authorization"})
"""Where a rule without locations reads its token (Istio's default)."""

_COMPACT = re.compile(r"[A-Za-z0-9_-]{2,}={0,2}(?:\.[A-Za-z0-9_=-]*){2,4}")
"""A JOSE compact serialization: JWS (three parts) or JWE (five)."""


def fingerprint(value: str) -> str:
    """A short, stable, non-reversible stand-in for a secret value."""
    return f"[sha256:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}]"


def _is_jose(candidate: str) -> bool:
    first = candidate.split(".", 1)[0].rstrip("=")
    try:
        head = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
    except (binascii.Error, ValueError):
        return False
    return head.lstrip(b" \t\r\n")[:1] == b"{"


def scrub_tokens(value: str) -> str:
    """``value`` with every JOSE-shaped substring replaced by its fingerprint."""
    if value.count(".") < 2:
        return value
    return _COMPACT.sub(
        lambda m: fingerprint(m.group()) if _is_jose(m.group()) else m.group(), value)


def header_values(headers: Mapping[str, str], names: Iterable[str], sensitive: frozenset[str],
                  token_headers: frozenset[str]) -> dict[str, str]:
    """The named headers present in ``headers``, as a log line may show them."""
    out: dict[str, str] = {}
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        if name in sensitive:
            out[name] = REDACTED
        elif name in token_headers or name in DEFAULT_TOKEN_HEADERS:
            out[name] = fingerprint(value)
        else:
            out[name] = scrub_tokens(value)
    return out
