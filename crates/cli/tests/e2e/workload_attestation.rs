//! Direct workload attestation with the server and agent in this process. The agent attests
//! with a join token, so it is no TEE itself, and only relays. The workload calls the
//! WorkloadAttestation service on the agent's socket with evidence from the test generators,
//! which stand in for TDX and SEV-SNP hardware, bound to the server's nonce and its own key.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use twid_agent::{Agent, AgentHandle, AgentOptions};
use twid_ca::{KeyType, PrivateKey};
use twid_config::{AgentConfig, EvidenceAttestorConfig, ServerConfig};
use twid_evidence::policy::Policy;
use twid_evidence::svid_claims::{AttestationClaims, JWT_CLAIM};
use twid_evidence::{Envelope, Kind, binding};
use twid_evidence_testkit::dcap::{PlatformSpec, TdReportSpec, TestPlatform, Validity};
use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};
use twid_proto::workload_attestation::workload_attestation_client::WorkloadAttestationClient;
use twid_proto::workload_attestation::{AttestRequest, AttestResponse, GetNonceRequest};
use twid_server::{Server, ServerHandle};
use twid_spiffe::{JwtBundleSet, SpiffeBundle, TrustDomain, X509BundleSet};
use twid_wimse::{IssuerKeys, JwsAlgorithm, SigningKey, WitValidation};

use crate::common::{TRUST_DOMAIN, TempDir, run_ok};

/// The TDX MRTD the server's policy allows and an entry selects.
const MR_TD: [u8; 48] = [0x7d; 48];

/// The SEV-SNP MEASUREMENT the server's policy allows and an entry selects.
const SNP_MEASUREMENT: [u8; 48] = [0x3a; 48];

/// An SEV-SNP MEASUREMENT the policy allows but no entry selects.
const SNP_UNREGISTERED: [u8; 48] = [0x3b; 48];

/// The lifetime of a nonce on the server.
const NONCE_TTL: Duration = Duration::from_secs(60);

const TDX_ID: &str = "spiffe://example.org/tdx-workload";
const SNP_ID: &str = "spiffe://example.org/snp-workload";

/// An entry parented to the agent with a Unix selector, which the agent's sync signs.
const UNIX_ID: &str = "spiffe://example.org/unix-workload";

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

/// Test TDX and SEV-SNP platforms that sign evidence like the hardware would.
struct Platforms {
    tdx: Arc<TestPlatform>,
    /// The TDX collateral in dcap-qvl's JSON layout, sent inside each envelope.
    tdx_collateral: Vec<u8>,
    amd: TestAmd,
}

impl Platforms {
    fn new() -> Self {
        let now = unix_now();
        let spec = PlatformSpec::default().with_collateral_validity(Validity {
            not_before: now - 3600,
            not_after: now + 86_400,
        });
        let tdx = Arc::new(TestPlatform::new(&spec));
        let tdx_collateral = tdx.collateral_tdx().to_dcap_qvl_json().into_bytes();
        let tcb = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 14,
            microcode: 209,
            fmc: None,
        };
        let amd = TestAmd::with_vek_validity("Milan", [0xc1; 64], tcb, now - 3600, now + 86_400);
        Self {
            tdx,
            tdx_collateral,
            amd,
        }
    }

    fn tdx(&self, report_data: &[u8; 64], mr_td: [u8; 48]) -> Envelope {
        let report = TdReportSpec {
            mr_td,
            report_data: *report_data,
            ..TdReportSpec::default()
        };
        let mut envelope = Envelope::new(Kind::Tdx, self.tdx.tdx_quote(&report, 4));
        envelope.collateral = Some(self.tdx_collateral.clone());
        envelope
    }

    fn snp(&self, report_data: &[u8; 64], measurement: [u8; 48]) -> Envelope {
        let report = self.amd.report(&ReportSpec {
            report_data: *report_data,
            measurement,
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
}

/// Adds the `workload.spiffe.io: true` header, as every Workload API client must.
#[derive(Clone, Copy)]
struct WorkloadHeader;

impl tonic::service::Interceptor for WorkloadHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(
            twid_proto::WORKLOAD_API_HEADER,
            MetadataValue::from_static("true"),
        );
        Ok(request)
    }
}

type Client = WorkloadAttestationClient<InterceptedService<Channel, WorkloadHeader>>;

