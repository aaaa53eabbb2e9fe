//! The sync loop. Every interval, and at once after each hint from the server's Watch stream
//! (see [`crate::watcher`]), it fetches the authorized entries, the bundles and the revoked
//! credentials with Sync. It then drops revoked SVIDs, signs missing or aging workload SVIDs
//! and replaces those of tainted authorities, publishes a new cache snapshot, and renews the
//! agent's own SVID at half-life or when a tainted authority signed it. An agent with
//! an evidence attestor attests again instead of renewing (see [`crate::reattest`]).
//!
//! Hints coalesce: any number of hints that arrive during a round cause exactly one more round
//! after it. A server without Watch leaves the agent on its interval.
//!
//! While the server is unreachable the cache keeps its last snapshot, so workloads keep their
//! SVIDs. A round that fails at the connection level moves the agent to the next server
//! address (see [`ServerConnection::fail_over`]) and retries there after a short delay.
//! Limit: an SVID that expires during the outage stays in the snapshot until the next
//! successful sync drops or replaces it.
//!
//! Other failures are retried with exponential backoff from 1 s doubling up to 30 s. Each delay
//! is shortened by up to 20% at random, so agents restarted together do not retry in step. Every
//! failed attempt is logged once, at warn, with the error and the delay. If the server rejects
//! the agent (PermissionDenied or Unauthenticated, which it returns for an evicted or banned
//! agent), readiness turns false and the agent keeps serving its cached SVIDs. A join token
//! agent's loop then stops for good, while an evidence agent's loop keeps retrying and attests
//! again at once.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;
use tracing::Instrument as _;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{RenewAgentRequest, SyncRequest, SyncResponse};
use twid_proto::types::{Bundle, JwtAuthority};
use twid_spiffe::TrustDomain;
use twid_telemetry::Health;
use twid_tls::{SvidSource, TrustSource};
use twid_types::EntriesDigest;

use crate::cache::{Cache, CachedEntry, Snapshot, TrustDomainBundle, half_life, sort_entries};
use crate::node::{self, ServerConnection};
use crate::reattest::Reattestation;
use crate::revocation::{Revoked, TaintedAuthorities};
use crate::state::{self, AgentState};
use crate::{AgentError, svid_manager};

/// First retry delay after a failed sync.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Maximum retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Drops the entries that expired at `now`, which the server leaves out of Sync as well.
fn unexpired(mut entries: Vec<CachedEntry>, now: i64) -> Vec<CachedEntry> {
    entries.retain(|cached| cached.entry.expires_at == 0 || cached.entry.expires_at > now);
    entries
}

/// Reads a Sync stream message by message and converts each entry as it arrives, so that a
/// full sync of many entries never keeps them all in their wire form. Returns the stream's
/// fields other than entries (as [`twid_proto::collect_sync`] merges them), the entries, and
/// the removed entry IDs.
async fn read_sync_stream(
    mut stream: tonic::Streaming<SyncResponse>,
) -> Result<(SyncResponse, Vec<CachedEntry>, Vec<String>), tonic::Status> {
    let mut merged: Option<SyncResponse> = None;
    let mut entries = Vec::new();
    let mut removed = Vec::new();
    while let Some(mut message) = stream.message().await? {
        entries.extend(message.entries.drain(..).map(CachedEntry::from_synced));
        removed.append(&mut message.removed_entry_ids);
        match merged.as_mut() {
            None => merged = Some(message),
            Some(merged) => {
                merged.entries_revision = message.entries_revision;
                merged.entries_digest = message.entries_digest;
                merged.entries_count = message.entries_count;
            }
        }
    }
    let merged =
        merged.ok_or_else(|| tonic::Status::data_loss("the server ended the Sync stream empty"))?;
    Ok((merged, entries, removed))
}

