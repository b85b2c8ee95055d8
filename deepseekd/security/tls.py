"""TLS and mTLS server contexts from PEM files, rebuilt when the files change.

TLS 1.2+ only, forward-secret AEAD suites only. A broken new file is refused with an error
and the context built from the previous files stays in use.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from deepseekd.config import TlsSettings

log = logging.getLogger("deepseekd.tls")

# TLS 1.2 suites; TLS 1.3's defaults are all AEAD already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsError(Exception):
    """The certificate, key or CA files cannot be used."""


@dataclass(frozen=True)
class LoadedContext:
    context: ssl.SSLContext
    not_after: float
    """The server certificate's expiry, unix time."""
    signature: tuple[tuple[str, int, int], ...]


def _signature(cfg: TlsSettings) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in (cfg.cert, cfg.key, cfg.client_ca):
        if path:
            try:
                st = Path(path).stat()
                out.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((path, -1, -1))
    return tuple(out)


def build_context(cfg: TlsSettings) -> LoadedContext:
    """A server context from the configured files; raises TlsError naming what is wrong."""
    signature = _signature(cfg)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"server.tls.cert/key: cannot load {cfg.cert} with {cfg.key}: {exc}"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(Path(cfg.cert).read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"server.tls.cert: {cfg.cert} is not a PEM certificate: {exc}") from None
    if cfg.client_ca:
        try:
            ctx.load_verify_locations(cafile=cfg.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"server.tls.client_ca: cannot load {cfg.client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    return LoadedContext(ctx, cert.not_valid_after_utc.timestamp(), signature)


def client_context(
    section: str, ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> ssl.SSLContext:
    """A client context with the server's floor (TLS 1.2+, the same suites): the peer's
    certificate and name checked against ``ca_file`` (empty: the system's CAs), and with
    ``cert_file`` a client certificate to present (mTLS). Raises TlsError naming the setting
    under ``section`` (``"siem"``)."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{section}.ca_file: cannot load {ca_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"{section}.cert_file/key_file: cannot load {cert_file} with {key_file}: {exc}"
            ) from None
    return ctx


class TlsReloader:
    """Holds the current context; ``poll()`` rebuilds it when a file changed."""

    def __init__(self, cfg: TlsSettings) -> None:
        self.cfg = cfg
        self.current = build_context(cfg)  # at start a broken file stops the daemon

    def poll(self) -> LoadedContext | None:
        """A new context when the files changed and load cleanly; None otherwise."""
        if _signature(self.cfg) == self.current.signature:
            return None
        try:
            loaded = build_context(self.cfg)
        except TlsError as exc:
            # Keep serving with the old certificate; say so once per change.
            log.error(
                "new TLS files refused; the previous certificate stays in use",
                extra={"error": str(exc)},
            )
            self.current = LoadedContext(
                self.current.context, self.current.not_after, _signature(self.cfg)
            )
            return None
        self.current = loaded
        log.info("TLS files reloaded", extra={"not_after": loaded.not_after})
        return loaded


def peer_common_name(peercert: dict | None) -> str | None:
    """The subject CN of a verified client certificate (ssl's dict form)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
