//! The start sequence, persistence, renewal, rotation and reconnection against the in-process
//! node API server of [`crate::test_support`].

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::watch;
use twid_proto::types::{Entry, Selector};
use twid_proto::workload::X509svidRequest;

use super::*;
use crate::settings::BundleFormat;
use crate::settings::tests::test_settings;
use crate::test_support::{FakeNode, with_header, workload_client};

const LONG: Duration = Duration::from_secs(3600);

fn own_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("numeric effective uid")
}

struct Setup {
    dir: tempfile::TempDir,
    node: Arc<FakeNode>,
    address: SocketAddr,
    stop_server: watch::Sender<bool>,
}

impl Setup {
    async fn new(tokens: &[&str], agent_ttl: Duration, svid_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = FakeNode::new(tokens, agent_ttl, svid_ttl);
        let entry = Entry {
            id: "e1".to_owned(),
            spiffe_id: "spiffe://example.org/workload".to_owned(),
            parent_id: "spiffe://example.org/spire/agent/join_token/any".to_owned(),
            selectors: vec![Selector {
                r#type: "unix".to_owned(),
                value: format!("uid:{}", own_euid()),
            }],
            revision_number: 1,
            created_at: 1,
            ..Entry::default()
        };
        node.entries.lock().expect("entries").push(entry);
        std::fs::write(dir.path().join("bundle.pem"), node.ca_pem()).expect("bundle file");
        let (stop_server, stopped) = watch::channel(false);
        let address = node
            .serve("127.0.0.1:0".parse().expect("address"), stopped)
            .await;
        Self {
            dir,
            node,
            address,
            stop_server,
        }
    }

    fn settings(&self, join_token: Option<&str>) -> AgentSettings {
        let mut settings = test_settings(self.dir.path(), self.address.port());
        settings.trust_bundle = Some((self.dir.path().join("bundle.pem"), BundleFormat::Pem));
        settings.join_token = join_token.map(str::to_owned);
        settings.sync_interval = Duration::from_millis(200);
        settings
    }

    async fn start(&self, join_token: Option<&str>) -> Result<AgentHandle, AgentError> {
        Agent::start_with(self.settings(join_token)).await
    }

    async fn restart_server(&mut self) {
        let (stop_server, stopped) = watch::channel(false);
        self.stop_server = stop_server;
        self.node.serve(self.address, stopped).await;
    }
}

/// Polls `condition` every 50 ms until it is true or `timeout` passes.
async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

#[tokio::test]
async fn attests_serves_and_restarts_without_token() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = setup.start(Some("good")).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    assert!(agent.health().is_ready());
    assert_eq!(
        agent.agent_id().as_str(),
        "spiffe://example.org/spire/agent/join_token/good"
    );
    let key_mode = std::fs::metadata(setup.dir.path().join("data/agent_svid.key"))
        .expect("stored key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let stored_bundle =
        std::fs::read(setup.dir.path().join("data/bundle.der")).expect("stored bundle");
    assert_eq!(stored_bundle, setup.node.ca_der());

    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/workload");
    assert_eq!(first.svids[0].bundle, setup.node.ca_der());
    drop(stream);
    let socket = agent.socket_path().to_owned();
    agent.shutdown().await;
    assert!(!socket.exists());

    let again = setup
        .start(None)
        .await
        .expect("restart needs no join token");
    again
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync after restart");
    assert_eq!(setup.node.state().attestations, 1);
    again.shutdown().await;
}

#[tokio::test]
async fn used_token_fails_start_with_server_message() {
    let setup = Setup::new(&[], LONG, LONG).await;
    let error = setup
        .start(Some("spent"))
        .await
        .expect_err("attestation must fail");
    let AgentError::Attestation { code, message } = &error else {
        panic!("unexpected error: {error}");
    };
    assert_eq!(*code, tonic::Code::PermissionDenied);
    assert!(message.contains("already been used"), "{message}");
    assert!(!setup.dir.path().join("agent.sock").exists());
    assert!(!setup.dir.path().join("data/agent_svid.der").exists());
}

