//! IAS report verification against Intel's published test report and against reports signed
//! under a per-run test root.

use std::path::PathBuf;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use twid_evidence::claims::SgxClaims;
use twid_evidence::{Claims, Kind, Reason, TcbStatus, TrustAnchors, ias};

/// The IAS signing certificate's notAfter, 2026-11-20T09:36:58Z.
const SIGNING_NOT_AFTER: i64 = 1_795_167_418;
/// The IAS signing certificate's notBefore, 2016-11-22T09:36:58Z.
const SIGNING_NOT_BEFORE: i64 = 1_479_807_418;
/// The test report's timestamp, 2018-08-24T00:15:38Z, with the fraction dropped.
const REPORT_TIME: i64 = 1_535_069_738;

fn fixtures() -> Option<PathBuf> {
    let dir = match std::env::var_os("TWID_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    let dir = dir.join("attestation/sgx-ias");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("fixtures not found at {}; skipping", dir.display());
        None
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body.trim()).expect("PEM base64")
}

struct Fixture {
    body: Vec<u8>,
    signature: Vec<u8>,
    invalid_body: Vec<u8>,
    invalid_signature: Vec<u8>,
    signing: Vec<u8>,
    root: Vec<u8>,
}

fn load() -> Option<Fixture> {
    let dir = fixtures()?;
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read fixture");
    let pem = |name: &str| pem_to_der(&String::from_utf8(read(name)).expect("PEM text"));
    Some(Fixture {
        body: read("fortanix_test_report_body.json"),
        signature: read("fortanix_test_report_sig.bin"),
        invalid_body: read("fortanix_invalid_signature_report_body.json"),
        invalid_signature: read("fortanix_invalid_signature_report_sig.bin"),
        signing: pem("intel_sgx_attestation_report_signing_cert.pem"),
        root: pem("intel_sgx_attestation_report_signing_ca_root.pem"),
    })
}

fn root_anchors(fixture: &Fixture) -> TrustAnchors {
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&fixture.root);
    anchors
}

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

#[test]
fn intel_report_verifies_with_claims() {
    let Some(fixture) = load() else { return };
    let verified = ias::verify(
        &fixture.body,
        &fixture.signature,
        std::slice::from_ref(&fixture.signing),
        &root_anchors(&fixture),
        REPORT_TIME,
    )
    .expect("verify");

    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&hex32(
        "46ab2d45a952d242b0b1e143d92edeaa818fe05fd4b7d8844a1e0ee5b5240770",
    ));
    let Claims::Sgx(claims) = &verified.claims else {
        panic!("expected SGX claims, got {:?}", verified.claims);
    };
    let expected = SgxClaims {
        mr_enclave: hex32("540788f13d4abaf43dbaf43f4d4680d9264ba820aca2468a87734a854e1ec6fd"),
        mr_signer: hex32("8a117ffb88fb67d3dfe7ae3945ad34bfb8c6ba6db80ff4abbdbcde3b7589a983"),
        isv_prod_id: 0,
        isv_svn: 0,
        attributes: hex::decode("07000000000000000700000000000000")
            .expect("hex")
            .try_into()
            .expect("16 bytes"),
        cpu_svn: claims.cpu_svn,
        report_data,
        debug: true,
        platform: None,
    };
    assert_eq!(claims, &expected);
    assert_eq!(verified.kind, Kind::SgxIas);
    assert_eq!(verified.tcb_status, Some(TcbStatus::UpToDate));
    assert!(verified.advisory_ids.is_empty());
    assert_eq!(verified.collateral_issued_at, Some(REPORT_TIME));
    assert_eq!(verified.valid_until, Some(SIGNING_NOT_AFTER));
    assert_eq!(
        verified.evidence_sha256,
        <[u8; 32]>::try_from(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &fixture.body).as_ref()
        )
        .expect("32 bytes")
    );
    assert!(verified.debug());
}

