//! Node attestation with hardware evidence, with the server and agent in this process: the
//! test evidence generators stand in for SGX, TDX, SEV-SNP and Nitro hardware, and swtpm for
//! a TPM. The server trusts the generators' test roots through `trusted_roots` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use twid_agent::{Agent, AgentError, AgentHandle, AgentOptions};
use twid_attestation::node::evidence::{CollectError, Collector};
use twid_config::{AgentConfig, EvidenceAttestorConfig};
use twid_evidence::binding;
use twid_evidence::policy::Policy;
use twid_evidence::{Envelope, Kind};
use twid_evidence_testkit::dcap::{
    PlatformSpec, SgxReportSpec, TdReportSpec, TestPlatform, Validity,
};
use twid_evidence_testkit::nitro::{DocumentSpec, TestNitro};
use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::attest_agent_response::Step as ResponseStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{AttestAgentParams, AttestAgentRequest, AttestationData};
use twid_server::{Server, ServerHandle};
use twid_spiffe::TrustDomain;

use crate::common::{TRUST_DOMAIN, TempDir, run, run_ok, wait_until};

fn unix_now() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(seconds).unwrap()
}

fn own_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Makes evidence for given report data, as a TEE would.
type Generate = Arc<dyn Fn(&[u8; 64]) -> Envelope + Send + Sync>;

/// A collector that runs a generator and keeps the last envelope it returned.
struct TestCollector {
    kind: Kind,
    generate: Generate,
    last: Mutex<Option<Envelope>>,
}

impl TestCollector {
    fn new(kind: Kind, generate: Generate) -> Arc<Self> {
        Arc::new(Self {
            kind,
            generate,
            last: Mutex::new(None),
        })
    }
}

impl std::fmt::Debug for TestCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCollector")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Collector for TestCollector {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError> {
        let envelope = (self.generate)(report_data);
        *self.last.lock().unwrap() = Some(envelope.clone());
        Ok(envelope)
    }
}

