"""No token reaches a log line, whatever header an operator asks to see."""

from __future__ import annotations

import base64
import json

import pytest

from authz.decision import Decision, Reason
from authz.decision_log import DecisionLog
from authz.redact import REDACTED, fingerprint, header_values, scrub_tokens
from tests.test_decision_log import view


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


HEADER, PAYLOAD, SIGNATURE = (b64(b'{"alg":"RS256","kid":"k"}'),
                              b64(b'{"iss":"i","sub":"victim","exp":1}'), b64(b"s" * 64))
TOKEN = f"{HEADER}.{PAYLOAD}.{SIGNATURE}"
SPACED = ".".join([b64(b' {"alg":"RS256"}'), PAYLOAD, SIGNATURE])
JWE = f"{HEADER}.{b64(b'k' * 40)}.{b64(b'iv')}.{b64(b'c' * 50)}.{b64(b't' * 16)}"


def secrets_of(token: str) -> list[str]:
    return [token, *(part for part in token.split(".") if len(part) > 8)]


@pytest.mark.parametrize("value", [
    TOKEN, f"Bearer {TOKEN}", f"Token {SPACED}", f"a={TOKEN}; b=1", f"[{JWE}]",
    f"{TOKEN}, {TOKEN}",
])
def test_jose_shaped_values_are_fingerprinted_anywhere(value: str) -> None:
    shown = scrub_tokens(value)
    assert "[sha256:" in shown
    for secret in secrets_of(TOKEN) + secrets_of(JWE):
        assert secret not in shown


@pytest.mark.parametrize("value", [
    "tester/1", "api.example.com", "1.2.3.4", "v1.2.3", "a.b.c.d", "https://x.example/a.b.c",
])
def test_ordinary_values_are_kept(value: str) -> None:
    assert scrub_tokens(value) == value


def test_fingerprint_is_short_stable_and_not_the_value() -> None:
    assert fingerprint(TOKEN) == fingerprint(TOKEN) != fingerprint(TOKEN + "x")
    assert len(fingerprint(TOKEN)) == len("[sha256:]") + 12 and TOKEN not in fingerprint(TOKEN)


def test_token_headers_are_fingerprinted_whole_even_when_not_a_jwt() -> None:
    headers = {"x-token": "opaque-secret-value", "authorization": "Bearer abc",
               "cookie": f"s={TOKEN}", "user-agent": "t/1"}
    shown = header_values(headers, ["x-token", "authorization", "cookie", "user-agent", "nope"],
                          frozenset({"cookie"}), frozenset({"x-token"}))
    assert shown == {"x-token": fingerprint("opaque-secret-value"),
                     "authorization": fingerprint("Bearer abc"), "cookie": REDACTED,
                     "user-agent": "t/1"}


@pytest.mark.parametrize("named", ["x-token", "x-forwarded-access-token", "authorization"])
def test_decision_log_shows_no_token_in_the_header_an_operator_names(named: str) -> None:
    """The leak this closes: ``--decision-log-header x-token`` printed the token a
    ``fromHeaders: x-token`` rule read (bad signature, expired: every token)."""
    dl = DecisionLog("all", headers=[named], token_headers=lambda: frozenset({"x-token"}))
    decision = Decision.deny(401, "Jwt verification fails", Reason.JWT_INVALID)
    line = json.dumps(dl.fields(view(**{named.replace("-", "_"): f"Token {TOKEN}"}),
                                decision, 0.001))
    for secret in secrets_of(TOKEN):
        assert secret not in line
    assert "[sha256:" in line or "[redacted]" in line
