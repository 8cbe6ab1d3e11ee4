"""Certificate checks done at validate time, so a bad PEM fails in CI, not at the first
handshake."""

from __future__ import annotations

from typing import Any


def check_certificate_pair(cert: Any, key: Any) -> list[tuple[str, str]]:
    """Problems with a PEM certificate and its private key, as (`cert`|`key`, message)."""
    from cryptography import x509  # imported here: only files with ssls pay for it
    from cryptography.hazmat.primitives import serialization

    problems: list[tuple[str, str]] = []
    certificate = private_key = None
    try:
        certificate = x509.load_pem_x509_certificate(str(cert).encode())
    except ValueError as e:
        problems.append(("cert", f"not a PEM certificate: {_reason(e)}"))
    try:
        private_key = serialization.load_pem_private_key(str(key).encode(), password=None)
    except TypeError:
        problems.append(("key", "the private key is encrypted; give it unencrypted"))
    except (ValueError, Exception) as e:  # cryptography raises several types for garbage input
        problems.append(("key", f"not a PEM private key: {_reason(e)}"))
    if certificate is not None and private_key is not None:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if certificate.public_key().public_bytes(*spki) != private_key.public_key().public_bytes(
            *spki
        ):
            problems.append(("key", "the private key does not match the certificate"))
    return problems


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]
