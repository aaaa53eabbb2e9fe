//! Issuing and verifying Workload Identity Tokens.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Fixture, ISSUER, ISSUER_KEY_ID, decode, fixed_now, subject, trust_domain, unix};
use serde_json::{Value, json};
use twid_spiffe::{JwtAuthority, JwtBundle, JwtBundleSet, TrustDomain};
use twid_wimse::{
    IssuerKeys, JwsAlgorithm, PublicJwk, SigningKey, TokenKind, WimseError, WitValidation,
    issue_wit, verify_wit,
};

/// Returns the fixture's WIT header and claims, for building variants.
fn parts(fixture: &Fixture) -> (Value, Value) {
    decode(&fixture.wit)
}

fn verify(fixture: &Fixture, token: &str) -> Result<twid_wimse::Wit, WimseError> {
    verify_wit(
        token,
        &fixture.issuer_keys,
        &WitValidation::default(),
        fixed_now(),
    )
}

#[test]
fn wit_round_trips_for_each_algorithm() {
    let pairs = [
        (JwsAlgorithm::ES256, JwsAlgorithm::ES256),
        (JwsAlgorithm::ES384, JwsAlgorithm::EdDSA),
        (JwsAlgorithm::ES512, JwsAlgorithm::ES384),
        (JwsAlgorithm::RS256, JwsAlgorithm::PS256),
        (JwsAlgorithm::PS384, JwsAlgorithm::RS512),
        (JwsAlgorithm::EdDSA, JwsAlgorithm::ES512),
    ];
    for (issuer_alg, workload_alg) in pairs {
        let fixture = Fixture::new(issuer_alg, workload_alg, fixed_now());
        let wit = verify(&fixture, &fixture.wit).unwrap();
        assert_eq!(wit.subject, subject(), "{issuer_alg}/{workload_alg}");
        assert_eq!(wit.issuer.as_deref(), Some(ISSUER));
        assert_eq!(wit.algorithm, issuer_alg);
        assert_eq!(wit.confirmation_algorithm, workload_alg);
        assert!(
            wit.confirmation_key
                .same_key(&fixture.workload_key.public_jwk())
        );
        assert_eq!(wit.key_id.as_deref(), Some(ISSUER_KEY_ID));
        assert_eq!(wit.expiry, unix(fixed_now()) + 3600);
        assert_eq!(wit.token_hash(), twid_wimse::token_hash(&fixture.wit));
    }
}

#[test]
fn wit_has_draft_header_and_claims() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = parts(&fixture);
    assert_eq!(header["typ"], "wit+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], ISSUER_KEY_ID);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], subject().as_str());
    assert_eq!(claims["iat"], unix(fixed_now()));
    assert_eq!(claims["exp"], unix(fixed_now()) + 3600);
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 22));
    assert_eq!(claims["cnf"]["jwk"]["alg"], "ES256");
    assert_eq!(claims["cnf"]["jwk"]["kty"], "EC");
    assert!(claims["cnf"]["jwk"].get("d").is_none());
}

#[test]
fn wrong_wit_typ_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = parts(&fixture);
    for typ in [json!("JWT"), json!("wpt+jwt"), json!("jwt"), json!(7)] {
        let mut header = header.clone();
        header["typ"] = typ.clone();
        let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
        let err = verify(&fixture, &token).unwrap_err();
        assert!(
            matches!(err, WimseError::InvalidWitType(Some(_))),
            "{typ}: {err}"
        );
    }
    let mut header = header;
    header.as_object_mut().unwrap().remove("typ");
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::InvalidWitType(None))
    );
}

#[test]
fn media_type_typ_is_accepted() {
    let fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = parts(&fixture);
    header["typ"] = "application/wit+jwt".into();
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert!(verify(&fixture, &token).is_ok());
}

#[test]
fn none_and_hmac_algorithms_are_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = parts(&fixture);
    for alg in ["none", "HS256", "es256"] {
        let mut header = header.clone();
        header["alg"] = alg.into();
        let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
        assert_eq!(
            verify(&fixture, &token),
            Err(WimseError::UnsupportedAlgorithm(alg.into()))
        );
    }
}

#[test]
fn algorithm_outside_allow_list_is_rejected() {
    let fixture = Fixture::new(JwsAlgorithm::RS256, JwsAlgorithm::ES256, fixed_now());
    let validation = WitValidation {
        allowed_algorithms: vec![JwsAlgorithm::ES256],
        ..WitValidation::default()
    };
    let err = verify_wit(&fixture.wit, &fixture.issuer_keys, &validation, fixed_now());
    assert_eq!(err, Err(WimseError::AlgorithmNotAllowed("RS256".into())));
}

#[test]
fn unknown_kid_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = parts(&fixture);
    header["kid"] = "other".into();
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::UnknownKeyId {
            key_id: "other".into(),
            trust_domain: trust_domain(),
        })
    );
}

