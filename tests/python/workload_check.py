"""Fetch a twid agent's identities with py-spiffe and check the JWT-SVID with PyJWT.

Usage: workload_check.py OUT_DIR AUDIENCE

Reads the Workload API address from SPIFFE_ENDPOINT_SOCKET, as every SPIFFE client does.
Writes into OUT_DIR: leaf.pem, chain.pem (the full SVID chain, leaf first), key.pem,
bundle.pem (the X.509 bundle of the SVID's trust domain) and summary.json. The caller checks
the chain with `openssl verify`. Exits non-zero with the error on any failure.
"""

import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, WorkloadApiClient
from spiffe.svid.jwt_svid import JwtSvid

JWT_ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def main():
    out_dir, audience = sys.argv[1], sys.argv[2]
    summary = {}
    with WorkloadApiClient(default_timeout=10) as client:
        context = client.fetch_x509_context()
        svid = context.default_svid
        summary["x509_spiffe_id"] = str(svid.spiffe_id)
        summary["x509_svid_count"] = len(context.x509_svids)
        trust_domain = svid.spiffe_id.trust_domain
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(trust_domain)
        with open(os.path.join(out_dir, "leaf.pem"), "w") as f:
            f.write(pem(svid.leaf))
        with open(os.path.join(out_dir, "chain.pem"), "w") as f:
            f.write("".join(pem(cert) for cert in svid.cert_chain))
        with open(os.path.join(out_dir, "bundle.pem"), "w") as f:
            f.write("".join(pem(cert) for cert in bundle.x509_authorities))
        key = svid.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(out_dir, "key.pem"), "wb") as f:
            f.write(key)

        jwt_svid = client.fetch_jwt_svid(audience={audience})
        summary["jwt_spiffe_id"] = str(jwt_svid.spiffe_id)

        # py-spiffe's own offline validation against the JWT bundle from FetchJWTBundles.
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(TrustDomain(str(trust_domain)))
        JwtSvid.parse_and_validate(jwt_svid.token, jwt_bundle, {audience})

        # PyJWT on the raw JWK Set the agent sent over FetchJWTBundles.
        raw = client._call_fetch_jwt_bundles(10)
        jwks_bytes = raw.bundles[f"spiffe://{trust_domain}"]
        key_set = jwt.PyJWKSet.from_json(jwks_bytes.decode())
        kid = jwt.get_unverified_header(jwt_svid.token)["kid"]
        signing_key = next(k for k in key_set.keys if k.key_id == kid)
        claims = jwt.decode(
            jwt_svid.token,
            signing_key.key,
            algorithms=JWT_ALGORITHMS,
            audience=audience,
            options={"require": ["exp", "sub", "aud"]},
        )
        summary["pyjwt_sub"] = claims["sub"]
        summary["jwks_has_private_members"] = any("d" in k for k in json.loads(jwks_bytes)["keys"])

        validated = client.validate_jwt_svid(jwt_svid.token, audience)
        summary["validated_spiffe_id"] = str(validated.spiffe_id)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
