"""Build a list of JWT-SVID validation cases and record what py-spiffe decides for each.

Usage: jwt_agreement.py OUT_FILE AUDIENCE

Reads the Workload API address from SPIFFE_ENDPOINT_SOCKET. Writes OUT_FILE as JSON:

- "agent_jwks": the JWK Set of the agent's trust domain from FetchJWTBundles.
- "local_jwks": {trust domain: JWK Set} for keys this script generates.
- "cases": a list of {name, source, token, audience, expected, pyspiffe_offline,
  pyspiffe_workload_api}. `source` is "agent" for tokens derived from a JWT-SVID the agent
  issued (the agent's bundle validates them), or "local" for tokens signed with a key of
  "local_jwks" (only offline validators can check them). `expected` is the JWT-SVID
  standard's result. Each py-spiffe result is {"valid": bool, "error": str}.

The caller validates the same tokens with twid and compares.
"""

import base64
import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm
from spiffe import JwtBundle, TrustDomain, WorkloadApiClient
from spiffe.svid.jwt_svid import JwtSvid

LOCAL_DOMAIN = "local.test"
OTHER_DOMAIN = "other.test"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj):
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def split(token):
    header, claims, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(claims)), signature


def with_header(token, **changes):
    header, claims, signature = token.split(".")
    decoded = json.loads(unb64(header))
    decoded.update(changes)
    return f"{segment(decoded)}.{claims}.{signature}"


def with_claims(token, **changes):
    header, claims, signature = token.split(".")
    decoded = json.loads(unb64(claims))
    decoded.update(changes)
    return f"{header}.{segment(decoded)}.{signature}"


def flip_signature(token):
    header, claims, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[-1] ^= 1
    return f"{header}.{claims}.{b64(bytes(raw))}"


def hs256(header, claims, secret):
    signing_input = f"{segment(header)}.{segment(claims)}"
    tag = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(tag)}"


def es256(header, claims, key):
    signing_input = f"{segment(header)}.{segment(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def eddsa(header, claims, key):
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def public_pem(key):
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def outcome(call):
    try:
        call()
        return {"valid": True, "error": ""}
    except Exception as err:  # every rejection counts, whatever py-spiffe raises
        return {"valid": False, "error": f"{type(err).__name__}: {err}"}


def pyspiffe_offline(bundles, token, audience):
    """Select the bundle of the token's subject, as py-spiffe's docs tell callers to. A
    subject with no trust domain gets the first bundle, so that py-spiffe itself decides."""

    def call():
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub", "")
        name = sub.split("/")[2] if sub.startswith("spiffe://") else ""
        bundle = bundles.get(name) or next(iter(bundles.values()))
        JwtSvid.parse_and_validate(token, bundle, {audience} if audience else set())

    return outcome(call)


def agent_cases(client, audience):
    token = client.fetch_jwt_svid(audience={audience}).token
    header, claims, _ = split(token)
    now = int(time.time())
    raw = client._call_fetch_jwt_bundles(10)
    trust_domain = claims["sub"].split("/")[2]
    jwks = json.loads(raw.bundles[f"spiffe://{trust_domain}"])
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    pem = public_pem(jwt.PyJWK(key).key)
    multi = client.fetch_jwt_svid(audience={audience, "spiffe://example.org/extra"}).token

    cases = [
        ("valid", token, audience, True),
        ("valid_one_of_two_audiences", multi, audience, True),
        ("wrong_audience", token, "spiffe://example.org/other", False),
        ("audience_differs_in_case", token, audience.upper(), False),
        ("empty_expected_audience", token, "", False),
        ("tampered_signature", flip_signature(token), audience, False),
        ("tampered_sub", with_claims(token, sub=claims["sub"] + "x"), audience, False),
        ("tampered_exp", with_claims(token, exp=claims["exp"] + 3600), audience, False),
        ("exp_in_past", with_claims(token, exp=now - 1), audience, False),
        ("typ_changed", with_header(token, typ="JWS"), audience, False),
        ("unknown_kid", with_header(token, kid="unknown"), audience, False),
        ("alg_none_unsigned", f"{segment(dict(header, alg='none'))}.{segment(claims)}.", audience, False),
        ("alg_none_signed", with_header(token, alg="none"), audience, False),
        ("hs256_keyed_with_public_pem", hs256(dict(header, alg="HS256"), claims, pem), audience, False),
        ("two_segments", ".".join(token.split(".")[:2]), audience, False),
    ]
    return jwks, cases


