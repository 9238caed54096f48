"""Key generation, loading and the 0600/no-overwrite file rules."""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from authz.tools import keys
from authz.tools.keys import ToolError


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file that ends up 0600 was created 0600, not masked into it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize(
    ("key_type", "bits", "curve", "cls", "detail"),
    [
        ("rsa", 2048, "P-256", rsa.RSAPrivateKey, 2048),
        ("rsa", 3072, "P-256", rsa.RSAPrivateKey, 3072),
        ("ec", 2048, "P-256", ec.EllipticCurvePrivateKey, "secp256r1"),
        ("ec", 2048, "P-384", ec.EllipticCurvePrivateKey, "secp384r1"),
        ("ec", 2048, "P-521", ec.EllipticCurvePrivateKey, "secp521r1"),
        ("ed25519", 2048, "P-256", ed25519.Ed25519PrivateKey, None),
    ],
)
def test_generate(key_type: str, bits: int, curve: str, cls: type, detail: object) -> None:
    key = keys.generate_private_key(key_type, bits, curve)
    assert isinstance(key, cls)
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size == detail
        assert key.private_numbers().public_numbers.e == 65537
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == detail


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rsa", 1024, "P-256"), "RSA key size 1024"),
        (("ec", 2048, "P-192"), "unknown EC curve 'P-192'"),
        (("dsa", 2048, "P-256"), "unknown key type 'dsa'"),
    ],
)
def test_generate_refuses(args: tuple[str, int, str], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        keys.generate_private_key(*args)


def test_private_key_pem_is_pkcs8_and_round_trips() -> None:
    key = keys.generate_private_key("ec")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pem = keys.private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(pem, None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()


def test_write_new_file_creates_0600_without_chmod(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*_: object, **__: object) -> None:
        raise AssertionError("mode must be set at creation, not with chmod")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    target = tmp_path / "k.pem"
    keys.write_new_file(target, b"secret", 0o600, force=False)
    assert mode(target) == 0o600
    assert target.read_bytes() == b"secret"


def test_write_new_file_refuses_existing(tmp_path: Path) -> None:
    target = tmp_path / "k.pem"
    target.write_bytes(b"old")
    with pytest.raises(ToolError, match=r"k\.pem: already exists; refusing to overwrite"):
        keys.write_new_file(target, b"new", 0o600, force=False)
    assert target.read_bytes() == b"old"


def test_write_new_file_does_not_follow_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "k.pem"
    link.symlink_to(victim)
    with pytest.raises(ToolError, match="already exists"):
        keys.write_new_file(link, b"new", 0o600, force=False)
    assert victim.read_bytes() == b"keep"


def test_force_replaces_with_fresh_0600_file(tmp_path: Path, open_umask: None) -> None:
    target = tmp_path / "k.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    keys.write_new_file(target, b"new", 0o600, force=True)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


def test_force_replaces_symlink_itself_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "k.pem"
    link.symlink_to(victim)
    keys.write_new_file(link, b"new", 0o600, force=True)
    assert victim.read_bytes() == b"keep"
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"


def test_write_into_missing_directory_names_file(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"nope/k\.pem: cannot create"):
        keys.write_new_file(tmp_path / "nope" / "k.pem", b"x", 0o600, force=False)


def test_refuse_existing_checks_every_path(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("x")
    with pytest.raises(ToolError, match="b: already exists"):
        keys.refuse_existing([tmp_path / "a", tmp_path / "b"], force=False)
    keys.refuse_existing([tmp_path / "a", tmp_path / "b"], force=True)


# --- loading ---------------------------------------------------------------------------


def _private_formats() -> list[tuple[str, bytes, type]]:
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    none = serialization.NoEncryption()
    pem, ssh = serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH
    trad = serialization.PrivateFormat.TraditionalOpenSSL
    return [
        ("pkcs1", rsa_key.private_bytes(pem, trad, none), rsa.RSAPrivateKey),
        ("sec1", ec_key.private_bytes(pem, trad, none), ec.EllipticCurvePrivateKey),
        ("pkcs8", ed_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, none),
         ed25519.Ed25519PrivateKey),
        ("openssh", ed_key.private_bytes(pem, ssh, none), ed25519.Ed25519PrivateKey),
    ]


@pytest.mark.parametrize(("name", "data", "cls"), _private_formats())
def test_load_private_key_formats(tmp_path: Path, name: str, data: bytes, cls: type) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert isinstance(keys.load_private_key(path), cls)


def test_load_private_key_with_ec_parameters_block(tmp_path: Path) -> None:
    # 'openssl ecparam -genkey' without -noout writes an EC PARAMETERS block first.
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    path = tmp_path / "ec.pem"
    path.write_bytes(params + sec1)
    assert isinstance(keys.load_private_key(path), ec.EllipticCurvePrivateKey)


def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enc.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ToolError, match=r"enc\.pem: private key is encrypted"):
        keys.load_private_key(path)
    with pytest.raises(ToolError, match="encrypted"):
        keys.load_public_key(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello", "no PEM or OpenSSH private key found"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
         "private key could not be parsed"),
    ],
)
def test_bad_private_key_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ToolError, match=rf"bad\.pem: {message}"):
        keys.load_private_key(path)