#[test]
fn intel_report_parses_quote_body() {
    let Some(fixture) = load() else { return };
    let report = ias::parse_report(&fixture.body).expect("parse");
    assert_eq!(report.id, "60536002031186797522158537502176658693");
    assert_eq!(report.timestamp, "2018-08-24T00:15:38.012200");
    assert_eq!(report.timestamp_unix, REPORT_TIME);
    assert_eq!(report.version, 3);
    assert_eq!(report.isv_enclave_quote_status, "OK");
    assert_eq!(report.quote_body.version, 2);
    assert_eq!(report.quote_body.sign_type, 1);
    assert_eq!(
        u32::from_le_bytes(report.quote_body.epid_group_id),
        0x0000_0af5
    );
    assert_eq!(report.quote_body.qe_svn, 7);
    assert_eq!(report.quote_body.pce_svn, 6);
    assert!(report.epid_pseudonym.is_some());
    assert!(report.quote_body.report.debug());
}

#[test]
fn base64_signature_header_accepted() {
    let Some(fixture) = load() else { return };
    let header = STANDARD.encode(&fixture.signature);
    let verified = ias::verify(
        &fixture.body,
        header.as_bytes(),
        std::slice::from_ref(&fixture.signing),
        &root_anchors(&fixture),
        REPORT_TIME,
    );
    assert!(verified.is_ok(), "{verified:?}");
}

#[test]
fn chain_with_pinned_root_verifies() {
    let Some(fixture) = load() else { return };
    let chain = vec![fixture.signing.clone(), fixture.root.clone()];
    let anchors = TrustAnchors::production(Kind::SgxIas);
    let verified = ias::verify(
        &fixture.body,
        &fixture.signature,
        &chain,
        &anchors,
        REPORT_TIME,
    )
    .expect("verify");
    assert_eq!(verified.valid_until, Some(SIGNING_NOT_AFTER));
}

#[test]
fn missing_root_without_certificate_rejected() {
    let Some(fixture) = load() else { return };
    // Production anchors pin the root by fingerprint only, so a chain without its root cannot
    // be completed.
    let anchors = TrustAnchors::production(Kind::SgxIas);
    let error = ias::verify(
        &fixture.body,
        &fixture.signature,
        std::slice::from_ref(&fixture.signing),
        &anchors,
        REPORT_TIME,
    )
    .expect_err("no root certificate");
    assert_eq!(error.reason, Reason::Chain);
}

#[test]
fn signing_cert_validity_boundaries() {
    let Some(fixture) = load() else { return };
    let anchors = root_anchors(&fixture);
    let chain = std::slice::from_ref(&fixture.signing);
    let at_end = ias::verify(
        &fixture.body,
        &fixture.signature,
        chain,
        &anchors,
        SIGNING_NOT_AFTER,
    );
    assert!(at_end.is_ok(), "{at_end:?}");

    let error = ias::verify(
        &fixture.body,
        &fixture.signature,
        chain,
        &anchors,
        SIGNING_NOT_AFTER + 1,
    )
    .expect_err("expired");
    assert_eq!(error.reason, Reason::Expired);
    assert!(
        error
            .message
            .contains("Intel SGX Attestation Report Signing"),
        "{error}"
    );
    assert!(error.message.contains("2026-11-20T09:36:58Z"), "{error}");

    let error = ias::verify(
        &fixture.body,
        &fixture.signature,
        chain,
        &anchors,
        SIGNING_NOT_BEFORE - 1,
    )
    .expect_err("not yet valid");
    assert_eq!(error.reason, Reason::Expired);
}

#[test]
fn future_timestamp_rejected_as_stale() {
    let Some(fixture) = load() else { return };
    let anchors = root_anchors(&fixture);
    let chain = std::slice::from_ref(&fixture.signing);
    let within_skew = ias::verify(
        &fixture.body,
        &fixture.signature,
        chain,
        &anchors,
        REPORT_TIME - 60,
    );
    assert!(within_skew.is_ok(), "{within_skew:?}");

    let error = ias::verify(
        &fixture.body,
        &fixture.signature,
        chain,
        &anchors,
        REPORT_TIME - 61,
    )
    .expect_err("timestamp ahead of now");
    assert_eq!(error.reason, Reason::Freshness);
}