/// One simulated platform kind: how to make good, debug and off-policy evidence, and what the
/// server should derive from it.
struct Platform {
    attestor: &'static str,
    kind: Kind,
    /// The test root certificate (DER) that `trusted_roots` names.
    root_der: Vec<u8>,
    /// A DCAP collateral cache folder, for the attestor that reads one.
    collateral_dir: Option<PathBuf>,
    /// The allowed measurement in the server's policy.
    measurement: Vec<u8>,
    /// The last path segment of the agent ID.
    stable_id: String,
    /// Node selectors the agent must get, among others.
    selectors: Vec<String>,
    good: Generate,
    debug: Generate,
    other_measurement: Generate,
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

/// DCAP collateral valid for a day around the real clock, which the server verifies at.
fn current_spec(spec: PlatformSpec) -> PlatformSpec {
    let now = unix_now();
    spec.with_collateral_validity(Validity {
        not_before: now - 3600,
        not_after: now + 86_400,
    })
}

fn sgx_platform(dir: &Path) -> Platform {
    sgx_platform_with(dir, None)
}

/// SGX quotes whose collateral the server reads from its cache folder. `collateral` overrides
/// the validity of the cached TCB info, QE identity and CRLs.
fn sgx_platform_with(dir: &Path, collateral: Option<Validity>) -> Platform {
    let mut spec = current_spec(PlatformSpec::sgx());
    if let Some(validity) = collateral {
        spec = spec.with_collateral_validity(validity);
    }
    let platform = Arc::new(TestPlatform::new(&spec));
    let cache = dir.join("pcs");
    let folder = cache.join(hex::encode_upper(spec.fmspc));
    std::fs::create_dir_all(&folder).unwrap();
    platform.write_pcs_folder(&folder, false).unwrap();
    let root_der = platform.root_der();
    let mr_enclave = [0x5e; 32];
    let make = move |mr_enclave: [u8; 32], debug: bool| -> Generate {
        let platform = Arc::clone(&platform);
        Arc::new(move |report_data: &[u8; 64]| {
            let mut report = SgxReportSpec {
                mr_enclave,
                mr_signer: [0x51; 32],
                isv_prod_id: 1,
                isv_svn: 2,
                report_data: *report_data,
                ..SgxReportSpec::default()
            };
            report.set_debug(debug);
            Envelope::new(Kind::SgxDcap, platform.sgx_quote(&report))
        })
    };
    Platform {
        attestor: "sgx_dcap",
        kind: Kind::SgxDcap,
        root_der,
        collateral_dir: Some(cache),
        measurement: mr_enclave.to_vec(),
        stable_id: hex::encode(mr_enclave),
        selectors: vec![
            format!("sgx:mrenclave:{}", hex::encode(mr_enclave)),
            format!("sgx:mrsigner:{}", hex::encode([0x51; 32])),
            "sgx:tcb_status:UpToDate".to_owned(),
        ],
        good: make(mr_enclave, false),
        debug: make(mr_enclave, true),
        other_measurement: make([0x77; 32], false),
    }
}

/// TDX quotes that carry their collateral in the envelope. `collateral` sets the collateral's
/// validity, to test collateral that has expired at the server's clock.
fn tdx_platform_with(collateral: Validity) -> Platform {
    let spec = PlatformSpec::default().with_collateral_validity(collateral);
    let platform = Arc::new(TestPlatform::new(&spec));
    let root_der = platform.root_der();
    let collateral = platform.collateral_tdx().to_dcap_qvl_json().into_bytes();
    let mr_td = [0x7d; 48];
    let make = move |mr_td: [u8; 48], debug: bool| -> Generate {
        let platform = Arc::clone(&platform);
        let collateral = collateral.clone();
        Arc::new(move |report_data: &[u8; 64]| {
            let mut report = TdReportSpec {
                mr_td,
                report_data: *report_data,
                ..TdReportSpec::default()
            };
            report.set_debug(debug);
            let mut envelope = Envelope::new(Kind::Tdx, platform.tdx_quote(&report, 4));
            envelope.collateral = Some(collateral.clone());
            envelope
        })
    };
    Platform {
        attestor: "tdx",
        kind: Kind::Tdx,
        root_der,
        collateral_dir: None,
        measurement: mr_td.to_vec(),
        stable_id: hex::encode(mr_td),
        selectors: vec![
            format!("tdx:mrtd:{}", hex::encode(mr_td)),
            "tdx:tcb_status:UpToDate".to_owned(),
        ],
        good: make(mr_td, false),
        debug: make(mr_td, true),
        other_measurement: make([0x11; 48], false),
    }
}

fn tdx_platform() -> Platform {
    let now = unix_now();
    tdx_platform_with(Validity {
        not_before: now - 3600,
        not_after: now + 86_400,
    })
}

/// The REPORT_ID of the default SEV-SNP guest.
const SNP_REPORT_ID: [u8; 32] = [0x5b; 32];

/// SEV-SNP reports signed by a VCEK valid from `vek_validity.0` to `vek_validity.1`.
fn snp_platform_with(vek_validity: (i64, i64)) -> Platform {
    snp_guests(vek_validity, &[SNP_REPORT_ID]).remove(0)
}

/// SEV-SNP guests on one chip with one image, one per REPORT_ID, as the firmware launches
/// them. All share the chip's VCEK, valid from `vek_validity.0` to `vek_validity.1`.
fn snp_guests(vek_validity: (i64, i64), report_ids: &[[u8; 32]]) -> Vec<Platform> {
    let chip_id = [0xc1; 64];
    let tcb = SnpTcb {
        bootloader: 3,
        tee: 0,
        snp: 14,
        microcode: 209,
        fmc: None,
    };
    let amd = Arc::new(TestAmd::with_vek_validity(
        "Milan",
        chip_id,
        tcb,
        vek_validity.0,
        vek_validity.1,
    ));
    let root_der = amd.ark_der().to_vec();
    let measurement = [0x3a; 48];
    let make = move |report_id: [u8; 32], measurement: [u8; 48], debug: bool| -> Generate {
        let amd = Arc::clone(&amd);
        Arc::new(move |report_data: &[u8; 64]| {
            // Policy bit 19 allows debugging the guest.
            let policy = if debug { 0x30000 | (1 << 19) } else { 0x30000 };
            let report = amd.report(&ReportSpec {
                report_data: *report_data,
                measurement,
                policy,
                report_id,
                ..ReportSpec::default()
            });
            let mut envelope = Envelope::new(Kind::Snp, report);
            envelope.certificates = vec![
                amd.vcek_der().to_vec(),
                amd.ask_der().to_vec(),
                amd.ark_der().to_vec(),
            ];
            envelope
        })
    };
    report_ids
        .iter()
        .map(|report_id| Platform {
            attestor: "snp",
            kind: Kind::Snp,
            root_der: root_der.clone(),
            collateral_dir: None,
            measurement: measurement.to_vec(),
            stable_id: hex::encode(report_id),
            selectors: vec![
                format!("snp:measurement:{}", hex::encode(measurement)),
                format!("snp:chip_id:{}", hex::encode(chip_id)),
            ],
            good: make(*report_id, measurement, false),
            debug: make(*report_id, measurement, true),
            other_measurement: make(*report_id, [0x99; 48], false),
        })
        .collect()
}

fn snp_platform() -> Platform {
    let now = unix_now();
    snp_platform_with((now - 3600, now + 86_400 * 365))
}

/// Nitro documents with `user_data` as the binding; a debug enclave has an all-zero PCR0.
fn nitro_platform() -> Platform {
    let now = unix_now();
    nitro_platform_with(now - 60, now + 3 * 3600)
}

/// Nitro documents signed by a leaf certificate valid from `not_before` to `not_after`.
fn nitro_platform_with(not_before: i64, not_after: i64) -> Platform {
    let nitro = Arc::new(TestNitro::with_leaf_validity(not_before, not_after));
    let root_der = nitro.root_der().to_vec();
    let pcr0 = vec![0x0e; 48];
    let make = move |pcr0: Vec<u8>| -> Generate {
        let nitro = Arc::clone(&nitro);
        Arc::new(move |report_data: &[u8; 64]| nitro_envelope(&nitro, &pcr0, report_data))
    };
    Platform {
        attestor: "nitro",
        kind: Kind::Nitro,
        root_der,
        collateral_dir: None,
        measurement: pcr0.clone(),
        stable_id: DocumentSpec::default().module_id,
        selectors: vec![format!("nitro:pcr0:{}", hex::encode(&pcr0))],
        good: make(pcr0),
        debug: make(vec![0; 48]),
        other_measurement: make(vec![0x44; 48]),
    }
}

/// Makes a Nitro document with `report_data` as `user_data`, `pcr0` and the current time.
fn nitro_envelope(nitro: &TestNitro, pcr0: &[u8], report_data: &[u8; 64]) -> Envelope {
    let mut spec = DocumentSpec {
        user_data: Some(report_data.to_vec()),
        timestamp_ms: u64::try_from(unix_now()).unwrap() * 1000,
        ..DocumentSpec::default()
    };
    spec.pcrs.insert(0, pcr0.to_vec());
    Envelope::new(Kind::Nitro, nitro.document(&spec))
}

/// A server with one evidence attestor for a platform, whose policy allows only the
/// platform's measurement.
struct Deployment {
    dir: TempDir,
    server: ServerHandle,
    attestor: &'static str,
}

impl Deployment {
    async fn start(platform: &Platform) -> Self {
        Self::start_with_roots(platform, &[]).await
    }