#[test]
fn missing_kid_selects_only_key() {
    let mut fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = parts(&fixture);
    header.as_object_mut().unwrap().remove("kid");
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert!(verify(&fixture, &token).is_ok());

    let second = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
    fixture
        .issuer_keys
        .insert(trust_domain(), "issuer-2", second.public_jwk());
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::MissingKeyId(trust_domain()))
    );
}

#[test]
fn other_trust_domain_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = parts(&fixture);
    claims["sub"] = "spiffe://other.org/workload".into();
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::UnknownTrustDomain(
            TrustDomain::new("other.org").unwrap()
        ))
    );
}

#[test]
fn tampered_wit_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = parts(&fixture);
    let signature = fixture.wit.rsplit('.').next().unwrap();
    claims["sub"] = "spiffe://example.org/admin".into();
    let resigned = fixture.workload_key.sign_compact(&header, &claims).unwrap();
    let (signing_input, _) = resigned.rsplit_once('.').unwrap();
    let forged = format!("{signing_input}.{signature}");
    assert_eq!(
        verify(&fixture, &forged),
        Err(WimseError::InvalidSignature(TokenKind::Wit))
    );
    // A token signed by a key that is not the issuer's fails too.
    assert_eq!(
        verify(&fixture, &resigned),
        Err(WimseError::InvalidSignature(TokenKind::Wit))
    );
}

#[test]
fn key_type_must_fit_algorithm() {
    let fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = parts(&fixture);
    header["alg"] = "RS256".into();
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::KeyAlgorithmMismatch {
            kind: TokenKind::Wit,
            algorithm: "RS256".into(),
        })
    );
}

#[test]
fn expired_wit_is_rejected_after_skew() {
    let fixture = Fixture::es256(fixed_now());
    let exp = unix(fixed_now()) + 3600;
    let just_inside = fixed_now() + Duration::from_secs(3600 + 59);
    let validation = WitValidation::default();
    assert!(verify_wit(&fixture.wit, &fixture.issuer_keys, &validation, just_inside).is_ok());
    let after = fixed_now() + Duration::from_secs(3600 + 60);
    assert_eq!(
        verify_wit(&fixture.wit, &fixture.issuer_keys, &validation, after),
        Err(WimseError::WitExpired { exp, now: exp + 60 })
    );
    let strict = WitValidation {
        clock_skew: Duration::ZERO,
        ..WitValidation::default()
    };
    let at_expiry = fixed_now() + Duration::from_secs(3600);
    assert!(verify_wit(&fixture.wit, &fixture.issuer_keys, &strict, at_expiry).is_err());
}

#[test]
fn future_iat_is_rejected() {
    let fixture = Fixture::es256(fixed_now() + Duration::from_secs(120));
    let err = verify(&fixture, &fixture.wit).unwrap_err();
    assert!(matches!(err, WimseError::WitNotYetValid { .. }), "{err}");
    let within_skew = Fixture::es256(fixed_now() + Duration::from_secs(30));
    assert!(verify(&within_skew, &within_skew.wit).is_ok());
}

#[test]
fn missing_exp_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = parts(&fixture);
    claims.as_object_mut().unwrap().remove("exp");
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::MissingClaim {
            kind: TokenKind::Wit,
            claim: "exp",
        })
    );
}

#[test]
fn confirmation_key_rules_are_enforced() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = parts(&fixture);
    let resign = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims.clone();
        change(&mut claims);
        let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
        verify(&fixture, &token).unwrap_err()
    };
    assert_eq!(
        resign(&|c| {
            c.as_object_mut().unwrap().remove("cnf");
        }),
        WimseError::MissingConfirmationKey
    );
    assert_eq!(
        resign(&|c| c["cnf"] = json!({"kid": "x"})),
        WimseError::MissingConfirmationKey
    );
    assert_eq!(
        resign(&|c| {
            c["cnf"]["jwk"].as_object_mut().unwrap().remove("alg");
        }),
        WimseError::MissingConfirmationAlgorithm
    );
    for alg in ["none", "HS256", "RSA-OAEP", "ES384"] {
        let err = resign(&|c| c["cnf"]["jwk"]["alg"] = alg.into());
        assert!(
            matches!(err, WimseError::InvalidConfirmationKey(_)),
            "{alg}: {err}"
        );
    }
    let err = resign(&|c| c["cnf"]["jwk"]["d"] = "AAAA".into());
    assert!(
        matches!(err, WimseError::InvalidConfirmationKey(_)),
        "{err}"
    );
}

#[test]
fn non_spiffe_subject_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = parts(&fixture);
    claims["sub"] = "wimse://example.org/workload".into();
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    let err = verify(&fixture, &token).unwrap_err();
    assert!(matches!(err, WimseError::InvalidSubject { .. }), "{err}");
}