/// Applies a Sync delta to the entries of `previous`: `changed` entries replace those with the
/// same ID or are added, and `removed` IDs are dropped.
fn apply_delta(
    previous: &Snapshot,
    changed: Vec<CachedEntry>,
    removed: &[String],
    now: i64,
) -> Vec<CachedEntry> {
    let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
    let changed_ids: HashSet<&str> = changed
        .iter()
        .map(|cached| cached.entry.id.as_str())
        .collect();
    let mut entries: Vec<CachedEntry> = previous
        .entries
        .iter()
        .filter(|cached| {
            let id = cached.entry.id.as_str();
            !removed.contains(id) && !changed_ids.contains(id)
        })
        .cloned()
        .collect();
    drop(changed_ids);
    entries.extend(changed);
    unexpired(entries, now)
}

/// Returns the current time in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
}

/// Minimum pause after one failed round before a hint may start the next one.
const HINT_WAIT_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The maximum pause between rounds while a Watch stream is open, as a safety net for a hint
/// the agent did not receive.
const WATCHED_MAX_DELAY: Duration = Duration::from_secs(30 * 60);

/// Exponential backoff, by default from [`BACKOFF_START`] doubling to [`BACKOFF_MAX`], with up
/// to 20% random shortening.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self::with_bounds(BACKOFF_START, BACKOFF_MAX)
    }

    /// Returns a backoff that starts at `start` and doubles up to `max`.
    pub(crate) fn with_bounds(start: Duration, max: Duration) -> Self {
        Self { next: start, max }
    }

    /// Returns the delay before the next attempt and doubles the following one.
    pub(crate) fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let jitter_ms = rand::random_range(0..=base_ms / 5);
        Duration::from_millis(base_ms - jitter_ms)
    }
}

/// Maximum pause between two requests for entries whose SVID was revoked.
const REVOKED_RETRY_MAX: Duration = Duration::from_secs(60 * 60);

/// The schedule of requests for entries whose SVID was revoked. The server rejects them, and
/// records every rejection in its issuance log, until the agent attests again after the
/// revocation. So the pause between requests starts at the sync interval and doubles up to
/// [`REVOKED_RETRY_MAX`], with the jitter of [`Backoff`]. Attesting again, or a round that
/// leaves no entry revoked, starts over. An entry that changes is requested at once (see
/// [`svid_manager::plan`]).
#[derive(Debug)]
pub(crate) struct RevokedRetry {
    start: Duration,
    /// The maximum pause in seconds: [`REVOKED_RETRY_MAX`], or `start` when longer.
    max_pause: i64,
    backoff: Backoff,
    /// Unix seconds from which the entries are requested again.
    at: i64,
}

impl RevokedRetry {
    pub(crate) fn new(start: Duration) -> Self {
        let max_pause = REVOKED_RETRY_MAX.max(start);
        Self {
            start,
            max_pause: i64::try_from(max_pause.as_secs()).unwrap_or(i64::MAX),
            backoff: Backoff::with_bounds(start, max_pause),
            at: 0,
        }
    }

    /// Returns whether the entries are due at `now`. They are also due when the wall clock
    /// went back by more than the maximum pause, which would otherwise add the jump.
    pub(crate) fn is_due(&self, now: i64) -> bool {
        now >= self.at || self.at.saturating_sub(now) > self.max_pause
    }

    /// Unix seconds from which the entries are requested again.
    pub(crate) fn at(&self) -> i64 {
        self.at
    }

    /// Schedules the next request after a round at `now` that requested revoked entries.
    pub(crate) fn schedule(&mut self, now: i64) {
        let delay = i64::try_from(self.backoff.step().as_secs()).unwrap_or(i64::MAX);
        self.at = now.saturating_add(delay.max(1));
    }

    /// Requests the entries at the next round, and starts the pauses over.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.start);
    }
}

/// Consecutive failures of the sync loop.
#[derive(Debug)]
pub(crate) struct RetryState {
    backoff: Backoff,
    failures: u32,
}

impl RetryState {
    pub(crate) fn new() -> Self {
        Self {
            backoff: Backoff::new(),
            failures: 0,
        }
    }
}

