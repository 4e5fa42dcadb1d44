"""TLS for the MQTT listener: TLS 1.2 only, asking for a client certificate that IoT Hub rules judge.

IoT Hub authenticates X.509 devices after the handshake: a certificate chaining to a registered CA,
or a self-signed one whose thumbprint is registered, and refuses the rest with CONNACK 5 (reference
iothub-and-edge.md §4). OpenSSL's verification cannot do that (it would reject every self-signed
certificate in the handshake), so the listener asks for a certificate and accepts whatever arrives;
`edgecert.sandbox.iothub.auth` then decides with `cryptography`'s path validation.

Python's `ssl` has no verify callback, so one is installed through ctypes on the context's `SSL_CTX`
(the pointer that follows the object header in CPython's `PySSLContext`). The layout is checked by
reading the verify mode and options back through OpenSSL before anything is changed; where the check
fails (another interpreter, another OpenSSL), the listener does not ask for certificates, SAS still
works, and X.509 devices are refused.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys
from pathlib import Path

__all__ = ["mqtt_server_context", "peer_chain"]

logger = logging.getLogger(__name__)

_SSL_VERIFY_PEER = 0x01
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(_preverify_ok: int, _store: int | None) -> int:
    """OpenSSL verify callback: let every presented chain through to the IoT Hub rules."""
    return 1


# Kept at module level: OpenSSL holds the raw pointer for the life of the process.
_ACCEPT_ANY = _VerifyCallback(_accept_any)


def mqtt_server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2 server context that requests (but does not require or judge) a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The SDK speaks exactly TLS 1.2 (ssl.PROTOCOL_TLSv1_2, reference §1.6); so does this listener.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    # No resumption: a resumed session carries no client certificate to judge.
    context.options |= ssl.OP_NO_TICKET
    context.load_cert_chain(cert_file, key_file)
    if not _request_any_client_certificate(context):
        logger.warning("cannot install an OpenSSL verify callback here: X.509 device authentication is off")
    return context


def _request_any_client_certificate(context: ssl.SSLContext) -> bool:
    if sys.implementation.name != "cpython":
        return False
    try:
        library = ctypes.CDLL(getattr(_ssl, "__file__", None))
        set_verify = library.SSL_CTX_set_verify
        get_verify_mode = library.SSL_CTX_get_verify_mode
        get_options = library.SSL_CTX_get_options
    except (OSError, AttributeError):
        return False
    set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    set_verify.restype = None
    get_verify_mode.argtypes = [ctypes.c_void_p]
    get_verify_mode.restype = ctypes.c_int
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    context.verify_mode = ssl.CERT_OPTIONAL
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or get_verify_mode(pointer) != _SSL_VERIFY_PEER or get_options(pointer) != int(context.options):
        context.verify_mode = ssl.CERT_NONE
        return False
    # Same mode as CERT_OPTIONAL (ask, do not require); only the judgement changes.
    set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return True


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The DER certificates the client presented, leaf first (unverified); empty without one."""
    if ssl_object is None:
        return []
    # Public from Python 3.13; the same method exists privately on the _ssl object since 3.10.
    get_chain = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if get_chain is None:
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    # Python 3.11 puts a None in place of a missing peer certificate.
    chain = [item for item in get_chain() or [] if item is not None]
    return [item if isinstance(item, bytes) else item.public_bytes(_ssl.ENCODING_DER) for item in chain]