#[test]
fn flipped_bytes_fail_signature() {
    let Some(fixture) = load() else { return };
    let anchors = root_anchors(&fixture);
    let chain = std::slice::from_ref(&fixture.signing);

    let mut body = fixture.body.clone();
    body[0] ^= 0x80;
    let error = ias::verify(&body, &fixture.signature, chain, &anchors, REPORT_TIME)
        .expect_err("body flip");
    assert_eq!(error.reason, Reason::Signature);

    let mut signature = fixture.signature.clone();
    signature[0] ^= 0x80;
    let error = ias::verify(&fixture.body, &signature, chain, &anchors, REPORT_TIME)
        .expect_err("signature flip");
    assert_eq!(error.reason, Reason::Signature);

    let mut body = fixture.body.clone();
    body.push(b'\n');
    let error = ias::verify(&body, &fixture.signature, chain, &anchors, REPORT_TIME)
        .expect_err("appended newline");
    assert_eq!(error.reason, Reason::Signature);
}

#[test]
fn status_signature_invalid_rejected() {
    let Some(fixture) = load() else { return };
    let error = ias::verify(
        &fixture.invalid_body,
        &fixture.invalid_signature,
        std::slice::from_ref(&fixture.signing),
        &root_anchors(&fixture),
        REPORT_TIME + 3600,
    )
    .expect_err("status SIGNATURE_INVALID");
    assert_eq!(error.reason, Reason::Signature);
    assert!(error.message.contains("IAS reported"), "{error}");
    assert!(error.message.contains("SIGNATURE_INVALID"), "{error}");

    let report = ias::parse_report(&fixture.invalid_body).expect("parse");
    assert_eq!(report.isv_enclave_quote_status, "SIGNATURE_INVALID");
    assert_eq!(report.timestamp, "2018-08-24T00:50:43.706149");
    assert_eq!(
        report.quote_body.report.report_data[..32],
        hex32("98288e129a1b615e847e74883e6b64adb43eb3673ac96aac0e50ef6df60e48a1")
    );
}

#[test]
fn foreign_root_rejected() {
    let Some(fixture) = load() else { return };
    let other = TestIas::new();
    let error = ias::verify(
        &fixture.body,
        &fixture.signature,
        std::slice::from_ref(&fixture.signing),
        &other.anchors(),
        REPORT_TIME,
    )
    .expect_err("other root");
    assert_eq!(error.reason, Reason::Chain);
}

/// An IAS stand-in: a self-signed root and a report signing certificate under it.
struct TestIas {
    root_der: Vec<u8>,
    signing_der: Vec<u8>,
    signing_key: RsaKeyPair,
}

impl TestIas {
    fn new() -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("root key");
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "Test IAS Root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.not_before = rcgen::date_time_ymd(2016, 1, 1);
        root_params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let root = root_params.self_signed(&root_key).expect("root");
        let issuer = rcgen::Issuer::new(root_params, root_key);

        let signing_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("signing key");
        let mut signing_params = CertificateParams::default();
        signing_params
            .distinguished_name
            .push(DnType::CommonName, "Test IAS Signing");
        signing_params.not_before = rcgen::date_time_ymd(2017, 1, 1);
        signing_params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let signing = signing_params
            .signed_by(&signing_key, &issuer)
            .expect("signing cert");
        let signing_key =
            RsaKeyPair::from_pkcs8(&signing_key.serialize_der()).expect("RSA key from PKCS#8");
        Self {
            root_der: root.der().to_vec(),
            signing_der: signing.der().to_vec(),
            signing_key,
        }
    }

    fn anchors(&self) -> TrustAnchors {
        let mut anchors = TrustAnchors::new();
        anchors.add_certificate(&self.root_der);
        anchors
    }

    fn sign(&self, body: &[u8]) -> Vec<u8> {
        let mut signature = vec![0u8; self.signing_key.public_modulus_len()];
        self.signing_key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                body,
                &mut signature,
            )
            .expect("sign");
        signature
    }

    fn verify(
        &self,
        body: &[u8],
        now: i64,
    ) -> Result<twid_evidence::Verified, twid_evidence::VerifyError> {
        ias::verify(
            body,
            &self.sign(body),
            std::slice::from_ref(&self.signing_der),
            &self.anchors(),
            now,
        )
    }
}