/// A server with `tdx` and `snp` evidence attestors, a join-token agent, one entry per
/// platform parented to the agent, and a workload client on the agent's socket.
struct Deployment {
    _dir: TempDir,
    _server: ServerHandle,
    agent: AgentHandle,
    client: Client,
    bundle: SpiffeBundle,
    admin_socket: String,
}

impl Deployment {
    async fn start(platforms: &Platforms) -> Self {
        let dir = TempDir::new();
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut config = ServerConfig::new_dev(trust_domain.clone(), &dir.path().join("server"));
        let attestors = [
            (
                "tdx",
                Kind::Tdx,
                platforms.tdx.root_der(),
                vec![MR_TD.to_vec()],
            ),
            (
                "snp",
                Kind::Snp,
                platforms.amd.ark_der().to_vec(),
                vec![SNP_MEASUREMENT.to_vec(), SNP_UNREGISTERED.to_vec()],
            ),
        ];
        for (name, kind, root_der, measurements) in attestors {
            let root = dir.path().join(format!("{name}-root.pem"));
            std::fs::write(&root, pem(&root_der)).unwrap();
            config.evidence_attestors.push(EvidenceAttestorConfig {
                name: name.to_owned(),
                kind,
                trusted_roots: vec![root],
                collateral_dir: None,
                vek_chain_path: None,
                pcs_url: None,
                kds_url: None,
                policy: Policy {
                    allowed_measurements: measurements,
                    ..Policy::default()
                },
            });
        }
        let server = Server::start(config).await.expect("server should start");
        let admin_socket = server.admin_socket().to_str().unwrap().to_owned();

        let token = run_ok(&["token", "generate", "--socket-path", &admin_socket]);
        let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();
        let address = server.node_api_address();
        let mut agent_config = AgentConfig::new_dev(
            trust_domain.clone(),
            address.ip().to_string(),
            address.port(),
            &dir.path().join("agent"),
            dir.path().join("agent.sock"),
        );
        agent_config.insecure_bootstrap = true;
        agent_config.join_token = Some(token);
        let mut options = AgentOptions::default();
        options.sync_interval = Some(Duration::from_millis(500));
        let agent = Agent::start(agent_config, options)
            .await
            .expect("agent should attest with its join token");
        let agent_id = agent.agent_id().to_string();
        assert!(
            agent_id.contains("/spire/agent/join_token/"),
            "the agent must not be a TEE: {agent_id}"
        );

        for (spiffe_id, selector) in [
            (TDX_ID, format!("tdx:mrtd:{}", hex::encode(MR_TD))),
            (
                SNP_ID,
                format!("snp:measurement:{}", hex::encode(SNP_MEASUREMENT)),
            ),
        ] {
            run_ok(&[
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--parent-id",
                &agent_id,
                "--selector",
                &selector,
                "--socket-path",
                &admin_socket,
            ]);
        }

        let bundle_json = run_ok(&[
            "bundle",
            "show",
            "--format",
            "spiffe",
            "--socket-path",
            &admin_socket,
        ]);
        let bundle = SpiffeBundle::parse(trust_domain, bundle_json.as_bytes()).unwrap();

        let channel = unix_channel(agent.socket_path()).await;
        let client = WorkloadAttestationClient::with_interceptor(channel, WorkloadHeader);
        Self {
            _dir: dir,
            _server: server,
            agent,
            client,
            bundle,
            admin_socket,
        }
    }

    /// Returns the first 1000 issuance log records as JSON objects.
    fn log_records(&self) -> Vec<Value> {
        let output = run_ok(&[
            "log",
            "show",
            "--from",
            "0",
            "--limit",
            "1000",
            "--output",
            "json",
            "--socket-path",
            &self.admin_socket,
        ]);
        let list: Value = serde_json::from_str(&output).unwrap();
        list["records"].as_array().unwrap().clone()
    }

    async fn nonce(&self) -> Vec<u8> {
        let response = self
            .client
            .clone()
            .get_nonce(GetNonceRequest {})
            .await
            .expect("GetNonce through the agent")
            .into_inner();
        assert_eq!(response.nonce.len(), 32);
        assert!(response.expires_at > unix_now());
        response.nonce
    }