def local_cases(audience):
    key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    kid = "local-key"
    now = int(time.time())
    sub = f"spiffe://{LOCAL_DOMAIN}/workload"
    base = {"sub": sub, "aud": [audience], "exp": now + 300, "iat": now}

    def sign(claims, header=None, signing_key=key):
        return es256({"alg": "ES256", "kid": kid, "typ": "JWT"} if header is None else header, claims, signing_key)

    no_exp = {k: v for k, v in base.items() if k != "exp"}
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pem = public_pem(key.public_key())
    cases = [
        ("local_valid", sign(base), audience, True),
        ("aud_single_string", sign(dict(base, aud=audience)), audience, True),
        ("aud_single_string_mismatch", sign(dict(base, aud=audience)), audience + "x", False),
        ("empty_expected_audience_offline", sign(base), "", False),
        ("typ_jose", sign(base, {"alg": "ES256", "kid": kid, "typ": "JOSE"}), audience, True),
        ("typ_absent", sign(base, {"alg": "ES256", "kid": kid}), audience, True),
        ("typ_jws", sign(base, {"alg": "ES256", "kid": kid, "typ": "JWS"}), audience, False),
        ("typ_lowercase_jwt", sign(base, {"alg": "ES256", "kid": kid, "typ": "jwt"}), audience, False),
        ("typ_empty", sign(base, {"alg": "ES256", "kid": kid, "typ": ""}), audience, False),
        # py-spiffe 0.3.2 rejects this only because it reads claims["exp"] after PyJWT, which
        # checks exp only when present, has accepted the token.
        ("missing_exp", sign(no_exp), audience, False),
        ("expired_one_second", sign(dict(base, exp=now - 1)), audience, False),
        ("empty_aud_array", sign(dict(base, aud=[])), audience, False),
        ("sub_not_spiffe", sign(dict(base, sub="https://local.test/workload")), audience, False),
        ("alg_none", f"{segment({'alg': 'none', 'kid': kid, 'typ': 'JWT'})}.{segment(base)}.", audience, False),
        ("hs256_keyed_with_public_pem_local", hs256({"alg": "HS256", "kid": kid, "typ": "JWT"}, base, pem), audience, False),
        ("eddsa", eddsa({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, base, ed_key), audience, False),
        # Signed by the local trust domain's key, but the subject is in the other trust domain,
        # whose bundle contains a different key under the same kid.
        ("kid_of_other_trust_domain", sign(dict(base, sub=f"spiffe://{OTHER_DOMAIN}/workload")), audience, False),
    ]
    local_jwks = {
        LOCAL_DOMAIN: {"keys": [dict(json.loads(ECAlgorithm.to_jwk(key.public_key())), kid=kid)]},
        OTHER_DOMAIN: {"keys": [dict(json.loads(ECAlgorithm.to_jwk(other_key.public_key())), kid=kid)]},
    }
    return local_jwks, cases


def main():
    out_file, audience = sys.argv[1], sys.argv[2]
    with WorkloadApiClient(default_timeout=10) as client:
        agent_jwks, agent_list = agent_cases(client, audience)
        agent_domain = split(agent_list[0][1])[1]["sub"].split("/")[2]
        agent_bundles = {agent_domain: JwtBundle.parse(TrustDomain(agent_domain), json.dumps(agent_jwks).encode())}
        local_jwks, local_list = local_cases(audience)
        local_bundles = {
            name: JwtBundle.parse(TrustDomain(name), json.dumps(jwks).encode())
            for name, jwks in local_jwks.items()
        }
        cases = []
        for name, token, aud, expected in agent_list:
            cases.append({
                "name": name,
                "source": "agent",
                "token": token,
                "audience": aud,
                "expected": expected,
                "pyspiffe_offline": pyspiffe_offline(agent_bundles, token, aud),
                "pyspiffe_workload_api": outcome(lambda: client.validate_jwt_svid(token, aud)),
            })
        for name, token, aud, expected in local_list:
            cases.append({
                "name": name,
                "source": "local",
                "token": token,
                "audience": aud,
                "expected": expected,
                "pyspiffe_offline": pyspiffe_offline(local_bundles, token, aud),
                "pyspiffe_workload_api": None,
            })
    with open(out_file, "w") as f:
        json.dump({"agent_jwks": agent_jwks, "local_jwks": local_jwks, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