#[tokio::test]
async fn no_token_and_no_state_fails() {
    let setup = Setup::new(&[], LONG, LONG).await;
    let error = setup.start(None).await.expect_err("nothing to attest with");
    assert!(matches!(error, AgentError::MissingJoinToken), "{error}");
}

#[tokio::test]
async fn no_bootstrap_trust_fails() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let mut settings = setup.settings(Some("good"));
    settings.trust_bundle = None;
    let error = Agent::start_with(settings)
        .await
        .expect_err("no way to trust the server");
    assert!(matches!(error, AgentError::NoBootstrapTrust), "{error}");
    assert_eq!(setup.node.state().attestations, 0);
}

#[tokio::test]
async fn insecure_bootstrap_attests_without_bundle() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let mut settings = setup.settings(Some("good"));
    settings.trust_bundle = None;
    settings.insecure_bootstrap = true;
    let agent = Agent::start_with(settings).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    agent.shutdown().await;
}

#[tokio::test]
async fn evicted_agent_attests_again_only_with_new_token() {
    let setup = Setup::new(&["first", "second"], LONG, LONG).await;
    let agent = setup.start(Some("first")).await.expect("agent starts");
    agent.shutdown().await;
    setup.node.state().agents.clear();

    let error = setup
        .start(None)
        .await
        .expect_err("evicted agent without token");
    assert!(matches!(error, AgentError::Rejected { .. }), "{error}");

    let agent = setup
        .start(Some("second"))
        .await
        .expect("attests again with the new token");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    assert_eq!(
        agent.agent_id().as_str(),
        "spiffe://example.org/spire/agent/join_token/second"
    );
    assert_eq!(setup.node.state().attestations, 2);
    agent.shutdown().await;
}

