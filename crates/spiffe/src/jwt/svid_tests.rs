use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::*;
use crate::TrustDomain;
use crate::jwt::{JwtAuthority, JwtBundle};
use crate::keys::{Curve, PublicKeyInfo};

const NOW: u64 = 1_700_000_000;

struct Signer {
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        Self { pair }
    }

    fn authority(&self, kid: &str) -> JwtAuthority {
        let point = self.pair.public_key().as_ref().to_vec();
        let spki = PublicKeyInfo::Ec {
            curve: Curve::P256,
            point,
        }
        .to_spki_der();
        JwtAuthority::from_spki_der(kid, &spki).unwrap()
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = encode_signing_input(header, claims);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        assemble(&input, sig.as_ref())
    }
}

fn header() -> Value {
    json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
}

fn claims() -> Value {
    json!({"sub": "spiffe://example.org/w", "aud": ["svc"], "exp": NOW + 60, "iat": NOW})
}

fn set_with(authority: JwtAuthority, td: &str) -> JwtBundleSet {
    let mut bundle = JwtBundle::new(TrustDomain::new(td).unwrap());
    bundle.add_authority(authority);
    [bundle].into_iter().collect()
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn validate(signer: &Signer, header: &Value, claims: &Value) -> Result<JwtSvid, JwtError> {
    let set = set_with(signer.authority("k1"), "example.org");
    JwtSvid::parse_and_validate(&signer.sign(header, claims), &set, &["svc"], now())
}

#[test]
fn validates_signed_token() {
    let signer = Signer::new();
    let svid = validate(&signer, &header(), &claims()).unwrap();
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/w");
    assert_eq!(svid.audience, vec!["svc".to_owned()]);
    assert_eq!(svid.issued_at, Some(NOW as i64));
    assert_eq!(svid.algorithm, JwtAlgorithm::ES256);
    assert!(
        !format!("{svid:?}").contains(&svid.token),
        "Debug must not print the token"
    );
}

#[test]
fn rejects_disallowed_algorithms_first() {
    // conformance: JWT-03
    for alg in ["none", "HS256", "EdDSA", "ES256K", "es256"] {
        let token = format!(
            "{}.c2ln",
            encode_signing_input(&json!({"alg": alg}), &json!({}))
        );
        let err = JwtSvid::parse_insecure(&token).unwrap_err();
        assert_eq!(err, JwtError::UnsupportedAlgorithm(alg.into()), "{alg}");
    }
}

#[test]
fn rejects_header_rule_breaks() {
    // conformance: JWT-02, JWT-04 (A7, A11)
    let signer = Signer::new();
    let cases = [
        (
            json!({"alg": "ES256", "kid": "k1", "jku": "x"}),
            JwtError::UnexpectedHeader("jku".into()),
        ),
        (
            json!({"alg": "ES256", "kid": "k1", "typ": "jwt"}),
            JwtError::InvalidType("jwt".into()),
        ),
        (json!({"alg": "ES256"}), JwtError::MissingKeyId),
    ];
    for (header, expected) in cases {
        assert_eq!(
            validate(&signer, &header, &claims()).unwrap_err(),
            expected,
            "{header}"
        );
    }
    let jose = json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"});
    assert!(validate(&signer, &jose, &claims()).is_ok());
}

#[test]
fn rejects_claim_rule_breaks() {
    // conformance: JWT-05, JWT-06, JWT-08
    let signer = Signer::new();
    let mut no_sub = claims();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut bad_sub = claims();
    bad_sub["sub"] = json!("https://example.org/w");
    let mut empty_aud = claims();
    empty_aud["aud"] = json!([]);
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        validate(&signer, &header(), &no_sub).unwrap_err(),
        JwtError::MissingClaim("sub")
    );
    assert!(matches!(
        validate(&signer, &header(), &bad_sub).unwrap_err(),
        JwtError::InvalidSubject { .. }
    ));
    assert_eq!(
        validate(&signer, &header(), &empty_aud).unwrap_err(),
        JwtError::EmptyAudience
    );
    assert_eq!(
        validate(&signer, &header(), &no_exp).unwrap_err(),
        JwtError::MissingClaim("exp")
    );
}

#[test]
fn checks_expiry_without_leeway() {
    // conformance: JWT-09
    let signer = Signer::new();
    let mut at_exp = claims();
    at_exp["exp"] = json!(NOW);
    let err = validate(&signer, &header(), &at_exp).unwrap_err();
    assert_eq!(
        err,
        JwtError::Expired {
            exp: NOW as i64,
            now: NOW as i64
        }
    );
    let mut later_nbf = claims();
    later_nbf["nbf"] = json!(NOW + 1);
    assert!(matches!(
        validate(&signer, &header(), &later_nbf).unwrap_err(),
        JwtError::NotYetValid { .. }
    ));
}

