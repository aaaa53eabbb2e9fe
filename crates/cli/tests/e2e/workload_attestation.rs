//! Direct workload attestation with the server and agent in this process. The agent attests
//! with a join token, so it is no TEE itself, and only relays. The workload calls the
//! WorkloadAttestation service on the agent's socket with evidence from the test generators,
//! which stand in for TDX and SEV-SNP hardware, bound to the server's nonce and its own key.
//! A second agent in one test attests itself with TDX evidence, to check its SVID's lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use twid_agent::{Agent, AgentHandle, AgentOptions};
use twid_attestation::node::evidence::{CollectError, Collector};
use twid_ca::{KeyType, PrivateKey};
use twid_config::{AgentConfig, EvidenceAttestorConfig, JwtIssuerConfig};
use twid_evidence::policy::Policy;
use twid_evidence::svid_claims::{AttestationClaims, JWT_CLAIM};
use twid_evidence::{Envelope, Kind, binding};
use twid_evidence_testkit::dcap::{PlatformSpec, TdReportSpec, TestPlatform, Validity};
use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};
use twid_proto::workload_attestation::workload_attestation_client::WorkloadAttestationClient;
use twid_proto::workload_attestation::{AttestRequest, AttestResponse, GetNonceRequest};
use twid_server::{Server, ServerHandle};
use twid_spiffe::{JwtBundleSet, JwtSvid, SpiffeBundle, TrustDomain, X509BundleSet};
use twid_wimse::{IssuerKeys, JwsAlgorithm, SigningKey, WitValidation};

use crate::common::{TRUST_DOMAIN, TempDir, python, repo_root, run_ok};

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

/// The audiences of the JWT-SVIDs that workloads request.
const AUDIENCES: [&str; 2] = ["relying-party", "audit"];

/// The audience of the server's named JWT issuer, which signs with its own key.
const ISSUER_AUDIENCE: &str = "sts.example.org";

/// The `max_evidence_age` of the TDX policy in the tests of lifetime caps.
const MAX_EVIDENCE_AGE: Duration = Duration::from_secs(120);

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
    dir: TempDir,
    server: ServerHandle,
    agent: AgentHandle,
    client: Client,
    bundle: SpiffeBundle,
    /// The trust bundle in the SPIFFE bundle JSON format, with the JWT keys.
    bundle_json: String,
    admin_socket: String,
}

impl Deployment {
    async fn start(platforms: &Platforms) -> Self {
        Self::start_with(platforms, None).await
    }