    /// Starts a server whose attestor trusts `extra_roots` (DER) besides the platform's root.
    async fn start_with_roots(platform: &Platform, extra_roots: &[&[u8]]) -> Self {
        let dir = TempDir::new();
        let mut roots = Vec::new();
        for (index, der) in std::iter::once(platform.root_der.as_slice())
            .chain(extra_roots.iter().copied())
            .enumerate()
        {
            let root = dir
                .path()
                .join(format!("{}-root-{index}.pem", platform.attestor));
            std::fs::write(&root, pem(der)).unwrap();
            roots.push(root);
        }
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut config = dir.dev_server_config(trust_domain);
        config.evidence_attestors.push(EvidenceAttestorConfig {
            name: platform.attestor.to_owned(),
            kind: platform.kind,
            trusted_roots: roots,
            collateral_dir: platform.collateral_dir.clone(),
            vek_chain_path: None,
            pcs_url: None,
            kds_url: None,
            policy: Policy {
                allowed_measurements: vec![platform.measurement.clone()],
                ..Policy::default()
            },
        });
        let server = Server::start(config).await.expect("server should start");
        Self {
            dir,
            server,
            attestor: platform.attestor,
        }
    }

    fn admin_socket(&self) -> &str {
        self.server.admin_socket().to_str().unwrap()
    }

    fn agent_id(&self, stable_id: &str) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/spire/agent/{}/{stable_id}",
            self.attestor
        )
    }

    /// Returns the attested agents as the admin API lists them.
    fn agents(&self) -> serde_json::Value {
        let out = run_ok(&[
            "agent",
            "list",
            "--output",
            "json",
            "--socket-path",
            self.admin_socket(),
        ]);
        serde_json::from_str(&out).unwrap()
    }

    fn agent_count(&self) -> usize {
        self.agents()["agents"].as_array().map_or(0, Vec::len)
    }

    fn evict(&self, agent_id: &str) {
        run_ok(&[
            "agent",
            "evict",
            "--spiffe-id",
            agent_id,
            "--socket-path",
            self.admin_socket(),
        ]);
    }

    fn create_entry(&self, spiffe_id: &str, parent_id: &str, selector: &str) {
        run_ok(&[
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            parent_id,
            "--selector",
            selector,
            "--socket-path",
            self.admin_socket(),
        ]);
    }

    async fn start_agent(
        &self,
        name: &str,
        collector: Arc<dyn Collector>,
    ) -> Result<AgentHandle, AgentError> {
        let data_dir = self.dir.path().join(name);
        let address = self.server.node_api_address();
        let mut config = AgentConfig::new_dev(
            TrustDomain::new(TRUST_DOMAIN).unwrap(),
            address.ip().to_string(),
            address.port(),
            &data_dir,
            self.dir.path().join(format!("{name}.sock")),
        );
        config.insecure_bootstrap = true;
        let mut options = AgentOptions::default();
        options.sync_interval = Some(Duration::from_millis(500));
        options.collector = Some(collector);
        Agent::start(config, options).await
    }

    /// Opens an AttestAgent stream as an agent would, with a CSR for `key`, and returns the
    /// server's nonce with the open stream.
    async fn challenge(&self, key: &rcgen::KeyPair) -> (Vec<u8>, AttestStream) {
        let address = self.server.node_api_address();
        let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
        let tls =
            twid_tls::insecure_client_config(None, twid_tls::Authorizer::Exact(server_id)).unwrap();
        let channel =
            twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
        let mut client = NodeClient::new(channel);

        let csr = rcgen::CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .der()
            .to_vec();

        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let params = AttestAgentParams {
            data: Some(AttestationData {
                r#type: self.attestor.to_owned(),
                payload: Vec::new(),
            }),
            csr,
        };
        sender
            .send(AttestAgentRequest {
                step: Some(RequestStep::Params(params)),
            })
            .await
            .unwrap();

        let mut responses = client
            .attest_agent(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        let Some(ResponseStep::Challenge(nonce)) = first.step else {
            panic!("expected a challenge, got {first:?}");
        };
        (nonce, AttestStream { sender, responses })
    }
}

