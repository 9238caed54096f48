"""TLS and mutual TLS on the check listeners, with certificates reloaded from disk.

gRPC core asks ``_fetch`` for the certificate configuration at each new TLS
handshake (``grpc.dynamic_ssl_server_credentials``). The answer is prepared
ahead: a background task polls the files (``stat`` only) and, when they change
and have settled, reads and checks them off the event loop (the key matches the
certificate, the chain and the client CA parse, the certificate is within its
validity). A good set becomes the next configuration: new connections get it,
connections already open keep theirs, so a rotation drops nothing. A bad set
(a half-written file, a key from another pair, an expired certificate) is
logged and shown on ``/readyz`` while the last good one keeps serving.

The HTTP check port (``--http-check-address``) serves the same files through
Python's ``ssl``: each good set also becomes an ``ssl.SSLContext``, and the
listener's context hands every new handshake the newest one from its
``sni_callback`` (called for each ClientHello, with or without SNI), so a
rotation there drops nothing either.

The handshake path does no I/O: ``_fetch`` compares two integers, ``_select``
reads one attribute.

gRPC core negotiates TLS 1.2 or 1.3 and refuses anything older (the HTTP
port's contexts are set the same way); gRPC's Python API offers no way to raise
the minimum, so a TLS 1.3-only link is set on the client
side (Envoy's ``tls_minimum_protocol_version``, ``authz envoy-config
--authz-tls-min-version 1.3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from prometheus_client import CollectorRegistry, Counter, Gauge

from authz.errors import UsageError

__all__ = [
    "CertificateReloader", "Material", "TlsError", "TlsFiles", "TlsMetrics", "fingerprint",
    "peer_principal", "read_material", "ssl_context",
]

log = structlog.get_logger("authz.tls")

RELOAD_INTERVAL = 1.0
"""Seconds between checks of the certificate files (a ``stat`` each)."""
SETTLE = 0.2
"""A change is read once the files have stayed the same this long."""
RETRY_AFTER_ERROR = 10.0
"""A rejected set is read again this often even unchanged: a certificate issued on a
host whose clock runs ahead is "not valid before" now, and good a moment later."""


class TlsError(UsageError):
    """Certificate material that cannot serve; the message says which file and why:
    fix or replace that file (a key that matches the certificate, a chain and client
    CA that parse, a certificate within its validity dates)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    """PEM certificate chain, leaf first."""
    key: str
    """PEM private key of the leaf."""
    client_ca: str | None = None
    """PEM CA bundle; set: clients must present a certificate it signed (mutual TLS)."""

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) if self.client_ca is None else (
            self.cert, self.key, self.client_ca)


@dataclass(frozen=True, slots=True)
class Material:
    """One checked set of files, ready to hand to gRPC."""

    chain: bytes
    key: bytes
    client_ca: bytes | None
    subject: str
    names: tuple[str, ...]
    """Subject alternative names of the leaf (DNS, IP, URI)."""
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    client_ca_subjects: tuple[str, ...]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TlsError(f"{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsError(f"{what} {path}: empty file")
    return data


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{what} {path}: no PEM certificate could be read") from None
    if not certs:
        raise TlsError(f"{what} {path}: no PEM certificate could be read")
    return certs


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for kind in (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier):
        out += [str(v) for v in san.get_values_for_type(kind)]
    return tuple(out)


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def read_material(files: TlsFiles, now: float | None = None) -> Material:
    """Read and check one set of files; ``TlsError`` names the first problem."""
    chain = _read(files.cert, "--tls-cert")
    key_pem = _read(files.key, "--tls-key")
    leaf = _certificates(chain, files.cert, "--tls-cert")[0]
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message of cryptography's error never carries key bytes.
        reason = "encrypted keys are not supported" if isinstance(exc, TypeError) else (
            "not a PEM private key")
        raise TlsError(f"--tls-key {files.key}: {reason}") from None
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise TlsError(f"--tls-key {files.key} does not belong to the certificate in "
                       f"{files.cert}")
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    if moment >= leaf.not_valid_after_utc:
        raise TlsError(f"--tls-cert {files.cert}: expired at "
                       f"{leaf.not_valid_after_utc.isoformat()}")
    if moment < leaf.not_valid_before_utc:
        raise TlsError(f"--tls-cert {files.cert}: not valid before "
                       f"{leaf.not_valid_before_utc.isoformat()}")
    client_ca: bytes | None = None
    ca_subjects: tuple[str, ...] = ()
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "--tls-client-ca")
        ca_subjects = tuple(c.subject.rfc4514_string()
                            for c in _certificates(client_ca, files.client_ca, "--tls-client-ca"))
    return Material(
        chain=chain, key=key_pem, client_ca=client_ca,
        subject=leaf.subject.rfc4514_string(), names=_names(leaf),
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        client_ca_subjects=ca_subjects,
    )


