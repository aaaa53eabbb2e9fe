//! Simulated agents. Each one attests with a join token, then keeps its own mutual TLS
//! connection to one server and a Watch stream open. It responds to every hint with a Sync
//! that names the revision of its copy, and applies the stream to a local copy of its entries.
//! Workloads are simulated by signing one X.509-SVID per entry with `BatchNewX509Svid`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::attest_agent_response::Step as ResponseStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{
    AttestAgentParams, AttestAgentRequest, AttestationData, BatchNewX509SvidRequest,
    NewX509SvidParams, SyncRequest, WatchRequest,
};
use twid_spiffe::TrustDomain;
use twid_tls::{Authorizer, SvidSource, TrustSource};
use twid_types::EntriesDigest;

use crate::servers::TRUST_DOMAIN;

/// Sync streams can carry every entry of a large agent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// CSRs per `BatchNewX509Svid` request, which keeps each request far below the server's
/// 4 MiB request limit (a P-256 CSR is about 250 bytes).
const SIGN_CHUNK: usize = 1_000;

/// Resyncs with revision 0 in a row after digest mismatches before the agent gives up until
/// the next hint.
const MAX_RESYNCS: usize = 3;

/// The measurement phase, which labels each Sync latency sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    FirstSync = 0,
    Signing = 1,
    Steady = 2,
    Trials = 3,
}

/// Counters and samples shared by every simulated agent.
#[derive(Default)]
pub(crate) struct FleetStats {
    phase: AtomicU8,
    /// Sync calls running now.
    pub(crate) syncs_in_flight: AtomicUsize,
    /// Sync calls per phase.
    pub(crate) syncs: [AtomicU64; 4],
    /// Digest mismatches after applying a stream; each causes a resync with revision 0.
    pub(crate) digest_mismatches: AtomicU64,
    /// Streams whose last message set `full` although the agent named a revision.
    pub(crate) full_resends: AtomicU64,
    pub(crate) sync_errors: AtomicU64,
    pub(crate) watch_errors: AtomicU64,
    /// Sync latencies in microseconds, by phase.
    sync_latencies: Mutex<Vec<(Phase, u32)>>,
    /// The first error message of each kind, for the report.
    pub(crate) first_errors: Mutex<Vec<String>>,
}

impl FleetStats {
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::FirstSync,
            1 => Phase::Signing,
            2 => Phase::Steady,
            _ => Phase::Trials,
        }
    }

    /// Returns the Sync latencies of `phase` in milliseconds.
    pub(crate) fn sync_latencies_ms(&self, phase: Phase) -> Vec<f64> {
        self.sync_latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(sample_phase, _)| *sample_phase == phase)
            .map(|(_, micros)| f64::from(*micros) / 1000.0)
            .collect()
    }

    pub(crate) fn syncs_in(&self, phase: Phase) -> u64 {
        self.syncs[phase as usize].load(Ordering::SeqCst)
    }

    fn record_error(&self, message: String) {
        let mut errors = self
            .first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if errors.len() < 20 {
            errors.push(message);
        }
    }
}

/// The address and trust of one server replica.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) replica: usize,
    pub(crate) port: u16,
    pub(crate) trust: TrustSource,
}

impl Target {
    fn authorizer() -> Authorizer {
        let trust_domain =
            TrustDomain::new(TRUST_DOMAIN).expect("the trust domain constant is valid");
        Authorizer::Exact(twid_types::server_id(&trust_domain))
    }

    /// Returns the TLS configuration for attestation, which presents no client certificate.
    pub(crate) fn attestation_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        Ok(twid_tls::client_config(
            None,
            self.trust.clone(),
            Self::authorizer(),
        )?)
    }
}

/// An attested agent: its SPIFFE ID, SVID and key.
pub(crate) struct Identity {
    pub(crate) index: usize,
    pub(crate) spiffe_id: String,
    pub(crate) replica: usize,
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
}

