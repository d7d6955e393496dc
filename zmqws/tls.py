"""TLS for ``wss://`` and ``https://``: a server context with modern defaults (stdlib ``ssl``).

``ssl`` (and with it the OpenSSL libraries, ~5 MB of RSS per process) is
imported when a context is made, not with this module: a gateway without TLS
never loads it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ["server_context", "checked_server_context"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def server_context(certfile: str, keyfile: Optional[str] = None, password: Optional[str] = None
                   ) -> ssl.SSLContext:
    """An SSL context for the server side: TLS 1.2 or newer, the certificate chain loaded.

    Pass it as ``ssl_context=`` to :class:`~zmqws.server.WebSocketServer` or
    :class:`~zmqws.gateway.Gateway`.  The handshake then runs non-blocking
    inside the loop, bounded by ``handshake_timeout``.
    """
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(certfile, keyfile, password)
    return context


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def checked_server_context(certfile: str, keyfile: Optional[str] = None) -> ssl.SSLContext:
    """:func:`server_context` of ``--certfile``/``--keyfile``, each file opened and checked
    first so that a ValueError names the flag and the file: missing, unreadable, not PEM,
    encrypted, or a key that does not match the certificate."""
    cert = _read_pem("--certfile", certfile)
    if not _PEM_CERT.search(cert):
        raise ValueError(f"--certfile {certfile}: not a PEM certificate "
                         "(no -----BEGIN CERTIFICATE----- line)")
    key_flag, key_path = ("--keyfile", keyfile) if keyfile else ("--certfile", certfile)
    key = _read_pem("--keyfile", keyfile) if keyfile else cert
    if not _PEM_KEY.search(key):
        raise ValueError(f"--keyfile {keyfile}: not a PEM private key" if keyfile else
                         f"--certfile {certfile}: holds no private key; give it with --keyfile")
    if b"ENCRYPTED" in key:
        raise ValueError(f"{key_flag} {key_path}: the private key is encrypted (passphrases are "
                         "not supported: decrypt it, e.g. openssl pkey -in KEY -out KEY2)")
    import ssl

    try:
        return server_context(certfile, keyfile)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{key_flag} {key_path}: the private key does not match the "
                             f"certificate of --certfile {certfile}") from None
        raise ValueError(f"--certfile {certfile}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ValueError(f"--certfile {certfile}: {exc.strerror or exc}") from None