    /// Starts the deployment with `tdx_max_evidence_age` as the `max_evidence_age` of the TDX
    /// attestor's policy. The SEV-SNP policy sets none.
    async fn start_with(platforms: &Platforms, tdx_max_evidence_age: Option<Duration>) -> Self {
        let dir = TempDir::new();
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut config = dir.dev_server_config(trust_domain.clone());
        config.jwt_issuers = vec![JwtIssuerConfig {
            name: "cloud".to_owned(),
            issuer: "https://issuer.example.org".to_owned(),
            key_file: None,
            audience: vec![ISSUER_AUDIENCE.to_owned()],
            ttl: None,
        }];
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
                    max_evidence_age: tdx_max_evidence_age.filter(|_| kind == Kind::Tdx),
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
            dir,
            server,
            agent,
            client,
            bundle,
            bundle_json,
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

    /// Checks the JWT-SVID of a successful attestation as `spiffe_id`. twid-spiffe and then
    /// PyJWT verify it with the trust domain's JWT keys and check `aud`, `sub` and `exp`. Its
    /// attestation claim must equal `claims` and the claims that `twid svid inspect` prints for
    /// the X.509-SVID. Returns the token's claims.
    fn check_jwt_svid(
        &self,
        response: &AttestResponse,
        spiffe_id: &str,
        audiences: &[&str],
        claims: &Value,
    ) -> serde_json::Map<String, Value> {
        assert!(!response.jwt_svid.is_empty(), "no JWT-SVID in the response");
        let mut jwt_bundles = JwtBundleSet::new();
        jwt_bundles.insert(self.bundle.jwt_bundle());
        for audience in audiences {
            let svid = JwtSvid::parse_and_validate(
                &response.jwt_svid,
                &jwt_bundles,
                &[audience],
                SystemTime::now(),
            )
            .unwrap_or_else(|error| panic!("the JWT-SVID for {audience} must verify: {error}"));
            assert_eq!(svid.spiffe_id.as_str(), spiffe_id);
        }
        let svid = JwtSvid::parse_insecure(&response.jwt_svid).unwrap();
        assert_eq!(svid.audience, audiences);
        assert_eq!(svid.expiry, response.jwt_svid_expires_at);
        assert!(
            svid.expiry <= response.expires_at,
            "outlives the X.509-SVID"
        );
        assert!(svid.expiry > unix_now());
        assert_eq!(&svid.claims[JWT_CLAIM], claims);
        let jti = svid.claims["jti"]
            .as_str()
            .expect("the JWT-SVID needs a jti");
        assert!(!jti.is_empty());

        // `twid svid inspect` decodes the X.509 extension into the same claims.
        let work = TempDir::new();
        let leaf_path = work.path().join("svid.pem");
        std::fs::write(&leaf_path, pem(&response.svid_chain[0])).unwrap();
        let inspected = run_ok(&[
            "svid",
            "inspect",
            leaf_path.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let inspected: Value = serde_json::from_str(&inspected).unwrap();
        let mut x509_claims = inspected["attestation"]
            .as_object()
            .expect("svid inspect must print the attestation claims")
            .clone();
        x509_claims.retain(|name, _| !name.ends_with("_rfc3339"));
        let x509_claims = Value::Object(x509_claims);
        assert_eq!(&x509_claims, claims);

        let jwt_path = work.path().join("jwt_svid.token");
        std::fs::write(&jwt_path, &response.jwt_svid).unwrap();
        let bundle_path = work.path().join("bundle.json");
        std::fs::write(&bundle_path, &self.bundle_json).unwrap();
        let claims_path = work.path().join("claims.json");
        std::fs::write(&claims_path, x509_claims.to_string()).unwrap();
        if let Some(python) = python() {
            let output = std::process::Command::new(python)
                .arg(repo_root().join("tests/python/attested_jwt_check.py"))
                .arg(&jwt_path)
                .arg(&bundle_path)
                .arg(audiences[0])
                .arg(spiffe_id)
                .arg(response.expires_at.to_string())
                .arg(&claims_path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "attested_jwt_check.py failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let checked: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(checked["jti"], jti);
        }
        svid.claims
    }

    /// Returns the issuance record of `kind` whose `jti` (JWT-SVID, WIT) or `serial` (X.509)
    /// is `id`.
    fn log_record(&self, kind: &str, id: &str) -> Value {
        let field = if kind == "x509" { "serial" } else { "jti" };
        self.log_records()
            .into_iter()
            .find(|record| record["kind"] == kind && record[field] == id)
            .unwrap_or_else(|| panic!("no {kind} record with {field} {id} in the issuance log"))
    }

    /// Starts an agent that attests itself with TDX evidence of `mr_td` from `platforms`.
    /// `collections` counts the evidence it collects.
    async fn start_tdx_agent(
        &self,
        platforms: &Platforms,
        mr_td: [u8; 48],
        collections: Arc<AtomicUsize>,
    ) -> AgentHandle {
        let address = self.server.node_api_address();
        let mut config = AgentConfig::new_dev(
            TrustDomain::new(TRUST_DOMAIN).unwrap(),
            address.ip().to_string(),
            address.port(),
            &self.dir.path().join("tdx-agent"),
            self.dir.path().join("tdx-agent.sock"),
        );
        config.insecure_bootstrap = true;
        let mut options = AgentOptions::default();
        options.sync_interval = Some(Duration::from_millis(500));
        options.collector = Some(Arc::new(TdxCollector {
            platform: Arc::clone(&platforms.tdx),
            collateral: platforms.tdx_collateral.clone(),
            mr_td,
            collections,
        }));
        Agent::start(config, options)
            .await
            .expect("the agent should attest with TDX evidence")
    }

    /// Returns the `agent list` record of `agent_id`.
    fn agent_record(&self, agent_id: &str) -> Value {
        let output = run_ok(&[
            "agent",
            "list",
            "--output",
            "json",
            "--socket-path",
            &self.admin_socket,
        ]);
        let list: Value = serde_json::from_str(&output).unwrap();
        list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|agent| agent["spiffe_id"] == agent_id)
            .unwrap_or_else(|| panic!("agent {agent_id} is not listed: {list}"))
            .clone()
    }
}

/// A node evidence collector that makes TDX evidence as a TD would.
struct TdxCollector {
    platform: Arc<TestPlatform>,
    /// The TDX collateral in dcap-qvl's JSON layout, sent inside each envelope.
    collateral: Vec<u8>,
    mr_td: [u8; 48],
    /// The number of envelopes collected so far.
    collections: Arc<AtomicUsize>,
}

impl std::fmt::Debug for TdxCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TdxCollector")
    }
}

impl Collector for TdxCollector {
    fn kind(&self) -> Kind {
        Kind::Tdx
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        self.collections.fetch_add(1, Ordering::SeqCst);
        let report = TdReportSpec {
            mr_td: self.mr_td,
            report_data: *report_data,
            ..TdReportSpec::default()
        };
        let mut envelope = Envelope::new(Kind::Tdx, self.platform.tdx_quote(&report, 4));
        envelope.collateral = Some(self.collateral.clone());
        Ok(envelope)
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
        jwt_audiences: Vec::new(),
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

/// Returns the `exp` claim of a compact JWT without verifying it.
fn token_expiry(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    claims["exp"].as_i64().unwrap()
}

/// Returns the notAfter of a DER certificate in Unix seconds.
fn not_after(der: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_workloads_get_jwt_svids() {
    let platforms = Platforms::new();
    let deployment = Deployment::start(&platforms).await;
    let audiences: Vec<String> = AUDIENCES.iter().map(ToString::to_string).collect();
    for (spiffe_id, kind) in [(TDX_ID, Kind::Tdx), (SNP_ID, Kind::Snp)] {
        let key = new_key();
        let nonce = deployment.nonce().await;
        let mut attest = request(nonce, &key, &key, |data| {
            if kind == Kind::Tdx {
                platforms.tdx(data, MR_TD)
            } else {
                platforms.snp(data, SNP_MEASUREMENT)
            }
        });
        attest.jwt_audiences.clone_from(&audiences);
        let response = deployment
            .attest(attest)
            .await
            .unwrap_or_else(|status| panic!("{kind} attestation with audiences: {status:?}"));
        deployment.check_credentials(&response, &key, spiffe_id, kind);
        let claims: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
        let token_claims = deployment.check_jwt_svid(&response, spiffe_id, &AUDIENCES, &claims);

        // The issuance log names the JWT-SVID by its jti, with the evidence and the result.
        let jti = token_claims["jti"].as_str().unwrap();
        let record = deployment.log_record("jwt", jti);
        assert_eq!(record["spiffe_id"], spiffe_id);
        assert_eq!(record["entry_id"], response.entry_id.as_str());
        assert_eq!(
            record["agent_id"],
            deployment.agent.agent_id().to_string().as_str()
        );
        assert_eq!(record["evidence_digest"], claims["evidence_sha256"]);
        assert_eq!(record["attestation_result"], claims);
    }

    // Without audiences there is no JWT-SVID.
    let key = new_key();
    let nonce = deployment.nonce().await;
    let response = deployment
        .attest(request(nonce, &key, &key, |data| {
            platforms.tdx(data, MR_TD)
        }))
        .await
        .expect("TDX workload attestation without audiences");
    assert!(response.jwt_svid.is_empty());
    assert_eq!(response.jwt_svid_expires_at, 0);

    // An empty audience is a malformed request.
    let nonce = deployment.nonce().await;
    let mut empty = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
    empty.jwt_audiences = vec![AUDIENCES[0].to_owned(), String::new()];
    let status = deployment.attest(empty).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("no empty one"), "{status:?}");

    // Duplicate, too many and too long audiences are malformed too.
    let too_many: Vec<String> = (0..33).map(|n| format!("aud-{n}")).collect();
    let cases = [
        (
            vec![AUDIENCES[0].to_owned(), AUDIENCES[0].to_owned()],
            "twice",
        ),
        (too_many, "at most 32"),
        (vec!["a".repeat(513)], "at most 512"),
    ];
    for (audiences, expected) in cases {
        let nonce = deployment.nonce().await;
        let mut bad = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
        bad.jwt_audiences = audiences;
        let status = deployment.attest(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }

    // A named issuer's audience, alone or beside another, needs that issuer's key.
    for audiences in [vec![ISSUER_AUDIENCE], vec![AUDIENCES[0], ISSUER_AUDIENCE]] {
        let nonce = deployment.nonce().await;
        let mut named = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
        named.jwt_audiences = audiences.iter().map(ToString::to_string).collect();
        let status = deployment.attest(named).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{audiences:?}: {status:?}"
        );
        assert!(
            status.message().contains("\"cloud\""),
            "{audiences:?}: {status:?}"
        );
    }
    deployment.agent.shutdown().await;
}

/// With `max_evidence_age = 2m` on the TDX policy, every credential issued on TDX evidence ends
/// within two minutes of the attestation time, although the default TTLs are longer. SEV-SNP
/// credentials from the same server, whose policy sets no maximum age, keep the default TTLs.
/// The test sets the key in code, because the `tdx` configuration block does not accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_age_caps_credential_lifetimes() {
    let platforms = Platforms::new();
    let deployment = Deployment::start_with(&platforms, Some(MAX_EVIDENCE_AGE)).await;
    let max_age = i64::try_from(MAX_EVIDENCE_AGE.as_secs()).unwrap();
    let audiences: Vec<String> = AUDIENCES.iter().map(ToString::to_string).collect();

    let key = new_key();
    let nonce = deployment.nonce().await;
    let mut attest = request(nonce, &key, &key, |data| platforms.tdx(data, MR_TD));
    attest.jwt_audiences.clone_from(&audiences);
    let response = deployment.attest(attest).await.expect("TDX attestation");
    deployment.check_credentials(&response, &key, TDX_ID, Kind::Tdx);
    let claims: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
    deployment.check_jwt_svid(&response, TDX_ID, &AUDIENCES, &claims);
    let attested_at = claims["attested_at"].as_i64().unwrap();
    let cap = attested_at + max_age;
    let lifetimes = [
        ("X.509-SVID", not_after(&response.svid_chain[0])),
        ("WIT", token_expiry(&response.wit)),
        ("JWT-SVID", token_expiry(&response.jwt_svid)),
    ];
    for (credential, expiry) in lifetimes {
        assert!(
            expiry <= cap,
            "the {credential} expires at {expiry}, after attested_at {attested_at} + {max_age}"
        );
    }
    // The cap decides: the X.509-SVID ends at the cap, not earlier for another reason.
    assert_eq!(not_after(&response.svid_chain[0]), cap);
    assert_eq!(response.expires_at, cap);

    // The same server's SEV-SNP policy has no maximum age, so the default TTLs apply: an hour
    // for the X.509-SVID and the WIT, five minutes for the JWT-SVID.
    let nonce = deployment.nonce().await;
    let mut attest = request(nonce, &key, &key, |data| {
        platforms.snp(data, SNP_MEASUREMENT)
    });
    attest.jwt_audiences.clone_from(&audiences);
    let uncapped = deployment
        .attest(attest)
        .await
        .expect("SEV-SNP attestation");
    let snp_claims: Value = serde_json::from_slice(&uncapped.attestation_claims).unwrap();
    let snp_cap = snp_claims["attested_at"].as_i64().unwrap() + max_age;
    let defaults = [
        ("X.509-SVID", not_after(&uncapped.svid_chain[0]), 3600),
        ("WIT", token_expiry(&uncapped.wit), 3600),
        ("JWT-SVID", token_expiry(&uncapped.jwt_svid), 300),
    ];
    for (credential, expiry, ttl) in defaults {
        let attested_at = snp_claims["attested_at"].as_i64().unwrap();
        assert!(
            expiry > snp_cap,
            "the uncapped {credential} expires at {expiry}, within {max_age} s"
        );
        assert_eq!(expiry, attested_at + ttl, "the uncapped {credential}");
    }
    deployment.agent.shutdown().await;
}

/// An agent attested with TDX evidence under `max_evidence_age = 2m` gets an SVID that ends two
/// minutes after its attestation, while the join-token agent keeps the default hour. Past half
/// of that lifetime the agent attests again with fresh evidence, and its new SVID is capped from
/// the new attestation time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_age_caps_agent_svid() {
    let platforms = Platforms::new();
    let deployment = Deployment::start_with(&platforms, Some(MAX_EVIDENCE_AGE)).await;
    let max_age = i64::try_from(MAX_EVIDENCE_AGE.as_secs()).unwrap();
    let collections = Arc::new(AtomicUsize::new(0));
    let tdx_agent = deployment
        .start_tdx_agent(&platforms, MR_TD, Arc::clone(&collections))
        .await;
    let agent_id = tdx_agent.agent_id().to_string();
    assert_eq!(
        agent_id,
        format!(
            "spiffe://{TRUST_DOMAIN}/spire/agent/tdx/{}",
            hex::encode(MR_TD)
        )
    );