/// Attests with `token` over a new connection to `target` and returns the agent's identity.
pub(crate) async fn attest(
    index: usize,
    target: &Target,
    config: Arc<ClientConfig>,
    token: &str,
) -> anyhow::Result<Identity> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .der()
        .to_vec();
    let channel = twid_tls::connect_channel("127.0.0.1", target.port, config).await?;
    let mut client = NodeClient::new(channel);
    let first = AttestAgentRequest {
        step: Some(RequestStep::Params(AttestAgentParams {
            data: Some(AttestationData {
                r#type: "join_token".to_owned(),
                payload: token.as_bytes().to_vec(),
            }),
            csr,
        })),
    };
    let mut responses = client
        .attest_agent(tokio_stream::iter([first]))
        .await
        .context("AttestAgent failed")?
        .into_inner();
    let response = responses
        .message()
        .await
        .context("AttestAgent stream failed")?;
    let Some(ResponseStep::Result(svid)) = response.and_then(|r| r.step) else {
        bail!("the server ended AttestAgent without an SVID");
    };
    Ok(Identity {
        index,
        spiffe_id: svid.spiffe_id,
        replica: target.replica,
        chain: svid.cert_chain,
        key_pkcs8: key.serialize_der(),
    })
}

/// A request from the driver to a running agent.
#[derive(Debug)]
pub(crate) enum Command {
    /// Generate one key and CSR per entry of the current copy, outside any timed phase.
    PrepareCsrs,
    /// Sign the prepared CSRs.
    Sign,
}

/// A report from a running agent to the driver.
#[derive(Debug)]
pub(crate) enum Event {
    FirstSync {
        index: usize,
        /// From the start of the connection to the applied first Sync.
        elapsed: Duration,
        entries: usize,
    },
    Failed {
        index: usize,
        error: String,
    },
    CsrsReady,
    Signed {
        signed: usize,
        failed: usize,
    },
}

