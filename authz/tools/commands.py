"""``authz keys``, ``authz jwks`` and ``authz token``: argument parsing and output only.

Each handler returns the exit code: 0 on success, 1 on a problem the user can fix
(the message names the file or flag). Argparse usage errors exit 2 on their own.
Key material never reaches stdout or stderr; only public JWKs and minted tokens do.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from authz.tools import jwks, keys, token

__all__ = [
    "jwks_from_pem",
    "keys_generate",
    "read_token_argument",
    "register",
    "token_inspect",
    "token_mint",
]

Handler = Callable[[argparse.Namespace], int]


def _guarded(name: str, handler: Handler) -> Handler:
    """Turn ToolError into a one-line message on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except keys.ToolError as exc:
            print(f"authz {name}: {exc}", file=sys.stderr)
            return 1

    return run


def keys_generate(args: argparse.Namespace) -> int:
    """Write a new private key (mode 0600) and its public JWKS."""
    private_path = Path(args.private_key)
    jwks_path = Path(args.jwks)
    if private_path.resolve() == jwks_path.resolve():
        raise keys.ToolError(f"{private_path}: --private-key and --jwks name the same file")
    if args.type != "rsa" and args.bits is not None:
        raise keys.ToolError("--bits applies to --type rsa only")
    if args.type != "ec" and args.curve is not None:
        raise keys.ToolError("--curve applies to --type ec only")
    keys.refuse_existing([private_path, jwks_path], args.force)
    key = keys.generate_private_key(args.type, args.bits or 2048, args.curve or "P-256")
    entry = jwks.jwk_entry(key, kid=args.kid)
    keys.write_new_file(private_path, keys.private_key_pem(key), 0o600, args.force)
    try:
        keys.write_new_file(jwks_path, jwks.dumps(jwks.jwks_document([entry])).encode(),
                            0o644, args.force)
    except keys.ToolError as exc:
        # A key without its JWKS is useless and would block the retry without --force.
        private_path.unlink(missing_ok=True)
        raise keys.ToolError(f"{exc} (removed the new private key {private_path})") from None
    print(f"wrote {private_path} (private key, mode 0600) and {jwks_path} (JWKS); "
          f"kid {entry['kid']}, alg {entry['alg']}")
    return 0


def jwks_from_pem(args: argparse.Namespace) -> int:
    """Print a JWKS for the public keys in PEM, certificate or OpenSSH files."""
    if args.kid is not None and len(args.files) != 1:
        raise keys.ToolError("--kid needs exactly one FILE (several keys cannot share a kid)")
    entries = []
    for path in args.files:
        key = keys.load_public_key(path)
        try:
            entries.append(jwks.jwk_entry(key, kid=args.kid, alg=args.alg))
        except keys.ToolError as exc:
            raise keys.ToolError(f"{path}: {exc}") from None
    sys.stdout.write(jwks.dumps(jwks.jwks_document(entries)))
    return 0


def token_mint(args: argparse.Namespace) -> int:
    """Print a signed JWT whose kid matches what ``jwks from-pem`` gives the key."""
    key = keys.load_private_key(args.key)
    now = int(time.time())
    claims = token.build_claims(
        iss=args.iss,
        sub=args.sub,
        aud=args.aud or [],
        now=now,
        ttl=token.parse_duration(args.ttl),
        nbf_offset=(token.parse_duration(args.nbf_offset, signed=True)
                    if args.nbf_offset is not None else None),
        extra=token.parse_claims(args.claim or [], args.claim_json or []),
    )
    try:
        minted = token.mint(key, claims, kid=args.kid, alg=args.alg)
    except keys.ToolError as exc:
        raise keys.ToolError(f"{args.key}: {exc}") from None
    print(minted)
    return 0


