"""Check twid's WIMSE tokens with PyJWT and jwcrypto, and make tokens for twid to check.

Usage: wimse_check.py IN_FILE OUT_FILE

IN_FILE is JSON written by the twid-wimse tests:

- "issuer_jwks": {trust domain: JWK Set} of the Identity Server keys.
- "cases": a list of {name, wit, wpt, audience, access_token}, where access_token may
  be null. Each WIT and WPT was made by twid for the same request.

For each case this script checks, independently of twid:

- the WIT header has typ "wit+jwt" and a kid, and its signature verifies under the
  issuer JWK Set (with jwcrypto, which selects the key by kid, and with PyJWT, which also
  checks exp and iat);
- the WIT claims have iss, sub, exp, iat, jti and cnf.jwk with alg;
- the WPT header has typ "wpt+jwt" and alg equal to cnf.jwk.alg, and its signature
  verifies under cnf.jwk (with both libraries; PyJWT also checks aud and exp);
- the WPT wth is base64url(SHA-256(WIT)) and ath is base64url(SHA-256(access token));
- a WIT or WPT with one changed signature byte fails verification.

OUT_FILE receives {"results": {name: {"ok": bool, "errors": [str]}}, "python_made": ...}
where "python_made" contains a WIT and WPT signed here (issuer key P-256, workload key
Ed25519) with the issuer JWK Set, for twid to verify in the other direction.
"""

import base64
import hashlib
import json
import secrets
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

PYTHON_DOMAIN = "python.test"
PYTHON_ISSUER = "https://issuer.python.test"
PYTHON_AUDIENCE = "https://service.example.org/whoami"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_hash(value):
    return b64(hashlib.sha256(value.encode("ascii")).digest())


def parts(token):
    header, claims, _ = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(claims))


def flip_signature(token):
    """Return the token with the first signature byte changed."""
    head, signature = token.rsplit(".", 1)
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x01
    return f"{head}.{b64(bytes(raw))}"


def jwcrypto_verifies(token, key, alg):
    try:
        signed = jwcrypto_jws.JWS()
        signed.deserialize(token)
        signed.verify(key, alg=alg)
        return True
    except Exception:  # noqa: BLE001 - any failure means "does not verify"
        return False


def check_case(case, issuer_jwks):
    errors = []

    def expect(condition, message):
        if not condition:
            errors.append(message)

    wit, wpt = case["wit"], case["wpt"]
    wit_header, wit_claims = parts(wit)
    expect(wit_header.get("typ") == "wit+jwt", f"WIT typ is {wit_header.get('typ')!r}")
    kid = wit_header.get("kid")
    expect(isinstance(kid, str) and kid, "WIT has no kid")
    alg = wit_header.get("alg")

    sub = wit_claims.get("sub", "")
    domain = sub.removeprefix("spiffe://").split("/", 1)[0]
    jwks = issuer_jwks.get(domain)
    expect(jwks is not None, f"no issuer JWK Set for trust domain {domain!r}")
    if jwks is None:
        return errors

    key_set = jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks))
    issuer_key = key_set.get_key(kid)
    expect(issuer_key is not None, f"kid {kid!r} is not in the issuer JWK Set")
    if issuer_key is not None:
        expect(jwcrypto_verifies(wit, issuer_key, alg), "jwcrypto: WIT signature invalid")
        expect(
            not jwcrypto_verifies(flip_signature(wit), issuer_key, alg),
            "jwcrypto: WIT with a changed signature verified",
        )

    try:
        py_key = jwt.PyJWKSet.from_dict(jwks)[kid]
        jwt.decode(
            wit,
            py_key.key,
            algorithms=[alg],
            options={"require": ["exp", "iat", "sub"], "verify_aud": False},
        )
    except Exception as e:  # noqa: BLE001
        errors.append(f"PyJWT: WIT rejected: {e}")

    for claim in ("iss", "sub", "exp", "iat", "jti", "cnf"):
        expect(claim in wit_claims, f"WIT claim {claim} missing")
    cnf_jwk = wit_claims.get("cnf", {}).get("jwk", {})
    cnf_alg = cnf_jwk.get("alg")
    expect(isinstance(cnf_alg, str), "WIT cnf.jwk has no alg")
    expect("d" not in cnf_jwk, "WIT cnf.jwk contains a private key")

    wpt_header, wpt_claims = parts(wpt)
    expect(wpt_header.get("typ") == "wpt+jwt", f"WPT typ is {wpt_header.get('typ')!r}")
    expect(
        wpt_header.get("alg") == cnf_alg,
        f"WPT alg {wpt_header.get('alg')!r} is not cnf.jwk.alg {cnf_alg!r}",
    )
    expect(wpt_claims.get("wth") == token_hash(wit), "WPT wth is not SHA-256 of the WIT")
    access_token = case.get("access_token")
    if access_token is None:
        expect("ath" not in wpt_claims, "WPT has ath without an access token")
    else:
        expect(
            wpt_claims.get("ath") == token_hash(access_token),
            "WPT ath is not SHA-256 of the access token",
        )
    expect(isinstance(wpt_claims.get("jti"), str), "WPT jti missing")

    confirmation = jwcrypto_jwk.JWK(**cnf_jwk)
    expect(jwcrypto_verifies(wpt, confirmation, cnf_alg), "jwcrypto: WPT signature invalid")
    expect(
        not jwcrypto_verifies(flip_signature(wpt), confirmation, cnf_alg),
        "jwcrypto: WPT with a changed signature verified",
    )
    try:
        jwt.decode(
            wpt,
            jwt.PyJWK(cnf_jwk).key,
            algorithms=[cnf_alg],
            audience=case["audience"],
            options={"require": ["exp", "jti", "aud"]},
        )
    except Exception as e:  # noqa: BLE001
        errors.append(f"PyJWT: WPT rejected: {e}")
    return errors


