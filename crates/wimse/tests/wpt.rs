//! Creating and verifying Workload Proof Tokens.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{AUDIENCE, Fixture, decode, fixed_now, unix};
use serde_json::{Value, json};
use twid_wimse::{
    BoundTokens, DEFAULT_PROOF_TTL, JwsAlgorithm, ProofValidation, ReplayCache, SigningKey,
    TokenKind, WimseError, Wit, WitValidation, create_wpt, token_hash, verify_wit, verify_wpt,
};

fn verified_wit(fixture: &Fixture) -> Wit {
    verify_wit(
        &fixture.wit,
        &fixture.issuer_keys,
        &WitValidation::default(),
        fixed_now(),
    )
    .unwrap()
}

fn validation() -> ProofValidation {
    ProofValidation::new(vec![AUDIENCE.into()])
}

/// Verifies `proof` with the fixture's WIT at the fixed time and a fresh replay cache.
fn verify(fixture: &Fixture, proof: &str, presented: &BoundTokens) -> Result<(), WimseError> {
    verify_wpt(
        proof,
        &verified_wit(fixture),
        &fixture.wit,
        &validation(),
        presented,
        &ReplayCache::new(16),
        fixed_now(),
    )
    .map(|_| ())
}

/// Signs a proof from header and claims as given, with the workload key.
fn signed(fixture: &Fixture, header: &Value, claims: &Value) -> String {
    fixture.workload_key.sign_compact(header, claims).unwrap()
}

#[test]
fn wpt_round_trips_for_each_algorithm() {
    for workload_alg in JwsAlgorithm::ALL {
        let fixture = Fixture::new(JwsAlgorithm::ES256, workload_alg, fixed_now());
        let proof = fixture.proof(AUDIENCE, fixed_now());
        let accepted = verify_wpt(
            &proof,
            &verified_wit(&fixture),
            &fixture.wit,
            &validation(),
            &BoundTokens::default(),
            &ReplayCache::new(16),
            fixed_now(),
        )
        .unwrap();
        assert_eq!(
            accepted.audience,
            vec![AUDIENCE.to_owned()],
            "{workload_alg}"
        );
        assert_eq!(accepted.expiry, unix(fixed_now()) + 30);
    }
}

#[test]
fn wpt_has_draft_header_and_claims() {
    let fixture = Fixture::new(JwsAlgorithm::ES256, JwsAlgorithm::EdDSA, fixed_now());
    let bound = BoundTokens::default()
        .with_access_token("access-token")
        .with_transaction_token("txn-token")
        .with_other_token("X-Context-Token", "  context  ");
    let proof = fixture.proof_binding(AUDIENCE, &bound, fixed_now());
    let (header, claims) = decode(&proof);
    assert_eq!(header, json!({"alg": "EdDSA", "typ": "wpt+jwt"}));
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["exp"], unix(fixed_now()) + 30);
    assert_eq!(claims["wth"], token_hash(&fixture.wit));
    assert_eq!(claims["ath"], token_hash("access-token"));
    assert_eq!(claims["tth"], token_hash("txn-token"));
    assert_eq!(
        claims["oth"],
        json!({"x-context-token": token_hash("context")})
    );
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 22));
}

#[test]
fn wrong_wpt_typ_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    for typ in ["JWT", "wit+jwt", "dpop+jwt"] {
        let mut header = header.clone();
        header["typ"] = typ.into();
        let proof = signed(&fixture, &header, &claims);
        assert_eq!(
            verify(&fixture, &proof, &BoundTokens::default()),
            Err(WimseError::InvalidWptType(Some(typ.into())))
        );
    }
    let mut header = header;
    header.as_object_mut().unwrap().remove("typ");
    let proof = signed(&fixture, &header, &claims);
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::InvalidWptType(None))
    );
}

#[test]
fn wit_as_proof_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    assert_eq!(
        verify(&fixture, &fixture.wit, &BoundTokens::default()),
        Err(WimseError::InvalidWptType(Some("wit+jwt".into())))
    );
}

#[test]
fn alg_differing_from_cnf_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (mut header, claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    let other = SigningKey::generate(JwsAlgorithm::ES384).unwrap();
    header["alg"] = "ES384".into();
    let proof = other.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofAlgorithmMismatch {
            proof: "ES384".into(),
            expected: "ES256".into(),
        })
    );
    // The comparison is string-equal, so a lower-case spelling fails too.
    header["alg"] = "es256".into();
    let proof = signed(&fixture, &header, &claims);
    assert!(matches!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofAlgorithmMismatch { .. })
    ));
}

