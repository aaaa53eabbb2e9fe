"""Check a directly attested workload's X.509-SVID files with py-spiffe and cryptography.

Usage: attested_svid_check.py SVID_PEM KEY_PEM BUNDLE_PEM SPIFFE_ID

py-spiffe parses the chain and key, which applies its SPIFFE X.509-SVID rules (one URI SAN, a
leaf that is not a CA, digitalSignature) to a leaf that carries twid's non-critical
attestation extension. cryptography then checks that a bundle authority signed the leaf.
Prints a JSON summary; exits non-zero with the error on any failure.
"""

import json
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from spiffe.svid.x509_svid import X509Svid

ATTESTATION_OID = "2.25.227360298736076670704709277066504449269.1"


def main():
    svid_path, key_path, bundle_path, expected_id = sys.argv[1:5]
    with open(svid_path, "rb") as f:
        chain = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    with open(bundle_path, "rb") as f:
        authorities = x509.load_pem_x509_certificates(f.read())

    svid = X509Svid.parse(chain, key)
    if str(svid.spiffe_id) != expected_id:
        raise SystemExit(f"SPIFFE ID {svid.spiffe_id}, expected {expected_id}")

    extension = next(
        (ext for ext in svid.leaf.extensions if ext.oid.dotted_string == ATTESTATION_OID),
        None,
    )
    if extension is None or extension.critical:
        raise SystemExit("the leaf lacks the non-critical attestation extension")

    issuers = []
    for authority in authorities:
        try:
            svid.leaf.verify_directly_issued_by(authority)
            issuers.append(authority.subject.rfc4514_string())
        except (ValueError, TypeError, InvalidSignature):
            continue
    if not issuers:
        raise SystemExit("no bundle authority signed the leaf")

    print(json.dumps({"spiffe_id": str(svid.spiffe_id), "issuer": issuers[0]}))


if __name__ == "__main__":
    main()
