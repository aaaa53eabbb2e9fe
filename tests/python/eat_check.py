"""Check twid's signed attestation results (EAT in JWT form) with PyJWT.

Usage: eat_check.py IN_FILE OUT_FILE

IN_FILE is JSON written by the twid end-to-end test of the Verification API:

- "jwks": the JWK Set of the trust domain's JWT keys.
- "issuer": the expected `iss`, the server's SPIFFE ID.
- "cases": a list of {name, token, status, nonce}, where status is the expected
  `ear.status` and nonce the expected `eat_nonce` (base64url, or null for none).

For each case this script checks, independently of twid:

- the header has typ "eat+jwt", an alg PyJWT supports and a kid found in the JWK Set;
- the signature verifies under that key, and PyJWT requires exp, iat and iss, checks
  that exp is in the future and iss equals the issuer;
- exp is at most 300 seconds after iat;
- ear.status and eat_nonce have the expected values, and a contraindicated result
  carries twid.reason;
- the token with one changed signature byte fails verification.

OUT_FILE receives {"results": {name: {"ok": bool, "errors": [str]}}}, and the errors
also go to stderr. The exit code is 0 once OUT_FILE is written, even when cases fail,
because the caller includes cases that must fail.
"""

import base64
import json
import sys

import jwt

# The maximum lifetime of a result, in seconds (RESULT_TTL in the server).
RESULT_TTL_SECONDS = 300


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip_signature(token):
    """Return the token with the first signature byte changed."""
    head, signature = token.rsplit(".", 1)
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x01
    return f"{head}.{b64(bytes(raw))}"


def decode(token, key, algorithm, issuer):
    return jwt.decode(
        token,
        key=key,
        algorithms=[algorithm],
        issuer=issuer,
        options={"require": ["exp", "iat", "iss"], "verify_aud": False},
    )


def check_case(case, keys, issuer):
    errors = []
    token = case["token"]
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "eat+jwt":
        errors.append(f"typ is {header.get('typ')!r}, expected 'eat+jwt'")
    algorithm = header.get("alg")
    key = keys.get(header.get("kid"))
    if key is None:
        errors.append(f"kid {header.get('kid')!r} is not in the JWK Set")
        return errors

    try:
        claims = decode(token, key, algorithm, issuer)
    except jwt.PyJWTError as error:
        errors.append(f"PyJWT rejected the token: {error}")
        return errors

    if claims["exp"] - claims["iat"] > RESULT_TTL_SECONDS:
        errors.append(f"exp {claims['exp']} is over {RESULT_TTL_SECONDS}s after iat")
    if claims.get("ear.status") != case["status"]:
        errors.append(
            f"ear.status is {claims.get('ear.status')!r}, expected {case['status']!r}"
        )
    if claims.get("eat_nonce") != case["nonce"]:
        errors.append(
            f"eat_nonce is {claims.get('eat_nonce')!r}, expected {case['nonce']!r}"
        )
    if case["status"] == "contraindicated" and not claims.get("twid.reason"):
        errors.append("a contraindicated result has no twid.reason")

    try:
        decode(flip_signature(token), key, algorithm, issuer)
        errors.append("the token with a changed signature byte still verifies")
    except jwt.InvalidSignatureError:
        pass
    except jwt.PyJWTError as error:
        errors.append(f"a changed signature failed for another reason: {error}")
    return errors


def main():
    in_file, out_file = sys.argv[1], sys.argv[2]
    with open(in_file, encoding="utf-8") as handle:
        document = json.load(handle)

    keys = {}
    for jwk in document["jwks"]["keys"]:
        keys[jwk["kid"]] = jwt.PyJWK(jwk).key
    if not keys:
        sys.exit("the JWK Set contains no keys")

    results = {}
    for case in document["cases"]:
        errors = check_case(case, keys, document["issuer"])
        results[case["name"]] = {"ok": not errors, "errors": errors}
        for error in errors:
            print(f"{case['name']}: {error}", file=sys.stderr)

    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump({"results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
