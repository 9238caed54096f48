"""The keys/jwks/token sub-commands, driven through register() as authz/cli.py does."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import shlex
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from authz.tools import jwks, keys
from authz.tools.commands import register

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tools.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    return parser


def run(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    code = args.func(args)
    assert isinstance(code, int)
    return code


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def generate(key_type: str, *extra: str, name: str = "k") -> int:
    return run("keys", "generate", "--type", key_type, "--private-key", f"{name}.pem",
               "--jwks", f"{name}.json", *extra)


def out_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def ssh_pub(key: keys.PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)


def certificate(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


# --- register() contract ---------------------------------------------------------------


def test_register_adds_three_commands_each_with_func() -> None:
    parser = argparse.ArgumentParser(prog="authz")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    assert set(sub.choices) == {"keys", "jwks", "token"}
    for argv in (["keys", "generate", "--type", "rsa", "--private-key", "a", "--jwks", "b"],
                 ["jwks", "from-pem", "x"],
                 ["token", "mint", "--key", "k", "--iss", "i", "--sub", "s"],
                 ["token", "inspect", "t"]):
        assert callable(parser.parse_args(argv).func)


@pytest.mark.parametrize(
    "argv",
    [["keys"], ["jwks"], ["token"], ["keys", "generate"], ["keys", "generate", "--type", "dsa",
     "--private-key", "a", "--jwks", "b"], ["jwks", "from-pem"], ["token", "mint", "--key", "k"],
     ["keys", "generate", "--type", "ec", "--curve", "P-192", "--private-key", "a", "--jwks",
      "b"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --- keys generate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "extra", "kty", "alg"),
    [
        ("rsa", [], "RSA", "RS256"),
        ("rsa", ["--bits", "3072"], "RSA", "RS256"),
        ("ec", [], "EC", "ES256"),
        ("ec", ["--curve", "P-384"], "EC", "ES384"),
        ("ec", ["--curve", "P-521"], "EC", "ES512"),
        ("ed25519", [], "OKP", "EdDSA"),
    ],
)
def test_generate_then_from_pem_gives_same_key(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], key_type: str, extra: list[str],
    kty: str, alg: str
) -> None:
    assert generate(key_type, *extra) == 0
    summary = capsys.readouterr().out
    doc = json.loads((in_tmp / "k.json").read_text())
    [entry] = doc["keys"]
    assert entry["kty"] == kty
    assert entry["alg"] == alg
    assert entry["use"] == "sig"
    assert entry["kid"] == jwks.thumbprint(entry)
    assert entry["kid"] in summary
    assert "PRIVATE" not in summary
    assert stat.S_IMODE((in_tmp / "k.pem").stat().st_mode) == 0o600
    assert (in_tmp / "k.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert run("jwks", "from-pem", "k.pem") == 0
    assert out_json(capsys) == doc


def test_generate_bits(in_tmp: Path) -> None:
    assert generate("rsa", "--bits", "3072") == 0
    key = keys.load_private_key(in_tmp / "k.pem")
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072


def test_generate_with_kid(in_tmp: Path) -> None:
    assert generate("ed25519", "--kid", "ed-1") == 0
    assert json.loads((in_tmp / "k.json").read_text())["keys"][0]["kid"] == "ed-1"


def test_generate_mode_0600_even_with_open_umask(in_tmp: Path) -> None:
    old = os.umask(0)
    try:
        assert generate("ec") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((in_tmp / "k.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", ["k.pem", "k.json"])
def test_generate_refuses_to_overwrite(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    (in_tmp / existing).write_text("keep me")
    assert generate("ec") == 1
    err = capsys.readouterr().err
    assert f"authz keys generate: {existing}: already exists; refusing to overwrite" in err
    assert "--force" in err
    assert (in_tmp / existing).read_text() == "keep me"
    assert sorted(p.name for p in in_tmp.iterdir()) == [existing]


def test_generate_force_replaces_both(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate("ec") == 0
    first = json.loads((in_tmp / "k.json").read_text())
    (in_tmp / "k.pem").chmod(0o644)
    assert generate("ec") == 1
    assert generate("ec", "--force") == 0
    second = json.loads((in_tmp / "k.json").read_text())
    assert first["keys"][0]["kid"] != second["keys"][0]["kid"]
    assert stat.S_IMODE((in_tmp / "k.pem").stat().st_mode) == 0o600
    assert run("jwks", "from-pem", "k.pem") == 0
    assert capsys.readouterr().out.endswith(jwks.dumps(second))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--type", "ec", "--private-key", "same", "--jwks", "same"], "name the same file"),
        (["--type", "ec", "--bits", "4096", "--private-key", "a", "--jwks", "b"],
         "--bits applies to --type rsa only"),
        (["--type", "rsa", "--curve", "P-256", "--private-key", "a", "--jwks", "b"],
         "--curve applies to --type ec only"),
        (["--type", "rsa", "--bits", "1024", "--private-key", "a", "--jwks", "b"],
         "RSA key size 1024"),
        (["--type", "ec", "--private-key", "missing/a", "--jwks", "b"], "missing/a: cannot create"),
    ],
)
def test_generate_user_errors(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run("keys", "generate", *argv) == 1
    assert message in capsys.readouterr().err
    assert list(in_tmp.iterdir()) == []


def test_generate_removes_key_when_jwks_cannot_be_written(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("keys", "generate", "--type", "ec", "--private-key", "k.pem",
               "--jwks", "nodir/k.json") == 1
    err = capsys.readouterr().err
    assert "nodir/k.json: cannot create" in err
    assert "removed the new private key k.pem" in err
    assert list(in_tmp.iterdir()) == []


# --- jwks from-pem ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()),
     ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP521R1()),
     ed25519.Ed25519PrivateKey.generate()],
    ids=["ssh-rsa", "nistp256", "nistp384", "nistp521", "ssh-ed25519"],
)
def test_from_pem_openssh_matches_private_key(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], key: keys.PrivateKey
) -> None:
    (in_tmp / "id.pub").write_bytes(ssh_pub(key) + b" user@host\n")
    (in_tmp / "id.pem").write_bytes(keys.private_key_pem(key))
    assert run("jwks", "from-pem", "id.pub") == 0
    from_ssh = out_json(capsys)
    assert run("jwks", "from-pem", "id.pem") == 0
    assert out_json(capsys) == from_ssh
    assert from_ssh["keys"][0]["kid"] == jwks.key_thumbprint(key)


def test_from_pem_certificate_and_public_pem(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (in_tmp / "server.crt").write_bytes(certificate(key))
    (in_tmp / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert run("jwks", "from-pem", "server.crt") == 0
    from_cert = out_json(capsys)
    assert from_cert["keys"][0]["alg"] == "ES384"
    assert run("jwks", "from-pem", "pub.pem") == 0
    assert out_json(capsys) == from_cert


def test_from_pem_several_files_kid_and_alg(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate("rsa", name="a")
    generate("rsa", name="b")
    capsys.readouterr()
    assert run("jwks", "from-pem", "a.pem", "b.pem", "--alg", "PS384") == 0
    doc = out_json(capsys)
    assert [e["alg"] for e in doc["keys"]] == ["PS384", "PS384"]
    assert run("jwks", "from-pem", "a.pem", "--kid", "rsa-1") == 0
    assert out_json(capsys)["keys"][0]["kid"] == "rsa-1"


def test_from_pem_never_prints_private_material(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate("rsa")
    capsys.readouterr()
    assert run("jwks", "from-pem", "k.pem") == 0
    captured = capsys.readouterr()
    entry = json.loads(captured.out)["keys"][0]
    assert set(entry) == {"kty", "n", "e", "kid", "use", "alg"}
    pem_body = "".join((in_tmp / "k.pem").read_text().splitlines()[1:-1])
    assert pem_body[:40] not in captured.out + captured.err


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["a.pem", "b.pem", "--kid", "x"], "--kid needs exactly one FILE"),
        ("ec", ["k.pem", "--alg", "RS256"], "k.pem: alg RS256 does not fit an EC P-256 key"),
        ("ec", ["k.pem", "--alg", "none"], "k.pem: alg 'none'"),
        ("rsa", ["k.pem", "--alg", "HS256"], "k.pem: alg HS256 is an HMAC"),
        ("ec", ["k.pem", "k.pem"], "duplicate kid"),
        (None, ["absent.pem"], "absent.pem: no such file"),
        ("ec", ["k.json"], "k.json: no PEM key, PEM certificate or OpenSSH public key found"),
    ],
)
def test_from_pem_user_errors(
    capsys: pytest.CaptureFixture[str], setup: str | None, argv: list[str], message: str
) -> None:
    if setup:
        generate(setup)
        capsys.readouterr()
    assert run("jwks", "from-pem", *argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("authz jwks from-pem: ")
    assert message in captured.err


# --- token mint / inspect --------------------------------------------------------------


def mint(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert run("token", "mint", *argv) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    return out.strip()


@pytest.mark.parametrize(
    ("key_type", "extra"),
    [("rsa", []), ("ec", ["--curve", "P-384"]), ("ec", ["--curve", "P-521"]), ("ed25519", [])],
)
def test_mint_verifies_against_generated_jwks(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], key_type: str, extra: list[str]
) -> None:
    generate(key_type, *extra)
    capsys.readouterr()
    minted = mint(capsys, "--key", "k.pem", "--iss", "https://issuer.test", "--sub", "alice",
                  "--aud", "shop", "--aud", "admin", "--ttl", "15m", "--claim", "email=a@x",
                  "--claim-json", 'groups=["a","b"]', "--nbf-offset=-30s")
    doc = json.loads((in_tmp / "k.json").read_text())
    header = jwt.get_unverified_header(minted)
    key = jwt.PyJWKSet.from_dict(doc)[header["kid"]]
    claims = jwt.decode(minted, key.key, algorithms=[doc["keys"][0]["alg"]], audience="admin",
                        issuer="https://issuer.test")
    assert claims["aud"] == ["shop", "admin"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] - claims["nbf"] == 30
    assert claims["email"] == "a@x"
    assert claims["groups"] == ["a", "b"]


def test_mint_defaults(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate("ec")
    capsys.readouterr()
    minted = mint(capsys, "--key", "k.pem", "--iss", "i", "--sub", "s", "--aud", "one")
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert claims["aud"] == "one"
    assert claims["exp"] - claims["iat"] == 3600
    assert "nbf" not in claims


def test_mint_with_ps256_matches_from_pem_with_same_alg(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate("rsa")
    capsys.readouterr()
    assert run("jwks", "from-pem", "k.pem", "--alg", "PS256", "--kid", "ps") == 0
    doc = out_json(capsys)
    minted = mint(capsys, "--key", "k.pem", "--iss", "i", "--sub", "s", "--alg", "PS256",
                  "--kid", "ps")
    key = jwt.PyJWKSet.from_dict(doc)["ps"]
    assert jwt.decode(minted, key.key, algorithms=["PS256"])["sub"] == "s"


def test_mint_accepts_openssh_private_key(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (in_tmp / "id_ed25519").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    (in_tmp / "id_ed25519.pub").write_bytes(ssh_pub(key))
    minted = mint(capsys, "--key", "id_ed25519", "--iss", "i", "--sub", "s")
    assert run("jwks", "from-pem", "id_ed25519.pub") == 0
    key_from_jwks = jwt.PyJWKSet.from_dict(out_json(capsys))[
        jwt.get_unverified_header(minted)["kid"]]
    assert jwt.decode(minted, key_from_jwks.key, algorithms=["EdDSA"])["sub"] == "s"


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("ec", ["--alg", "RS256"], "k.pem: alg RS256 does not fit an EC P-256 key"),
        ("ec", ["--alg", "none"], "alg 'none' produces unsigned tokens"),
        ("rsa", ["--alg", "HS256"], "alg HS256 is an HMAC"),
        ("ed25519", ["--alg", "ES256"], "does not fit an Ed25519 key"),
        ("ec", ["--ttl", "1w"], "duration '1w'"),
        ("ec", ["--ttl", "0"], "--ttl must be positive"),
        ("ec", ["--nbf-offset", "soon"], "duration 'soon'"),
        ("ec", ["--claim", "exp=1"], "--claim exp: set by its own flag"),
        ("ec", ["--claim-json", "g=[x"], "--claim-json g: value is not JSON"),
    ],
)
def test_mint_user_errors(
    capsys: pytest.CaptureFixture[str], setup: str, argv: list[str], message: str
) -> None:
    generate(setup)
    capsys.readouterr()
    assert run("token", "mint", "--key", "k.pem", "--iss", "i", "--sub", "s", *argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("authz token mint: ")
    assert message in captured.err


def test_mint_key_errors_name_the_file(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate("ec")
    capsys.readouterr()
    assert run("token", "mint", "--key", "k.json", "--iss", "i", "--sub", "s") == 1
    assert "k.json: no PEM or OpenSSH private key found" in capsys.readouterr().err
    assert run("token", "mint", "--key", "nope.pem", "--iss", "i", "--sub", "s") == 1
    assert "nope.pem: no such file" in capsys.readouterr().err


def test_inspect_argument_file_and_stdin(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    generate("ec")
    capsys.readouterr()
    minted = mint(capsys, "--key", "k.pem", "--iss", "i", "--sub", "s", "--ttl", "10m")
    (in_tmp / "t.jwt").write_text(minted + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"Bearer {minted}\n"))
    signature = minted.rsplit(".", 1)[1]
    reports = []
    for arg in (minted, "@t.jwt", "-"):
        assert run("token", "inspect", arg) == 0
        captured = capsys.readouterr()
        assert "signature NOT verified" in captured.err
        assert signature not in captured.out + captured.err
        reports.append(json.loads(captured.out))
    for other in reports[1:]:
        assert (other["header"], other["payload"]) == (reports[0]["header"],
                                                       reports[0]["payload"])
    got = reports[0]
    assert got["signature_verified"] is False
    assert got["header"]["kid"] == jwks.key_thumbprint(keys.load_private_key(in_tmp / "k.pem"))
    assert got["payload"]["sub"] == "s"
    assert 590 <= got["expires_in_seconds"] <= 600
    assert got["warnings"] == []
    assert list(got)[-1] == "warnings"


def test_inspect_expired_token_still_exits_0(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate("ed25519")
    capsys.readouterr()
    minted = mint(capsys, "--key", "k.pem", "--iss", "i", "--sub", "s", "--ttl", "1s",
                  "--nbf-offset", "1h")
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert claims["nbf"] - claims["iat"] == 3600
    (in_tmp / "t.jwt").write_text(minted)
    assert run("token", "inspect", "@t.jwt") == 0
    warnings = out_json(capsys)["warnings"]
    assert any("in the future" in w for w in warnings)


@pytest.mark.parametrize(
    ("arg", "message"),
    [("not-a-token", "token has 1 part(s)"), ("@missing.jwt", "missing.jwt: no such file"),
     ("a.b.c.d.e", "token has 5 parts: it is an encrypted JWT")],
)
def test_inspect_user_errors(
    capsys: pytest.CaptureFixture[str], arg: str, message: str
) -> None:
    assert run("token", "inspect", arg) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"authz token inspect: {message}" in captured.err


# --- docs/tools.md ---------------------------------------------------------------------

DOC_COMMAND = re.compile(r"^\$ (authz (?:keys|jwks|token)\b.*)$")


def doc_commands() -> list[str]:
    """Every '$ authz keys|jwks|token' line of the ```console blocks, in order."""
    commands: list[str] = []
    in_console = False
    pending = ""
    for line in DOCS.read_text().splitlines():
        if line.startswith("```"):
            in_console = line.strip() == "```console"
            continue
        if not in_console:
            continue
        if pending:
            pending += " " + line.strip()
        else:
            match = DOC_COMMAND.match(line)
            if not match:
                continue
            pending = match.group(1)
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = ""
    return commands


