//! `twid svid inspect` on SVIDs built with twid-ca, with and without attestation claims, and
//! the claims checked independently with the cryptography package and PyJWT.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use twid_ca::{CaSubject, JwtKey, KeyType, PrivateKey, SvidExtension, X509Authority};
use twid_evidence::Kind;
use twid_evidence::svid_claims::{AttestationClaims, EXTENSION_OID, JWT_CLAIM};
use twid_spiffe::{JwtAuthority, JwtBundle, SpiffeId, TrustDomain};

use crate::common::*;

const HOUR: Duration = Duration::from_secs(3600);
const AUDIENCE: &str = "relying-party";

fn claims() -> AttestationClaims {
    AttestationClaims {
        kind: Kind::Tdx,
        measurements: BTreeMap::from([
            ("mrtd".to_owned(), "ab".repeat(48)),
            ("rtmr0".to_owned(), "cd".repeat(48)),
        ]),
        tcb_status: Some("UpToDate".to_owned()),
        policy_version: Some(4),
        evidence_sha256: [0x5a; 32],
        attested_at: 1_750_000_000,
        valid_until: Some(1_760_000_000),
    }
}

fn workload_id() -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{TRUST_DOMAIN}/workload")).unwrap()
}

fn authority() -> X509Authority {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    X509Authority::self_signed(
        &trust_domain,
        key,
        &CaSubject::default(),
        SystemTime::now(),
        HOUR,
        None,
    )
    .unwrap()
}

/// Signs a leaf for a P-256 key, with the attestation extension when `with_claims`.
fn leaf(ca: &X509Authority, with_claims: bool) -> Vec<u8> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = workload_id();
    let spki = key.public_key_spki_der();
    let extensions: Vec<SvidExtension> = if with_claims {
        vec![SvidExtension {
            oid: EXTENSION_OID.to_owned(),
            value_der: claims().to_der().unwrap(),
        }]
    } else {
        Vec::new()
    };
    ca.sign_x509_svid_with_extensions(
        &twid_ca::X509SvidRequest {
            spiffe_id: &id,
            public_key_spki_der: &spki,
            ttl: HOUR,
            dns_names: &["svc.example.org".to_owned()],
            now: SystemTime::now(),
        },
        &extensions,
    )
    .unwrap()
    .to_vec()
}

fn pem(blocks: &[&[u8]]) -> String {
    let mut text = String::new();
    for der in blocks {
        text.push_str("-----BEGIN CERTIFICATE-----\n");
        let body = STANDARD.encode(der);
        for chunk in body.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(chunk).unwrap());
            text.push('\n');
        }
        text.push_str("-----END CERTIFICATE-----\n");
    }
    text
}

fn jwt_key() -> JwtKey {
    JwtKey::generate(KeyType::EcP256, SystemTime::now(), HOUR).unwrap()
}

fn jwt(key: &JwtKey, with_claims: bool) -> String {
    let extra = with_claims.then(|| claims().to_jwt_claims().unwrap());
    key.sign_jwt_svid(
        &workload_id(),
        &[AUDIENCE.to_owned()],
        HOUR,
        SystemTime::now(),
        extra.as_ref(),
    )
    .unwrap()
    .0
}