#[test]
fn proof_by_other_key_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    let thief = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
    let proof = thief.sign_compact(&header, &claims).unwrap();
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::InvalidSignature(TokenKind::Wpt))
    );
}

#[test]
fn expired_proof_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let issued = fixed_now() - Duration::from_secs(120);
    let proof = fixture.proof(AUDIENCE, issued);
    let exp = unix(issued) + 30;
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofExpired {
            exp,
            now: unix(fixed_now()),
        })
    );
}

#[test]
fn long_lived_proof_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    claims["exp"] = (unix(fixed_now()) + 600).into();
    let proof = signed(&fixture, &header, &claims);
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofLifetimeTooLong {
            lifetime: 600,
            max: 300,
        })
    );

    // Without iat, the remaining lifetime is checked.
    claims.as_object_mut().unwrap().remove("iat");
    let proof = signed(&fixture, &header, &claims);
    assert!(matches!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofLifetimeTooLong { .. })
    ));

    // A tighter configured maximum applies too.
    let tight = ProofValidation {
        max_proof_lifetime: Duration::from_secs(10),
        ..validation()
    };
    let proof = fixture.proof(AUDIENCE, fixed_now());
    let err = verify_wpt(
        &proof,
        &verified_wit(&fixture),
        &fixture.wit,
        &tight,
        &BoundTokens::default(),
        &ReplayCache::new(4),
        fixed_now(),
    );
    assert_eq!(
        err.map(|_| ()),
        Err(WimseError::ProofLifetimeTooLong {
            lifetime: 30,
            max: 10,
        })
    );
}

#[test]
fn future_proof_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let proof = fixture.proof(AUDIENCE, fixed_now() + Duration::from_secs(90));
    assert!(matches!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::ProofIssuedInFuture { .. })
    ));
}

#[test]
fn missing_required_claims_are_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    for claim in ["exp", "aud", "wth", "jti"] {
        let mut claims = claims.clone();
        claims.as_object_mut().unwrap().remove(claim);
        let proof = signed(&fixture, &header, &claims);
        assert_eq!(
            verify(&fixture, &proof, &BoundTokens::default()),
            Err(WimseError::MissingClaim {
                kind: TokenKind::Wpt,
                claim,
            }),
            "{claim}"
        );
    }
}

#[test]
fn wth_mismatch_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    claims["wth"] = token_hash("another WIT").into();
    let proof = signed(&fixture, &header, &claims);
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::WitHashMismatch)
    );
}

#[test]
fn proof_for_other_wit_is_rejected() {
    // Two WITs bind the same key; a proof made for the first fails with the second.
    let fixture = Fixture::es256(fixed_now());
    let proof = fixture.proof(AUDIENCE, fixed_now());
    let second_wit = twid_wimse::issue_wit(
        &fixture.issuer_key,
        common::ISSUER,
        &common::subject(),
        &fixture.workload_key.public_jwk(),
        Duration::from_secs(600),
        None,
        fixed_now(),
    )
    .unwrap();
    let wit = verify_wit(
        &second_wit,
        &fixture.issuer_keys,
        &WitValidation::default(),
        fixed_now(),
    )
    .unwrap();
    let result = verify_wpt(
        &proof,
        &wit,
        &second_wit,
        &validation(),
        &BoundTokens::default(),
        &ReplayCache::new(4),
        fixed_now(),
    );
    assert_eq!(result.map(|_| ()), Err(WimseError::WitHashMismatch));
}

#[test]
fn raw_wit_must_match_verified_wit() {
    let fixture = Fixture::es256(fixed_now());
    let proof = fixture.proof(AUDIENCE, fixed_now());
    let result = verify_wpt(
        &proof,
        &verified_wit(&fixture),
        "a.b.c",
        &validation(),
        &BoundTokens::default(),
        &ReplayCache::new(4),
        fixed_now(),
    );
    assert_eq!(result.map(|_| ()), Err(WimseError::WitNotVerified));
}