#[tokio::test]
async fn renews_agent_svid_and_keeps_syncing() {
    let setup = Setup::new(&["good"], Duration::from_secs(4), LONG).await;
    let agent = setup.start(Some("good")).await.expect("agent starts");
    let node = Arc::clone(&setup.node);
    assert!(
        eventually(Duration::from_secs(10), || node.state().renewals >= 1).await,
        "the agent SVID was not renewed"
    );
    let syncs_after_renewal = node.state().syncs;
    // The server accepts only the renewed certificate from now on, so syncs succeed only if
    // the agent reconnected with it. With its Watch stream open the agent does not poll, so
    // the rounds that follow are the ones the reopened stream's hint and the next renewal
    // start.
    assert!(
        eventually(Duration::from_secs(5), || node.state().syncs
            > syncs_after_renewal)
        .await,
        "syncing stopped after the renewal"
    );
    assert!(agent.health().is_ready());

    let stored = std::fs::read(setup.dir.path().join("data/agent_svid.der")).expect("stored SVID");
    let stored_serial = {
        let (_, cert) = x509_parser::parse_x509_certificate(&stored).expect("certificate");
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let current = node
        .state()
        .agents
        .get(agent.agent_id().as_str())
        .cloned()
        .expect("agent record");
    assert_eq!(stored_serial, current);
    agent.shutdown().await;
}

#[tokio::test]
async fn rotates_workload_svid_at_half_life() {
    let setup = Setup::new(&["good"], LONG, Duration::from_secs(4)).await;
    let agent = setup.start(Some("good")).await.expect("agent starts");
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    let second = tokio::time::timeout(Duration::from_secs(8), stream.next())
        .await
        .expect("a rotated SVID within 8s")
        .expect("message")
        .expect("ok");
    assert_eq!(second.svids[0].spiffe_id, first.svids[0].spiffe_id);
    assert_ne!(second.svids[0].x509_svid, first.svids[0].x509_svid);
    assert_ne!(second.svids[0].x509_svid_key, first.svids[0].x509_svid_key);

    // An open stream must not hold up the shutdown, and it ends with Unavailable.
    let started = Instant::now();
    agent.shutdown().await;
    assert!(
        started.elapsed() < SHUTDOWN_GRACE,
        "{:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends");
    let code = match ended {
        Some(Err(status)) => Some(status.code()),
        Some(Ok(_)) | None => None,
    };
    assert_eq!(code, Some(tonic::Code::Unavailable));
}

#[tokio::test]
async fn foreign_stored_svid_is_rejected() {
    let setup = Setup::new(&[], LONG, LONG).await;
    let mut settings = setup.settings(None);
    crate::state::create_private_dir(&settings.data_dir).expect("data dir");
    crate::state::save(&settings.data_dir, &crate::state::tests::test_state()).expect("save");
    settings.trust_domain = twid_spiffe::TrustDomain::new("other.test").expect("trust domain");
    let error = Agent::start_with(settings)
        .await
        .expect_err("foreign stored SVID");
    assert!(
        error
            .to_string()
            .contains("not in the configured trust domain"),
        "{error}"
    );
}

#[tokio::test]
async fn serves_cache_while_server_is_down_and_recovers() {
    let mut setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = setup.start(Some("good")).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    setup.stop_server.send(true).expect("server running");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens while the server is down")
        .into_inner();
    let cached = stream.next().await.expect("message").expect("ok");
    assert_eq!(cached.svids[0].spiffe_id, "spiffe://example.org/workload");
    assert!(agent.health().is_ready());

    let syncs_before = setup.node.state().syncs;
    setup.restart_server().await;
    let node = Arc::clone(&setup.node);
    // The backoff after about 1.5 s of failures is at most 4 s.
    assert!(
        eventually(Duration::from_secs(10), || node.state().syncs
            > syncs_before)
        .await,
        "the agent did not sync again after the server came back"
    );
    drop(stream);
    agent.shutdown().await;
}

/// A collector whose evidence is the report data itself, as the fake server expects. It
/// fails while `failing` is set.
#[derive(Debug, Default)]
struct FakeCollector {
    failing: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicUsize,
}

impl Collector for FakeCollector {
    fn kind(&self) -> twid_evidence::Kind {
        twid_evidence::Kind::Nitro
    }

    fn collect(
        &self,
        report_data: &[u8; 64],
    ) -> Result<twid_evidence::Envelope, twid_attestation::node::evidence::CollectError> {
        use std::sync::atomic::Ordering;
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(twid_attestation::node::evidence::CollectError::Failed {
                interface: "fake".to_owned(),
                reason: "the platform is busy".to_owned(),
            });
        }
        Ok(twid_evidence::Envelope::new(
            twid_evidence::Kind::Nitro,
            report_data.to_vec(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_agent_reattests_after_failure() {
    use std::sync::atomic::Ordering;
    // A 16 s SVID: half-life after about 7.5 s, the retry about 5 s later, expiry after 16 s.
    let setup = Setup::new(&[], Duration::from_secs(16), LONG).await;
    let collector = Arc::new(FakeCollector::default());
    let mut settings = setup.settings(None);
    settings.evidence = Some(crate::settings::EvidenceSettings {
        attestor: "fake".to_owned(),
        collector: collector.clone(),
    });
    let agent = Agent::start_with(settings).await.expect("agent starts");
    let agent_id = agent.agent_id().to_string();
    assert_eq!(agent_id, "spiffe://example.org/spire/agent/fake/fake");
    let node = Arc::clone(&setup.node);
    let serial = |node: &FakeNode| node.state().agents.get(&agent_id).cloned();
    let first_serial = serial(&node).expect("agent record");

    // The attempt at half-life fails; the agent keeps its SVID and stays ready.
    collector.failing.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(12), || collector
            .calls
            .load(Ordering::SeqCst)
            >= 2)
        .await,
        "the agent did not try to attest again at half-life"
    );
    assert_eq!(node.state().attestations, 1);
    assert_eq!(serial(&node).as_ref(), Some(&first_serial));
    assert!(agent.health().is_ready());
    let syncs = node.state().syncs;
    assert!(
        eventually(Duration::from_secs(2), || node.state().syncs > syncs).await,
        "syncing stopped after the failed attempt"
    );

    // The retry after the backoff succeeds with fresh evidence and a new key.
    collector.failing.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(8), || node.state().attestations >= 2).await,
        "the agent did not retry the attestation"
    );
    let second_serial = serial(&node).expect("agent record");
    assert_ne!(second_serial, first_serial);
    assert_eq!(collector.calls.load(Ordering::SeqCst), 3);
    assert_eq!(node.state().renewals, 0, "an evidence agent must not renew");

    // The server accepts only the new SVID, so syncs succeed only over a new connection. With
    // its Watch stream open the agent does not poll, so a hint starts the round; the rounds
    // that the reconnect itself started may be over already.
    let syncs = node.state().syncs;
    node.notify();
    assert!(
        eventually(Duration::from_secs(5), || node.state().syncs > syncs).await,
        "syncing stopped after the re-attestation"
    );
    assert!(agent.health().is_ready());

    let stored = std::fs::read(setup.dir.path().join("data/agent_svid.der")).expect("stored SVID");
    let (_, cert) = x509_parser::parse_x509_certificate(&stored).expect("certificate");
    let stored_serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored_serial, second_serial);
    assert!(
        eventually(Duration::from_secs(5), || node.state().watches >= 2).await,
        "the Watch stream did not move to the new connection"
    );
    agent.shutdown().await;
}

