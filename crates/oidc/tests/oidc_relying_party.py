"""Verify JWT-SVIDs the way an OIDC relying party does, from the discovery document alone.

Usage: oidc_relying_party.py DISCOVERY_URL AUDIENCE [--cafile PEM] TOKEN...

Fetches the discovery document, then verifies each token against the document's jwks_uri,
its issuer and its id_token_signing_alg_values_supported, twice: with PyJWT's PyJWKClient and
with a jwcrypto JWKSet. Prints one JSON line per token,
{"pyjwt": RESULT, "jwcrypto": RESULT}, where RESULT is {"ok": true, "sub": ..., "iss": ...}
or {"ok": false, "error": ...}.
"""

import argparse
import json
import ssl
import sys
import urllib.request

import jwt
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt
from jwcrypto.common import JWException


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("discovery_url")
    parser.add_argument("audience")
    parser.add_argument("tokens", nargs="+")
    parser.add_argument("--cafile")
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    with urllib.request.urlopen(args.discovery_url, context=context, timeout=10) as response:
        document = json.load(response)

    client = jwt.PyJWKClient(document["jwks_uri"], ssl_context=context, timeout=10)
    with urllib.request.urlopen(document["jwks_uri"], context=context, timeout=10) as response:
        key_set = jwcrypto_jwk.JWKSet.from_json(response.read())
    for token in args.tokens:
        print(
            json.dumps(
                {
                    "pyjwt": verify_pyjwt(client, document, args.audience, token),
                    "jwcrypto": verify_jwcrypto(key_set, document, args.audience, token),
                }
            )
        )
    return 0


def verify_pyjwt(client, document, audience, token):
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=document["id_token_signing_alg_values_supported"],
            audience=audience,
            issuer=document["issuer"],
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
        return {"ok": True, "sub": claims["sub"], "iss": claims["iss"]}
    except jwt.PyJWTError as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


def verify_jwcrypto(key_set, document, audience, token):
    try:
        verified = jwcrypto_jwt.JWT(
            jwt=token,
            key=key_set,
            algs=document["id_token_signing_alg_values_supported"],
            check_claims={"iss": document["issuer"], "aud": audience, "exp": None},
            expected_type="JWS",
        )
        claims = json.loads(verified.claims)
        return {"ok": True, "sub": claims["sub"], "iss": claims["iss"]}
    except (JWException, ValueError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


if __name__ == "__main__":
    sys.exit(main())