/// Everything one sync round needs.
pub(crate) struct Syncer {
    pub(crate) connection: Arc<ServerConnection>,
    pub(crate) cache: Cache,
    pub(crate) agent: AgentState,
    pub(crate) svid_source: SvidSource,
    pub(crate) trust: TrustSource,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) data_dir: PathBuf,
    pub(crate) health: Health,
    /// Entry IDs whose signing failed in the previous round, so each failure is logged at
    /// warn once and at debug while it repeats.
    pub(crate) failing_entries: HashSet<String>,
    /// The schedule for attesting again with fresh evidence; `None` for a join token agent,
    /// which renews its SVID with RenewAgent instead.
    pub(crate) reattestation: Option<Reattestation>,
    /// The schedule of requests for entries whose SVID was revoked.
    pub(crate) revoked_retry: RevokedRetry,
    /// Maximum workload SVIDs signed by a tainted authority that one round replaces.
    pub(crate) taint_batch_size: usize,
    /// Minimum time between two batches of SVIDs signed by a tainted authority, whatever
    /// starts the rounds (the interval, hints, workload requests).
    pub(crate) taint_batch_interval: Duration,
    /// When the last batch of SVIDs signed by a tainted authority was taken.
    pub(crate) taint_batch_at: Option<std::time::Instant>,
    /// Whether the last round left SVIDs signed by a tainted authority to replace.
    pub(crate) tainted_pending: bool,
    /// `x509_svid_cache_max_size`, see [`svid_manager::PlanInputs::cache_limit`].
    pub(crate) x509_svid_cache_max_size: usize,
    /// Whether the last round failed to sign some due SVIDs, which the next round retries at
    /// the sync interval.
    pub(crate) signing_incomplete: bool,
    /// The connection generation that the last round used, for
    /// [`ServerConnection::fail_over`].
    pub(crate) round_generation: u64,
    /// The server's entries revision that the cached entries reflect, sent in each Sync so
    /// the server sends only what changed; 0 before the first sync.
    pub(crate) entries_revision: u64,
}

impl Syncer {
    /// Runs rounds until `shutdown` turns true or the server rejects a join token agent, and
    /// re-attests an evidence agent between rounds when due. The first round starts after
    /// `delay` or at the next notification of `hints`, whichever comes first. Each later
    /// round starts after the delay that `after_sync` returns or at the next hint. A hint also
    /// cuts the backoff after one failed round short, because it shows that the server is
    /// reachable, but not before [`HINT_WAIT_AFTER_FAILURE`]. After more failures in a row
    /// the backoff runs in full. A workload's request for an entry without an SVID starts a
    /// round too, but not during a backoff.
    pub(crate) async fn run(
        mut self,
        interval: Duration,
        mut delay: Duration,
        mut retry: RetryState,
        hints: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let cache = self.cache.clone();
            // A workload that waits for an SVID requests it again and again, so after a
            // failed round its requests wait for the backoff instead of starting rounds.
            // Hints wait too: a round that fails with Unavailable replaces the connection, and
            // the Watch stream opens again and sends a hint, so a hint that cut the backoff
            // short would start the next round at once. After one failure a hint waits for up
            // to HINT_WAIT_AFTER_FAILURE, so that a server that came back is synced soon, and
            // after more it waits for the whole backoff.
            let failing = retry.failures > 0;
            let hint_wait = match retry.failures {
                0 => Duration::ZERO,
                1 => delay.min(HINT_WAIT_AFTER_FAILURE),
                _ => delay,
            };
            let hints_from = tokio::time::Instant::now() + hint_wait;
            let hint = async {
                tokio::time::sleep_until(hints_from).await;
                hints.notified().await;
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = hint => {}
                () = cache.entry_requested(), if !failing => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let result = self
                .sync_once()
                .instrument(tracing::debug_span!("agent_sync"))
                .await;
            match self.after_sync(result, &mut retry, interval).await {
                Some(next) => delay = next,
                None => return,
            }
            if self.tainted_pending {
                delay = delay.min(self.until_next_taint_batch());
            }
            // Runs even after a failed sync: attesting needs no valid agent SVID.
            if let Some(until_due) = self.reattest_if_due().await {
                delay = delay.min(until_due);
            }
        }
    }

