//! The evidence verification API (`twid.attestation.v1.Verification/Verify`) with the server in
//! this process. The test evidence generators stand in for SEV-SNP and Nitro hardware, and the
//! server trusts their test roots through `trusted_roots` files. A client with no certificate
//! calls the API over TLS, trusting the server's X.509 bundle, and checks every signed result
//! against the trust domain's JWT keys, here and with PyJWT.

use std::collections::HashMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio_rustls::rustls::SignatureScheme;
use tonic::transport::Channel;
use twid_config::EvidenceAttestorConfig;
use twid_evidence::policy::Policy;
use twid_evidence::{Envelope, Kind, binding};
use twid_evidence_testkit::nitro::{DocumentSpec, TestNitro};
use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};
use twid_proto::attestation::verification_client::VerificationClient;
use twid_proto::attestation::{VerifyRequest, VerifyResponse};
use twid_server::{Server, ServerHandle};
use twid_spiffe::{JwtBundle, SpiffeBundle, TrustDomain};

use crate::common::{TRUST_DOMAIN, TempDir, python, repo_root, run_ok};

/// The result lifetime the server caps `exp` at, in seconds (`RESULT_TTL` in the server).
const RESULT_TTL_SECONDS: i64 = 300;

/// Lifetime of the Nitro document-signing certificate, shorter than [`RESULT_TTL_SECONDS`], so
/// that a result for Nitro evidence must expire with the certificate.
const NITRO_LEAF_SECONDS: i64 = 120;

/// The SEV-SNP MEASUREMENT the server's policy allows.
const SNP_MEASUREMENT: [u8; 48] = [0x3a; 48];

/// The Nitro PCR0 the server's policy allows.
const NITRO_PCR0: [u8; 48] = [0x0e; 48];

/// A relying party's nonce.
const NONCE: &[u8; 32] = b"relying-party-nonce-0123456789ab";

fn unix_now() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(seconds).unwrap()
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");
    text
}

fn new_key_spki() -> Vec<u8> {
    use rcgen::PublicKeyData as _;
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .subject_public_key_info()
}

/// Test SEV-SNP and Nitro platforms that sign evidence like the hardware would.
struct Platforms {
    amd: TestAmd,
    nitro: TestNitro,
    /// When the Nitro document-signing certificate expires (Unix seconds).
    nitro_leaf_not_after: i64,
}

impl Platforms {
    fn new() -> Self {
        let now = unix_now();
        let tcb = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 14,
            microcode: 209,
            fmc: None,
        };
        let amd = TestAmd::with_vek_validity("Milan", [0xc1; 64], tcb, now - 3600, now + 86_400);
        let nitro_leaf_not_after = now + NITRO_LEAF_SECONDS;
        let nitro = TestNitro::with_leaf_validity(now - 60, nitro_leaf_not_after);
        Self {
            amd,
            nitro,
            nitro_leaf_not_after,
        }
    }

    /// Makes an SEV-SNP report with its VCEK, ASK and ARK. Policy bit 19 allows debugging.
    fn snp(&self, report_data: [u8; 64], measurement: [u8; 48], debug: bool) -> Envelope {
        let policy = if debug { 0x30000 | (1 << 19) } else { 0x30000 };
        let report = self.amd.report(&ReportSpec {
            report_data,
            measurement,
            policy,
            ..ReportSpec::default()
        });
        let mut envelope = Envelope::new(Kind::Snp, report);
        envelope.certificates = vec![
            self.amd.vcek_der().to_vec(),
            self.amd.ask_der().to_vec(),
            self.amd.ark_der().to_vec(),
        ];
        envelope
    }

    /// Makes a Nitro document with `user_data` as the binding. An all-zero PCR0 marks a debug
    /// enclave.
    fn nitro(&self, user_data: [u8; 64], pcr0: [u8; 48]) -> Envelope {
        let mut spec = DocumentSpec {
            user_data: Some(user_data.to_vec()),
            timestamp_ms: u64::try_from(unix_now()).unwrap() * 1000,
            ..DocumentSpec::default()
        };
        spec.pcrs.insert(0, pcr0.to_vec());
        Envelope::new(Kind::Nitro, self.nitro.document(&spec))
    }
}

