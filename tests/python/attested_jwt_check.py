"""Check a JWT-SVID from direct workload attestation with PyJWT, independently of twid.

Usage: attested_jwt_check.py TOKEN_FILE JWKS_FILE AUDIENCE SUBJECT MAX_EXP CLAIMS_FILE

- TOKEN_FILE contains the JWT-SVID.
- JWKS_FILE is a SPIFFE bundle or JWK Set that contains the signing key, found by `kid`.
- AUDIENCE is an audience the token must name, and SUBJECT its expected `sub`.
- MAX_EXP is the latest allowed `exp`, in Unix seconds.
- CLAIMS_FILE is a JSON object the attestation claim must equal exactly.

Checks, independently of twid:

- PyJWT verifies the signature with the `kid` key and accepts `aud` and `exp`;
- `sub` is SUBJECT, `exp` is after `iat` and not after MAX_EXP, and `jti` is a non-empty string;
- the claim named by the attestation OID equals CLAIMS_FILE;
- the token with one changed signature byte fails verification.

Prints the verified claims as JSON on stdout. The exit code is 1 when a check fails, with one
line per failure on stderr.
"""

import base64
import json
import sys

import jwt

OID = "2.25.227360298736076670704709277066504449269.1"


def flip_signature(token):
    """Return the token with the first signature byte changed."""
    head, signature = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return head + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def signing_key(jwks_path, token, errors):
    """Return the public key of the token's kid from the key set, or None."""
    with open(jwks_path, encoding="utf-8") as handle:
        document = json.load(handle)
    # A SPIFFE bundle also lists X.509 authorities (`use` x509-svid), which are no JWT keys.
    keys = [key for key in document["keys"] if key.get("use", "jwt-svid") != "x509-svid"]
    key_set = jwt.PyJWKSet.from_dict({"keys": keys})
    kid = jwt.get_unverified_header(token).get("kid")
    matches = [key for key in key_set.keys if key.key_id == kid]
    if not matches:
        errors.append(f"kid {kid!r} is not in {jwks_path}")
        return None
    return matches[0].key


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    token_path, jwks_path, audience, subject, max_exp, claims_path = sys.argv[1:]
    max_exp = int(max_exp)
    with open(token_path, encoding="utf-8") as handle:
        token = handle.read().strip()
    with open(claims_path, encoding="utf-8") as handle:
        expected_claim = json.load(handle)

    errors = []
    key = signing_key(jwks_path, token, errors)
    if key is None:
        print("\n".join(errors), file=sys.stderr)
        return 1
    algorithm = jwt.get_unverified_header(token).get("alg")
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[algorithm],
            audience=audience,
            options={"require": ["sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as error:
        print(f"PyJWT rejected the JWT-SVID: {error}", file=sys.stderr)
        return 1

    if claims["sub"] != subject:
        errors.append(f"sub is {claims['sub']!r}, expected {subject!r}")
    if not claims["exp"] > claims["iat"]:
        errors.append(f"exp {claims['exp']} is not after iat {claims['iat']}")
    if claims["exp"] > max_exp:
        errors.append(f"exp {claims['exp']} is after the allowed maximum {max_exp}")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        errors.append(f"jti {claims['jti']!r} is not a non-empty string")
    claim = claims.get(OID)
    if claim != expected_claim:
        errors.append(f"claim {OID} is {claim!r}, expected {expected_claim!r}")

    try:
        jwt.decode(flip_signature(token), key=key, algorithms=[algorithm], audience=audience)
        errors.append("a token with a changed signature byte verified")
    except jwt.InvalidSignatureError:
        pass
    except jwt.PyJWTError as error:
        errors.append(f"the changed token failed for another reason: {error}")

    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