/// Returns an entry for the test process's uid, created at `created_at`.
fn own_entry(id: &str, created_at: i64) -> Entry {
    Entry {
        id: id.to_owned(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        parent_id: "spiffe://example.org/spire/agent/join_token/any".to_owned(),
        selectors: vec![Selector {
            r#type: "unix".to_owned(),
            value: format!("uid:{}", own_euid()),
        }],
        revision_number: 1,
        created_at,
        ..Entry::default()
    }
}

/// Returns the lowercase hex serial of a DER certificate chain's leaf.
fn leaf_serial(chain: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(chain).expect("certificate");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts an agent with a 60 s sync interval, so that only hints make it sync soon.
async fn start_slow(setup: &Setup) -> AgentHandle {
    let mut settings = setup.settings(Some("good"));
    settings.sync_interval = Duration::from_secs(60);
    start_synced(settings).await
}

/// Starts an agent and waits for its first sync.
async fn start_synced(settings: AgentSettings) -> AgentHandle {
    let agent = Agent::start_with(settings).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    agent
}

#[tokio::test]
async fn hint_syncs_before_interval() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = start_slow(&setup).await;
    let node = Arc::clone(&setup.node);
    assert!(
        eventually(Duration::from_secs(10), || node.state().watches == 1).await,
        "the agent did not open a Watch stream"
    );
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    assert_eq!(first.svids.len(), 1);

    node.entries
        .lock()
        .expect("entries")
        .push(own_entry("added", 2));
    node.notify();
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the hint did not lead to a sync within 10 s of a 60 s interval")
        .expect("message")
        .expect("ok");
    let ids: Vec<&str> = update.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/workload",
            "spiffe://example.org/added"
        ]
    );
    drop(stream);
    agent.shutdown().await;
}