#[test]
fn checks_audience() {
    // conformance: JWT-07
    let signer = Signer::new();
    let set = set_with(signer.authority("k1"), "example.org");
    let mut single = claims();
    single["aud"] = json!("svc");
    let token = signer.sign(&header(), &single);
    assert!(JwtSvid::parse_and_validate(&token, &set, &["other", "svc"], now()).is_ok());
    let err = JwtSvid::parse_and_validate(&token, &set, &["SVC"], now()).unwrap_err();
    assert!(matches!(err, JwtError::AudienceMismatch { .. }), "{err:?}");
    let err = JwtSvid::parse_and_validate(&token, &set, &[], now()).unwrap_err();
    assert_eq!(err, JwtError::NoExpectedAudience);
}

#[test]
fn rejects_wrong_key_domain_or_alg() {
    // conformance: JWT-10, FED-06
    let signer = Signer::new();
    let token = signer.sign(&header(), &claims());
    let other = Signer::new();
    let wrong_key = set_with(other.authority("k1"), "example.org");
    let err = JwtSvid::parse_and_validate(&token, &wrong_key, &["svc"], now()).unwrap_err();
    assert_eq!(err, JwtError::InvalidSignature("k1".into()));

    let foreign = set_with(signer.authority("k1"), "other.org");
    let err = JwtSvid::parse_and_validate(&token, &foreign, &["svc"], now()).unwrap_err();
    assert_eq!(
        err,
        JwtError::NoBundle(TrustDomain::new("example.org").unwrap())
    );

    let renamed = set_with(signer.authority("k2"), "example.org");
    let err = JwtSvid::parse_and_validate(&token, &renamed, &["svc"], now()).unwrap_err();
    assert!(matches!(err, JwtError::UnknownKeyId { .. }), "{err:?}");

    let es384 = json!({"alg": "ES384", "kid": "k1"});
    let err = validate(&signer, &es384, &claims()).unwrap_err();
    assert!(
        matches!(err, JwtError::KeyAlgorithmMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn rejects_malformed_structure() {
    // conformance: JWT-01
    let signer = Signer::new();
    let token = signer.sign(&header(), &claims());
    for bad in [
        "{\"payload\":\"x\"}".to_owned(),
        format!("{token}.extra"),
        format!("{token}="),
        token.replacen('.', "..", 1),
    ] {
        assert!(JwtSvid::parse_insecure(&bad).is_err(), "{bad}");
    }
    let input = encode_signing_input(&header(), &claims()).replace('.', ".e30.");
    let dup = format!(
        "{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","alg":"ES256","kid":"k"}"#)
    );
    assert!(JwtSvid::parse_insecure(&format!("{input}.c2ln")).is_err());
    assert!(matches!(
        JwtSvid::parse_insecure(&format!("{dup}.e30")).unwrap_err(),
        JwtError::InvalidJson {
            segment: "header",
            ..
        } | JwtError::MalformedToken(_)
    ));
}

#[test]
fn jwk_round_trips_and_rejects_bad_keys() {
    let signer = Signer::new();
    let authority = signer.authority("k1");
    let jwk = authority.to_jwk(Some("jwt-svid"));
    assert_eq!(jwk["use"], "jwt-svid");
    assert_eq!(jwk["crv"], "P-256");
    assert!(jwk.get("alg").is_none());
    assert_eq!(JwtAuthority::from_jwk(&jwk).unwrap(), authority);

    let mut off_curve = jwk.clone();
    off_curve["y"] = off_curve["x"].clone();
    assert!(matches!(
        JwtAuthority::from_jwk(&off_curve),
        Err(JwtError::MalformedJwk { .. })
    ));
    let mut no_kid = jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        JwtAuthority::from_jwk(&no_kid),
        Err(JwtError::JwkMissingKeyId)
    );
    let okp = json!({"kty": "OKP", "kid": "x", "crv": "Ed25519", "x": "AA"});
    assert_eq!(
        JwtAuthority::from_jwk(&okp),
        Err(JwtError::UnsupportedKeyType("OKP".into()))
    );
}

#[test]
fn jwks_rejects_duplicate_kid() {
    let signer = Signer::new();
    let jwk = signer.authority("k1").to_jwk(None);
    let doc = json!({"keys": [jwk.clone(), jwk]}).to_string();
    let err = JwtBundle::parse_jwks(TrustDomain::new("td").unwrap(), doc.as_bytes()).unwrap_err();
    assert_eq!(err, JwtError::DuplicateKeyId("k1".into()));
}