#[test]
fn expected_issuer_is_enforced() {
    let fixture = Fixture::es256(fixed_now());
    let mut validation = WitValidation {
        expected_issuer: Some(ISSUER.into()),
        ..WitValidation::default()
    };
    assert!(verify_wit(&fixture.wit, &fixture.issuer_keys, &validation, fixed_now()).is_ok());
    validation.expected_issuer = Some("https://other.example.org".into());
    assert_eq!(
        verify_wit(&fixture.wit, &fixture.issuer_keys, &validation, fixed_now()),
        Err(WimseError::IssuerMismatch {
            expected: "https://other.example.org".into(),
            actual: Some(ISSUER.into()),
        })
    );
}

#[test]
fn crit_header_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = parts(&fixture);
    header["crit"] = json!(["exp"]);
    let token = fixture.issuer_key.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &token),
        Err(WimseError::CriticalHeader(TokenKind::Wit))
    );
}

#[test]
fn malformed_wit_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    for token in ["", "a.b", "a.b.c.d", "..", "!!.e30.AA"] {
        let err = verify(&fixture, token).unwrap_err();
        assert!(
            matches!(
                err,
                WimseError::MalformedToken { .. } | WimseError::InvalidJson { .. }
            ),
            "{token:?}: {err}"
        );
    }
}

#[test]
fn issue_wit_rejects_bad_input() {
    let key = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
    let workload = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
    let ttl = Duration::from_secs(60);
    let issue = |issuer: &str, jwk: &PublicJwk, ttl: Duration, jti: Option<&str>| {
        issue_wit(&key, issuer, &subject(), jwk, ttl, jti, fixed_now())
    };
    let jwk = workload.public_jwk();
    assert!(issue("not a uri", &jwk, ttl, None).is_err());
    assert!(issue(ISSUER, &jwk, Duration::ZERO, None).is_err());
    assert!(issue(ISSUER, &jwk, Duration::from_secs(25 * 3600), None).is_err());
    assert!(issue(ISSUER, &jwk, ttl, Some("")).is_err());
    let without_alg = PublicJwk::from_json(&{
        let mut json = jwk.to_json();
        json.as_object_mut().unwrap().remove("alg");
        json
    })
    .unwrap();
    assert!(issue(ISSUER, &without_alg, ttl, None).is_err());
    let token = issue(ISSUER, &jwk, ttl, Some("fixed-id")).unwrap();
    assert_eq!(decode(&token).1["jti"], "fixed-id");
}

#[test]
fn issuer_keys_load_from_jwks() {
    let fixture = Fixture::es256(fixed_now());
    let jwks = json!({"keys": [
        fixture.issuer_key.public_jwk().to_json(),
        {"kty": "EC", "use": "enc", "kid": "skipped"},
    ]});
    let mut keys = IssuerKeys::new();
    keys.add_jwks(trust_domain(), jwks.to_string().as_bytes())
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(verify_wit(&fixture.wit, &keys, &WitValidation::default(), fixed_now()).is_ok());

    let duplicate = json!({"keys": [
        fixture.issuer_key.public_jwk().to_json(),
        fixture.issuer_key.public_jwk().to_json(),
    ]});
    let err = IssuerKeys::new()
        .add_jwks(trust_domain(), duplicate.to_string().as_bytes())
        .unwrap_err();
    assert!(matches!(err, WimseError::InvalidJwkSet(_)), "{err}");

    let mut no_kid = fixture.issuer_key.public_jwk().to_json();
    no_kid.as_object_mut().unwrap().remove("kid");
    let err = IssuerKeys::new()
        .add_jwks(
            trust_domain(),
            json!({"keys": [no_kid]}).to_string().as_bytes(),
        )
        .unwrap_err();
    assert!(matches!(err, WimseError::InvalidJwkSet(_)), "{err}");
}

#[test]
fn jwks_alg_restricts_wit_alg() {
    let fixture = Fixture::new(JwsAlgorithm::RS256, JwsAlgorithm::ES256, fixed_now());
    let mut jwk = fixture.issuer_key.public_jwk().to_json();
    jwk["alg"] = "PS256".into();
    let mut keys = IssuerKeys::new();
    keys.add_jwks(
        trust_domain(),
        json!({"keys": [jwk]}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        verify_wit(&fixture.wit, &keys, &WitValidation::default(), fixed_now()),
        Err(WimseError::KeyAlgorithmMismatch {
            kind: TokenKind::Wit,
            algorithm: "RS256".into(),
        })
    );
}

#[test]
fn issuer_keys_load_from_spiffe_bundles() {
    let fixture = Fixture::es256(fixed_now());
    let authority = JwtAuthority::from_jwk(&fixture.issuer_key.public_jwk().to_json()).unwrap();
    let mut bundle = JwtBundle::new(trust_domain());
    bundle.add_authority(authority);
    let bundles: JwtBundleSet = [bundle].into_iter().collect();
    let keys = IssuerKeys::from_jwt_bundles(&bundles).unwrap();
    assert!(verify_wit(&fixture.wit, &keys, &WitValidation::default(), fixed_now()).is_ok());
}