/// The driver's view of one running agent.
pub(crate) struct AgentHandle {
    pub(crate) index: usize,
    pub(crate) spiffe_id: String,
    pub(crate) replica: usize,
    /// The agent's copy: revision number by entry ID.
    pub(crate) copy: Arc<Mutex<HashMap<String, i64>>>,
    /// Counts applied Sync streams.
    pub(crate) applied: watch::Receiver<u64>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl AgentHandle {
    pub(crate) fn holds(&self, entry_id: &str) -> bool {
        self.copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(entry_id)
    }
}

/// Starts the agent task for `identity` and returns its handle. The task connects once it
/// holds a permit of `connect_permits`, which it releases after its first Sync.
pub(crate) fn spawn(
    identity: Identity,
    target: &Target,
    stats: Arc<FleetStats>,
    events: mpsc::UnboundedSender<Event>,
    connect_permits: Arc<Semaphore>,
    cancel: CancellationToken,
) -> AgentHandle {
    let copy = Arc::new(Mutex::new(HashMap::new()));
    let (applied_sender, applied) = watch::channel(0);
    let (commands, command_receiver) = mpsc::channel(4);
    let handle = AgentHandle {
        index: identity.index,
        spiffe_id: identity.spiffe_id.clone(),
        replica: identity.replica,
        copy: Arc::clone(&copy),
        applied,
        commands,
    };
    let agent = SimulatedAgent {
        identity,
        port: target.port,
        trust: target.trust.clone(),
        stats,
        events,
        copy,
        applied: applied_sender,
        revision: 0,
        csrs: Vec::new(),
    };
    tokio::spawn(agent.run(command_receiver, connect_permits, cancel));
    handle
}

struct SimulatedAgent {
    identity: Identity,
    port: u16,
    trust: TrustSource,
    stats: Arc<FleetStats>,
    events: mpsc::UnboundedSender<Event>,
    copy: Arc<Mutex<HashMap<String, i64>>>,
    applied: watch::Sender<u64>,
    /// The `entries_revision` of the last applied stream; 0 forces a full Sync.
    revision: u64,
    csrs: Vec<NewX509SvidParams>,
}

impl SimulatedAgent {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        connect_permits: Arc<Semaphore>,
        cancel: CancellationToken,
    ) {
        let index = self.identity.index;
        let permit = tokio::select! {
            permit = connect_permits.acquire_owned() => permit,
            () = cancel.cancelled() => return,
        };
        let started = Instant::now();
        let mut client = match self.connect().await {
            Ok(client) => client,
            Err(error) => {
                let _ = self.events.send(Event::Failed {
                    index,
                    error: format!("connect: {error:#}"),
                });
                return;
            }
        };
        if let Err(error) = self.sync(&mut client).await {
            let _ = self.events.send(Event::Failed {
                index,
                error: format!("first sync: {error:#}"),
            });
            return;
        }
        let entries = self
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let _ = self.events.send(Event::FirstSync {
            index,
            elapsed: started.elapsed(),
            entries,
        });
        drop(permit);

        let mut hints = self.open_watch(&mut client, &cancel).await;
        let mut last_hint = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                command = commands.recv() => match command {
                    Some(Command::PrepareCsrs) => {
                        self.prepare_csrs();
                        let _ = self.events.send(Event::CsrsReady);
                    }
                    Some(Command::Sign) => {
                        let (signed, failed) = self.sign(&mut client).await;
                        let _ = self.events.send(Event::Signed { signed, failed });
                    }
                    None => return,
                },
                hint = next_hint(&mut hints) => match hint {
                    Ok(Some(hint)) => {
                        // Equal revisions carry no news.
                        if last_hint != Some(hint.revision) {
                            last_hint = Some(hint.revision);
                            if let Err(error) = self.sync(&mut client).await {
                                self.count_error(&self.stats.sync_errors, format!("sync: {error:#}"));
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        let message = match hint {
                            Err(status) => format!("Watch stream failed: {status}"),
                            _ => "the server ended the Watch stream".to_owned(),
                        };
                        self.count_error(&self.stats.watch_errors, message);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        hints = self.open_watch(&mut client, &cancel).await;
                        last_hint = None;
                    }
                },
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<NodeClient<Channel>> {
        let chain = self
            .identity
            .chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let source = SvidSource::new(chain, self.identity.key_pkcs8.clone().into())?;
        let config =
            twid_tls::client_config(Some(source), self.trust.clone(), Target::authorizer())?;
        let channel = twid_tls::connect_channel("127.0.0.1", self.port, config).await?;
        Ok(NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Opens the Watch stream, retrying every second until it opens or the run ends.
    async fn open_watch(
        &self,
        client: &mut NodeClient<Channel>,
        cancel: &CancellationToken,
    ) -> Option<tonic::Streaming<twid_proto::node::SyncHint>> {
        loop {
            match client.watch(WatchRequest {}).await {
                Ok(response) => return Some(response.into_inner()),
                Err(status) => {
                    self.count_error(
                        &self.stats.watch_errors,
                        format!("opening the Watch stream failed: {status}"),
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Syncs until the copy's digest matches the server's, at most [`MAX_RESYNCS`] extra
    /// times with revision 0.
    async fn sync(&mut self, client: &mut NodeClient<Channel>) -> anyhow::Result<()> {
        for _ in 0..=MAX_RESYNCS {
            if self.sync_once(client).await? {
                self.applied.send_modify(|count| *count += 1);
                return Ok(());
            }
            self.stats.digest_mismatches.fetch_add(1, Ordering::SeqCst);
            self.revision = 0;
        }
        self.applied.send_modify(|count| *count += 1);
        bail!("the copy's digest still differs from the server's after {MAX_RESYNCS} full syncs")
    }

    /// Runs one Sync and applies it; returns whether the digest matches afterwards.
    async fn sync_once(&mut self, client: &mut NodeClient<Channel>) -> anyhow::Result<bool> {
        let phase = self.stats.phase();
        self.stats.syncs_in_flight.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let result = self.read_sync(client).await;
        let elapsed = started.elapsed();
        self.stats.syncs_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.stats.syncs[phase as usize].fetch_add(1, Ordering::SeqCst);
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        self.stats
            .sync_latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((phase, micros));
        if result.is_err() {
            // A stream that broke off leaves a partial copy behind.
            self.revision = 0;
        }
        result
    }

    async fn read_sync(&mut self, client: &mut NodeClient<Channel>) -> anyhow::Result<bool> {
        let requested_revision = self.revision;
        let mut stream = client
            .sync(SyncRequest {
                entries_revision: requested_revision,
            })
            .await
            .context("Sync failed")?
            .into_inner();

        let mut first = true;
        let mut last_revision = None;
        let mut last_digest = Vec::new();
        let mut copy = self
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        while let Some(message) = stream.message().await.context("Sync stream failed")? {
            if first {
                first = false;
                if message.full {
                    if requested_revision != 0 {
                        self.stats.full_resends.fetch_add(1, Ordering::SeqCst);
                    }
                    copy.clear();
                }
            }
            for entry in message.entries {
                copy.insert(entry.id, entry.revision_number);
            }
            for id in message.removed_entry_ids {
                copy.remove(&id);
            }
            if !message.entries_digest.is_empty() {
                last_revision = Some(message.entries_revision);
                last_digest = message.entries_digest;
            }
        }

        if first {
            bail!("the server ended the Sync stream without a message");
        }
        let Some(revision) = last_revision else {
            bail!("the Sync stream's last message carried no entries digest");
        };
        let expected = EntriesDigest::from_bytes(&last_digest)
            .with_context(|| format!("entries digest of {} bytes, not 16", last_digest.len()))?;

        let actual: EntriesDigest = copy
            .iter()
            .map(|(id, revision_number)| EntriesDigest::term(id, *revision_number))
            .collect();
        *self.copy.lock().unwrap_or_else(PoisonError::into_inner) = copy;
        self.revision = revision;
        Ok(actual == expected)
    }

    fn prepare_csrs(&mut self) {
        let ids: Vec<String> = self
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        self.csrs = ids
            .into_iter()
            .filter_map(|entry_id| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).ok()?;
                let csr = rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .ok()?;
                Some(NewX509SvidParams {
                    entry_id,
                    csr: csr.der().to_vec(),
                })
            })
            .collect();
    }

    /// Signs the prepared CSRs and returns the SVIDs signed and the entries that failed.
    async fn sign(&mut self, client: &mut NodeClient<Channel>) -> (usize, usize) {
        let csrs = std::mem::take(&mut self.csrs);
        let mut signed = 0;
        let mut failed = 0;
        for chunk in csrs.chunks(SIGN_CHUNK) {
            let request = BatchNewX509SvidRequest {
                params: chunk.to_vec(),
            };
            match client.batch_new_x509_svid(request).await {
                Ok(response) => {
                    for result in response.into_inner().results {
                        if result.cert_chain.is_empty() {
                            failed += 1;
                            self.stats
                                .record_error(format!("signing: {}", result.error));
                        } else {
                            signed += 1;
                        }
                    }
                }
                Err(status) => {
                    failed += chunk.len();
                    self.stats
                        .record_error(format!("BatchNewX509Svid failed: {status}"));
                }
            }
        }
        (signed, failed)
    }

    fn count_error(&self, counter: &AtomicU64, message: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(agent = self.identity.index, error = %message, "simulated agent error");
        self.stats.record_error(message);
    }
}

async fn next_hint(
    hints: &mut Option<tonic::Streaming<twid_proto::node::SyncHint>>,
) -> Result<Option<twid_proto::node::SyncHint>, tonic::Status> {
    match hints {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