fn inspect_json(input: &str) -> Value {
    let stdout = run_ok(&["svid", "inspect", input, "--output", "json"]);
    serde_json::from_str(&stdout).unwrap()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_claims(report: &Value) {
    let attestation = &report["attestation"];
    assert_eq!(attestation["kind"], "tdx");
    assert_eq!(attestation["measurements"]["mrtd"], "ab".repeat(48));
    assert_eq!(attestation["measurements"]["rtmr0"], "cd".repeat(48));
    assert_eq!(attestation["tcb_status"], "UpToDate");
    assert_eq!(attestation["policy_version"], 4);
    assert_eq!(attestation["evidence_sha256"], "5a".repeat(32));
    assert_eq!(attestation["attested_at"], 1_750_000_000);
    assert_eq!(attestation["attested_at_rfc3339"], "2025-06-15T15:06:40Z");
    assert_eq!(attestation["valid_until"], 1_760_000_000);
}

#[test]
fn x509_svid_shows_attestation_claims() {
    let dir = TempDir::new();
    let ca = authority();
    let leaf = leaf(&ca, true);
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, pem(&[&leaf, ca.cert_der()])).unwrap();

    let report = inspect_json(path_arg(&chain));
    assert_eq!(report["type"], "x509-svid");
    assert_eq!(report["spiffe_id"], workload_id().as_str());
    assert_eq!(report["key_type"], "EC P-256");
    assert_eq!(report["chain_length"], 2);
    assert_eq!(
        report["serial"],
        twid_ca::serial_hex(&leaf.clone().into()).unwrap()
    );
    assert_eq!(report["dns_names"][0], "svc.example.org");
    assert!(report["svid_error"].is_null(), "{}", report["svid_error"]);
    assert_eq!(report["issuer"], "C=US, O=SPIFFE");
    assert_claims(&report);

    let pretty = run_ok(&["svid", "inspect", path_arg(&chain)]);
    assert!(pretty.contains("Attestation       : tdx"), "{pretty}");
    assert!(pretty.contains("  TCB status      : UpToDate"), "{pretty}");
    assert!(
        pretty.contains(&format!("  Measurement     : mrtd {}", "ab".repeat(48))),
        "{pretty}"
    );
    assert!(pretty.contains(workload_id().as_str()), "{pretty}");
}

#[test]
fn der_certificate_file_is_accepted() {
    let dir = TempDir::new();
    let ca = authority();
    let leaf = leaf(&ca, true);
    let path = dir.path().join("leaf.der");
    std::fs::write(&path, &leaf).unwrap();
    let report = inspect_json(path_arg(&path));
    assert_eq!(report["chain_length"], 1);
    assert_claims(&report);
}

#[test]
fn plain_x509_svid_shows_no_claims() {
    let dir = TempDir::new();
    let ca = authority();
    let path = dir.path().join("leaf.pem");
    std::fs::write(&path, pem(&[&leaf(&ca, false)])).unwrap();
    let report = inspect_json(path_arg(&path));
    assert_eq!(report["spiffe_id"], workload_id().as_str());
    assert!(report["attestation"].is_null(), "{}", report["attestation"]);
    let pretty = run_ok(&["svid", "inspect", path_arg(&path)]);
    assert!(pretty.contains("Attestation       : none"), "{pretty}");
    assert!(!pretty.contains("Measurement"), "{pretty}");
    assert_eq!(report["signature_verified"], false);
    let first = pretty.lines().next().unwrap_or_default();
    assert!(first.starts_with("Signature"), "{pretty}");
    assert!(first.contains("not verified"), "{pretty}");
}

#[test]
fn jwt_claims_escape_control_characters() {
    let key = jwt_key();
    let mut extra = serde_json::Map::new();
    extra.insert("iss".to_owned(), "evil\u{1b}[2J\r\nissuer".into());
    let (token, _) = key
        .sign_jwt_svid(
            &workload_id(),
            &[AUDIENCE.to_owned()],
            HOUR,
            SystemTime::now(),
            Some(&extra),
        )
        .unwrap();
    let pretty = run_ok(&["svid", "inspect", &token]);
    assert!(pretty.starts_with("Signature"), "{pretty}");
    assert!(!pretty.contains('\u{1b}'), "{pretty:?}");
    assert!(!pretty.contains('\r'), "{pretty:?}");
    assert!(
        pretty.contains("evil\\u{1b}[2J\\u{d}\\u{a}issuer"),
        "{pretty:?}"
    );
    let report = inspect_json(&token);
    assert_eq!(report["issuer"], "evil\u{1b}[2J\r\nissuer");
    assert_eq!(report["signature_verified"], false);
}