/// 2020-01-01T00:00:00Z.
const TEST_NOW: i64 = 1_577_836_800;

fn quote_body(mr_enclave: u8, attributes_flags: u8) -> String {
    let mut quote = vec![0u8; ias::QUOTE_BODY_LEN];
    quote[0] = 2;
    quote[48 + 48] = attributes_flags;
    quote[48 + 64..48 + 96].fill(mr_enclave);
    quote[48 + 256] = 0x34;
    quote[48 + 257] = 0x12;
    quote[48 + 258] = 9;
    quote[48 + 320..48 + 384].fill(0xaa);
    STANDARD.encode(quote)
}

fn report_json(status: &str, advisories: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "1",
        "timestamp": "2019-12-31T23:59:00.000001",
        "version": 4,
        "isvEnclaveQuoteStatus": status,
        "isvEnclaveQuoteBody": quote_body(0x11, 0x04),
        "advisoryIDs": advisories,
    }))
    .expect("JSON")
}

#[test]
fn generated_report_verifies() {
    let ias = TestIas::new();
    let verified = ias
        .verify(&report_json("OK", &[]), TEST_NOW)
        .expect("verify");
    let Claims::Sgx(claims) = &verified.claims else {
        panic!("expected SGX claims");
    };
    assert_eq!(claims.mr_enclave, [0x11; 32]);
    assert_eq!(claims.isv_prod_id, 0x1234);
    assert_eq!(claims.isv_svn, 9);
    assert_eq!(claims.report_data, [0xaa; 64]);
    assert!(!claims.debug);
    assert_eq!(verified.collateral_issued_at, Some(TEST_NOW - 60));
    // The signing certificate ends 2030-01-01, before the root.
    assert_eq!(verified.valid_until, Some(1_893_456_000));
}

#[test]
fn statuses_map_to_tcb_status() {
    let ias = TestIas::new();
    let cases = [
        ("OK", TcbStatus::UpToDate),
        ("SW_HARDENING_NEEDED", TcbStatus::SWHardeningNeeded),
        ("CONFIGURATION_NEEDED", TcbStatus::ConfigurationNeeded),
        (
            "CONFIGURATION_AND_SW_HARDENING_NEEDED",
            TcbStatus::ConfigurationAndSWHardeningNeeded,
        ),
        ("GROUP_OUT_OF_DATE", TcbStatus::OutOfDate),
    ];
    for (status, expected) in cases {
        let verified = ias
            .verify(
                &report_json(status, &["INTEL-SA-00334", "INTEL-SA-00615"]),
                TEST_NOW,
            )
            .unwrap_or_else(|error| panic!("{status}: {error}"));
        assert_eq!(verified.tcb_status, Some(expected), "{status}");
        assert_eq!(
            verified.advisory_ids,
            vec!["INTEL-SA-00334".to_owned(), "INTEL-SA-00615".to_owned()],
            "{status}"
        );
    }
}

#[test]
fn rejecting_statuses_map_to_reasons() {
    let ias = TestIas::new();
    let cases = [
        ("GROUP_REVOKED", Reason::Revoked),
        ("KEY_REVOKED", Reason::Revoked),
        ("SIGNATURE_INVALID", Reason::Signature),
        ("SIGRL_VERSION_MISMATCH", Reason::Malformed),
        ("ok", Reason::Malformed),
    ];
    for (status, reason) in cases {
        let error = ias
            .verify(&report_json(status, &[]), TEST_NOW)
            .expect_err(status);
        assert_eq!(error.reason, reason, "{status}: {error}");
    }
}