    async fn attest(&self, request: AttestRequest) -> Result<AttestResponse, Status> {
        self.client
            .clone()
            .attest(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Checks the X.509-SVID and the WIT of a successful attestation of `key` as `spiffe_id`.
    fn check_credentials(
        &self,
        response: &AttestResponse,
        key: &PrivateKey,
        spiffe_id: &str,
        kind: Kind,
    ) {
        assert_eq!(response.spiffe_id, spiffe_id);
        assert!(!response.entry_id.is_empty());
        assert!(response.other_entry_ids.is_empty());
        assert_eq!(response.svid_chain.len(), 1);
        assert!(!response.bundle.is_empty());

        let leaf = &response.svid_chain[0];
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key.public_key_spki_der().as_slice(),
            "the SVID must certify the workload's key"
        );
        let mut x509_bundles = X509BundleSet::new();
        x509_bundles.insert(self.bundle.x509_bundle());
        let chain: Vec<CertificateDer<'_>> = response
            .svid_chain
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let verified_id =
            twid_spiffe::verify_x509_svid(&chain, &x509_bundles, SystemTime::now()).unwrap();
        assert_eq!(verified_id.as_str(), spiffe_id);
        for authority in &response.bundle {
            assert!(
                self.bundle
                    .x509_bundle()
                    .contains(&CertificateDer::from(authority.as_slice())),
                "the response bundle holds a CA the trust domain does not"
            );
        }

        let claims = AttestationClaims::from_certificate(leaf)
            .unwrap()
            .expect("the SVID must carry the attestation claims extension");
        assert_eq!(claims.kind, kind);
        let claims_json: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
        assert_eq!(claims.to_json().unwrap(), claims_json);

        let mut jwt_bundles = JwtBundleSet::new();
        jwt_bundles.insert(self.bundle.jwt_bundle());
        let issuer_keys = IssuerKeys::from_jwt_bundles(&jwt_bundles).unwrap();
        let validation = WitValidation {
            expected_issuer: Some(format!("spiffe://{TRUST_DOMAIN}/spire/server")),
            ..WitValidation::default()
        };
        let wit =
            twid_wimse::verify_wit(&response.wit, &issuer_keys, &validation, SystemTime::now())
                .expect("the WIT must verify with the trust domain's JWT keys");
        assert_eq!(wit.subject.as_str(), spiffe_id);
        let own_jwk = SigningKey::from_pkcs8(JwsAlgorithm::ES256, key.pkcs8_der())
            .unwrap()
            .public_jwk();
        assert!(
            wit.confirmation_key.same_key(&own_jwk),
            "cnf.jwk must be the workload's key"
        );
        assert_eq!(wit.confirmation_algorithm, JwsAlgorithm::ES256);
        assert_eq!(wit.claims[JWT_CLAIM], claims_json);
        assert!(wit.expiry <= response.expires_at);
    }
}

async fn unix_channel(path: &std::path::Path) -> Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn new_key() -> PrivateKey {
    PrivateKey::generate(KeyType::EcP256).unwrap()
}

/// Builds an Attest request for `key` whose evidence `make` produces for the report data of
/// `nonce` and `evidence_key`.
fn request(
    nonce: Vec<u8>,
    key: &PrivateKey,
    evidence_key: &PrivateKey,
    make: impl Fn(&[u8; 64]) -> Envelope,
) -> AttestRequest {
    let report_data = binding::report_data(&nonce, &evidence_key.public_key_spki_der());
    AttestRequest {
        nonce,
        evidence_envelope: make(&report_data).to_json(),
        public_key: key.public_key_spki_der(),
        csr: twid_ca::build_csr(key).unwrap(),
        skip_wit: false,
    }
}

/// Expects PermissionDenied with a message containing `needle`.
fn assert_denied(result: Result<AttestResponse, Status>, needle: &str) {
    match result {
        Ok(response) => panic!(
            "attested as {} with {} certificates, expected a rejection",
            response.spiffe_id,
            response.svid_chain.len()
        ),
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{}\nexpected: {needle}",
                status.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_workload_attests_through_agent() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let key = new_key();
    let nonce = deployment.nonce().await;
    let response = deployment
        .attest(request(nonce, &key, &key, |data| {
            platforms.tdx(data, MR_TD)
        }))
        .await
        .expect("TDX workload attestation");
    deployment.check_credentials(&response, &key, TDX_ID, Kind::Tdx);
    let claims: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
    assert_eq!(claims["measurements"]["mrtd"], hex::encode(MR_TD));
    deployment.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sync_skips_tee_entries() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let agent_id = deployment.agent.agent_id().to_string();
    run_ok(&[
        "entry",
        "create",
        "--spiffe-id",
        UNIX_ID,
        "--parent-id",
        &agent_id,
        "--selector",
        "unix:uid:4242",
        "--socket-path",
        &deployment.admin_socket,
    ]);

    // Once the agent's sync has signed the entry without evidence selectors, it has had its
    // chance to obtain the TEE entries too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = deployment.log_records();
        if records.iter().any(|record| record["spiffe_id"] == UNIX_ID) {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's sync signed no SVID for {UNIX_ID} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for tee_id in [TDX_ID, SNP_ID] {
        assert!(
            !records.iter().any(|record| record["spiffe_id"] == tee_id),
            "the agent obtained a credential for {tee_id}: {records:?}"
        );
    }

    // Direct attestation still issues the TDX identity.
    let key = new_key();
    let nonce = deployment.nonce().await;
    let response = deployment
        .attest(request(nonce, &key, &key, |data| {
            platforms.tdx(data, MR_TD)
        }))
        .await
        .expect("TDX workload attestation");
    deployment.check_credentials(&response, &key, TDX_ID, Kind::Tdx);
    let records = deployment.log_records();
    assert!(
        records
            .iter()
            .any(|record| record["spiffe_id"] == TDX_ID && record["kind"] == "x509"),
        "no X.509 record for {TDX_ID} after direct attestation: {records:?}"
    );
    deployment.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_workload_attests_through_agent() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let key = new_key();
    let nonce = deployment.nonce().await;
    let response = deployment
        .attest(request(nonce, &key, &key, |data| {
            platforms.snp(data, SNP_MEASUREMENT)
        }))
        .await
        .expect("SEV-SNP workload attestation");
    deployment.check_credentials(&response, &key, SNP_ID, Kind::Snp);
    let claims: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
    assert_eq!(
        claims["measurements"]["measurement"],
        hex::encode(SNP_MEASUREMENT)
    );

    // The same request without a WIT returns an SVID only.
    let nonce = deployment.nonce().await;
    let mut no_wit = request(nonce, &key, &key, |data| {
        platforms.snp(data, SNP_MEASUREMENT)
    });
    no_wit.skip_wit = true;
    let response = deployment
        .attest(no_wit)
        .await
        .expect("attestation without WIT");
    assert!(response.wit.is_empty());
    assert_eq!(response.svid_chain.len(), 1);
    deployment.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_attestation_rejects_bad_requests() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let key = new_key();

    // A flipped byte inside the signed quote breaks its signature.
    let nonce = deployment.nonce().await;
    let flipped = request(nonce, &key, &key, |data| {
        let mut envelope = platforms.tdx(data, MR_TD);
        envelope.evidence[200] ^= 0x01;
        envelope
    });
    assert_denied(deployment.attest(flipped).await, "signature");

    // Evidence bound to key A, sent with key B and B's CSR.
    let other_key = new_key();
    let nonce = deployment.nonce().await;
    let swapped = request(nonce, &other_key, &key, |data| platforms.tdx(data, MR_TD));
    assert_denied(deployment.attest(swapped).await, "binding");

    // A CSR for another key than public_key is malformed, not a binding failure.
    let nonce = deployment.nonce().await;
    let mut mismatched = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
    mismatched.csr = twid_ca::build_csr(&other_key).unwrap();
    let status = deployment.attest(mismatched).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A nonce works once.
    let nonce = deployment.nonce().await;
    let first = request(nonce.clone(), &key, &key, |data| platforms.tdx(data, MR_TD));
    deployment
        .attest(first)
        .await
        .expect("the first use of a nonce");
    let replay = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
    assert_denied(
        deployment.attest(replay).await,
        "nonce unknown, used, expired or issued to another agent; get a new one",
    );

    // The agent's socket requires the Workload API security header on this service too.
    let channel = unix_channel(deployment.agent.socket_path()).await;
    let status = WorkloadAttestationClient::new(channel)
        .get_nonce(GetNonceRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A nonce the server never issued.
    let forged = request(vec![0x42; 32], &key, &key, |data| {
        platforms.tdx(data, MR_TD)
    });
    assert_denied(deployment.attest(forged).await, "nonce unknown");

    // A measurement the policy does not allow.
    let nonce = deployment.nonce().await;
    let off_policy = request(nonce, &key, &key, |data| platforms.tdx(data, [0x11; 48]));
    assert_denied(deployment.attest(off_policy).await, "policy");

    // Evidence the policy allows but no entry selects.
    let nonce = deployment.nonce().await;
    let unregistered = request(nonce, &key, &key, |data| {
        platforms.snp(data, SNP_UNREGISTERED)
    });
    assert_denied(
        deployment.attest(unregistered).await,
        "no registration entry matches selectors [",
    );
    deployment.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nonce_rejected() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let key = new_key();
    let nonce = deployment.nonce().await;
    tokio::time::sleep(NONCE_TTL + Duration::from_secs(1)).await;
    let late = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
    assert_denied(
        deployment.attest(late).await,
        "nonce unknown, used, expired or issued to another agent; get a new one",
    );
    deployment.agent.shutdown().await;
}

/// A collector script for `twid attest workload`: it writes the report data to a file, waits
/// for the test to write the envelope that binds it, and prints that envelope.
const COLLECTOR_SCRIPT: &str = "#!/bin/sh\n\
printf %s \"$TWID_REPORT_DATA\" > \"$1/report_data.tmp\"\n\
mv \"$1/report_data.tmp\" \"$1/report_data\"\n\
while [ ! -f \"$1/envelope.json\" ]; do sleep 0.05; done\n\
cat \"$1/envelope.json\"\n";

/// Polls for `path` for up to 20 seconds and returns its contents.
async fn wait_for_file(path: &std::path::Path) -> String {
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_workload_command_writes_credentials() {
    use std::os::unix::fs::PermissionsExt as _;

    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let work = TempDir::new();
    let exchange = work.path().join("exchange");
    std::fs::create_dir(&exchange).unwrap();
    let script = work.path().join("collect.sh");
    std::fs::write(&script, COLLECTOR_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = |name: &str| work.path().join(name);

    let child = crate::common::twid()
        .args(["attest", "workload", "--socket"])
        .arg(deployment.agent.socket_path())
        .args(["--kind", "tdx", "--key-out"])
        .arg(out("svid.key"))
        .arg("--svid-out")
        .arg(out("svid.pem"))
        .arg("--bundle-out")
        .arg(out("bundle.pem"))
        .arg("--wit-out")
        .arg(out("wit.jwt"))
        .arg("--command")
        .arg(&script)
        .arg(&exchange)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Play the TEE: make evidence for the report data the command computed.
    let report_data = wait_for_file(&exchange.join("report_data")).await;
    let report_data: [u8; 64] = hex::decode(report_data.trim()).unwrap().try_into().unwrap();
    let envelope = platforms.tdx(&report_data, MR_TD);
    let temp = exchange.join("envelope.tmp");
    std::fs::write(&temp, envelope.to_json()).unwrap();
    std::fs::rename(&temp, exchange.join("envelope.json")).unwrap();

    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "twid attest workload failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["spiffe_id"], TDX_ID);
    assert_eq!(summary["attestation_claims"]["kind"], "tdx");

    let key_mode = std::fs::metadata(out("svid.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let wit_mode = std::fs::metadata(out("wit.jwt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(wit_mode, 0o600);
    let key_pem = std::fs::read(out("svid.key")).unwrap();
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .unwrap()
        .unwrap();
    let key = PrivateKey::from_pkcs8_der(key_der.secret_der()).unwrap();

    let svid_pem = std::fs::read(out("svid.pem")).unwrap();
    let chain: Vec<Vec<u8>> = rustls_pemfile::certs(&mut svid_pem.as_slice())
        .map(|cert| cert.unwrap().to_vec())
        .collect();
    let bundle_pem = std::fs::read(out("bundle.pem")).unwrap();
    let bundle: Vec<Vec<u8>> = rustls_pemfile::certs(&mut bundle_pem.as_slice())
        .map(|cert| cert.unwrap().to_vec())
        .collect();
    let wit = std::fs::read_to_string(out("wit.jwt")).unwrap();
    let response = AttestResponse {
        svid_chain: chain,
        bundle,
        wit,
        spiffe_id: TDX_ID.to_owned(),
        attestation_claims: serde_json::to_vec(&summary["attestation_claims"]).unwrap(),
        entry_id: summary["entry_id"].as_str().unwrap().to_owned(),
        other_entry_ids: Vec::new(),
        expires_at: summary["expires_at"].as_i64().unwrap(),
    };
    deployment.check_credentials(&response, &key, TDX_ID, Kind::Tdx);
    deployment.agent.shutdown().await;
}