#[test]
fn jwt_svid_shows_attestation_claims() {
    let key = jwt_key();
    let token = jwt(&key, true);
    let report = inspect_json(&token);
    assert_eq!(report["type"], "jwt-svid");
    assert_eq!(report["spiffe_id"], workload_id().as_str());
    assert_eq!(report["audience"][0], AUDIENCE);
    assert_eq!(report["key_id"], key.key_id());
    assert_eq!(report["algorithm"], "ES256");
    assert_eq!(report["signature_verified"], false);
    assert_claims(&report);

    // The same token from a file, with a trailing newline as editors write it.
    let dir = TempDir::new();
    let path = dir.path().join("token.jwt");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    assert_claims(&inspect_json(path_arg(&path)));

    let pretty = run_ok(&["svid", "inspect", &token]);
    assert!(pretty.contains("Attestation       : tdx"), "{pretty}");
    assert!(!pretty.contains(&token), "pretty output shows the token");
}

#[test]
fn plain_jwt_svid_shows_no_claims() {
    let token = jwt(&jwt_key(), false);
    let report = inspect_json(&token);
    assert_eq!(report["spiffe_id"], workload_id().as_str());
    assert!(report["attestation"].is_null(), "{}", report["attestation"]);
}

#[test]
fn invalid_claims_fail_inspection() {
    let key = jwt_key();
    let mut extra = claims().to_jwt_claims().unwrap();
    extra[JWT_CLAIM]["kind"] = "sgx".into();
    let (token, _) = key
        .sign_jwt_svid(
            &workload_id(),
            &[AUDIENCE.to_owned()],
            HOUR,
            SystemTime::now(),
            Some(&extra),
        )
        .unwrap();
    let output = run(&["svid", "inspect", &token]);
    assert!(!output.status.success(), "invalid claims accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("attestation claim is invalid"), "{stderr}");
    assert!(!stderr.contains(&token), "the error shows the token");

    let output = run(&["svid", "inspect", "not-a-file-or-token"]);
    assert!(!output.status.success(), "garbage accepted");
}

#[test]
fn python_reads_claims_independently() {
    let Some(python) = python() else {
        return;
    };
    let dir = TempDir::new();
    let ca = authority();
    let cert_path = dir.path().join("svid.pem");
    std::fs::write(&cert_path, pem(&[&leaf(&ca, true), ca.cert_der()])).unwrap();
    let key = jwt_key();
    let token_path = dir.path().join("token.jwt");
    std::fs::write(&token_path, jwt(&key, true)).unwrap();
    let mut bundle = JwtBundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    bundle.add_authority(
        JwtAuthority::from_spki_der(key.key_id(), &key.public_key_spki_der()).unwrap(),
    );
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, bundle.to_jwks()).unwrap();

    let script = repo_root().join("tests/python/svid_claims_check.py");
    let check = |cert: &Path, token: &Path, kind: &str| {
        Command::new(&python)
            .arg(&script)
            .args([cert, token, &jwks_path])
            .args([AUDIENCE, kind])
            .output()
            .unwrap()
    };
    let output = check(&cert_path, &token_path, "tdx");
    assert!(
        output.status.success(),
        "svid_claims_check.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Plain SVIDs must fail the script, or its success above proves nothing.
    let plain_cert = dir.path().join("plain.pem");
    std::fs::write(&plain_cert, pem(&[&leaf(&ca, false)])).unwrap();
    let plain_token = dir.path().join("plain.jwt");
    std::fs::write(&plain_token, jwt(&key, false)).unwrap();
    let output = check(&plain_cert, &plain_token, "tdx");
    assert!(!output.status.success(), "the script accepted plain SVIDs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0 extensions"), "{stderr}");
    assert!(stderr.contains("missing or not an object"), "{stderr}");
}
