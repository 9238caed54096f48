"""Signing keys for test issuers: generate, load, and write them safely.

These replace ``openssl genpkey`` / ``ssh-keygen`` steps, so the rules that
Envoy and Istio apply (RSA, EC P-256/384/521, Ed25519) are enforced here once,
and private keys are never world-readable, not even for an instant.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.errors import AuthzError

__all__ = [
    "CURVES",
    "KEY_TYPES",
    "MAX_KEY_FILE_BYTES",
    "PrivateKey",
    "PublicKey",
    "ToolError",
    "curve_name",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "narrow_private",
    "narrow_public",
    "private_key_pem",
    "read_key_file",
    "refuse_existing",
    "write_new_file",
]

KeyType = Literal["rsa", "ec", "ed25519"]
Curve = Literal["P-256", "P-384", "P-521"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

KEY_TYPES: tuple[str, ...] = get_args(KeyType)
CURVES: tuple[str, ...] = get_args(Curve)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
# Key files are small; the cap stops a mistaken path (a log, /dev/zero) being read whole.
MAX_KEY_FILE_BYTES = 1 << 20

_CURVE_BY_NAME: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_NAME_BY_OPENSSL: dict[str, str] = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}


class ToolError(AuthzError):
    """A problem the user can fix (bad file, bad flag): the message names the file or
    flag; the CLI prints it and exits 1."""


def curve_name(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """JOSE name of the key's curve; only the curves JWS defines an alg for."""
    name = _NAME_BY_OPENSSL.get(key.curve.name)
    if name is None:
        raise ToolError(f"EC curve {key.curve.name} has no JWS algorithm; "
                        f"use one of {', '.join(CURVES)}")
    return name


def generate_private_key(key_type: str, bits: int = 2048, curve: str = "P-256") -> PrivateKey:
    """A fresh signing key; refuses sizes and curves verifiers would reject."""
    if key_type == "rsa":
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise ToolError(f"RSA key size {bits} is outside {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if key_type == "ec":
        curve_cls = _CURVE_BY_NAME.get(curve)
        if curve_cls is None:
            raise ToolError(f"unknown EC curve {curve!r}; use one of {', '.join(CURVES)}")
        return ec.generate_private_key(curve_cls())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ToolError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the one format every JWT library and openssl reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
                 source: str) -> None:
    try:
        curve_name(key)
    except ToolError as exc:
        raise ToolError(f"{source}: {exc}") from None


def _unsupported(key: object, source: str) -> ToolError:
    kind = type(key).__name__.lstrip("_")
    return ToolError(f"{source}: unsupported key type {kind}; use RSA, EC P-256/384/521 or "
                     "Ed25519")


def narrow_private(key: object, source: str) -> PrivateKey:
    """Narrow a loaded private key to the kinds JWS signs with, naming the file otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key, source)
        return key
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise _unsupported(key, source)


def narrow_public(key: object, source: str) -> PublicKey:
    """Narrow a loaded public key to the kinds JWS verifies, naming the file otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        _check_curve(key, source)
        return key
    if isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return key
    raise _unsupported(key, source)


def read_key_file(path: str | Path) -> bytes:
    """File contents, or a ToolError that names the file and says what went wrong."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ToolError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise ToolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ToolError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    return data


def _is_openssh_public(data: bytes) -> bool:
    return data.lstrip().startswith((b"ssh-", b"ecdsa-sha2-"))


def load_private_key(path: str | Path) -> PrivateKey:
    """A PEM (PKCS#8, PKCS#1, SEC1) or OpenSSH private key, unencrypted."""
    data = read_key_file(path)
    if b"PRIVATE KEY-----" not in data:
        raise ToolError(f"{path}: no PEM or OpenSSH private key found")
    return narrow_private(_parse_private(data, path), str(path))


def _parse_private(data: bytes, path: str | Path) -> object:
    # Error messages are our own: the parser's could, in principle, echo input bytes.
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            return serialization.load_ssh_private_key(data, password=None)
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ToolError(f"{path}: private key is encrypted; decrypt it first "
                        "(e.g. openssl pkey -in KEY -out PLAIN.pem)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ToolError(f"{path}: private key could not be parsed (corrupt or unsupported "
                        "format)") from None


def load_public_key(path: str | Path) -> PublicKey:
    """The public key in a PEM public/private key, X.509 certificate or OpenSSH ``.pub``.

    One key per file: a certificate bundle or an authorized_keys file with several
    entries is refused rather than silently reduced to its first entry.
    """
    data = read_key_file(path)
    source = str(path)
    key: object
    if _is_openssh_public(data):
        lines = [ln for ln in data.splitlines() if ln.strip() and not ln.startswith(b"#")]
        if len(lines) != 1:
            raise ToolError(f"{path}: holds {len(lines)} OpenSSH keys; give one key per file")
        try:
            key = serialization.load_ssh_public_key(lines[0].strip())
        except (ValueError, UnsupportedAlgorithm):
            raise ToolError(f"{path}: OpenSSH public key could not be parsed") from None
    elif b"-----BEGIN CERTIFICATE-----" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ToolError(f"{path}: certificate could not be parsed") from None
        if len(certs) != 1:
            raise ToolError(f"{path}: holds {len(certs)} certificates; give the signing "
                            "certificate alone")
        try:
            key = certs[0].public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise ToolError(f"{path}: certificate public key is not supported") from None
    elif b"PRIVATE KEY-----" in data:
        key = narrow_private(_parse_private(data, path), source).public_key()
    elif b"PUBLIC KEY-----" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise ToolError(f"{path}: public key could not be parsed") from None
    else:
        raise ToolError(f"{path}: no PEM key, PEM certificate or OpenSSH public key found")
    return narrow_public(key, source)


def refuse_existing(paths: list[Path], force: bool) -> None:
    """Fail before writing anything, so a refused run leaves no half-written pair."""
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ToolError(f"{path}: already exists; refusing to overwrite it "
                            "(pass --force to replace it)")


def write_new_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to a file born with ``mode``.

    Without ``force`` the file is created with O_EXCL (no overwrite, no following a
    planted symlink). With ``force`` the data goes to a fresh O_EXCL temporary file in
    the same directory that then replaces the target, so the old file's permissions
    are never inherited and readers never see a partial key.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    if not force:
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise ToolError(f"{path}: already exists; refusing to overwrite it "
                            "(pass --force to replace it)") from None
        except OSError as exc:
            raise ToolError(f"{path}: cannot create: {exc.strerror or exc}") from None
        _write_all(fd, data, path, cleanup=path)
        return
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ToolError(f"{path}: is a directory")
    for _ in range(100):
        tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise ToolError(f"{path}: cannot create a file in {directory}: "
                            f"{exc.strerror or exc}") from None
    else:
        raise ToolError(f"{path}: could not pick a temporary file name in {directory}")
    _write_all(fd, data, path, cleanup=tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ToolError(f"{path}: cannot replace: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes, path: Path, cleanup: Path) -> None:
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        cleanup.unlink(missing_ok=True)
        raise ToolError(f"{path}: cannot write: {exc.strerror or exc}") from None
