"""Identity from a verified mTLS client certificate (AUTHCAR_TLS_CLIENT_CERT_IDENTITY), and the
certificate as the application may receive it (AUTHCAR_TLS_FORWARD_CLIENT_CERT).

The subject is the certificate's first URI name (a SPIFFE ID such as
`spiffe://cluster.local/ns/shop/sa/orders` is one), else its common name; the issuer is the
issuing CA's distinguished name. Only certificates the TLS layer verified against
AUTHCAR_TLS_CLIENT_CA_FILE ever get here (`client_certificate` returns None otherwise).
"""

from __future__ import annotations

import base64
from types import MappingProxyType

from authcar.identity import Identity
from authcar.tls import ClientCertificate
from authcar.types import Scope


def certificate_of(scope: Scope) -> ClientCertificate | None:
    tls = scope.get("extensions", {}).get("tls")
    return tls.get("client_certificate") if tls else None


def certificate_identity(certificate: ClientCertificate) -> Identity | None:
    """None when the certificate names nobody usable (no URI name, no printable common name)."""
    subject = certificate.uris[0] if certificate.uris else certificate.common_name
    if not subject or not subject.isprintable():
        return None
    return Identity(
        subject=subject,
        issuer=certificate.issuer,
        claims=MappingProxyType(
            {
                "sub": subject,
                "x5t#S256": certificate.fingerprint_sha256,
                "serial": certificate.serial,
                "subject_dn": certificate.subject,
            }
        ),
        source="client_certificate",
    )


CLIENT_CERT_HEADER = b"client-cert"


def client_cert_header(certificate: ClientCertificate) -> tuple[bytes, bytes]:
    """RFC 9440 `Client-Cert`: the verified certificate's DER as a structured-field byte sequence.

    Every client-sent copy (and every other client-certificate header family) was removed while
    framing, so the application can believe this one (AUTHCAR_TLS_FORWARD_CLIENT_CERT).
    """
    return CLIENT_CERT_HEADER, b":" + base64.b64encode(certificate.der) + b":"