    /// Logs the outcome of a round and returns the delay before the next one, or `None` when
    /// the server rejected the agent and syncing must stop. A connection-level failure moves
    /// the connection to the next server address, and the next round follows after the short
    /// failover delay instead of the retry backoff.
    pub(crate) async fn after_sync(
        &mut self,
        result: Result<(), AgentError>,
        retry: &mut RetryState,
        interval: Duration,
    ) -> Option<Duration> {
        let delay = match result {
            Err(error) if error.is_connection_failure() => {
                retry.failures += 1;
                let mut delay = self.connection.fail_over(self.round_generation).await;
                // The connection's backoff starts again whenever a connection opens, and a
                // server that replies Unavailable accepts connections. So from the second
                // failure in a row the sync backoff applies too.
                if retry.failures > 1 {
                    delay = delay.max(retry.backoff.step());
                }
                metrics::counter!(twid_telemetry::names::AGENT_SYNC_FAILURES_TOTAL).increment(1);
                tracing::warn!(
                    %error,
                    attempt = retry.failures,
                    server = %self.connection.address(),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "sync with the server failed; serving cached SVIDs"
                );
                delay
            }
            Ok(()) => {
                self.connection.record_success();
                if retry.failures > 0 {
                    tracing::info!(
                        failed_attempts = retry.failures,
                        "sync with the server recovered"
                    );
                }
                *retry = RetryState::new();
                self.next_round_delay(interval)
            }
            Err(error) if error.is_agent_rejected() && self.reattestation.is_some() => {
                // An evidence agent that was evicted, or whose SVID the server no longer
                // accepts, can prove its platform again instead of stopping.
                tracing::warn!(
                    %error,
                    "the server rejected the agent SVID; attesting again with fresh evidence"
                );
                self.health
                    .set_not_ready(format!("the server rejected the agent: {error}"));
                self.withdraw_all_if_agent_revoked(&error);
                if let Some(schedule) = self.reattestation.as_mut() {
                    schedule.mark_rejected();
                }
                retry.failures += 1;
                retry.backoff.step()
            }
            Err(error) if error.is_agent_rejected() => {
                if self.withdraw_all_if_agent_revoked(&error) {
                    tracing::error!(
                        %error,
                        "the server revoked this agent's SVID; syncing stopped and no cached \
                         SVID is served"
                    );
                } else {
                    tracing::error!(
                        %error,
                        "the server rejected this agent; syncing stopped and cached SVIDs are \
                         served until they expire"
                    );
                }
                self.health
                    .set_not_ready(format!("the server rejected the agent: {error}"));
                return None;
            }
            Err(error) => {
                retry.failures += 1;
                let delay = retry.backoff.step();
                metrics::counter!(twid_telemetry::names::AGENT_SYNC_FAILURES_TOTAL).increment(1);
                tracing::warn!(
                    %error,
                    attempt = retry.failures,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "sync with the server failed; serving cached SVIDs"
                );
                delay
            }
        };
        self.check_agent_expiry();
        Some(delay)
    }

    /// Returns how many SVIDs signed by a tainted authority this round may replace: a batch
    /// once `taint_batch_interval` has passed since the last batch, otherwise none.
    fn taint_budget(&self) -> usize {
        if self.until_next_taint_batch().is_zero() {
            self.taint_batch_size
        } else {
            0
        }
    }

    /// Returns the time until the next batch of tainted SVIDs may be replaced.
    fn until_next_taint_batch(&self) -> Duration {
        self.taint_batch_at.map_or(Duration::ZERO, |at| {
            self.taint_batch_interval.saturating_sub(at.elapsed())
        })
    }

