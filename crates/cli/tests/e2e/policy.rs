//! Signed, versioned appraisal policy documents: a server with a TDX attestor (test-signed
//! quotes from twid-evidence-testkit), owner keys made by openssl, documents signed and
//! applied with `twid policy`, and agents attesting over the node API.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use twid_config::EvidenceAttestorConfig;
use twid_evidence::policy::Policy;
use twid_evidence::svid_claims::AttestationClaims;
use twid_evidence::{Envelope, Kind, binding};
use twid_evidence_testkit::dcap::{PlatformSpec, TdReportSpec, TestPlatform, Validity};
use twid_proto::attestation::VerifyRequest;
use twid_proto::attestation::verification_client::VerificationClient;
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::attest_agent_response::Step as ResponseStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{AttestAgentParams, AttestAgentRequest, AttestationData};
use twid_server::{Server, ServerHandle};
use twid_spiffe::TrustDomain;

use crate::common::{TRUST_DOMAIN, TempDir, python, run, run_ok, wait_until};

/// The MRTD the server's plugin_data policy allows.
const MRTD_A: [u8; 48] = [0x7d; 48];
/// An MRTD that version 1 adds and version 2 keeps.
const MRTD_B: [u8; 48] = [0x11; 48];
/// An MRTD that only version 2 allows.
const MRTD_C: [u8; 48] = [0x22; 48];

fn unix_now() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(seconds).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// A TDX platform whose quotes carry collateral valid for a day around the real clock.
struct Tdx {
    platform: TestPlatform,
    collateral: Vec<u8>,
}

impl Tdx {
    fn new() -> Self {
        let now = unix_now();
        let spec = PlatformSpec::default().with_collateral_validity(Validity {
            not_before: now - 3600,
            not_after: now + 86_400,
        });
        let platform = TestPlatform::new(&spec);
        let collateral = platform.collateral_tdx().to_dcap_qvl_json().into_bytes();
        Self {
            platform,
            collateral,
        }
    }

    fn quote(&self, mr_td: [u8; 48], report_data: [u8; 64]) -> Envelope {
        let report = TdReportSpec {
            mr_td,
            report_data,
            ..TdReportSpec::default()
        };
        let mut envelope = Envelope::new(Kind::Tdx, self.platform.tdx_quote(&report, 4));
        envelope.collateral = Some(self.collateral.clone());
        envelope
    }
}

/// Runs openssl, which must succeed.
fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl should run");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An owner key pair made by openssl: PKCS#8 private key (mode 0600) and SPKI public key.
struct Owner {
    key: PathBuf,
    public: PathBuf,
    kid: String,
    jwk: Value,
}

impl Owner {
    fn new(dir: &Path, name: &str) -> Self {
        let key = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key.to_str().unwrap(),
        ]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        openssl(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let printed: Value = serde_json::from_str(&run_ok(&[
            "policy",
            "thumbprint",
            public.to_str().unwrap(),
            "--output",
            "json",
        ]))
        .unwrap();
        // The private key gives the same thumbprint as its public key.
        let from_private: Value = serde_json::from_str(&run_ok(&[
            "policy",
            "thumbprint",
            key.to_str().unwrap(),
            "--output",
            "json",
        ]))
        .unwrap();
        assert_eq!(printed, from_private);
        Self {
            key,
            public,
            kid: printed["kid"].as_str().unwrap().to_owned(),
            jwk: printed["jwk"].clone(),
        }
    }
}

/// A server with one TDX attestor whose plugin_data policy allows only [`MRTD_A`], and
/// `policy_owner_keys` naming `genesis`.
struct Deployment {
    dir: TempDir,
    server: ServerHandle,
    tdx: Tdx,
}

impl Deployment {
    async fn start(dir: TempDir, tdx: Tdx, genesis: &Owner) -> Self {
        let root = dir.path().join("tdx-root.pem");
        std::fs::write(&root, pem("CERTIFICATE", &tdx.platform.root_der())).unwrap();
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut config = dir.dev_server_config(trust_domain);
        config.evidence_attestors.push(EvidenceAttestorConfig {
            name: "tdx".to_owned(),
            kind: Kind::Tdx,
            trusted_roots: vec![root],
            collateral_dir: None,
            vek_chain_path: None,
            pcs_url: None,
            kds_url: None,
            policy: Policy {
                allowed_measurements: vec![MRTD_A.to_vec()],
                ..Policy::default()
            },
        });
        config.policy_owner_keys = vec![genesis.public.clone()];
        let server = Server::start(config).await.expect("server should start");
        Self { dir, server, tdx }
    }