def make_tokens():
    """Sign a WIT and WPT here, for twid to verify."""
    issuer_private = ec.generate_private_key(ec.SECP256R1())
    issuer_jwk = jwt.algorithms.ECAlgorithm.to_jwk(issuer_private.public_key(), as_dict=True)
    issuer_jwk.update({"kid": "python-issuer", "use": "sig"})

    workload_private = ed25519.Ed25519PrivateKey.generate()
    workload_jwk = jwt.algorithms.OKPAlgorithm.to_jwk(
        workload_private.public_key(), as_dict=True
    )
    workload_jwk["alg"] = "EdDSA"

    now = int(time.time())
    wit = jwt.encode(
        {
            "iss": PYTHON_ISSUER,
            "sub": f"spiffe://{PYTHON_DOMAIN}/workload",
            "exp": now + 600,
            "iat": now,
            "jti": b64(secrets.token_bytes(16)),
            "cnf": {"jwk": workload_jwk},
        },
        issuer_private,
        algorithm="ES256",
        headers={"typ": "wit+jwt", "kid": "python-issuer"},
    )
    access_token = "python-access-token"
    wpt = jwt.encode(
        {
            "aud": PYTHON_AUDIENCE,
            "exp": now + 30,
            "iat": now,
            "jti": b64(secrets.token_bytes(16)),
            "wth": token_hash(wit),
            "ath": token_hash(access_token),
        },
        workload_private,
        algorithm="EdDSA",
        headers={"typ": "wpt+jwt"},
    )
    return {
        "trust_domain": PYTHON_DOMAIN,
        "issuer_jwks": {"keys": [issuer_jwk]},
        "issuer": PYTHON_ISSUER,
        "wit": wit,
        "wpt": wpt,
        "audience": PYTHON_AUDIENCE,
        "access_token": access_token,
    }


def main():
    in_file, out_file = sys.argv[1], sys.argv[2]
    with open(in_file) as f:
        request = json.load(f)
    results = {}
    for case in request["cases"]:
        errors = check_case(case, request["issuer_jwks"])
        results[case["name"]] = {"ok": not errors, "errors": errors}
    with open(out_file, "w") as f:
        json.dump({"results": results, "python_made": make_tokens()}, f, indent=2)


if __name__ == "__main__":
    main()