    /// Returns the delay after a successful round: the sync interval, unless a Watch stream is
    /// open. The server then sends a hint for every change, so the next round is due only when
    /// an SVID reaches half its lifetime, and at the latest after [`WATCHED_MAX_DELAY`].
    fn next_round_delay(&self, interval: Duration) -> Duration {
        if !self.connection.is_watching() {
            return interval;
        }
        let snapshot = self.cache.current();
        let workload_due = snapshot
            .entries
            .iter()
            .filter_map(|cached| cached.svid.as_ref())
            .map(|svid| half_life(svid.not_before, svid.not_after));
        let agent_due = self
            .agent
            .validity()
            .ok()
            .map(|(not_before, not_after)| half_life(not_before, not_after));
        let revoked_due = snapshot
            .entries
            .iter()
            .any(|cached| cached.svid_revoked)
            .then_some(self.revoked_retry.at());
        if self.signing_incomplete {
            return interval;
        }
        let Some(due) = workload_due.chain(agent_due).chain(revoked_due).min() else {
            return WATCHED_MAX_DELAY;
        };
        let until_due = u64::try_from(due.saturating_sub(unix_now())).unwrap_or(0);
        Duration::from_secs(until_due).clamp(interval, WATCHED_MAX_DELAY.max(interval))
    }

    /// Stops serving every cached SVID when the server rejected the agent because its own SVID
    /// was revoked, and returns whether it did. A revocation that covers an agent's SVID also
    /// covers every credential obtained through that agent, but the agent cannot Sync to learn
    /// their serials. The entries stay cached, marked revoked, so that an evidence agent that
    /// attests again signs them anew.
    fn withdraw_all_if_agent_revoked(&self, error: &AgentError) -> bool {
        let AgentError::Rpc { message, .. } = error else {
            return false;
        };
        // Limit: the node API reports a revoked agent SVID only in the PermissionDenied
        // message ("... was revoked by revocation N ..."), so this matches that text.
        if !message.contains("was revoked") {
            return false;
        }
        let current = self.cache.current();
        let mut next = Snapshot::clone(&current);
        for cached in &mut next.entries {
            cached.svid = None;
            cached.svid_revoked = true;
        }
        if self.cache.publish_if_changed(next) {
            tracing::warn!(
                entries = current.entries.len(),
                "the server revoked the agent SVID; withdrew every cached SVID"
            );
        }
        true
    }

    /// Marks the agent not ready once its own SVID has expired: it cannot reach the server
    /// again without attesting anew.
    fn check_agent_expiry(&self) {
        let Ok((_, not_after)) = self.agent.validity() else {
            return;
        };
        if unix_now() >= not_after && self.health.is_ready() {
            if self.reattestation.is_some() {
                tracing::error!(
                    expired_at = not_after,
                    "the agent SVID has expired before a re-attestation succeeded; retrying \
                     the attestation with fresh evidence"
                );
            } else {
                tracing::error!(
                    expired_at = not_after,
                    "the agent SVID has expired; restart the agent with a new join_token to \
                     attest again"
                );
            }
            self.health.set_not_ready(format!(
                "the agent SVID expired at {not_after} (Unix time); the agent must attest again"
            ));
        }
    }