/// A server with `snp` and `nitro` evidence attestors whose policies allow one measurement each,
/// and a Verification client connected to it.
struct Verifier {
    _dir: TempDir,
    server: ServerHandle,
    client: VerificationClient<Channel>,
    /// The trust domain's JWT keys, from the admin API.
    jwt_bundle: JwtBundle,
}

impl Verifier {
    async fn start(platforms: &Platforms) -> Self {
        let dir = TempDir::new();
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut config = dir.dev_server_config(trust_domain.clone());
        let attestors = [
            ("snp", Kind::Snp, platforms.amd.ark_der(), SNP_MEASUREMENT),
            ("nitro", Kind::Nitro, platforms.nitro.root_der(), NITRO_PCR0),
        ];
        for (name, kind, root_der, measurement) in attestors {
            let root = dir.path().join(format!("{name}-root.pem"));
            std::fs::write(&root, pem(root_der)).unwrap();
            config.evidence_attestors.push(EvidenceAttestorConfig {
                name: name.to_owned(),
                kind,
                trusted_roots: vec![root],
                collateral_dir: None,
                vek_chain_path: None,
                pcs_url: None,
                kds_url: None,
                policy: Policy {
                    allowed_measurements: vec![measurement.to_vec()],
                    ..Policy::default()
                },
            });
        }
        let server = Server::start(config).await.expect("server should start");

        let bundle_json = run_ok(&[
            "bundle",
            "show",
            "--format",
            "spiffe",
            "--socket-path",
            server.admin_socket().to_str().unwrap(),
        ]);
        let bundle = SpiffeBundle::parse(trust_domain.clone(), bundle_json.as_bytes()).unwrap();
        let jwt_bundle = bundle.jwt_bundle();
        assert!(
            !jwt_bundle.authorities().is_empty(),
            "the bundle has no JWT keys: {bundle_json}"
        );

        // Callers present no client certificate and authenticate the server by its
        // X.509-SVID, which must chain to the trust domain's bundle.
        let roots: Vec<CertificateDer<'static>> = bundle.x509_bundle().authorities().to_vec();
        let trust =
            twid_tls::TrustSource::new(HashMap::from([(trust_domain.clone(), roots)])).unwrap();
        let server_id = twid_types::server_id(&trust_domain);
        let tls =
            twid_tls::client_config(None, trust, twid_tls::Authorizer::Exact(server_id)).unwrap();
        let address = server.node_api_address();
        let channel = twid_tls::connect_channel(&address.ip().to_string(), address.port(), tls)
            .await
            .expect("TLS connection to the node API");
        Self {
            _dir: dir,
            server,
            client: VerificationClient::new(channel),
            jwt_bundle,
        }
    }

    async fn verify(&self, request: VerifyRequest) -> Result<VerifyResponse, tonic::Status> {
        let mut client = self.client.clone();
        client
            .verify(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Verifies `envelope` with `nonce` (and `public_key` when not empty), expects a result, and
    /// returns it with the claims of its verified token.
    async fn appraise(
        &self,
        envelope: &Envelope,
        nonce: &[u8],
        public_key: &[u8],
    ) -> (VerifyResponse, Value) {
        let response = self
            .verify(VerifyRequest {
                envelope: envelope.to_json(),
                attestor: String::new(),
                nonce: nonce.to_vec(),
                public_key: public_key.to_vec(),
            })
            .await
            .expect("Verify should return a result");
        let claims = self.verified_claims(&response.attestation_result);
        (response, claims)
    }

    /// Checks the token's header and its signature under the trust domain's JWT keys, and
    /// returns its claims.
    fn verified_claims(&self, token: &str) -> Value {
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3, "not a compact JWS");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "eat+jwt", "header {header}");

        let kid = header["kid"].as_str().expect("header kid");
        let authority = self
            .jwt_bundle
            .get(kid)
            .unwrap_or_else(|| panic!("kid {kid} is not in the trust domain's JWT bundle"));

        let alg = header["alg"].as_str().expect("header alg");
        let signature = URL_SAFE_NO_PAD.decode(segments[2]).unwrap();
        let signing_input = format!("{}.{}", segments[0], segments[1]);
        assert!(
            jws_signature_valid(
                &authority.public_key,
                alg,
                signing_input.as_bytes(),
                &signature
            ),
            "the {alg} signature does not verify with key {kid}"
        );

        let mut tampered = signature.clone();
        tampered[0] ^= 0x01;
        assert!(
            !jws_signature_valid(
                &authority.public_key,
                alg,
                signing_input.as_bytes(),
                &tampered
            ),
            "a changed signature still verifies"
        );

        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[1]).unwrap()).unwrap()
    }
}