def test_docs_commands_run_as_written(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Stand-ins for files the docs take from elsewhere: an ssh-keygen key and a CA cert.
    (in_tmp / "id_ed25519.pub").write_bytes(
        ssh_pub(ed25519.Ed25519PrivateKey.generate()) + b" alice@laptop\n")
    (in_tmp / "server.crt").write_bytes(certificate(ec.generate_private_key(ec.SECP256R1())))
    commands = doc_commands()
    covered = set()
    for command in commands:
        words = shlex.split(command)
        target = None
        if ">" in words:
            at = words.index(">")
            words, target = words[:at], words[at + 1]
        assert words[0] == "authz"
        covered.add(" ".join(words[1:3]))
        if target is None:
            code = run(*words[1:])
        else:
            with open(target, "w") as fh, contextlib.redirect_stdout(fh):
                code = run(*words[1:])
        assert code == 0, f"{command}\n{capsys.readouterr().err}"
    assert covered == {"keys generate", "jwks from-pem", "token mint", "token inspect"}
    doc = json.loads((in_tmp / "jwks.json").read_text())
    minted = (in_tmp / "token.jwt").read_text().strip()
    key = jwt.PyJWKSet.from_dict(doc)[jwt.get_unverified_header(minted)["kid"]]
    claims = jwt.decode(minted, key.key, algorithms=["RS256"], audience="shop",
                        issuer="https://issuer.example.com")
    assert claims["sub"] == "alice"