def test_public_key_file_is_not_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "pub.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ToolError, match=r"pub\.pem: no PEM or OpenSSH private key"):
        keys.load_private_key(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"absent\.pem: no such file"):
        keys.load_public_key(tmp_path / "absent.pem")
    with pytest.raises(ToolError, match="is a directory"):
        keys.load_private_key(tmp_path)


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * (keys.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(ToolError, match="not a key file"):
        keys.load_public_key(path)


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 2048),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP521R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa", "p256", "p384", "p521", "ed25519"],
)
def test_load_public_key_from_every_container(
    tmp_path: Path, key: keys.PrivateKey
) -> None:
    pub = key.public_key()
    expected = pub.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    files = {
        "spki.pem": pub.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo),
        "private.pem": keys.private_key_pem(key),
        "id.pub": pub.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH) + b" me@host\n",
    }
    if isinstance(key, rsa.RSAPrivateKey):
        files["pkcs1.pem"] = pub.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.PKCS1)
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        files["cert.pem"] = self_signed(key).public_bytes(serialization.Encoding.PEM)
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        loaded = keys.load_public_key(path)
        got = loaded.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        assert got == expected, name


def test_certificate_bundle_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = self_signed(key).public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "chain.pem"
    path.write_bytes(pem + pem)
    with pytest.raises(ToolError, match=r"chain\.pem: holds 2 certificates"):
        keys.load_public_key(path)


def test_authorized_keys_with_several_lines_is_refused(tmp_path: Path) -> None:
    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = tmp_path / "authorized_keys"
    path.write_bytes(line + b"\n" + line + b"\n")
    with pytest.raises(ToolError, match="holds 2 OpenSSH keys"):
        keys.load_public_key(path)


def test_corrupt_openssh_key(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_bytes(b"ssh-ed25519 AAAAnotakey me@host\n")
    with pytest.raises(ToolError, match=r"id\.pub: OpenSSH public key could not be parsed"):
        keys.load_public_key(path)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (dsa.generate_private_key(2048), "unsupported key type DSAPrivateKey"),
        (ed448.Ed448PrivateKey.generate(), "unsupported key type Ed448PrivateKey"),
        (ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1 has no JWS algorithm"),
    ],
    ids=["dsa", "ed448", "secp256k1"],
)
def test_unsupported_keys_are_named(tmp_path: Path, key: object, message: str) -> None:
    assert isinstance(key, dsa.DSAPrivateKey | ed448.Ed448PrivateKey
                      | ec.EllipticCurvePrivateKey)
    path = tmp_path / "odd.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with pytest.raises(ToolError, match=rf"odd\.pem: {message}"):
        keys.load_private_key(path)
    with pytest.raises(ToolError, match=rf"odd\.pem: {message}"):
        keys.load_public_key(path)


def test_no_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just text\n")
    with pytest.raises(ToolError, match=r"notes\.txt: no PEM key, PEM certificate or OpenSSH"):
        keys.load_public_key(path)