/// Checks a JWS signature with rustls's aws-lc-rs verifiers. JWS ECDSA signatures are the fixed
/// `r || s` form, which the TLS verifiers take as DER.
fn jws_signature_valid(spki_der: &[u8], alg: &str, message: &[u8], signature: &[u8]) -> bool {
    let (scheme, signature) = match alg {
        "ES256" => (SignatureScheme::ECDSA_NISTP256_SHA256, ecdsa_der(signature)),
        "ES384" => (SignatureScheme::ECDSA_NISTP384_SHA384, ecdsa_der(signature)),
        "ES512" => (SignatureScheme::ECDSA_NISTP521_SHA512, ecdsa_der(signature)),
        "RS256" => (SignatureScheme::RSA_PKCS1_SHA256, signature.to_vec()),
        other => panic!("unexpected JWS algorithm {other}"),
    };
    use x509_parser::prelude::FromDer as _;

    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).expect("JWT key SPKI");
    let public_key = spki.subject_public_key.data.as_ref();
    let algorithms = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms;
    let (_, verifiers) = algorithms
        .mapping
        .iter()
        .find(|(candidate, _)| *candidate == scheme)
        .expect("aws-lc-rs verifies this scheme");
    verifiers.iter().any(|verifier| {
        verifier
            .verify_signature(public_key, message, &signature)
            .is_ok()
    })
}