#[test]
fn malformed_bodies_rejected() {
    let ias = TestIas::new();
    let short_quote = serde_json::to_vec(&serde_json::json!({
        "id": "1", "timestamp": "2019-12-31T23:59:00", "version": 3,
        "isvEnclaveQuoteStatus": "OK", "isvEnclaveQuoteBody": STANDARD.encode([0u8; 431]),
    }))
    .expect("JSON");
    let old_version = serde_json::to_vec(&serde_json::json!({
        "id": "1", "timestamp": "2019-12-31T23:59:00", "version": 2,
        "isvEnclaveQuoteStatus": "OK", "isvEnclaveQuoteBody": quote_body(0, 0),
    }))
    .expect("JSON");
    let zoned_time = serde_json::to_vec(&serde_json::json!({
        "id": "1", "timestamp": "2019-12-31T23:59:00+01:00", "version": 3,
        "isvEnclaveQuoteStatus": "OK", "isvEnclaveQuoteBody": quote_body(0, 0),
    }))
    .expect("JSON");
    for (name, body) in [
        ("short quote", short_quote),
        ("version 2", old_version),
        ("zoned timestamp", zoned_time),
        ("not JSON", b"not json".to_vec()),
    ] {
        let error = ias.verify(&body, TEST_NOW).expect_err(name);
        assert_eq!(error.reason, Reason::Malformed, "{name}: {error}");
    }
}

#[test]
fn signing_cert_from_other_root_rejected() {
    let ias = TestIas::new();
    let other = TestIas::new();
    let body = report_json("OK", &[]);
    let error = ias::verify(
        &body,
        &ias.sign(&body),
        std::slice::from_ref(&ias.signing_der),
        &other.anchors(),
        TEST_NOW,
    )
    .expect_err("other root");
    assert_eq!(error.reason, Reason::Chain);

    // A chain that carries an untrusted self-signed root is rejected too.
    let error = ias::verify(
        &body,
        &ias.sign(&body),
        &[ias.signing_der.clone(), ias.root_der.clone()],
        &other.anchors(),
        TEST_NOW,
    )
    .expect_err("untrusted root in chain");
    assert_eq!(error.reason, Reason::Chain);
}

#[test]
fn non_ca_issuer_rejected() {
    let ias = TestIas::new();
    let body = report_json("OK", &[]);
    // The signing certificate placed as the issuer of itself is not a CA.
    let error = ias::verify(
        &body,
        &ias.sign(&body),
        &[ias.signing_der.clone(), ias.signing_der.clone()],
        &ias.anchors(),
        TEST_NOW,
    )
    .expect_err("non-CA issuer");
    assert_eq!(error.reason, Reason::Chain);
}

#[test]
fn empty_chain_rejected() {
    let ias = TestIas::new();
    let body = report_json("OK", &[]);
    let error = ias::verify(&body, &ias.sign(&body), &[], &ias.anchors(), TEST_NOW)
        .expect_err("empty chain");
    assert_eq!(error.reason, Reason::Chain);
}

#[test]
fn truncated_signature_rejected() {
    let ias = TestIas::new();
    let body = report_json("OK", &[]);
    let signature = ias.sign(&body);
    let error = ias::verify(
        &body,
        &signature[..255],
        std::slice::from_ref(&ias.signing_der),
        &ias.anchors(),
        TEST_NOW,
    )
    .expect_err("short signature");
    assert_eq!(error.reason, Reason::Malformed);
}

#[test]
fn mutated_bodies_never_panic() {
    let ias = TestIas::new();
    let mut bodies = vec![report_json("OK", &["INTEL-SA-00334"])];
    if let Some(fixture) = load() {
        bodies.push(fixture.body);
    }
    // A deterministic xorshift sequence, so a failing mutation can be replayed.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for body in &bodies {
        for _ in 0..3000 {
            let mut mutated = body.clone();
            let position = (next() % mutated.len() as u64) as usize;
            match next() % 3 {
                0 => mutated[position] ^= 1 << (next() % 8),
                1 => mutated[position] = next() as u8,
                _ => mutated.truncate(position),
            }
            let _ = ias::parse_report(&mutated);
        }
        let _ = ias.verify(body, TEST_NOW);
    }
}