    let record = deployment.agent_record(&agent_id);
    let first_serial = record["x509_svid_serial"].as_str().unwrap().to_owned();
    let first_attested_at = record["attested_at"].as_i64().unwrap();
    let first_expiry = record["x509_svid_expires_at"].as_i64().unwrap();
    assert_eq!(
        first_expiry,
        first_attested_at + max_age,
        "the evidence agent's SVID must end max_evidence_age after its attestation"
    );
    assert_eq!(collections.load(Ordering::SeqCst), 1);

    let join_token_agent = deployment.agent.agent_id().to_string();
    let record = deployment.agent_record(&join_token_agent);
    let attested_at = record["attested_at"].as_i64().unwrap();
    let expires_at = record["x509_svid_expires_at"].as_i64().unwrap();
    // The join-token path reads the clock separately for the SVID and the record.
    assert!(
        (attested_at + 3595..=attested_at + 3600).contains(&expires_at),
        "the join-token agent's SVID ends at {expires_at}, attested at {attested_at}"
    );

    // The agent gets a new SVID only by attesting again with fresh evidence, before the first
    // one expires.
    let deadline = tokio::time::Instant::now() + MAX_EVIDENCE_AGE;
    let record = loop {
        let record = deployment.agent_record(&agent_id);
        if record["x509_svid_serial"] != first_serial.as_str() {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TDX agent did not attest again within {max_age} s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(collections.load(Ordering::SeqCst), 2, "no fresh evidence");
    let attested_at = record["attested_at"].as_i64().unwrap();
    let expires_at = record["x509_svid_expires_at"].as_i64().unwrap();
    assert!(attested_at > first_attested_at, "{record}");
    assert!(
        attested_at < first_expiry,
        "attested again after expiry: {record}"
    );
    assert_eq!(expires_at, attested_at + max_age, "the new SVID: {record}");
    tdx_agent.shutdown().await;
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
        .args(["--audience", AUDIENCES[0], "--audience", AUDIENCES[1]])
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
    // The JWT-SVID goes beside the SVID under its default name.
    let jwt_path = out("jwt_svid.token");
    assert_eq!(summary["jwt_svid_path"], jwt_path.display().to_string());
    let jwt_mode = std::fs::metadata(&jwt_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(jwt_mode, 0o600);
    let jwt_svid = std::fs::read_to_string(&jwt_path).unwrap();
    let response = AttestResponse {
        svid_chain: chain,
        bundle,
        wit,
        spiffe_id: TDX_ID.to_owned(),
        attestation_claims: serde_json::to_vec(&summary["attestation_claims"]).unwrap(),
        entry_id: summary["entry_id"].as_str().unwrap().to_owned(),
        other_entry_ids: Vec::new(),
        expires_at: summary["expires_at"].as_i64().unwrap(),
        jwt_svid,
        jwt_svid_expires_at: summary["jwt_svid_expires_at"].as_i64().unwrap(),
    };
    deployment.check_credentials(&response, &key, TDX_ID, Kind::Tdx);
    let claims: Value = serde_json::from_slice(&response.attestation_claims).unwrap();
    deployment.check_jwt_svid(&response, TDX_ID, &AUDIENCES, &claims);

    // SPIFFE validators outside twid accept the SVID with its attestation extension: rustls
    // in a mutual TLS handshake where the workload is both client and server, openssl and
    // py-spiffe.
    let certs: Vec<CertificateDer<'static>> = response
        .svid_chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let trust = twid_tls::TrustSource::empty();
    trust.set(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        response
            .bundle
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect(),
    );
    let key_pkcs8 = key_der.secret_der().to_vec();
    assert!(
        crate::workload::mtls::handshake(
            (certs.clone(), key_pkcs8.clone()),
            (certs, key_pkcs8),
            trust,
            twid_spiffe::SpiffeId::new(TDX_ID).unwrap(),
        )
        .await,
        "rustls mutual TLS with the attested SVID failed"
    );
    let openssl = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out("bundle.pem"))
        .arg(out("svid.pem"))
        .output()
        .unwrap();
    assert!(
        openssl.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&openssl.stdout),
        String::from_utf8_lossy(&openssl.stderr)
    );
    if let Some(python) = python() {
        let checked = std::process::Command::new(python)
            .arg(repo_root().join("tests/python/attested_svid_check.py"))
            .arg(out("svid.pem"))
            .arg(out("svid.key"))
            .arg(out("bundle.pem"))
            .arg(TDX_ID)
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "py-spiffe check failed: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    deployment.agent.shutdown().await;
}