/// Converts a fixed-size ECDSA signature (`r || s`, each as long as the curve order) to the
/// DER `Ecdsa-Sig-Value` SEQUENCE of two INTEGERs.
fn ecdsa_der(fixed: &[u8]) -> Vec<u8> {
    fn der_length(out: &mut Vec<u8>, length: usize) {
        if length < 0x80 {
            out.push(u8::try_from(length).unwrap());
        } else {
            out.push(0x81);
            out.push(u8::try_from(length).unwrap());
        }
    }
    fn integer(out: &mut Vec<u8>, bytes: &[u8]) {
        let start = bytes
            .iter()
            .position(|byte| *byte != 0)
            .unwrap_or(bytes.len() - 1);
        let bytes = &bytes[start..];
        let pad = bytes[0] & 0x80 != 0;
        out.push(0x02);
        der_length(out, bytes.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(bytes);
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = Vec::new();
    integer(&mut body, r);
    integer(&mut body, s);
    let mut out = vec![0x30];
    der_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn claim_i64(claims: &Value, name: &str) -> i64 {
    claims[name]
        .as_i64()
        .unwrap_or_else(|| panic!("claim {name} is missing or not an integer: {claims}"))
}

/// Checks the claims every result carries, whatever its status: issuer, profile, nonce, and
/// an expiry within [`RESULT_TTL_SECONDS`] of `iat`.
fn assert_common_claims(claims: &Value, nonce: &[u8], requested_at: i64) {
    assert_eq!(
        claims["iss"],
        format!("spiffe://{TRUST_DOMAIN}/spire/server"),
        "{claims}"
    );
    assert_eq!(
        claims["eat_profile"],
        twid_evidence::result::EAT_PROFILE,
        "{claims}"
    );
    assert_eq!(
        claims["eat_nonce"],
        URL_SAFE_NO_PAD.encode(nonce),
        "{claims}"
    );
    assert_eq!(claims["ear.verifier-id"]["developer"], "twid", "{claims}");
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    let iat = claim_i64(claims, "iat");
    let exp = claim_i64(claims, "exp");
    let now = unix_now();
    assert!(iat >= requested_at - 1, "iat {iat} is before the request");
    assert!(iat <= now + 1, "iat {iat} is in the future");
    assert!(exp >= iat, "exp {exp} < iat {iat}");
    assert!(exp <= now + RESULT_TTL_SECONDS, "exp {exp} > now + 300");
    assert!(exp <= iat + RESULT_TTL_SECONDS, "exp {exp} > iat + 300");
}

/// Checks an affirming result for evidence that passed verification and the policy.
fn assert_affirming(response: &VerifyResponse, claims: &Value, kind: &str) {
    assert_eq!(response.status, "affirming", "{claims}");
    assert_eq!(claims["ear.status"], "affirming", "{claims}");
    assert_eq!(claims["twid.kind"], kind, "{claims}");
    assert_eq!(claims["twid.debug"], false, "{claims}");
    assert!(claims.get("twid.reason").is_none(), "{claims}");
    assert!(claims.get("twid.error").is_none(), "{claims}");
    let valid_until = claim_i64(claims, "twid.valid_until");
    let exp = claim_i64(claims, "exp");
    assert!(exp <= valid_until, "exp {exp} > valid_until {valid_until}");
    assert_eq!(
        claims["twid.evidence_sha256"].as_str().map(str::len),
        Some(64),
        "{claims}"
    );
}

/// Checks a contraindicated result and its reason.
fn assert_contraindicated(response: &VerifyResponse, claims: &Value, reason: &str) {
    assert_eq!(response.status, "contraindicated", "{claims}");
    assert_eq!(claims["ear.status"], "contraindicated", "{claims}");
    assert_eq!(claims["twid.reason"], reason, "{claims}");
    assert!(
        claims["twid.error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{claims}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_evidence_gets_affirming_results() {
    let platforms = Platforms::new();
    let verifier = Verifier::start(&platforms).await;
    let requested_at = unix_now();

    // SEV-SNP: the VCEK is valid for a day, so the result lives the full RESULT_TTL.
    let envelope = platforms.snp([0x11; 64], SNP_MEASUREMENT, false);
    let (response, claims) = verifier.appraise(&envelope, NONCE, &[]).await;
    assert_common_claims(&claims, NONCE, requested_at);
    assert_affirming(&response, &claims, "snp");
    assert_eq!(
        claims["twid.claims"]["measurement"],
        hex::encode(SNP_MEASUREMENT),
        "{claims}"
    );
    assert_eq!(
        claims["twid.claims"]["chip_id"],
        hex::encode([0xc1; 64]),
        "{claims}"
    );
    let selectors = claims["twid.selectors"].to_string();
    let measurement_selector = format!("snp:measurement:{}", hex::encode(SNP_MEASUREMENT));
    assert!(selectors.contains(&measurement_selector), "{selectors}");
    assert_eq!(
        claim_i64(&claims, "exp") - claim_i64(&claims, "iat"),
        RESULT_TTL_SECONDS,
        "{claims}"
    );

    // Nitro: the document-signing certificate ends before RESULT_TTL, and so must the result.
    let envelope = platforms.nitro([0x22; 64], NITRO_PCR0);
    let (response, claims) = verifier.appraise(&envelope, NONCE, &[]).await;
    assert_common_claims(&claims, NONCE, requested_at);
    assert_affirming(&response, &claims, "nitro");
    assert_eq!(
        claims["twid.claims"]["pcrs"]["0"],
        hex::encode(NITRO_PCR0),
        "{claims}"
    );
    let valid_until = claim_i64(&claims, "twid.valid_until");
    assert_eq!(valid_until, platforms.nitro_leaf_not_after, "{claims}");
    assert_eq!(claim_i64(&claims, "exp"), valid_until, "{claims}");

    // Evidence that binds the nonce and the relying party's key.
    let public_key = new_key_spki();
    let report_data = binding::report_data(NONCE, &public_key);
    let envelope = platforms.snp(report_data, SNP_MEASUREMENT, false);
    let (response, claims) = verifier.appraise(&envelope, NONCE, &public_key).await;
    assert_common_claims(&claims, NONCE, requested_at);
    assert_affirming(&response, &claims, "snp");
    let envelope = platforms.nitro(report_data, NITRO_PCR0);
    let (response, claims) = verifier.appraise(&envelope, NONCE, &public_key).await;
    assert_affirming(&response, &claims, "nitro");

    // Without a nonce the result has no eat_nonce.
    let envelope = platforms.snp([0x11; 64], SNP_MEASUREMENT, false);
    let (response, claims) = verifier.appraise(&envelope, &[], &[]).await;
    assert_affirming(&response, &claims, "snp");
    assert!(claims.get("eat_nonce").is_none(), "{claims}");

    verifier.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_evidence_gets_contraindicated_results() {
    let platforms = Platforms::new();
    let verifier = Verifier::start(&platforms).await;
    let requested_at = unix_now();
    let public_key = new_key_spki();
    let bound = binding::report_data(NONCE, &public_key);

    let cases = [
        (
            "snp debug",
            platforms.snp(bound, SNP_MEASUREMENT, true),
            "debug",
        ),
        ("nitro debug", platforms.nitro(bound, [0; 48]), "debug"),
        (
            "snp other measurement",
            platforms.snp(bound, [0x99; 48], false),
            "policy",
        ),
        (
            "nitro other measurement",
            platforms.nitro(bound, [0x44; 48]),
            "policy",
        ),
    ];
    for (name, envelope, reason) in cases {
        let (response, claims) = verifier.appraise(&envelope, NONCE, &public_key).await;
        assert_common_claims(&claims, NONCE, requested_at);
        assert_contraindicated(&response, &claims, reason);
        // The evidence itself verified, so the result still names what it contained.
        assert!(claims["twid.claims"].is_object(), "{name}: {claims}");
    }

    // Evidence bound to another key than the one the relying party names.
    let other_key = new_key_spki();
    let bound_to_other = binding::report_data(NONCE, &other_key);
    let wrong_binding = [
        platforms.snp(bound_to_other, SNP_MEASUREMENT, false),
        platforms.nitro(bound_to_other, NITRO_PCR0),
    ];
    for envelope in &wrong_binding {
        let (response, claims) = verifier.appraise(envelope, NONCE, &public_key).await;
        assert_common_claims(&claims, NONCE, requested_at);
        assert_contraindicated(&response, &claims, "binding");
    }

    // Evidence bound to the right key under another nonce.
    let old_nonce = b"an older nonce from another call";
    let envelope = platforms.snp(
        binding::report_data(old_nonce, &public_key),
        SNP_MEASUREMENT,
        false,
    );
    let (response, claims) = verifier.appraise(&envelope, NONCE, &public_key).await;
    assert_contraindicated(&response, &claims, "binding");

    // A report changed after signing (a MEASUREMENT byte, at offset 0x90) fails its
    // signature check, so the result carries no claims.
    let mut envelope = platforms.snp(bound, SNP_MEASUREMENT, false);
    envelope.evidence[0x90] ^= 0x01;
    let (response, claims) = verifier.appraise(&envelope, NONCE, &public_key).await;
    assert_common_claims(&claims, NONCE, requested_at);
    assert_contraindicated(&response, &claims, "signature");
    assert!(claims.get("twid.claims").is_none(), "{claims}");
    assert!(claims.get("twid.valid_until").is_none(), "{claims}");

    // An attestor named explicitly does not appraise evidence of another kind.
    let envelope = platforms.nitro(bound, NITRO_PCR0);
    let response = verifier
        .verify(VerifyRequest {
            envelope: envelope.to_json(),
            attestor: "snp".to_owned(),
            nonce: NONCE.to_vec(),
            public_key: public_key.clone(),
        })
        .await
        .expect("Verify should return a result");
    let claims = verifier.verified_claims(&response.attestation_result);
    assert_contraindicated(&response, &claims, "policy");
    assert!(
        claims["twid.error"]
            .as_str()
            .unwrap()
            .contains("accepts snp evidence"),
        "{claims}"
    );

    verifier.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_error_codes() {
    let platforms = Platforms::new();
    let verifier = Verifier::start(&platforms).await;
    let good = platforms.snp([0x11; 64], SNP_MEASUREMENT, false).to_json();

    let request =
        |envelope: &[u8], attestor: &str, nonce: &[u8], public_key: &[u8]| VerifyRequest {
            envelope: envelope.to_vec(),
            attestor: attestor.to_owned(),
            nonce: nonce.to_vec(),
            public_key: public_key.to_vec(),
        };
    let tdx = Envelope::new(Kind::Tdx, vec![0; 64]).to_json();
    let cases = [
        (
            "envelope is not JSON",
            request(b"not json", "", NONCE, &[]),
            tonic::Code::InvalidArgument,
            "invalid evidence envelope",
        ),
        (
            "envelope names an unknown kind",
            request(br#"{"kind":"sev","evidence":"AAAA"}"#, "", NONCE, &[]),
            tonic::Code::InvalidArgument,
            "unknown variant",
        ),
        (
            "empty envelope",
            request(b"", "", &[], &[]),
            tonic::Code::InvalidArgument,
            "invalid evidence envelope",
        ),
        (
            "public key without nonce",
            request(&good, "", &[], &new_key_spki()),
            tonic::Code::InvalidArgument,
            "public_key needs a nonce",
        ),
        (
            "nonce over 64 bytes",
            request(&good, "", &[7; 65], &[]),
            tonic::Code::InvalidArgument,
            "nonce is 65 bytes",
        ),
        (
            "kind without an attestor",
            request(&tdx, "", NONCE, &[]),
            tonic::Code::FailedPrecondition,
            "for tdx evidence",
        ),
        (
            "unknown attestor name",
            request(&good, "sev", NONCE, &[]),
            tonic::Code::FailedPrecondition,
            "named \"sev\"",
        ),
    ];
    for (name, request, code, needle) in cases {
        let status = verifier
            .verify(request)
            .await
            .expect_err(&format!("{name}: expected an error"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {:?} does not contain {needle:?}",
            status.message()
        );
    }

    verifier.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_attestation_results() {
    let Some(python) = python() else { return };
    let platforms = Platforms::new();
    let verifier = Verifier::start(&platforms).await;
    let public_key = new_key_spki();
    let bound = binding::report_data(NONCE, &public_key);

    let mut cases = Vec::new();
    let requests = [
        (
            "snp good",
            platforms.snp(bound, SNP_MEASUREMENT, false),
            "affirming",
        ),
        (
            "nitro good",
            platforms.nitro(bound, NITRO_PCR0),
            "affirming",
        ),
        (
            "snp debug",
            platforms.snp(bound, SNP_MEASUREMENT, true),
            "contraindicated",
        ),
        (
            "nitro other measurement",
            platforms.nitro(bound, [0x44; 48]),
            "contraindicated",
        ),
    ];
    for (name, envelope, status) in requests {
        let (response, _) = verifier.appraise(&envelope, NONCE, &public_key).await;
        assert_eq!(response.status, status, "{name}");
        cases.push(json!({
            "name": name,
            "token": response.attestation_result,
            "status": status,
            "nonce": URL_SAFE_NO_PAD.encode(NONCE),
        }));
    }

    // A control case that must fail, so that a script that accepts everything fails the test.
    let mut control = cases[0].clone();
    control["name"] = "expects another nonce".into();
    control["nonce"] = URL_SAFE_NO_PAD.encode(b"another nonce").into();
    cases.push(control);

    let dir = TempDir::new();
    let input = dir.path().join("results.json");
    let output = dir.path().join("report.json");
    let jwks: Value = serde_json::from_slice(&verifier.jwt_bundle.to_jwks()).unwrap();
    let document = json!({
        "jwks": jwks,
        "issuer": format!("spiffe://{TRUST_DOMAIN}/spire/server"),
        "cases": cases,
    });
    std::fs::write(&input, serde_json::to_vec(&document).unwrap()).unwrap();
    let run = Command::new(&python)
        .arg(repo_root().join("tests/python/eat_check.py"))
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "eat_check.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let (control, checked) = cases.split_last().unwrap();
    for case in checked {
        let name = case["name"].as_str().unwrap();
        let result = &report["results"][name];
        assert_eq!(result["ok"], true, "{name}: {result}");
    }
    let result = &report["results"][control["name"].as_str().unwrap()];
    assert_eq!(result["ok"], false, "control case: {result}");
    assert!(
        result["errors"].to_string().contains("eat_nonce"),
        "control case: {result}"
    );

    verifier.server.shutdown().await;
}