    fn socket(&self) -> &str {
        self.server.admin_socket().to_str().unwrap()
    }

    /// Writes `document` and signs it with `owner`'s key through the CLI; returns the JWS path.
    fn sign(&self, owner: &Owner, name: &str, document: &Value) -> PathBuf {
        let document_path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&document_path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
        let out = self.dir.path().join(format!("{name}.jws"));
        run_ok(&[
            "policy",
            "sign",
            "--key",
            owner.key.to_str().unwrap(),
            "--document",
            document_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    }

    /// Applies a signed document through the CLI (SPIRE's `-socketPath` spelling); returns
    /// whether it succeeded and its stdout or stderr.
    fn apply(&self, jws: &Path) -> (bool, String) {
        let output = run(&[
            "policy",
            "apply",
            jws.to_str().unwrap(),
            "-socketPath",
            self.socket(),
        ]);
        let text = if output.status.success() {
            String::from_utf8(output.stdout).unwrap()
        } else {
            String::from_utf8(output.stderr).unwrap()
        };
        (output.status.success(), text)
    }

    /// Attests an agent with a quote of `mr_td` bound to the server's nonce and a new key;
    /// returns the agent SVID (DER) or the rejection.
    async fn attest(&self, mr_td: [u8; 48]) -> Result<Vec<u8>, tonic::Status> {
        let address = self.server.node_api_address();
        let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
        let tls =
            twid_tls::insecure_client_config(None, twid_tls::Authorizer::Exact(server_id)).unwrap();
        let channel =
            twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
        let mut client = NodeClient::new(channel);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        sender
            .send(AttestAgentRequest {
                step: Some(RequestStep::Params(AttestAgentParams {
                    data: Some(AttestationData {
                        r#type: "tdx".to_owned(),
                        payload: Vec::new(),
                    }),
                    csr,
                })),
            })
            .await
            .unwrap();
        let mut responses = client
            .attest_agent(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let first = responses.message().await?.unwrap();
        let Some(ResponseStep::Challenge(nonce)) = first.step else {
            panic!("expected a challenge, got {first:?}");
        };
        let spki = {
            use rcgen::PublicKeyData as _;
            key.subject_public_key_info()
        };
        let envelope = self.tdx.quote(mr_td, binding::report_data(&nonce, &spki));
        sender
            .send(AttestAgentRequest {
                step: Some(RequestStep::ChallengeResponse(envelope.to_json())),
            })
            .await
            .unwrap();
        let response = responses.message().await?.unwrap();
        match response.step {
            Some(ResponseStep::Result(svid)) => Ok(svid.cert_chain[0].clone()),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    /// Appraises a quote of `mr_td` through the verification API; returns the claims of the
    /// signed attestation result.
    async fn appraise(&self, mr_td: [u8; 48]) -> Value {
        let address = self.server.node_api_address();
        let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
        let tls =
            twid_tls::insecure_client_config(None, twid_tls::Authorizer::Exact(server_id)).unwrap();
        let channel =
            twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
        let envelope = self
            .tdx
            .quote(mr_td, binding::report_data(b"appraisal", b"no key"));
        let response = VerificationClient::new(channel)
            .verify(VerifyRequest {
                envelope: envelope.to_json(),
                attestor: "tdx".to_owned(),
                nonce: Vec::new(),
                public_key: Vec::new(),
            })
            .await
            .expect("the verification API answers")
            .into_inner();
        let payload = response.attestation_result.split('.').nth(1).unwrap();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&payload).unwrap()
    }

    /// Returns the issuance log records as `twid log show` prints them.
    fn log_records(&self) -> Vec<Value> {
        let out = run_ok(&[
            "log",
            "show",
            "--output",
            "json",
            "--limit",
            "1000",
            "--socket-path",
            self.socket(),
        ]);
        let json: Value = serde_json::from_str(&out).unwrap();
        json["records"].as_array().unwrap().clone()
    }
}

fn document(version: u64, owners: &[&Owner], mrtds: &[[u8; 48]], comment: &str) -> Value {
    json!({
        "version": version,
        "trust_domain": TRUST_DOMAIN,
        "owners": owners.iter().map(|owner| owner.jwk.clone()).collect::<Vec<_>>(),
        "attestors": {
            "tdx": {
                "allowed_measurements": mrtds.iter().map(hex::encode).collect::<Vec<_>>(),
                "max_collateral_age": "720h",
            }
        },
        "comment": comment,
    })
}

fn claims(svid: &[u8]) -> AttestationClaims {
    AttestationClaims::from_certificate(svid)
        .expect("a well-formed attestation extension")
        .expect("the SVID has an attestation extension")
}

fn serial(svid: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(svid).unwrap();
    hex::encode(cert.tbs_certificate.raw_serial())
}

/// Checks the owner JWK thumbprint with jwcrypto, an independent RFC 7638 implementation.
fn check_thumbprint_with_jwcrypto(owner: &Owner) {
    let Some(python) = python() else {
        return;
    };
    let script = "import json, sys\nfrom jwcrypto import jwk\n\
                  key = jwk.JWK(**json.loads(sys.argv[1]))\nprint(key.thumbprint())";
    let output = Command::new(python)
        .args(["-c", script, &owner.jwk.to_string()])
        .output()
        .expect("python should run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), owner.kid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_policy_versions_govern_evidence_appraisal() {
    let dir = TempDir::new();
    let owner1 = Owner::new(dir.path(), "owner1");
    let owner2 = Owner::new(dir.path(), "owner2");
    let stranger = Owner::new(dir.path(), "stranger");
    check_thumbprint_with_jwcrypto(&owner1);
    let deployment = Deployment::start(dir, Tdx::new(), &owner1).await;

    // No version yet: the plugin_data policy applies and the claims carry no policy version.
    let svid = deployment.attest(MRTD_A).await.expect("MRTD A attests");
    assert_eq!(claims(&svid).policy_version, None);
    let status = deployment
        .attest(MRTD_B)
        .await
        .expect_err("MRTD B rejected");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let show = run(&["policy", "show", "--socket-path", deployment.socket()]);
    assert!(!show.status.success());
    assert!(
        String::from_utf8_lossy(&show.stderr).contains("no policy version has been applied"),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );

    // A group-readable owner key is rejected for signing.
    let v1_document = document(1, &[&owner1], &[MRTD_A, MRTD_B], "first");
    std::fs::set_permissions(&owner1.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let document_path = deployment.dir.path().join("loose.json");
    std::fs::write(&document_path, v1_document.to_string()).unwrap();
    let loose = run(&[
        "policy",
        "sign",
        "--key",
        owner1.key.to_str().unwrap(),
        "--document",
        document_path.to_str().unwrap(),
    ]);
    assert!(!loose.status.success());
    assert!(
        String::from_utf8_lossy(&loose.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&loose.stderr)
    );
    std::fs::set_permissions(&owner1.key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Version 1 signed by a key outside policy_owner_keys is rejected, even though it names
    // that key as its owner.
    let self_named = deployment.sign(
        &stranger,
        "v1-stranger",
        &document(1, &[&stranger], &[MRTD_A, MRTD_B], "self-named"),
    );
    let (applied, message) = deployment.apply(&self_named);
    assert!(!applied, "{message}");
    assert!(message.contains(&stranger.kid), "{message}");
    assert!(message.contains("policy_owner_keys"), "{message}");

    // Version 1 signed by the configured owner replaces the plugin_data policy.
    let v1 = deployment.sign(&owner1, "v1", &v1_document);
    let (applied, message) = deployment.apply(&v1);
    assert!(applied, "{message}");
    assert!(message.contains("Applied policy version 1"), "{message}");
    let svid = deployment.attest(MRTD_B).await.expect("v1 allows MRTD B");
    assert_eq!(claims(&svid).policy_version, Some(1));

    // Version 2 signed by a key that version 1 does not name is rejected.
    let v2_document = document(2, &[&owner2], &[MRTD_B, MRTD_C], "second");
    let forged = deployment.sign(&stranger, "v2-stranger", &v2_document);
    let (applied, message) = deployment.apply(&forged);
    assert!(!applied, "{message}");
    assert!(message.contains(&stranger.kid), "{message}");
    assert!(
        message.contains("not an owner named in the current version 1"),
        "{message}"
    );
    assert!(message.contains(&owner1.kid), "{message}");

    // Version 2 signed by the owner of version 1 applies and hands ownership to owner2.
    let v2 = deployment.sign(&owner1, "v2", &v2_document);
    let (applied, message) = deployment.apply(&v2);
    assert!(applied, "{message}");
    assert!(message.contains("Applied policy version 2"), "{message}");

    // Replaying version 1 is rejected.
    let (applied, message) = deployment.apply(&v1);
    assert!(!applied, "{message}");
    assert!(
        message.contains("not newer than the current version 2"),
        "{message}"
    );
    // Version 3 signed by the former owner is rejected.
    let v3_by_old = deployment.sign(
        &owner1,
        "v3-old",
        &document(3, &[&owner1], &[MRTD_A], "rollback attempt"),
    );
    let (applied, message) = deployment.apply(&v3_by_old);
    assert!(!applied, "{message}");
    assert!(message.contains(&owner1.kid), "{message}");

    // Both versions are listed, and each keeps its document and signer.
    let listed: Value = serde_json::from_str(&run_ok(&[
        "policy",
        "list",
        "--output",
        "json",
        "--socket-path",
        deployment.socket(),
    ]))
    .unwrap();
    let versions = listed["versions"].as_array().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|version| version["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(versions[0]["signer_kid"], owner1.kid.as_str());
    assert_eq!(versions[1]["comment"], "second");
    let shown: Value = serde_json::from_str(&run_ok(&[
        "policy",
        "show",
        "--version",
        "1",
        "--output",
        "json",
        "--socket-path",
        deployment.socket(),
    ]))
    .unwrap();
    assert_eq!(shown["document"], v1_document);
    let current = run_ok(&["policy", "show", "--socket-path", deployment.socket()]);
    assert!(current.contains("Version          : 2"), "{current}");
    assert!(current.contains(&owner2.kid), "{current}");

    // A new SVID carries policy version 2, in the certificate and in the issuance log.
    let svid = deployment.attest(MRTD_C).await.expect("v2 allows MRTD C");
    assert_eq!(claims(&svid).policy_version, Some(2));
    let svid_path = deployment.dir.path().join("agent-c.der");
    std::fs::write(&svid_path, &svid).unwrap();
    let inspected: Value = serde_json::from_str(&run_ok(&[
        "svid",
        "inspect",
        svid_path.to_str().unwrap(),
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(inspected["attestation"]["policy_version"], 2);
    let serial = serial(&svid);
    let record: Value = serde_json::from_str(&run_ok(&[
        "log",
        "show",
        "--serial",
        &serial,
        "--output",
        "json",
        "--socket-path",
        deployment.socket(),
    ]))
    .unwrap();
    assert_eq!(record["policy_version"], "2");

    // MRTD A, allowed by plugin_data and version 1, is no longer accepted, and the rejection
    // names the measurement rule and is logged with version 2.
    let status = deployment
        .attest(MRTD_A)
        .await
        .expect_err("v2 drops MRTD A");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("allowed_measurements"),
        "{}",
        status.message()
    );
    wait_until(Duration::from_secs(10), "the rejection record", || {
        deployment.log_records().iter().any(|record| {
            record["refusal_reason"]
                .as_str()
                .is_some_and(|reason| reason.contains(&hex::encode(MRTD_A)))
                && record["policy_version"] == "2"
        })
    });

    // The verification API appraises with the version in effect and names it.
    let appraised = deployment.appraise(MRTD_C).await;
    assert_eq!(appraised["ear.status"], "affirming");
    assert_eq!(appraised["twid.policy_version"], 2);
    let appraised = deployment.appraise(MRTD_A).await;
    assert_eq!(appraised["ear.status"], "contraindicated");
    assert_eq!(appraised["twid.policy_version"], 2);

    // The current version survives a restart of the server: MRTD B, which plugin_data does
    // not allow, still attests under version 2.
    let Deployment { dir, server, tdx } = deployment;
    server.shutdown().await;
    let deployment = Deployment::start(dir, tdx, &owner1).await;
    run_ok(&[
        "agent",
        "evict",
        "--spiffe-id",
        &format!(
            "spiffe://{TRUST_DOMAIN}/spire/agent/tdx/{}",
            hex::encode(MRTD_B)
        ),
        "--socket-path",
        deployment.socket(),
    ]);
    let svid = deployment
        .attest(MRTD_B)
        .await
        .expect("version 2 allows MRTD B");
    assert_eq!(claims(&svid).policy_version, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_omitting_attestor_rejects_its_evidence() {
    let dir = TempDir::new();
    let owner = Owner::new(dir.path(), "owner");
    let deployment = Deployment::start(dir, Tdx::new(), &owner).await;

    // A version for another trust domain is rejected, naming both trust domains.
    let mut staging = document(1, &[&owner], &[MRTD_A], "staging");
    staging["trust_domain"] = json!("staging.example.org");
    let staging = deployment.sign(&owner, "v1-staging", &staging);
    let (applied, message) = deployment.apply(&staging);
    assert!(!applied, "{message}");
    assert!(message.contains("\"staging.example.org\""), "{message}");
    assert!(
        message.contains(&format!("\"{TRUST_DOMAIN}\"")),
        "{message}"
    );

    // A version that names only snp, written by hand as an editor saves it: CRLF line ends,
    // a trailing newline, and a comment with template characters.
    let text = format!(
        "{{\r\n  \"version\": 1,\r\n  \"trust_domain\": \"{TRUST_DOMAIN}\",\r\n  \
         \"owners\": [{jwk}],\r\n  \"attestors\": {{\"snp\": {{\"allowed_measurements\": \
         [\"{mrtd}\"]}}}},\r\n  \"comment\": \"snp only; ${{not}} %{{a template}}\"\r\n}}\r\n",
        jwk = owner.jwk,
        mrtd = "3a".repeat(48),
    );
    let document_path = deployment.dir.path().join("v1-snp.json");
    std::fs::write(&document_path, &text).unwrap();
    let jws = deployment.dir.path().join("v1-snp.jws");
    run_ok(&[
        "policy",
        "sign",
        "--key",
        owner.key.to_str().unwrap(),
        "--document",
        document_path.to_str().unwrap(),
        "--out",
        jws.to_str().unwrap(),
    ]);
    let output = run(&[
        "policy",
        "apply",
        jws.to_str().unwrap(),
        "--socket-path",
        deployment.socket(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Applied policy version 1"),
        "{output:?}"
    );
    assert!(
        stderr.contains("no object for the configured evidence attestors tdx"),
        "{stderr}"
    );
    let shown: Value = serde_json::from_str(&run_ok(&[
        "policy",
        "show",
        "--output",
        "json",
        "--socket-path",
        deployment.socket(),
    ]))
    .unwrap();
    assert_eq!(
        shown["document"]["comment"],
        "snp only; ${not} %{a template}"
    );

    // MRTD A, which plugin_data allows, is rejected now that the current version leaves tdx
    // out, and the rejection is in the issuance log with version 1.
    let status = deployment
        .attest(MRTD_A)
        .await
        .expect_err("tdx is not in version 1");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let expected = "policy version 1 has no object for attestor tdx; sign a version that names it";
    assert!(status.message().contains(expected), "{}", status.message());
    wait_until(Duration::from_secs(10), "the rejection record", || {
        deployment.log_records().iter().any(|record| {
            record["refusal_reason"]
                .as_str()
                .is_some_and(|reason| reason.contains(expected))
                && record["policy_version"] == "1"
        })
    });

    // Version 2 names tdx again; the JSON output lists no omitted attestor.
    let v2 = deployment.sign(
        &owner,
        "v2",
        &document(2, &[&owner], &[MRTD_A], "tdx again"),
    );
    let applied: Value = serde_json::from_str(&run_ok(&[
        "policy",
        "apply",
        v2.to_str().unwrap(),
        "--output",
        "json",
        "--socket-path",
        deployment.socket(),
    ]))
    .unwrap();
    assert_eq!(applied["version"], 2);
    assert_eq!(applied["omitted_attestors"], json!([]));
    let svid = deployment.attest(MRTD_A).await.expect("v2 allows MRTD A");
    assert_eq!(claims(&svid).policy_version, Some(2));

    // A version above the largest storable one is not found, not a server error.
    let show = run(&[
        "policy",
        "show",
        "--version",
        "18446744073709551615",
        "--socket-path",
        deployment.socket(),
    ]);
    assert!(!show.status.success());
    let stderr = String::from_utf8_lossy(&show.stderr);
    assert!(
        stderr.contains("policy version 18446744073709551615 does not exist"),
        "{stderr}"
    );
}
