//! JWT-SVID signing, validated with twid-spiffe against a bundle of the key's public key.

// Helper functions outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use twid_ca::{CaError, JwtKey, KeyType, PrivateKey};
use twid_spiffe::{
    JwtAlgorithm, JwtAuthority, JwtBundle, JwtBundleSet, JwtError, JwtSvid, SpiffeId, TrustDomain,
};

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn subject() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/workload").unwrap()
}

fn bundles(key: &JwtKey) -> JwtBundleSet {
    let mut bundle = JwtBundle::new(TrustDomain::new("example.org").unwrap());
    bundle.add_authority(
        JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der()).unwrap(),
    );
    [bundle].into_iter().collect()
}

fn decode_segment(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

#[test]
fn tokens_validate_for_every_key_type() {
    let expected_alg = [
        (KeyType::EcP256, JwtAlgorithm::ES256),
        (KeyType::EcP384, JwtAlgorithm::ES384),
        (KeyType::Rsa2048, JwtAlgorithm::RS256),
        (KeyType::Rsa4096, JwtAlgorithm::RS256),
    ];
    for (key_type, alg) in expected_alg {
        let key = JwtKey::generate(key_type, now(), 24 * HOUR).unwrap();
        assert_eq!(key.algorithm(), alg);
        let audience = vec!["db".to_owned(), "cache".to_owned()];
        let (token, expiry) = key
            .sign_jwt_svid(&subject(), &audience, HOUR, now(), None)
            .unwrap();
        assert_eq!(expiry, now() + HOUR);

        let svid = JwtSvid::parse_and_validate(&token, &bundles(&key), &["cache"], now())
            .unwrap_or_else(|e| panic!("{key_type}: {e}"));
        assert_eq!(svid.spiffe_id, subject());
        assert_eq!(svid.audience, audience);
        assert_eq!(svid.algorithm, alg);
        assert_eq!(svid.key_id, key.key_id());
        assert_eq!(svid.expiry, 1_750_000_000 + 3600);
        assert_eq!(svid.issued_at, Some(1_750_000_000));

        let header = decode_segment(&token, 0);
        assert_eq!(
            header,
            json!({"alg": alg.as_str(), "kid": key.key_id(), "typ": "JWT"}),
            "{key_type}"
        );
    }
}

#[test]
fn ecdsa_signatures_are_fixed_length() {
    for (key_type, len) in [(KeyType::EcP256, 64), (KeyType::EcP384, 96)] {
        let key = JwtKey::generate(key_type, now(), HOUR).unwrap();
        let (token, _) = key
            .sign_jwt_svid(&subject(), &["a".to_owned()], HOUR, now(), None)
            .unwrap();
        let signature = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(signature.len(), len, "{key_type}");
    }
}

#[test]
fn tampered_tokens_fail() {
    let key = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    let (token, _) = key
        .sign_jwt_svid(&subject(), &["db".to_owned()], HOUR, now(), None)
        .unwrap();
    assert!(JwtSvid::parse_and_validate(&token, &bundles(&key), &["db"], now()).is_ok());

    // Replace the claims with others naming a different subject, keeping the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = decode_segment(&token, 1);
    claims["sub"] = json!("spiffe://example.org/admin");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = parts.join(".");
    let err = JwtSvid::parse_and_validate(&forged, &bundles(&key), &["db"], now()).unwrap_err();
    assert!(matches!(err, JwtError::InvalidSignature(_)), "{err}");

    // Flip one signature bit.
    let mut signature = URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap())
        .unwrap();
    signature[10] ^= 0x01;
    let flipped = format!(
        "{}.{}",
        token.rsplit_once('.').unwrap().0,
        URL_SAFE_NO_PAD.encode(signature)
    );
    let err = JwtSvid::parse_and_validate(&flipped, &bundles(&key), &["db"], now()).unwrap_err();
    assert!(matches!(err, JwtError::InvalidSignature(_)), "{err}");

    // Another key with the same kid must not validate it.
    let other = JwtKey::from_parts(
        key.key_id().to_owned(),
        PrivateKey::generate(KeyType::EcP256).unwrap(),
        now() + HOUR,
    )
    .unwrap();
    let err = JwtSvid::parse_and_validate(&token, &bundles(&other), &["db"], now()).unwrap_err();
    assert!(matches!(err, JwtError::InvalidSignature(_)), "{err}");
}