    /// Performs one sync round.
    pub(crate) async fn sync_once(&mut self) -> Result<(), AgentError> {
        let (mut client, generation) = self.connection.client_with_generation();
        self.round_generation = generation;
        let previous = self.cache.current();
        let now = unix_now();
        let (response, entries) = self.fetch_entries(&mut client, &previous, now).await?;
        let bundle = response.bundle.unwrap_or_default();
        self.update_bundle(&bundle);
        let federated = federated_bundles(&self.trust_domain, response.federated_bundles);

        let revoked = Arc::new(
            Revoked::new(response.revoked_x509_serials, response.revoked_jtis)
                .with_tainted_jwt_keys(response.tainted_jwt_key_ids),
        );
        let tainted = TaintedAuthorities::new(response.tainted_x509_authority_ids);

        let retry_revoked = self.revoked_retry.is_due(now);
        let requested = self.cache.requested_entries(now);
        let inputs = svid_manager::PlanInputs {
            now,
            revoked: &revoked,
            retry_revoked,
            tainted: &tainted,
            taint_batch_size: self.taint_budget(),
            cache_limit: self.x509_svid_cache_max_size,
            requested: &requested,
        };
        let mut plan = svid_manager::plan(&previous, entries, inputs);
        self.tainted_pending = plan.tainted_pending > 0;
        if plan.tainted_due > 0 {
            self.taint_batch_at = Some(std::time::Instant::now());
            tracing::info!(
                replacing = plan.tainted_due,
                remaining = plan.tainted_pending,
                "replacing X.509-SVIDs signed by a tainted authority"
            );
        }
        let published_early = if !plan.revoked.is_empty() || revoked != previous.revoked {
            // Workloads lose revoked credentials now rather than after the signing calls.
            self.log_revocations(&plan.revoked, &revoked);
            let snapshot = self.snapshot(
                plan.entries.clone(),
                bundle.jwt_authorities.clone(),
                federated.clone(),
                Arc::clone(&revoked),
            );
            self.cache.publish_if_changed(snapshot)
        } else {
            false
        };
        let report = svid_manager::sign_due(&mut client, &mut plan).await;
        self.log_signing_failures(&report.failed);
        self.signing_incomplete = !report.failed.is_empty() || report.error.is_some();
        let entry_count = plan.entries.len();
        if !plan.entries.iter().any(|cached| cached.svid_revoked) {
            self.revoked_retry.reset();
        } else if retry_revoked && report.error.is_none() {
            // The revoked entries were requested in this round and rejected again. A round
            // whose signing call failed may have requested nothing, so then the pause stays.
            self.revoked_retry.schedule(now);
        }
        let snapshot = self.snapshot(plan.entries, bundle.jwt_authorities, federated, revoked);
        let published = self.cache.publish_if_changed(snapshot) || published_early;
        tracing::debug!(
            entries = entry_count,
            signed = report.signed,
            failed = report.failed.len(),
            published,
            "sync round complete"
        );
        if !self.health.is_ready() && self.health.reason().is_none() {
            tracing::info!(entries = entry_count, "first sync with the server complete");
        }
        self.health.set_ready(true);
        if let Some(error) = report.error {
            return Err(error);
        }
        if self.reattestation.is_some() {
            // The server caps an evidence agent's renewed SVID at its current expiry, so such
            // an agent attests again with fresh evidence instead (see `reattest_if_due`).
            // Limit: an evidence agent does not attest again early when a tainted authority
            // signed its own SVID, so revoking that authority cuts it off until it does.
            return Ok(());
        }
        self.renew_agent_if_due(now, &tainted).await
    }

    /// Calls Sync with the revision of the cached entries and returns the response with the
    /// entries the agent is now authorized for. A delta is applied to the entries of
    /// `previous`. When the result's digest differs from the server's, for example because
    /// a node alias change moved entries the delta did not name, the agent requests every
    /// entry again.
    async fn fetch_entries(
        &mut self,
        client: &mut NodeClient<Channel>,
        previous: &Snapshot,
        now: i64,
    ) -> Result<(SyncResponse, Vec<CachedEntry>), AgentError> {
        let mut known = self.entries_revision;
        loop {
            let request = SyncRequest {
                entries_revision: known,
            };
            let stream = node::call("Sync", client.sync(request)).await?;
            let (response, changed, removed) =
                node::receive("Sync", read_sync_stream(stream)).await?;
            let entries = if response.full {
                unexpired(changed, now)
            } else {
                apply_delta(previous, changed, &removed, now)
            };
            let digest: EntriesDigest = entries
                .iter()
                .map(|cached| EntriesDigest::term(&cached.entry.id, cached.entry.revision_number))
                .collect();
            let matches = EntriesDigest::from_bytes(&response.entries_digest) == Some(digest);
            if matches || known == 0 {
                if !matches {
                    // Expected only while the clocks of agent and server disagree about an
                    // entry's expiry; the next round compares again.
                    tracing::debug!(
                        entries = entries.len(),
                        server_entries = response.entries_count,
                        "the entries digest differs from the server's after a full sync"
                    );
                }
                self.entries_revision = if matches {
                    response.entries_revision
                } else {
                    0
                };
                return Ok((response, entries));
            }
            tracing::debug!(
                known_revision = known,
                entries = entries.len(),
                server_entries = response.entries_count,
                "the entries digest differs from the server's after a delta; syncing in full"
            );
            known = 0;
        }
    }

