//! Agreement with PyJWT and jwcrypto: the Python check verifies tokens made here, and
//! tokens made in Python verify here.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{AUDIENCE, Fixture, trust_domain};
use serde_json::{Value, json};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_wimse::{
    BoundTokens, DEFAULT_PROOF_TTL, IssuerKeys, JwsAlgorithm, ProofValidation, ReplayCache,
    WitValidation, create_wpt, issue_wit, verify_wit, verify_wpt,
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Returns the venv Python (or `TWID_PYTHON`), or `None` after printing why the test is
/// skipped.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TWID_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    if path.exists() {
        Some(path)
    } else {
        println!(
            "python venv not found, skipping (looked for {})",
            path.display()
        );
        None
    }
}

#[test]
fn python_agrees_on_tokens() {
    let Some(python) = python() else {
        return;
    };
    let now = SystemTime::now();
    let pairs = [
        (
            "es256-es256",
            JwsAlgorithm::ES256,
            JwsAlgorithm::ES256,
            None,
        ),
        (
            "rs256-eddsa",
            JwsAlgorithm::RS256,
            JwsAlgorithm::EdDSA,
            Some("access-token-1"),
        ),
        (
            "es384-ps256",
            JwsAlgorithm::ES384,
            JwsAlgorithm::PS256,
            None,
        ),
        (
            "es256-es384",
            JwsAlgorithm::ES256,
            JwsAlgorithm::ES384,
            Some("access-token-2"),
        ),
    ];
    // Each fixture has its own issuer key, so each case gets its own trust domain and
    // a WIT issued for it.
    let mut issuer_jwks = serde_json::Map::new();
    let mut cases = Vec::new();
    for (name, issuer_alg, workload_alg, access_token) in pairs {
        let fixture = Fixture::new(issuer_alg, workload_alg, now);
        let domain = format!("{name}.test");
        let subject = SpiffeId::new(&format!("spiffe://{domain}/workload")).unwrap();
        let wit = issue_wit(
            &fixture.issuer_key,
            common::ISSUER,
            &subject,
            &fixture.workload_key.public_jwk(),
            Duration::from_secs(600),
            None,
            now,
        )
        .unwrap();
        let mut bound = BoundTokens::default();
        if let Some(token) = access_token {
            bound = bound.with_access_token(token);
        }
        let wpt = create_wpt(
            &fixture.workload_key,
            &wit,
            AUDIENCE,
            DEFAULT_PROOF_TTL,
            None,
            &bound,
            now,
        )
        .unwrap();
        issuer_jwks.insert(
            domain,
            json!({"keys": [fixture.issuer_key.public_jwk().to_json()]}),
        );
        cases.push(json!({
            "name": name,
            "wit": wit,
            "wpt": wpt,
            "audience": AUDIENCE,
            "access_token": access_token,
        }));
    }

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let output = dir.path().join("out.json");
    let request = json!({"issuer_jwks": issuer_jwks, "cases": cases});
    std::fs::write(&input, request.to_string()).unwrap();
    let status = Command::new(&python)
        .arg(repo_root().join("tests/python/wimse_check.py"))
        .arg(&input)
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success(), "wimse_check.py failed: {status}");
    let report: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();

    for (name, ..) in pairs {
        let result = &report["results"][name];
        assert_eq!(result["ok"], true, "{name}: {}", result["errors"]);
    }
    verify_python_tokens(&report["python_made"]);
}

/// Verifies the WIT and WPT the Python script signed.
fn verify_python_tokens(made: &Value) {
    let text = |name: &str| made[name].as_str().unwrap().to_owned();
    let domain = TrustDomain::new(&text("trust_domain")).unwrap();
    assert_ne!(domain, trust_domain());
    let mut keys = IssuerKeys::new();
    keys.add_jwks(domain, made["issuer_jwks"].to_string().as_bytes())
        .unwrap();
    let validation = WitValidation {
        expected_issuer: Some(text("issuer")),
        ..WitValidation::default()
    };
    let now = SystemTime::now();
    let wit = verify_wit(&text("wit"), &keys, &validation, now).unwrap();
    assert_eq!(wit.confirmation_algorithm, JwsAlgorithm::EdDSA);
    let presented = BoundTokens::default().with_access_token(text("access_token"));
    verify_wpt(
        &text("wpt"),
        &wit,
        &text("wit"),
        &ProofValidation::new(vec![text("audience")]),
        &presented,
        &ReplayCache::new(4),
        now,
    )
    .unwrap();
}