#[test]
fn replayed_jti_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let wit = verified_wit(&fixture);
    let cache = ReplayCache::new(16);
    let run = |proof: &str| {
        verify_wpt(
            proof,
            &wit,
            &fixture.wit,
            &validation(),
            &BoundTokens::default(),
            &cache,
            fixed_now(),
        )
        .map(|_| ())
    };
    let proof = fixture.proof(AUDIENCE, fixed_now());
    assert_eq!(run(&proof), Ok(()));
    let jti = decode(&proof).1["jti"].as_str().unwrap().to_owned();
    assert_eq!(run(&proof), Err(WimseError::ReplayedProof(jti.clone())));

    // A fresh proof reusing the jti is a replay as well.
    let reused = create_wpt(
        &fixture.workload_key,
        &fixture.wit,
        AUDIENCE,
        DEFAULT_PROOF_TTL,
        Some(&jti),
        &BoundTokens::default(),
        fixed_now(),
    )
    .unwrap();
    assert_eq!(run(&reused), Err(WimseError::ReplayedProof(jti)));
}

#[test]
fn rejected_proof_is_not_recorded() {
    let fixture = Fixture::es256(fixed_now());
    let wit = verified_wit(&fixture);
    let cache = ReplayCache::new(16);
    let proof = fixture.proof("https://other.example.org/", fixed_now());
    let result = verify_wpt(
        &proof,
        &wit,
        &fixture.wit,
        &validation(),
        &BoundTokens::default(),
        &cache,
        fixed_now(),
    );
    assert!(result.is_err());
    assert!(cache.is_empty());
}

#[test]
fn full_replay_cache_is_reported() {
    let fixture = Fixture::es256(fixed_now());
    let wit = verified_wit(&fixture);
    let cache = ReplayCache::new(1);
    let run = |proof: &str| {
        verify_wpt(
            proof,
            &wit,
            &fixture.wit,
            &validation(),
            &BoundTokens::default(),
            &cache,
            fixed_now(),
        )
        .map(|_| ())
    };
    assert_eq!(run(&fixture.proof(AUDIENCE, fixed_now())), Ok(()));
    let err = run(&fixture.proof(AUDIENCE, fixed_now())).unwrap_err();
    assert_eq!(err, WimseError::ReplayCacheFull(1));
    assert!(err.to_string().contains("raise its capacity"), "{err}");
}

#[test]
fn unconfigured_audience_is_rejected() {
    let fixture = Fixture::es256(fixed_now());
    let proof = fixture.proof("https://service.example.org/other", fixed_now());
    assert_eq!(
        verify(&fixture, &proof, &BoundTokens::default()),
        Err(WimseError::AudienceNotAccepted {
            audience: vec!["https://service.example.org/other".into()],
        })
    );
    let empty = ProofValidation::new(Vec::new());
    let result = verify_wpt(
        &fixture.proof(AUDIENCE, fixed_now()),
        &verified_wit(&fixture),
        &fixture.wit,
        &empty,
        &BoundTokens::default(),
        &ReplayCache::new(4),
        fixed_now(),
    );
    assert_eq!(result.map(|_| ()), Err(WimseError::NoAcceptedAudience));
}

#[test]
fn audience_array_is_accepted() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    claims["aud"] = json!(["https://elsewhere.example.org/", AUDIENCE]);
    let proof = signed(&fixture, &header, &claims);
    assert_eq!(verify(&fixture, &proof, &BoundTokens::default()), Ok(()));
}

#[test]
fn access_token_binding_is_enforced() {
    let fixture = Fixture::es256(fixed_now());
    let with_token = BoundTokens::default().with_access_token("token-a");
    let bound = fixture.proof_binding(AUDIENCE, &with_token, fixed_now());
    let unbound = fixture.proof(AUDIENCE, fixed_now());
    assert_eq!(verify(&fixture, &bound, &with_token), Ok(()));
    assert_eq!(
        verify(&fixture, &unbound, &with_token),
        Err(WimseError::MissingTokenHash {
            claim: "ath",
            token: "access token".into(),
        })
    );
    assert_eq!(
        verify(&fixture, &bound, &BoundTokens::default()),
        Err(WimseError::UnexpectedTokenHash {
            claim: "ath",
            token: "access token".into(),
        })
    );
    assert_eq!(
        verify(
            &fixture,
            &bound,
            &BoundTokens::default().with_access_token("token-b")
        ),
        Err(WimseError::TokenHashMismatch {
            claim: "ath",
            token: "access token".into(),
        })
    );
}