def read_token_argument(value: str) -> str:
    """TOKEN itself, ``@FILE`` for a file, or ``-`` for stdin (keeps tokens out of ps)."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read(keys.MAX_KEY_FILE_BYTES)
        except FileNotFoundError:
            raise keys.ToolError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise keys.ToolError(f"{path}: cannot read: {reason or exc}") from None
    return value


def token_inspect(args: argparse.Namespace) -> int:
    """Print header, payload and warnings of a JWT, stating it is not verified."""
    raw = read_token_argument(args.token)
    decoded = token.decode_unverified(raw)
    report = token.inspect_report(decoded, int(time.time()))
    if not args.policy:
        sys.stdout.write(jwks.dumps(report))
        print("authz token inspect: signature NOT verified", file=sys.stderr)
        return 0
    from authz.tools.check import verdict_for_token

    verdict = verdict_for_token(raw, args.policy, args.namespace, args.labels, args.jwks,
                                args.url)
    report.update(verdict)
    sys.stdout.write(jwks.dumps(report))
    return 0 if verdict["accepted"] else 1


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "keys", help="generate signing keys for test issuers",
        description="Generate a signing key and its public JWKS.")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = actions.add_parser(
        "generate", help="write a private key (PKCS#8 PEM, mode 0600) and its JWKS",
        description="Write a new private key as PKCS#8 PEM, created with mode 0600, and the "
        "public JWKS for a RequestAuthentication's jwks/jwksUri. Existing files are never "
        "overwritten without --force. kid defaults to the RFC 7638 thumbprint.")
    gen.add_argument("--type", required=True, choices=keys.KEY_TYPES, help="key type")
    gen.add_argument("--bits", type=int, help="RSA key size (default 2048)")
    gen.add_argument("--curve", choices=keys.CURVES, help="EC curve (default P-256)")
    gen.add_argument("--kid", help="key id (default: RFC 7638 thumbprint)")
    gen.add_argument("--private-key", required=True, metavar="FILE", help="private key output")
    gen.add_argument("--jwks", required=True, metavar="FILE", help="public JWKS output")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    gen.set_defaults(func=_guarded("keys generate", keys_generate))


def _add_jwks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "jwks", help="build JWKS documents from existing keys",
        description="Build JWKS documents from keys you already have.")
    actions = parser.add_subparsers(dest="jwks_command", metavar="ACTION", required=True)
    frm = actions.add_parser(
        "from-pem", help="print a JWKS for PEM keys, certificates or OpenSSH public keys",
        description="Print a JWKS for PEM public keys, PEM private keys (public half only), "
        "X.509 PEM certificates and OpenSSH public keys (ssh-rsa, ecdsa-sha2-nistp*, "
        "ssh-ed25519). kid defaults to the RFC 7638 thumbprint.")
    frm.add_argument("files", nargs="+", metavar="FILE", help="key or certificate file")
    frm.add_argument("--kid", help="key id (only with one FILE; default: thumbprint)")
    frm.add_argument("--alg", help="JWS alg (default: RS256, ES256/384/512 by curve, EdDSA)")
    frm.set_defaults(func=_guarded("jwks from-pem", jwks_from_pem))


def _add_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "token", help="mint or inspect JWTs",
        description="Mint test JWTs or decode JWTs for debugging.")
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    mint = actions.add_parser(
        "mint", help="print a signed JWT",
        description="Print a signed JWT. kid defaults to the thumbprint 'authz jwks from-pem' "
        "gives the key; alg defaults from the key type. A negative --nbf-offset needs '=' "
        "(--nbf-offset=-30s).")
    mint.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key file")
    mint.add_argument("--iss", required=True, help="issuer (RequestAuthentication issuer)")
    mint.add_argument("--sub", required=True, help="subject")
    mint.add_argument("--aud", action="append", metavar="AUD",
                      help="audience (repeatable; several make a list)")
    mint.add_argument("--ttl", default="1h", help="lifetime: 90, 30s, 15m, 1h, 7d (default 1h)")
    mint.add_argument("--nbf-offset", metavar="DURATION",
                      help="set nbf to now plus this (may be negative)")
    mint.add_argument("--claim", action="append", metavar="NAME=VALUE",
                      help="string claim (repeatable)")
    mint.add_argument("--claim-json", action="append", metavar="NAME=JSON",
                      help="claim with a JSON value, e.g. groups='[\"a\"]' (repeatable)")
    mint.add_argument("--kid", help="key id header (default: RFC 7638 thumbprint)")
    mint.add_argument("--alg", help="JWS alg (default: RS256, ES256/384/512 by curve, EdDSA)")
    mint.set_defaults(func=_guarded("token mint", token_mint))
    insp = actions.add_parser(
        "inspect", help="decode a JWT WITHOUT verifying it",
        description="Decode a JWT's header and payload WITHOUT verifying the signature and "
        "print them as JSON with expires_in_seconds and warnings. The signature is never "
        "printed.")
    insp.add_argument("token", metavar="TOKEN|@FILE|-",
                      help="the token, @FILE to read it from a file, or - for stdin")
    insp.add_argument("--policy", action="append", metavar="PATH",
                      help="also say whether these policies' RequestAuthentications accept "
                      "the token, and why not (exit 1 if not)")
    insp.add_argument("--namespace", help="scope namespace for --policy (default: default)")
    insp.add_argument("--labels", help="scope labels k=v,... for --policy")
    insp.add_argument("--jwks", metavar="FILE", help="JWKS file for --policy (default: live)")
    insp.add_argument("--url", default="http://localhost/",
                      help="request URL used for --policy (host and path for the realm)")
    insp.set_defaults(func=_guarded("token inspect", token_inspect))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the 'keys', 'jwks' and 'token' sub-commands; each parser sets defaults func=<callable(args) -> int>."""  # noqa: E501
    _add_keys(sub)
    _add_jwks(sub)
    _add_token(sub)