#[test]
fn expiry_is_capped_at_key_expiry() {
    let key = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    assert_eq!(key.not_after(), now() + HOUR);
    let (token, expiry) = key
        .sign_jwt_svid(&subject(), &["db".to_owned()], 5 * HOUR, now(), None)
        .unwrap();
    assert_eq!(expiry, key.not_after());
    assert_eq!(
        decode_segment(&token, 1)["exp"],
        json!(1_750_000_000 + 3600)
    );

    let err = key
        .sign_jwt_svid(&subject(), &["db".to_owned()], HOUR, key.not_after(), None)
        .unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err}");
}

#[test]
fn audience_is_required() {
    let key = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    let err = key
        .sign_jwt_svid(&subject(), &[], HOUR, now(), None)
        .unwrap_err();
    assert!(matches!(err, CaError::EmptyAudience), "{err}");
    let err = key
        .sign_jwt_svid(&subject(), &[String::new()], HOUR, now(), None)
        .unwrap_err();
    assert!(matches!(err, CaError::EmptyAudienceValue), "{err}");
    let err = key
        .sign_jwt_svid(&subject(), &["db".to_owned()], Duration::ZERO, now(), None)
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidTtl(_)), "{err}");
}

#[test]
fn extra_claims_cannot_replace_registered() {
    let key = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    let mut extra = Map::new();
    extra.insert("iss".into(), json!("https://issuer.example.org"));
    extra.insert("groups".into(), json!(["a", "b"]));
    let (token, _) = key
        .sign_jwt_svid(&subject(), &["db".to_owned()], HOUR, now(), Some(&extra))
        .unwrap();
    let svid = JwtSvid::parse_and_validate(&token, &bundles(&key), &["db"], now()).unwrap();
    assert_eq!(svid.claims["iss"], json!("https://issuer.example.org"));
    assert_eq!(svid.claims["groups"], json!(["a", "b"]));

    for name in ["sub", "aud", "exp", "iat"] {
        let mut extra = Map::new();
        extra.insert(name.into(), json!("x"));
        let err = key
            .sign_jwt_svid(&subject(), &["db".to_owned()], HOUR, now(), Some(&extra))
            .unwrap_err();
        assert!(
            matches!(&err, CaError::ReservedClaim(n) if n == name),
            "{name}: {err}"
        );
    }
}

#[test]
fn key_ids_random_and_validated() {
    let a = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    let b = JwtKey::generate(KeyType::EcP256, now(), HOUR).unwrap();
    assert_eq!(a.key_id().len(), 32);
    assert!(
        a.key_id()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(a.key_id(), b.key_id());

    for bad in ["", "a/b", "has space", &"x".repeat(129)] {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let err = JwtKey::from_parts(bad.to_owned(), key, now()).unwrap_err();
        assert!(matches!(err, CaError::InvalidKeyId(_)), "{bad:?}: {err}");
    }
}

#[test]
fn stored_key_signs_like_original() {
    let key = JwtKey::generate(KeyType::EcP384, now(), HOUR).unwrap();
    let restored = JwtKey::from_parts(
        key.key_id().to_owned(),
        PrivateKey::from_pkcs8_der(key.private_key().pkcs8_der()).unwrap(),
        key.not_after(),
    )
    .unwrap();
    let (token, _) = restored
        .sign_jwt_svid(&subject(), &["db".to_owned()], HOUR, now(), None)
        .unwrap();
    JwtSvid::parse_and_validate(&token, &bundles(&key), &["db"], now()).unwrap();
}