#[tokio::test]
async fn hints_during_sync_coalesce() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = start_slow(&setup).await;
    let node = Arc::clone(&setup.node);
    assert!(
        eventually(Duration::from_secs(10), || node.state().watches == 1).await,
        "the agent did not open a Watch stream"
    );
    // The hint sent when the stream opened causes one sync; wait for it to pass.
    assert!(
        eventually(Duration::from_secs(10), || node.state().syncs >= 2).await,
        "the first hint did not cause a sync"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.state().syncs;
    for _ in 0..20 {
        node.notify();
    }
    assert!(
        eventually(Duration::from_secs(10), || node.state().syncs > before).await,
        "the hints caused no sync"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let extra = node.state().syncs - before;
    // The watch channel of the fake server may merge the burst into fewer hints, and the
    // agent merges hints that arrive during a round into one more round.
    assert!(extra <= 2, "20 hints in a burst caused {extra} syncs");
    agent.shutdown().await;
}

#[tokio::test]
async fn watch_unimplemented_keeps_interval_sync() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    setup.node.state().watch_unimplemented = true;
    let agent = setup.start(Some("good")).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    let node = Arc::clone(&setup.node);
    let syncs = node.state().syncs;
    assert!(
        eventually(Duration::from_secs(5), || node.state().syncs >= syncs + 3).await,
        "the interval sync stopped without Watch"
    );
    assert_eq!(node.state().watches, 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn watch_reopens_after_server_restart() {
    let mut setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = start_slow(&setup).await;
    let node = Arc::clone(&setup.node);
    assert!(
        eventually(Duration::from_secs(10), || node.state().watches == 1).await,
        "the agent did not open a Watch stream"
    );
    setup.stop_server.send(true).expect("server running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup.restart_server().await;
    // The backoff after the drop starts at 1 s.
    assert!(
        eventually(Duration::from_secs(10), || node.state().watches >= 2).await,
        "the agent did not reopen the Watch stream"
    );
    let syncs = node.state().syncs;
    node.notify();
    assert!(
        eventually(Duration::from_secs(10), || node.state().syncs > syncs).await,
        "a hint on the reopened stream caused no sync"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn revoked_svids_are_never_served_again() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    setup.node.add_entry(own_entry("second", 2));
    let agent = start_slow(&setup).await;
    let node = Arc::clone(&setup.node);
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    assert_eq!(first.svids.len(), 2);
    let kept_serial = leaf_serial(&first.svids[0].x509_svid);
    let revoked_serial = leaf_serial(&first.svids[1].x509_svid);

    node.revoke_entries(&["second"]);
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update within 10 s of the revocation")
        .expect("message")
        .expect("ok");
    assert_eq!(update.svids.len(), 1);
    assert_eq!(update.svids[0].spiffe_id, "spiffe://example.org/workload");
    assert_eq!(leaf_serial(&update.svids[0].x509_svid), kept_serial);

    // Later syncs, with the serial still listed and signing still refused, serve it no more.
    let syncs = node.state().syncs;
    node.notify();
    assert!(
        eventually(Duration::from_secs(10), || node.state().syncs > syncs).await,
        "the hint caused no sync"
    );
    let mut again = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("second stream opens")
        .into_inner();
    let current = again.next().await.expect("message").expect("ok");
    let serials: Vec<String> = current
        .svids
        .iter()
        .map(|svid| leaf_serial(&svid.x509_svid))
        .collect();
    assert_eq!(serials, [kept_serial]);
    assert!(!serials.contains(&revoked_serial));

    // Revoking the last identity ends the streams with PermissionDenied, as for a caller
    // without entries.
    node.revoke_entries(&["e1"]);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update within 10 s of the revocation")
        .expect("status");
    let status = ended.expect_err("the stream must end with an error");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let refused = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("a caller without identities gets no stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    drop(again);
    agent.shutdown().await;
    // The first round after a revocation asks for a new SVID once. Later rounds within the
    // sync interval do not ask again for entries the server rejects.
    assert_eq!(node.state().refusals, 1);
}

#[tokio::test]
async fn revoked_agent_svid_withdraws_every_svid() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let agent = start_slow(&setup).await;
    let node = Arc::clone(&setup.node);
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    assert_eq!(first.svids.len(), 1);

    node.state().agent_revoked = true;
    node.notify();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update within 10 s of the revocation")
        .expect("status");
    let status = ended.expect_err("the stream must end with an error");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(!agent.health().is_ready());
    agent.shutdown().await;
}

/// Returns a loopback address on which nothing listens.
async fn closed_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}

fn server_address(address: SocketAddr) -> twid_config::ServerAddress {
    twid_config::ServerAddress {
        host: address.ip().to_string(),
        port: address.port(),
    }
}

#[tokio::test]
async fn attestation_skips_unreachable_address() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let mut settings = setup.settings(Some("good"));
    settings.server_addresses = vec![
        server_address(closed_address().await),
        server_address(setup.address),
    ];
    let agent = Agent::start_with(settings).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    assert_eq!(setup.node.state().attestations, 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn fails_over_to_second_address() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    // The same fake node on a second port plays a second server replica.
    let (stop_second, stopped) = watch::channel(false);
    let second = setup
        .node
        .serve("127.0.0.1:0".parse().expect("address"), stopped)
        .await;
    let mut settings = setup.settings(Some("good"));
    settings.server_addresses.push(server_address(second));
    settings.sync_interval = LONG;
    let agent = Agent::start_with(settings).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = stream.next().await.expect("message").expect("ok");
    assert_eq!(first.svids.len(), 1);

    setup.stop_server.send(true).expect("first server running");
    let watches_before = setup.node.state().watches;
    let node = Arc::clone(&setup.node);
    assert!(
        eventually(Duration::from_secs(10), || node.state().watches
            > watches_before)
        .await,
        "the agent did not reopen the Watch stream on the second address"
    );
    setup.node.add_entry(Entry {
        id: "e2".to_owned(),
        spiffe_id: "spiffe://example.org/after-failover".to_owned(),
        parent_id: "spiffe://example.org/spire/agent/join_token/any".to_owned(),
        selectors: vec![Selector {
            r#type: "unix".to_owned(),
            value: format!("uid:{}", own_euid()),
        }],
        revision_number: 1,
        created_at: 2,
        ..Entry::default()
    });
    setup.node.notify();
    // With a one-hour sync interval only the Watch stream on the second address makes the
    // agent sync within the timeout.
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an update within 10 s")
        .expect("message")
        .expect("ok");
    let ids: Vec<&str> = update
        .svids
        .iter()
        .map(|svid| svid.spiffe_id.as_str())
        .collect();
    assert!(
        ids.contains(&"spiffe://example.org/after-failover"),
        "{ids:?}"
    );
    assert!(ids.contains(&"spiffe://example.org/workload"), "{ids:?}");
    drop(stream);
    agent.shutdown().await;
    drop(stop_second);
}

#[tokio::test]
async fn signs_beyond_cache_limit_only_on_request() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    {
        // Five entries of other workloads, which the server lists first, fill the cache.
        let mut entries = setup.node.entries.lock().expect("entries");
        for index in 0..5 {
            entries.insert(
                0,
                Entry {
                    id: format!("other-{index}"),
                    spiffe_id: format!("spiffe://example.org/other/{index}"),
                    parent_id: "spiffe://example.org/spire/agent/join_token/any".to_owned(),
                    selectors: vec![Selector {
                        r#type: "unix".to_owned(),
                        value: format!("uid:{}", own_euid() + 1 + index),
                    }],
                    revision_number: 1,
                    created_at: 0,
                    ..Entry::default()
                },
            );
        }
    }
    let mut settings = setup.settings(Some("good"));
    settings.x509_svid_cache_max_size = 2;
    // A long interval: only the request may start the round that signs the caller's SVID.
    settings.sync_interval = LONG;
    let agent = Agent::start_with(settings).await.expect("agent starts");
    agent
        .wait_first_sync(Duration::from_secs(10))
        .await
        .expect("first sync");
    assert_eq!(
        setup.node.state().signed_svids,
        2,
        "only the cache limit is signed ahead of requests"
    );
    assert!(
        !setup.node.state().issued.contains_key("e1"),
        "the caller's entry is beyond the limit"
    );

    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the requested SVID within 10 s")
        .expect("message")
        .expect("ok");
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/workload");
    assert_eq!(setup.node.state().signed_svids, 3);
    agent.shutdown().await;
}

#[tokio::test]
async fn waiting_workload_respects_backoff() {
    for code in [tonic::Code::FailedPrecondition, tonic::Code::Unavailable] {
        let setup = Setup::new(&["good"], LONG, LONG).await;
        let mut settings = setup.settings(Some("good"));
        // No SVID is signed ahead of a request, so only the caller's requests ask for one.
        settings.x509_svid_cache_max_size = 0;
        settings.sync_interval = LONG;
        let agent = start_synced(settings).await;
        setup.node.state().signing_failure = Some(code);

        // A caller without an SVID fetches every 100 ms for 6 s. Each fetch used to start a
        // round, even during the backoff after a failed one, and so did the hint of each
        // Watch stream that a failed round opened again. With a backoff that starts at 1 s
        // and doubles, less than 5 rounds fit in 6 s.
        let mut client = workload_client(agent.socket_path().to_owned()).await;
        for _ in 0..60 {
            let next = tokio::time::Instant::now() + Duration::from_millis(100);
            let fetch = client.fetch_x509svid(with_header(X509svidRequest {}));
            let _ = tokio::time::timeout_at(next, fetch).await;
            tokio::time::sleep_until(next).await;
        }
        let failed = setup.node.state().failed_signings;
        agent.shutdown().await;
        assert!(failed >= 1, "{code:?}: no signing request in 6 s");
        assert!(failed <= 5, "{code:?}: {failed} signing requests in 6 s");
    }
}

/// Returns the refusals the fake server counted during `window`, which starts after `settle`.
async fn refusals_during(node: &FakeNode, settle: Duration, window: Duration) -> usize {
    tokio::time::sleep(settle).await;
    let before = node.state().refusals;
    tokio::time::sleep(window).await;
    node.state().refusals - before
}

#[tokio::test]
async fn refused_new_entry_backs_off() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    let mut settings = setup.settings(Some("good"));
    settings.sync_interval = Duration::from_secs(1);
    let agent = start_synced(settings).await;

    // An entry that a revocation covers from its start: the agent never held its SVID.
    setup.node.state().refused_entries.insert("late".to_owned());
    setup.node.add_entry(own_entry("late", 3));
    setup.node.notify();
    // Asked at about 0, 1, 3 and 7 s: one request in the window, at every sync six.
    let refusals =
        refusals_during(&setup.node, Duration::from_secs(4), Duration::from_secs(6)).await;
    agent.shutdown().await;
    assert!(refusals <= 2, "{refusals} refusals in 6 s");
}

#[tokio::test]
async fn workload_fetches_repeat_no_refusal() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    setup.node.state().refused_entries.insert("e1".to_owned());
    let mut settings = setup.settings(Some("good"));
    settings.sync_interval = LONG;
    let agent = start_synced(settings).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = setup.node.state().refusals;

    // The caller's only identity is refused, so it has none, as after an agent restart with
    // a revoked entry.
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let refused = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("a caller whose identity is refused gets no stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Each fetch of such a caller used to start a round.
    for _ in 0..20 {
        let _ = client.fetch_x509svid(with_header(X509svidRequest {})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals = setup.node.state().refusals - before;
    agent.shutdown().await;
    assert!(refusals <= 1, "{refusals} refusals for 20 fetches");
}

#[tokio::test]
async fn revoked_entry_beyond_cache_limit_returns() {
    let setup = Setup::new(&["good"], LONG, LONG).await;
    setup.node.add_entry(own_entry("second", 2));
    let mut settings = setup.settings(Some("good"));
    settings.sync_interval = Duration::from_secs(1);
    settings.x509_svid_cache_max_size = 2;
    let agent = start_synced(settings).await;
    assert!(setup.node.state().issued.contains_key("second"));
    setup.node.revoke_entries(&["second"]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An entry of another uid, listed first, fills the cache limit ahead of the revoked one.
    let mut other = own_entry("other", 3);
    other.selectors[0].value = format!("uid:{}", own_euid() + 8);
    setup.node.entries.lock().expect("entries").insert(0, other);
    setup.node.notify();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The server signs it again, as after a new attestation, and its workload keeps asking.
    setup.node.state().refused_entries.clear();
    let mut client = workload_client(agent.socket_path().to_owned()).await;
    let signed_again = eventually(Duration::from_secs(20), || {
        setup.node.state().issued.get("second").map_or(0, Vec::len) >= 2
    });
    let fetches = async {
        loop {
            let _ = client.fetch_x509svid(with_header(X509svidRequest {})).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let signed_again = tokio::select! {
        signed = signed_again => signed,
        () = fetches => unreachable!("the fetch loop never ends"),
    };
    agent.shutdown().await;
    assert!(
        signed_again,
        "the revoked entry beyond the cache limit was not signed again"
    );
}