    /// Builds the snapshot of one round from its entries, in the order workloads see.
    fn snapshot(
        &self,
        mut entries: Vec<CachedEntry>,
        jwt_authorities: Vec<JwtAuthority>,
        federated: BTreeMap<String, TrustDomainBundle>,
        revoked: Arc<Revoked>,
    ) -> Snapshot {
        sort_entries(&mut entries);
        Snapshot {
            generation: 0,
            trust_domain_id: self.trust_domain.id_string(),
            entries,
            x509_authorities: self.agent.bundle.clone(),
            jwt_authorities,
            federated,
            revoked,
        }
    }

    /// Logs the SVIDs dropped in this round and the size of the revoked set.
    fn log_revocations(&self, dropped: &[String], revoked: &Revoked) {
        if dropped.is_empty() {
            tracing::debug!(
                revoked_x509_svids = revoked.x509_count(),
                revoked_jwts = revoked.jti_count(),
                "the server's list of revoked credentials changed"
            );
            return;
        }
        tracing::info!(
            dropped = dropped.len(),
            revoked_x509_svids = revoked.x509_count(),
            revoked_jwts = revoked.jti_count(),
            "dropped X.509-SVIDs that the server revoked; their entries are not served until \
             the server signs new ones"
        );
        tracing::debug!(entry_ids = ?dropped, "entries whose X.509-SVID was revoked");
    }

    fn log_signing_failures(&mut self, failed: &[(String, String)]) {
        let mut now_failing = HashSet::with_capacity(failed.len());
        for (entry_id, reason) in failed {
            if self.failing_entries.contains(entry_id) {
                tracing::debug!(entry_id = %entry_id, %reason, "the server still does not sign the entry's SVID");
            } else {
                tracing::warn!(entry_id = %entry_id, %reason, "the server did not sign the entry's SVID; asking again at a later sync");
            }
            now_failing.insert(entry_id.clone());
        }
        self.failing_entries = now_failing;
    }

    /// Stores a changed local bundle on disk and in the TLS trust source. A bundle that is
    /// empty or unusable is ignored, so the agent keeps trusting the bundle it has.
    pub(crate) fn update_bundle(&mut self, bundle: &Bundle) {
        if bundle.x509_authorities.is_empty() || bundle.x509_authorities == self.agent.bundle {
            return;
        }
        let certs: Vec<CertificateDer<'_>> = bundle
            .x509_authorities
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        if let Err(error) = self.trust.set_bundle(self.trust_domain.clone(), &certs) {
            tracing::warn!(%error, "ignoring an invalid bundle from the server");
            return;
        }
        self.agent.bundle = bundle.x509_authorities.clone();
        tracing::info!(
            authorities = self.agent.bundle.len(),
            "trust bundle updated"
        );
        if let Err(error) = state::save_bundle(&self.data_dir, &self.agent.bundle) {
            tracing::warn!(%error, "failed to store the updated trust bundle");
        }
    }

    /// Renews the agent SVID with a new key once past half its lifetime or when a tainted
    /// authority signed it, then reconnects so that the server authenticates the new
    /// certificate.
    async fn renew_agent_if_due(
        &mut self,
        now: i64,
        tainted: &TaintedAuthorities,
    ) -> Result<(), AgentError> {
        let (not_before, not_after) = self.agent.validity()?;
        let signed_by_tainted = tainted.signed_chain(&self.agent.chain);
        if now < half_life(not_before, not_after) && !signed_by_tainted {
            return Ok(());
        }
        if signed_by_tainted {
            tracing::info!("renewing the agent SVID because a tainted authority signed it");
        }
        let key = state::generate_key()?;
        let request = RenewAgentRequest {
            csr: state::build_csr(&key)?,
        };
        let mut client = self.connection.client();
        let response = node::call("RenewAgent", client.renew_agent(request)).await?;

        let svid = response.svid.unwrap_or_default();
        if let Some(bundle) = &svid.bundle {
            // A CA rotated since the Sync of this round is in this bundle, not in ours yet.
            self.update_bundle(bundle);
        }
        let renewed = AgentState {
            key,
            chain: svid.cert_chain,
            bundle: self.agent.bundle.clone(),
        };
        let spiffe_id = renewed.verify(&self.trust_domain)?;
        self.svid_source
            .update(renewed.certificates(), renewed.private_key_der())?;
        self.agent = renewed;
        self.connection.reconnect()?;

        // Limit: the server records the new SVID as current before the agent stores it. A crash
        // or a failed write here leaves a stored SVID that the server rejects after a restart,
        // so the agent then needs a new join token.
        if let Err(error) = state::save(&self.data_dir, &self.agent) {
            tracing::error!(
                %error,
                "failed to store the renewed agent SVID; after a restart the agent will need a \
                 new join_token"
            );
        }
        let (_, expires_at) = self.agent.validity()?;
        tracing::info!(spiffe_id = %spiffe_id, expires_at, "agent SVID renewed");
        Ok(())
    }
}