/// An AttestAgent stream after the challenge.
struct AttestStream {
    sender: tokio::sync::mpsc::Sender<AttestAgentRequest>,
    responses: tonic::Streaming<twid_proto::node::AttestAgentResponse>,
}

impl AttestStream {
    /// Sends `envelope` as the challenge response and returns the agent ID the server issued.
    async fn answer(mut self, envelope: &Envelope) -> Result<String, tonic::Status> {
        self.sender
            .send(AttestAgentRequest {
                step: Some(RequestStep::ChallengeResponse(envelope.to_json())),
            })
            .await
            .unwrap();
        let response = self.responses.message().await?.unwrap();
        match response.step {
            Some(ResponseStep::Result(svid)) => Ok(svid.spiffe_id),
            other => panic!("expected a result, got {other:?}"),
        }
    }
}

fn spki(key: &rcgen::KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData as _;
    key.subject_public_key_info()
}

fn new_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// Fetches this process's X.509-SVIDs from the agent and returns their SPIFFE IDs.
fn fetch_ids(agent: &AgentHandle) -> Vec<String> {
    let output = run(&[
        "api",
        "fetch",
        "x509",
        "--output",
        "json",
        "--timeout",
        "2s",
        "--socket-path",
        agent.socket_path().to_str().unwrap(),
    ]);
    if !output.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["svids"]
        .as_array()
        .map(|svids| {
            svids
                .iter()
                .filter_map(|svid| svid["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Expects the agent start to fail with PermissionDenied and a message containing `needle`.
fn assert_rejected(result: Result<AgentHandle, AgentError>, needle: &str) {
    match result {
        Ok(agent) => panic!("agent {} attested, expected a rejection", agent.agent_id()),
        Err(AgentError::Attestation { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains(needle), "{message}\nexpected: {needle}");
        }
        Err(other) => panic!("expected an attestation error, got {other}"),
    }
}

/// Attests an agent on `platform` and checks its ID, selectors and workload SVIDs (directly
/// and through a node alias). Then checks that replayed evidence, evidence bound to another
/// key, an unlisted measurement and debug evidence are rejected and leave the agent records
/// unchanged.
async fn attest_end_to_end(platform: Platform) {
    let deployment = Deployment::start(&platform).await;
    let agent_id = deployment.agent_id(&platform.stable_id);
    let uid = format!("unix:uid:{}", own_uid());
    let direct = format!("spiffe://{TRUST_DOMAIN}/{}/direct", platform.attestor);
    let alias = format!("spiffe://{TRUST_DOMAIN}/{}/node", platform.attestor);
    let via_alias = format!("spiffe://{TRUST_DOMAIN}/{}/via-alias", platform.attestor);
    let server_id = format!("spiffe://{TRUST_DOMAIN}/spire/server");
    deployment.create_entry(&direct, &agent_id, &uid);
    deployment.create_entry(&alias, &server_id, &platform.selectors[0]);
    deployment.create_entry(&via_alias, &alias, &uid);

    let collector = TestCollector::new(platform.kind, Arc::clone(&platform.good));
    let agent = deployment
        .start_agent("agent", collector.clone())
        .await
        .expect("the agent should attest");
    assert_eq!(agent.agent_id().to_string(), agent_id);
    let agents = deployment.agents();
    let record = &agents["agents"][0];
    assert_eq!(record["spiffe_id"], agent_id.as_str());
    assert_eq!(record["attestation_type"], platform.attestor);
    let selectors: Vec<&str> = record["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|selector| selector.as_str())
        .collect();
    for expected in &platform.selectors {
        assert!(
            selectors.contains(&expected.as_str()),
            "selector {expected} missing from {selectors:?}"
        );
    }
    // The agent SVID carries the attestation result as a non-critical extension.
    let svid_der = std::fs::read(deployment.dir.path().join("agent").join("agent_svid.der"))
        .expect("the agent stores its SVID");
    let claims = twid_evidence::svid_claims::AttestationClaims::from_certificate(&svid_der)
        .expect("a well-formed attestation extension")
        .expect("the agent SVID has an attestation extension");
    assert_eq!(claims.kind, platform.kind);
    assert!(!claims.measurements.is_empty(), "{claims:?}");

    wait_until(Duration::from_secs(20), "both workload SVIDs", || {
        let ids = fetch_ids(&agent);
        ids.contains(&direct) && ids.contains(&via_alias)
    });
    agent.shutdown().await;

    // Evidence from the first attestation, sent in response to a new challenge, so its nonce
    // is old.
    let recorded = collector.last.lock().unwrap().clone().unwrap();
    let key = new_key();
    let (_, stream) = deployment.challenge(&key).await;
    let status = stream.answer(&recorded).await.expect_err("replay");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("binding"), "{}", status.message());

    // Evidence for this challenge, but bound to another key than the CSR's.
    let (nonce, stream) = deployment.challenge(&key).await;
    let other_key = new_key();
    let envelope = (platform.good)(&binding::report_data(&nonce, &spki(&other_key)));
    let status = stream.answer(&envelope).await.expect_err("other key");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("binding"), "{}", status.message());

    // Evidence with the CSR's key passes the binding, but the agent above is still the holder of the ID
    // with an unexpired SVID, and this caller presents no SVID.
    let (nonce, stream) = deployment.challenge(&key).await;
    let envelope = (platform.good)(&binding::report_data(&nonce, &spki(&key)));
    let status = stream.answer(&envelope).await.expect_err("held ID");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("is held by another agent"),
        "{}",
        status.message()
    );

    // After the eviction the same exchange succeeds, so the attempts above failed on the
    // binding and the holder alone.
    deployment.evict(&agent_id);
    let (nonce, stream) = deployment.challenge(&key).await;
    let envelope = (platform.good)(&binding::report_data(&nonce, &spki(&key)));
    let spiffe_id = stream.answer(&envelope).await.expect("matching key");
    assert_eq!(spiffe_id, agent_id);
    assert_eq!(deployment.agent_count(), 1);
    let records = deployment.agents();

    let off_policy = TestCollector::new(platform.kind, Arc::clone(&platform.other_measurement));
    let result = deployment.start_agent("off-policy", off_policy).await;
    assert_rejected(result, "allowed_measurements");

    let debug = TestCollector::new(platform.kind, Arc::clone(&platform.debug));
    let result = deployment.start_agent("debug", debug).await;
    assert_rejected(result, "debug");

    assert_eq!(
        deployment.agents(),
        records,
        "a rejected attestation changed the agent records"
    );
    deployment.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sgx_dcap_node_attestation() {
    let dir = TempDir::new();
    attest_end_to_end(sgx_platform(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_node_attestation() {
    attest_end_to_end(tdx_platform()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_node_attestation() {
    attest_end_to_end(snp_platform()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nitro_node_attestation() {
    attest_end_to_end(nitro_platform()).await;
}

/// Expects evidence whose certificates or collateral are not valid at the server's clock to be
/// rejected as expired, with no agent record.
async fn assert_expired_rejected(platform: Platform) {
    let deployment = Deployment::start(&platform).await;
    let collector = TestCollector::new(platform.kind, Arc::clone(&platform.good));
    let result = deployment.start_agent("expired", collector).await;
    assert_rejected(result, "expired");
    assert_eq!(deployment.agent_count(), 0);
    deployment.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_endorsements_rejected() {
    let now = unix_now();
    let old_collateral = Validity {
        not_before: now - 7 * 86_400,
        not_after: now - 3600,
    };
    assert_expired_rejected(tdx_platform_with(old_collateral)).await;
    let dir = TempDir::new();
    assert_expired_rejected(sgx_platform_with(dir.path(), Some(old_collateral))).await;
    assert_expired_rejected(snp_platform_with((now - 30 * 86_400, now - 60))).await;
    assert_expired_rejected(nitro_platform_with(now - 7200, now - 60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_kind_evidence_rejected() {
    let deployment = Deployment::start(&tdx_platform()).await;
    let snp = snp_platform();
    // The collector claims TDX but produces SEV-SNP evidence.
    let collector = TestCollector::new(Kind::Tdx, Arc::clone(&snp.good));
    let result = deployment.start_agent("wrong-kind", collector).await;
    assert_rejected(result, "accepts tdx evidence");
    assert_eq!(deployment.agent_count(), 0);
    deployment.server.shutdown().await;
}

/// swtpm on loopback ports, killed when dropped.
struct Swtpm {
    child: std::process::Child,
    tcti: String,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn swtpm_tools_found() -> bool {
    [
        "swtpm",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_evictcontrol",
        "tpm2_flushcontext",
        "tpm2_quote",
    ]
    .iter()
    .all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    })
}

/// Starts swtpm with its state in `state`. The swtpm TCTI takes the control channel on the
/// port after the server port, so both must be free.
fn start_swtpm(state: &Path) -> Swtpm {
    let port = (0..50)
        .map(|_| crate::common::free_port())
        .find(|port| {
            *port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        })
        .expect("two adjacent free ports");
    let child = std::process::Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let swtpm = Swtpm {
        child,
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
    };
    wait_until(Duration::from_secs(10), "swtpm to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    swtpm
}

fn tpm_tool(tcti: &str, dir: &Path, program: &str, arguments: &[&str]) {
    let output = std::process::Command::new(program)
        .arg("--tcti")
        .arg(tcti)
        .args(arguments)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates an EK and an ECDSA AK and persists the AK at `handle`. swtpm has no resource
/// manager, so transient objects are flushed after each step.
fn provision_tpm_ak(tcti: &str, dir: &Path, handle: &str) {
    let flush = || {
        for kind in ["-t", "-s", "-l"] {
            tpm_tool(tcti, dir, "tpm2_flushcontext", &[kind]);
        }
    };
    tpm_tool(tcti, dir, "tpm2_createek", &["-c", "ek.ctx", "-G", "rsa"]);
    flush();
    tpm_tool(
        tcti,
        dir,
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
        ],
    );
    flush();
    tpm_tool(
        tcti,
        dir,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "ak.ctx", handle],
    );
    flush();
}

/// Starts a server with a `tpm` attestor that enrolls `allowed_ak_sha256`.
async fn tpm_deployment(allowed_ak_sha256: Vec<[u8; 32]>) -> Deployment {
    tpm_deployment_with_pcrs(allowed_ak_sha256, BTreeMap::new()).await
}

async fn tpm_deployment_with_pcrs(
    allowed_ak_sha256: Vec<[u8; 32]>,
    pcrs: BTreeMap<u8, Vec<u8>>,
) -> Deployment {
    let dir = TempDir::new();
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut config = dir.dev_server_config(trust_domain);
    config.evidence_attestors.push(EvidenceAttestorConfig {
        name: "tpm".to_owned(),
        kind: Kind::Tpm,
        trusted_roots: Vec::new(),
        collateral_dir: None,
        vek_chain_path: None,
        pcs_url: None,
        kds_url: None,
        policy: Policy {
            allowed_ak_sha256,
            pcrs,
            ..Policy::default()
        },
    });
    let server = Server::start(config).await.expect("server should start");
    Deployment {
        dir,
        server,
        attestor: "tpm",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_node_attestation_swtpm() {
    use twid_attestation::node::evidence::tpm::{TpmCollector, TpmSettings};

    if !swtpm_tools_found() {
        println!("swtpm or tpm2-tools not found; skipping the TPM node attestation test");
        return;
    }
    let work = TempDir::new();
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let swtpm = start_swtpm(&state);
    let handle = "0x81010002";
    provision_tpm_ak(&swtpm.tcti, work.path(), handle);
    let collector = Arc::new(TpmCollector::new(TpmSettings {
        tcti: swtpm.tcti.clone(),
        ak_handle_or_context: handle.to_owned(),
        ..TpmSettings::default()
    }));

    // Enrolment: the operator verifies one quote and records its AK digest.
    let enrolment = collector.collect(&[0; 64]).unwrap();
    let verified = twid_evidence::tpm::verify_json(&enrolment.evidence, None, unix_now()).unwrap();
    let twid_evidence::Claims::Tpm(claims) = &verified.claims else {
        panic!("expected TPM claims");
    };
    let ak_sha256 = claims.ak_sha256;

    // Without the AK enrolled, the server rejects the TPM.
    let deployment = tpm_deployment(Vec::new()).await;
    let result = deployment
        .start_agent("unenrolled", collector.clone())
        .await;
    assert_rejected(result, "allowed_ak_sha256");
    assert_eq!(deployment.agent_count(), 0);
    deployment.server.shutdown().await;

    let deployment = tpm_deployment(vec![ak_sha256]).await;
    let agent_id = deployment.agent_id(&hex::encode(ak_sha256));
    let uid = format!("unix:uid:{}", own_uid());
    let workload = format!("spiffe://{TRUST_DOMAIN}/tpm/workload");
    deployment.create_entry(&workload, &agent_id, &uid);
    let agent = deployment
        .start_agent("agent", collector.clone())
        .await
        .expect("the agent should attest with its TPM");
    assert_eq!(agent.agent_id().to_string(), agent_id);
    let agents = deployment.agents();
    let selectors = agents["agents"][0]["selectors"].to_string();
    let ak_selector = format!("tpm:ak:{}", hex::encode(ak_sha256));
    assert!(selectors.contains(&ak_selector), "{selectors}");
    assert!(selectors.contains("tpm:pcr:7:"), "{selectors}");
    wait_until(Duration::from_secs(20), "the workload SVID", || {
        fetch_ids(&agent).contains(&workload)
    });
    agent.shutdown().await;

    // A quote made for other report data (here the enrolment quote) fails the binding, so an
    // old quote cannot respond to a new challenge.
    let records = deployment.agents();
    let key = new_key();
    let (_, stream) = deployment.challenge(&key).await;
    let status = stream.answer(&enrolment).await.expect_err("replay");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("binding"), "{}", status.message());
    assert_eq!(deployment.agents(), records);
    deployment.server.shutdown().await;

    // A PCR value outside the policy is rejected and creates no agent.
    let mut wrong_pcrs = BTreeMap::new();
    wrong_pcrs.insert(7, vec![0xee; 32]);
    let deployment = tpm_deployment_with_pcrs(vec![ak_sha256], wrong_pcrs).await;
    let result = deployment
        .start_agent("off-policy", collector.clone())
        .await;
    assert_rejected(result, "PCR");
    assert_eq!(deployment.agent_count(), 0);
    deployment.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_ends_with_collateral() {
    let now = unix_now();
    let collateral_end = now + 600;
    let platform = tdx_platform_with(Validity {
        not_before: now - 3600,
        not_after: collateral_end,
    });
    let deployment = Deployment::start(&platform).await;
    let collector = TestCollector::new(platform.kind, Arc::clone(&platform.good));
    let agent = deployment
        .start_agent("agent", collector)
        .await
        .expect("the agent should attest");
    let agents = deployment.agents();
    let expires_at = agents["agents"][0]["x509_svid_expires_at"]
        .as_i64()
        .unwrap();
    // The default agent SVID lifetime is an hour; the collateral ends in ten minutes.
    assert!(
        expires_at <= collateral_end,
        "{expires_at} > {collateral_end}"
    );
    assert!(expires_at >= collateral_end - 5, "{expires_at}");
    agent.shutdown().await;
    deployment.server.shutdown().await;
}

/// Returns the agent record's SVID serial and expiry, for the only agent of `deployment`.
fn agent_svid(deployment: &Deployment) -> (String, i64) {
    let agents = deployment.agents();
    let record = &agents["agents"][0];
    let serial = record["x509_svid_serial"].as_str().unwrap().to_owned();
    let expires_at = record["x509_svid_expires_at"].as_i64().unwrap();
    (serial, expires_at)
}

/// A Nitro agent whose first document's leaf certificate ends 20 s after the start attests
/// again with a fresh document before its SVID expires. A workload gets its SVID before and
/// after, the agent stays ready past the first SVID's expiry, and a restart re-uses the stored
/// new SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nitro_agent_reattests_before_expiry() {
    let now = unix_now();
    let leaf_end = now + 20;
    let short_lived = Arc::new(TestNitro::with_leaf_validity(now - 60, leaf_end));
    let fresh = Arc::new(TestNitro::with_leaf_validity(now - 60, now + 3 * 3600));
    let mut platform = nitro_platform();
    platform.root_der = short_lived.root_der().to_vec();
    let deployment = Deployment::start_with_roots(&platform, &[fresh.root_der()]).await;

    // The first collection uses the short-lived leaf and every later one the fresh leaf, as a
    // Nitro host hands out new leaf certificates over time.
    let collections = Arc::new(AtomicUsize::new(0));
    let generate: Generate = {
        let collections = Arc::clone(&collections);
        let pcr0 = platform.measurement.clone();
        Arc::new(move |report_data: &[u8; 64]| {
            let nitro = if collections.fetch_add(1, Ordering::SeqCst) == 0 {
                &short_lived
            } else {
                &fresh
            };
            nitro_envelope(nitro, &pcr0, report_data)
        })
    };
    let collector = TestCollector::new(Kind::Nitro, generate);
    let agent = deployment
        .start_agent("agent", collector.clone())
        .await
        .expect("the agent should attest");
    let agent_id = deployment.agent_id(&platform.stable_id);
    assert_eq!(agent.agent_id().to_string(), agent_id);
    let workload = format!("spiffe://{TRUST_DOMAIN}/nitro/reattest");
    deployment.create_entry(&workload, &agent_id, &format!("unix:uid:{}", own_uid()));

    let (first_serial, first_expiry) = agent_svid(&deployment);
    assert!(first_expiry <= leaf_end, "{first_expiry} > {leaf_end}");
    wait_until(Duration::from_secs(10), "the workload SVID before", || {
        fetch_ids(&agent).contains(&workload)
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (second_serial, second_expiry) = loop {
        let current = agent_svid(&deployment);
        if current.0 != first_serial {
            break current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not re-attest within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        unix_now() < first_expiry,
        "the re-attestation finished only after the first SVID expired"
    );
    // The fresh leaf lasts three hours, so the server's one-hour agent SVID lifetime decides.
    assert!(
        second_expiry > leaf_end + 600,
        "the new SVID ends at {second_expiry}, still bound by the short-lived leaf"
    );
    assert_eq!(deployment.agent_count(), 1);
    assert_eq!(collections.load(Ordering::SeqCst), 2);

    // Past the first SVID's expiry the agent still syncs and serves the workload.
    let wait = u64::try_from(first_expiry + 2 - unix_now()).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    wait_until(Duration::from_secs(10), "the workload SVID after", || {
        fetch_ids(&agent).contains(&workload)
    });
    let health = agent.health();
    assert!(health.is_ready(), "not ready: {:?}", health.reason());
    assert_eq!(agent_svid(&deployment).0, second_serial);
    agent.shutdown().await;

    // The new SVID and key were stored, so a restart re-uses them without collecting evidence.
    let restarted = deployment
        .start_agent("agent", collector)
        .await
        .expect("the agent should restart");
    restarted
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync after the restart");
    assert!(restarted.health().is_ready());
    assert_eq!(agent_svid(&deployment).0, second_serial);
    assert_eq!(collections.load(Ordering::SeqCst), 2);
    restarted.shutdown().await;
    deployment.server.shutdown().await;
}

/// Two agents with the same TDX measurement get the same agent ID. The second is rejected
/// while the first is the holder of the ID, the first keeps syncing, and after the first is evicted the
/// second attests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_evidence_cannot_evict_holder() {
    let platform = tdx_platform();
    let deployment = Deployment::start(&platform).await;
    let agent_id = deployment.agent_id(&platform.stable_id);
    let uid = format!("unix:uid:{}", own_uid());
    let before = format!("spiffe://{TRUST_DOMAIN}/tdx/before");
    deployment.create_entry(&before, &agent_id, &uid);

    let first = deployment
        .start_agent(
            "first",
            TestCollector::new(platform.kind, Arc::clone(&platform.good)),
        )
        .await
        .expect("the first agent should attest");
    assert_eq!(first.agent_id().to_string(), agent_id);
    wait_until(
        Duration::from_secs(20),
        "the first agent's workload SVID",
        || fetch_ids(&first).contains(&before),
    );
    let (holder_serial, _) = agent_svid(&deployment);

    let second = TestCollector::new(platform.kind, Arc::clone(&platform.good));
    let result = deployment.start_agent("second", second.clone()).await;
    let Err(AgentError::Attestation { code, message }) = result else {
        panic!("expected an attestation error, got {result:?}");
    };
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    let held = format!("agent ID {agent_id} is held by another agent whose SVID is valid until");
    assert!(message.contains(&held), "{message}");
    assert!(message.contains("twid agent evict"), "{message}");
    assert_eq!(agent_svid(&deployment).0, holder_serial);
    assert_eq!(deployment.agent_count(), 1);

    // An entry created after the rejection reaches the first agent only through a sync that
    // the server accepted, so its SVID still works.
    let after = format!("spiffe://{TRUST_DOMAIN}/tdx/after");
    deployment.create_entry(&after, &agent_id, &uid);
    wait_until(
        Duration::from_secs(20),
        "the first agent's new workload SVID",
        || fetch_ids(&first).contains(&after),
    );
    assert!(first.health().is_ready(), "{:?}", first.health().reason());
    assert_eq!(agent_svid(&deployment).0, holder_serial);

    // The first agent stops before the eviction, or it would attest again at once.
    first.shutdown().await;
    deployment.evict(&agent_id);
    let second = deployment
        .start_agent("second", second)
        .await
        .expect("the second agent should attest after the eviction");
    assert_eq!(second.agent_id().to_string(), agent_id);
    assert_ne!(agent_svid(&deployment).0, holder_serial);
    wait_until(
        Duration::from_secs(20),
        "the second agent's workload SVID",
        || fetch_ids(&second).contains(&after),
    );
    second.shutdown().await;
    deployment.server.shutdown().await;
}

/// Two SEV-SNP guests with one image on one chip differ in their REPORT_ID, so each gets its
/// own agent ID and both attest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_guests_get_distinct_ids() {
    let now = unix_now();
    let guests = snp_guests((now - 3600, now + 86_400 * 365), &[[0x1a; 32], [0x2b; 32]]);
    let deployment = Deployment::start(&guests[0]).await;
    let mut agents = Vec::new();
    for (index, guest) in guests.iter().enumerate() {
        let collector = TestCollector::new(guest.kind, Arc::clone(&guest.good));
        let agent = deployment
            .start_agent(&format!("guest-{index}"), collector)
            .await
            .expect("each guest should attest");
        assert_eq!(
            agent.agent_id().to_string(),
            deployment.agent_id(&guest.stable_id)
        );
        agents.push(agent);
    }
    assert_ne!(guests[0].stable_id, guests[1].stable_id);
    assert_eq!(deployment.agent_count(), 2);
    for agent in agents {
        agent.shutdown().await;
    }
    deployment.server.shutdown().await;
}
