"""Identity from a verified mTLS client certificate (AUTHCAR_TLS_CLIENT_CERT_IDENTITY).

The subject is the certificate's first URI name (a SPIFFE ID such as
`spiffe://cluster.local/ns/shop/sa/orders` is one), else its common name; the issuer is the
issuing CA's distinguished name. Only certificates the TLS layer verified against
AUTHCAR_TLS_CLIENT_CA_FILE ever get here (`client_certificate` returns None otherwise).
"""

from __future__ import annotations

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