/// Converts the federated bundles of a Sync response, keyed by trust domain name. Bundles
/// without a valid trust domain, and one for the local trust domain, are dropped.
fn federated_bundles(
    local: &TrustDomain,
    bundles: Vec<Bundle>,
) -> BTreeMap<String, TrustDomainBundle> {
    bundles
        .into_iter()
        .filter_map(|bundle| {
            let trust_domain = match TrustDomain::new(&bundle.trust_domain) {
                Ok(trust_domain) if &trust_domain != local => trust_domain,
                Ok(_) => return None,
                Err(error) => {
                    tracing::debug!(trust_domain = %bundle.trust_domain, %error, "skipping federated bundle");
                    return None;
                }
            };
            let converted = TrustDomainBundle {
                x509_authorities: bundle.x509_authorities,
                jwt_authorities: bundle.jwt_authorities,
            };
            Some((trust_domain.name().to_owned(), converted))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_retry_doubles_then_resets() {
        let mut retry = RevokedRetry::new(Duration::from_secs(5));
        assert!(retry.is_due(0));

        let mut now = 1_000;
        let mut pauses = Vec::new();
        for _ in 0..12 {
            retry.schedule(now);
            assert!(!retry.is_due(now));
            pauses.push(retry.at() - now);
            now = retry.at();
            assert!(retry.is_due(now));
        }

        // Each pause is its step of 5, 10, 20 ... 3600 s, shortened by at most a fifth.
        for (pause, step) in pauses
            .iter()
            .zip([5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560])
        {
            assert!((step * 4 / 5..=step).contains(pause), "{pauses:?}");
        }
        assert!(
            pauses[10..]
                .iter()
                .all(|pause| (2880..=3600).contains(pause)),
            "{pauses:?}"
        );

        // A clock set back by more than the longest pause does not add the jump.
        assert!(!retry.is_due(now - 3600));
        assert!(retry.is_due(now - 2 * 3600));

        retry.reset();
        assert!(retry.is_due(0));
        retry.schedule(now);
        assert!(
            (4..=5).contains(&(retry.at() - now)),
            "{}",
            retry.at() - now
        );
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| backoff.step().as_millis()).collect();
        let within = |delay: u128, base: u128| (base * 4 / 5..=base).contains(&delay);
        assert!(within(delays[0], 1_000), "{delays:?}");
        assert!(within(delays[1], 2_000), "{delays:?}");
        assert!(within(delays[4], 16_000), "{delays:?}");
        assert!(within(delays[5], 30_000), "{delays:?}");
        assert!(within(delays[7], 30_000), "{delays:?}");
    }

    #[test]
    fn federated_bundles_skip_local_and_invalid() {
        let local = TrustDomain::new("example.org").expect("trust domain");
        let bundle = |td: &str| Bundle {
            trust_domain: td.to_owned(),
            x509_authorities: vec![vec![1]],
            ..Bundle::default()
        };
        let converted = federated_bundles(
            &local,
            vec![
                bundle("example.org"),
                bundle("spiffe://other.test"),
                bundle("third.test"),
                bundle("Not A Domain"),
            ],
        );
        let names: Vec<&str> = converted.keys().map(String::as_str).collect();
        assert_eq!(names, ["other.test", "third.test"]);
    }
}