def _load_chain(ctx: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """``load_cert_chain`` from bytes already read and checked: ``ssl`` reads only
    files, and rereading the originals could pick up a half-written replacement.
    On Linux the bytes go to anonymous memory files; elsewhere to a private
    temporary directory that is removed at once."""
    if hasattr(os, "memfd_create"):
        fds: list[int] = []
        try:
            for data in (chain, key):
                fd = os.memfd_create("authz-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="authz-tls-") as folder:  # mode 0700
        paths = (os.path.join(folder, "chain.pem"), os.path.join(folder, "key.pem"))
        for data, path in zip((chain, key), paths, strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(*paths)


def ssl_context(material: Material) -> ssl.SSLContext:
    """The HTTP check port's TLS for one set of files: TLS 1.2 or later as on the
    gRPC port, HTTP/1.1 by ALPN, and with a client CA a certificate it signed is
    required (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        _load_chain(ctx, material.chain, material.key)
        if material.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=material.client_ca.decode("ascii", "replace"))
    except ssl.SSLError as exc:  # checked by read_material; kept for odd key types
        raise TlsError(f"--tls-cert/--tls-key: OpenSSL refused them: {exc.reason}") from None
    return ctx


Fingerprint = tuple[tuple[str, str, int, int, int], ...]


def fingerprint(paths: Iterable[str]) -> Fingerprint:
    """What the files look like on disk, symlinks followed (a Secret volume swaps
    its ``..data`` link to a new folder in one rename)."""
    out: list[tuple[str, str, int, int, int]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, "", -1, -1, -1))
            continue
        out.append((path, os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class TlsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter("authz_tls_reloads", "Certificate reloads by result.",
                               ["result"], registry=registry)
        self.expiry = Gauge("authz_tls_certificate_expiry_timestamp_seconds",
                            "When the serving certificate expires (Unix time).",
                            registry=registry)


class CertificateReloader:
    """Server credentials whose certificate follows the files on disk."""

    def __init__(self, files: TlsFiles, registry: CollectorRegistry | None = None,
                 interval: float = RELOAD_INTERVAL,
                 retry_after: float = RETRY_AFTER_ERROR) -> None:
        self.files = files
        self.interval = interval
        self.retry_after = retry_after
        self._metrics = TlsMetrics(registry) if registry is not None else None
        self._seen = fingerprint(files.paths)
        self.material = read_material(files)  # TlsError: refuse to start
        self._current = (1, self._configuration(self.material))
        self._served = 1
        self.loaded_at = time.time()
        self.reloads = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None
        """The newest set as an ``ssl`` context, once the HTTP check port asked."""
        if self._metrics is not None:
            self._metrics.expiry.set(self.material.not_after.timestamp())

    @property
    def mutual(self) -> bool:
        return self.files.client_ca is not None

    @staticmethod
    def _configuration(material: Material) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.chain)], root_certificates=material.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._current[1], self._fetch, require_client_authentication=self.mutual)

    def server_ssl_context(self) -> ssl.SSLContext:
        """The HTTP check port's context: each handshake is switched to the newest
        set in ``_select``, so the listener need not be rebuilt when files change."""
        if self._ssl is None:
            self._ssl = ssl_context(self.material)
        front = ssl_context(self.material)
        front.sni_callback = self._select
        return front

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                ctx: ssl.SSLContext) -> None:
        """Called by OpenSSL (on the event loop) at each ClientHello, SNI or not."""
        current = self._ssl
        if current is not None and ctx is not current:
            conn.context = current

    def _read(self) -> tuple[Material, ssl.SSLContext | None]:
        """Off the loop: the files checked, and as an ``ssl`` context if one is used."""
        material = read_material(self.files)
        return material, ssl_context(material) if self._ssl is not None else None

    def _fetch(self) -> Any:
        """Called by gRPC core (its thread) before each handshake: the new configuration
        once after a reload, else None (keep the current one)."""
        generation, configuration = self._current
        if generation == self._served:
            return None
        self._served = generation
        return configuration

    async def check(self) -> bool:
        """Reload if the files changed and settled; False if they changed and were bad."""
        async with self._lock:
            now = await asyncio.to_thread(fingerprint, self.files.paths)
            if now == self._seen:
                if self.last_error_at is None or (
                        time.time() - self.last_error_at < self.retry_after):
                    return True
            else:
                while True:  # settle: a copy of cert then key is read once, complete
                    await asyncio.sleep(SETTLE)
                    later = await asyncio.to_thread(fingerprint, self.files.paths)
                    if later == now:
                        break
                    now = later
            self._seen = now
            try:
                material, context = await asyncio.to_thread(self._read)
            except TlsError as exc:
                self.last_error, self.last_error_at = str(exc), time.time()
                if self._metrics is not None:
                    self._metrics.reloads.labels("failure").inc()
                log.error("tls_reload_failed", error=str(exc),
                          serving_serial=self.material.serial,
                          serving_not_after=self.material.not_after.isoformat())
                return False
            self._install(material, context)
            return True

    def _install(self, material: Material, context: ssl.SSLContext | None = None) -> None:
        self._current = (self._current[0] + 1, self._configuration(material))
        if context is not None:
            self._ssl = context
        self.material = material
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = self.last_error_at = None
        if self._metrics is not None:
            self._metrics.reloads.labels("success").inc()
            self._metrics.expiry.set(material.not_after.timestamp())
        log.info("tls_reloaded", subject=material.subject, serial=material.serial,
                 not_after=material.not_after.isoformat(), mutual=self.mutual)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:  # the watcher must outlive any one check
                log.error("tls_watch_crashed", error=type(exc).__name__)

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="tls-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def describe(self) -> dict[str, Any]:
        """The ``tls`` section of ``/readyz``."""
        m = self.material
        return {
            "enabled": True,
            "mutual": self.mutual,
            "certificate": {
                "subject": m.subject, "names": list(m.names), "serial": m.serial,
                "not_before": m.not_before.isoformat(), "not_after": m.not_after.isoformat(),
                "expires_in_seconds": int(m.not_after.timestamp() - time.time()),
            },
            "client_ca": list(m.client_ca_subjects) if self.mutual else None,
            "loaded_at": _iso(self.loaded_at),
            "reloads": self.reloads,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at) if self.last_error_at else None,
        }


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


def peer_principal(auth_context: dict[str, list[bytes]]) -> str:
    """The client certificate's identity as Envoy would name it: its URI SAN (a SPIFFE
    id in a mesh), else its subject; "" without a client certificate."""
    for key in ("peer_uri", "x509_subject"):
        values = auth_context.get(key)
        if values:
            return values[0].decode("utf-8", "replace")
    return ""