#[test]
fn txn_token_binding_is_enforced() {
    let fixture = Fixture::es256(fixed_now());
    let with_token = BoundTokens::default().with_transaction_token("txn-a");
    let bound = fixture.proof_binding(AUDIENCE, &with_token, fixed_now());
    let unbound = fixture.proof(AUDIENCE, fixed_now());
    assert_eq!(verify(&fixture, &bound, &with_token), Ok(()));
    assert!(matches!(
        verify(&fixture, &unbound, &with_token),
        Err(WimseError::MissingTokenHash { claim: "tth", .. })
    ));
    assert!(matches!(
        verify(&fixture, &bound, &BoundTokens::default()),
        Err(WimseError::UnexpectedTokenHash { claim: "tth", .. })
    ));
    assert!(matches!(
        verify(
            &fixture,
            &bound,
            &BoundTokens::default().with_transaction_token("txn-b")
        ),
        Err(WimseError::TokenHashMismatch { claim: "tth", .. })
    ));
}

#[test]
fn other_token_binding_is_enforced() {
    let fixture = Fixture::es256(fixed_now());
    let wit = verified_wit(&fixture);
    let mut validation = validation();
    validation.other_token_headers = vec!["x-context".into()];
    let run = |proof: &str, presented: &BoundTokens| {
        verify_wpt(
            proof,
            &wit,
            &fixture.wit,
            &validation,
            presented,
            &ReplayCache::new(4),
            fixed_now(),
        )
        .map(|_| ())
    };
    let presented = BoundTokens::default().with_other_token("X-Context", "ctx");
    let bound = fixture.proof_binding(AUDIENCE, &presented, fixed_now());
    assert_eq!(run(&bound, &presented), Ok(()));
    assert!(matches!(
        run(&fixture.proof(AUDIENCE, fixed_now()), &presented),
        Err(WimseError::MissingTokenHash { claim: "oth", .. })
    ));
    assert!(matches!(
        run(&bound, &BoundTokens::default()),
        Err(WimseError::UnexpectedTokenHash { claim: "oth", .. })
    ));
    assert!(matches!(
        run(
            &bound,
            &BoundTokens::default().with_other_token("x-context", "other")
        ),
        Err(WimseError::TokenHashMismatch { claim: "oth", .. })
    ));

    let unknown = BoundTokens::default().with_other_token("x-unknown", "ctx");
    let proof = fixture.proof_binding(AUDIENCE, &unknown, fixed_now());
    assert_eq!(
        run(&proof, &unknown),
        Err(WimseError::UnknownOtherToken("x-unknown".into()))
    );

    let (header, mut claims) = decode(&bound);
    claims["oth"] = json!({"X-Context": token_hash("ctx")});
    let proof = signed(&fixture, &header, &claims);
    assert!(matches!(
        run(&proof, &presented),
        Err(WimseError::InvalidClaim { claim: "oth", .. })
    ));
}

#[test]
fn unknown_claims_are_ignored() {
    let fixture = Fixture::es256(fixed_now());
    let (header, mut claims) = decode(&fixture.proof(AUDIENCE, fixed_now()));
    claims["example.com/extra"] = json!({"any": ["value"]});
    let proof = signed(&fixture, &header, &claims);
    assert_eq!(verify(&fixture, &proof, &BoundTokens::default()), Ok(()));
}

#[test]
fn create_wpt_checks_key_and_ttl() {
    let fixture = Fixture::es256(fixed_now());
    let create = |key: &SigningKey, ttl: Duration| {
        create_wpt(
            key,
            &fixture.wit,
            AUDIENCE,
            ttl,
            None,
            &BoundTokens::default(),
            fixed_now(),
        )
    };
    let other = SigningKey::generate(JwsAlgorithm::ES256).unwrap();
    assert_eq!(
        create(&other, DEFAULT_PROOF_TTL),
        Err(WimseError::ConfirmationKeyMismatch)
    );
    assert!(create(&fixture.workload_key, Duration::from_secs(300)).is_ok());
    assert!(matches!(
        create(&fixture.workload_key, Duration::from_secs(301)),
        Err(WimseError::InvalidTtl { .. })
    ));
    assert!(matches!(
        create(&fixture.workload_key, Duration::ZERO),
        Err(WimseError::InvalidTtl { .. })
    ));
}

#[test]
fn create_wpt_rejects_expired_wit() {
    let fixture = Fixture::es256(fixed_now());
    let (_, wit_claims) = decode(&fixture.wit);
    let exp = wit_claims["exp"].as_i64().unwrap();
    let at = |unix: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap());
    let create = |now: SystemTime| {
        create_wpt(
            &fixture.workload_key,
            &fixture.wit,
            AUDIENCE,
            DEFAULT_PROOF_TTL,
            None,
            &BoundTokens::default(),
            now,
        )
    };
    assert!(create(at(exp - 1)).is_ok());
    assert_eq!(
        create(at(exp)),
        Err(WimseError::WitExpired { exp, now: exp })
    );
}
