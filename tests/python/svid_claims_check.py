"""Check twid's attestation claims in SVIDs with the cryptography package and PyJWT.

Usage: svid_claims_check.py CERT_PEM TOKEN_FILE JWKS_FILE AUDIENCE KIND

- CERT_PEM is an X.509-SVID (PEM, leaf first) that must carry the attestation extension.
- TOKEN_FILE contains a JWT-SVID that must carry the attestation claim.
- JWKS_FILE is the JWK Set whose key signed the JWT-SVID.
- AUDIENCE is an audience the JWT-SVID must name, and KIND the expected evidence kind.

Checks, independently of twid:

- the certificate has exactly one extension with the attestation OID, it is not critical,
  and its value is a DER SEQUENCE whose first element is INTEGER 1 (the version);
- the JWT-SVID signature verifies with the key of its kid in the JWK Set, and PyJWT accepts
  its exp and aud;
- the claim named by the OID is an object with the expected kind, 64 lowercase hex
  characters of evidence_sha256, an integer attested_at and hex measurements;
- the token with one changed signature byte fails verification.

The exit code is 1 when a check fails, with one line per failure on stderr.
"""

import base64
import json
import re
import sys

import jwt
from cryptography import x509

OID = "2.25.227360298736076670704709277066504449269.1"
HEX = re.compile(r"^(?:[0-9a-f]{2})+$")


def check_certificate(path, errors):
    with open(path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    matches = [e for e in certificate.extensions if e.oid.dotted_string == OID]
    if len(matches) != 1:
        errors.append(f"certificate has {len(matches)} extensions with OID {OID}")
        return
    extension = matches[0]
    if extension.critical:
        errors.append("the attestation extension is critical")
    value = extension.value.value
    # SEQUENCE, then INTEGER 1 right after the SEQUENCE length octets.
    header = 2 if value[1] < 0x80 else 2 + (value[1] & 0x7F)
    if value[0] != 0x30:
        errors.append(f"the extension value starts with 0x{value[0]:02x}, not a SEQUENCE")
    elif value[header : header + 3] != b"\x02\x01\x01":
        errors.append("the extension value does not start with version INTEGER 1")


def flip_signature(token):
    """Return the token with the first signature byte changed."""
    head, signature = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return head + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def check_token(token_path, jwks_path, audience, kind, errors):
    with open(token_path, encoding="utf-8") as handle:
        token = handle.read().strip()
    with open(jwks_path, encoding="utf-8") as handle:
        key_set = jwt.PyJWKSet.from_dict(json.load(handle))
    header = jwt.get_unverified_header(token)
    keys = [k for k in key_set.keys if k.key_id == header.get("kid")]
    if not keys:
        errors.append(f"kid {header.get('kid')!r} is not in the JWK Set")
        return
    key = keys[0].key
    algorithm = header.get("alg")
    try:
        claims = jwt.decode(token, key=key, algorithms=[algorithm], audience=audience)
    except jwt.PyJWTError as error:
        errors.append(f"PyJWT rejected the JWT-SVID: {error}")
        return

    claim = claims.get(OID)
    if not isinstance(claim, dict):
        errors.append(f"claim {OID} is missing or not an object")
        return
    if claim.get("kind") != kind:
        errors.append(f"kind is {claim.get('kind')!r}, expected {kind!r}")
    digest = claim.get("evidence_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or not HEX.match(digest):
        errors.append(f"evidence_sha256 {digest!r} is not 64 lowercase hex characters")
    if not isinstance(claim.get("attested_at"), int):
        errors.append("attested_at is not an integer")
    measurements = claim.get("measurements")
    if not isinstance(measurements, dict) or not measurements:
        errors.append("measurements is missing or empty")
    else:
        for name, value in measurements.items():
            if not isinstance(value, str) or not HEX.match(value):
                errors.append(f"measurement {name!r} is not lowercase hex")

    try:
        jwt.decode(flip_signature(token), key=key, algorithms=[algorithm], audience=audience)
        errors.append("the token with a changed signature byte still verifies")
    except jwt.InvalidSignatureError:
        pass
    except jwt.PyJWTError as error:
        errors.append(f"a changed signature failed for another reason: {error}")


def main():
    cert_path, token_path, jwks_path, audience, kind = sys.argv[1:6]
    errors = []
    check_certificate(cert_path, errors)
    check_token(token_path, jwks_path, audience, kind, errors)
    for error in errors:
        print(error, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
