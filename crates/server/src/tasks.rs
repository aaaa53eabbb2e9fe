//! Background work: CA rotation, server SVID renewal, bundle publication and pruning.
//!
//! Several server replicas may share one PostgreSQL database. Each rotates its own CA, but a
//! job that changes shared rows (pruning) runs under a job lock ([`run_exclusive`]), so one
//! replica at a time runs it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use twid_proto::types as pb;
use twid_spiffe::bundle::SpiffeBundle;

use crate::{ServerError, Shared};

/// Returns how often the rotation task wakes: often enough for short test CA lifetimes, rarely
/// enough to cost nothing with the 24-hour default.
fn rotation_tick(ca_ttl: Duration) -> Duration {
    (ca_ttl / 120).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Builds the trust domain's bundle from the current authorities, stores it, and makes it the
/// bundle that syncs hand out.
pub(crate) async fn publish_bundle(shared: &Shared) -> Result<(), ServerError> {
    let _guard = shared.publish_lock.lock().await;
    let snapshot = shared.ca.snapshot();
    let trust_domain = shared.ca.trust_domain().clone();
    let mut spiffe = SpiffeBundle::new(trust_domain.clone());
    spiffe.x509_authorities = snapshot.x509_authorities();
    let mut jwt_authorities = Vec::new();
    for key in snapshot.jwt_public_keys() {
        let authority = twid_spiffe::jwt::JwtAuthority::from_spki_der(&key.key_id, &key.public_key)
            .map_err(|error| ServerError::Encode(error.to_string()))?;
        spiffe.jwt_authorities.insert(key.key_id.clone(), authority);
        jwt_authorities.push(pb::JwtAuthority {
            key_id: key.key_id,
            public_key: key.public_key,
            expires_at: crate::convert::unix_seconds(key.not_after),
        });
    }
    // Issuer keys verify only tokens whose `sub` is in this trust domain, like the default
    // keys, because the agent validates every JWT-SVID against the bundle its `sub` names.
    for (authority, key) in shared.issuers.bundle_authorities() {
        let key_id = key.key_id().to_owned();
        if spiffe.jwt_authorities.contains_key(&key_id) {
            continue;
        }
        spiffe.jwt_authorities.insert(key_id.clone(), authority);
        jwt_authorities.push(pb::JwtAuthority {
            key_id,
            public_key: key.public_key_spki_der(),
            expires_at: crate::convert::unix_seconds(key.not_after()),
        });
    }
    let json = spiffe.to_json();
    let sequence = shared.datastore.set_bundle(&trust_domain, &json).await?;
    shared.bundle.store(Arc::new(pb::Bundle {
        trust_domain: trust_domain.name().to_owned(),
        x509_authorities: spiffe
            .x509_authorities
            .iter()
            .map(|cert| cert.to_vec())
            .collect(),
        jwt_authorities,
        refresh_hint: 0,
        sequence_number: sequence,
    }));
    tracing::info!(%trust_domain, sequence, "bundle published");
    Ok(())
}

/// Starts the rotation and pruning tasks.
pub(crate) fn spawn_background(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let span = tracing::info_span!("ca_rotator");
    tasks.spawn(rotation_loop(Arc::clone(shared), shutdown.clone()).instrument(span));
    let span = tracing::info_span!("pruner");
    tasks.spawn(prune_loop(Arc::clone(shared), shutdown.clone()).instrument(span));
    // Reading every entry takes seconds for large sets, so it starts now rather than at the
    // first agent's sync. A failure here is retried by that sync.
    let index = Arc::clone(shared);
    tasks.spawn(
        async move {
            if let Err(error) = index.entries.refresh().await {
                tracing::warn!(error = %error_chain(&error), "loading the entry index failed");
            }
        }
        .instrument(tracing::info_span!("entry_index")),
    );
    let span = tracing::info_span!("jwt_issuers");
    tasks.spawn(issuer_loop(Arc::clone(shared), shutdown.clone()).instrument(span));
}

/// How often issuer key files are checked for changes; a `stat` per issuer is cheap.
const ISSUER_POLL_INTERVAL: Duration = Duration::from_secs(2);

async fn issuer_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(ISSUER_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !shared.issuers.refresh(SystemTime::now()) {
            continue;
        }
        if let Err(error) = shared.issuers.persist().await {
            tracing::error!(error = %error_chain(&error), "failed to store JWT issuer key states");
        }
        if let Err(error) = publish_bundle(&shared).await {
            tracing::error!(error = %error_chain(&error), "bundle publication after JWT issuer key change failed");
        }
    }
}

async fn rotation_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(rotation_tick(shared.config.ca_ttl));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = rotation_step(&shared).await {
            tracing::error!(error = %error_chain(&error), "CA rotation step failed; retrying");
        }
    }
}

/// Rotates this replica's CA and reloads the other replicas' authorities. The reload is the
/// fallback for a change notification lost while the listener reconnected.
async fn rotation_step(shared: &Shared) -> Result<(), ServerError> {
    let now = SystemTime::now();
    let rotated = shared.ca.rotate(now).await?;
    let peers_changed = shared.ca.reload_peers(now).await?;
    if rotated || peers_changed {
        publish_bundle(shared).await?;
    }
    shared.identity.refresh(&shared.ca.snapshot(), now)
}

/// Reloads the other replicas' authorities after a change notification and, when they
/// changed, publishes the new union bundle and the TLS trust that checks agents. Returns
/// whether they changed.
pub(crate) async fn reload_peer_authorities(shared: &Shared) -> Result<bool, ServerError> {
    let now = SystemTime::now();
    if !shared.ca.reload_peers(now).await? {
        return Ok(false);
    }
    publish_bundle(shared).await?;
    shared.identity.refresh(&shared.ca.snapshot(), now)?;
    Ok(true)
}

/// Job lock name of expired join token pruning.
const PRUNE_JOIN_TOKENS_JOB: &str = "prune_join_tokens";

/// Job lock name of expired entry pruning.
const PRUNE_ENTRIES_JOB: &str = "prune_expired_entries";
const PRUNE_ENTRY_CHANGES_JOB: &str = "prune_entry_changes";

/// How long `entry_changes` rows are kept. A server whose entry index last read the changes
/// longer ago reads every entry again, so this only bounds the table's size.
const ENTRY_CHANGE_RETENTION: Duration = Duration::from_secs(60 * 60);

async fn prune_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = crate::convert::unix_now();
        let datastore = &shared.datastore;
        let pruned = run_exclusive(datastore, PRUNE_JOIN_TOKENS_JOB, async {
            datastore.prune_join_tokens(now).await
        })
        .await;
        if let Err(error) = pruned {
            tracing::warn!(error = %error, "failed to prune expired join tokens");
        }
        let pruned = run_exclusive(datastore, PRUNE_ENTRIES_JOB, async {
            datastore.prune_expired_entries(now).await
        })
        .await;
        match pruned {
            // On PostgreSQL the deletion's notification wakes every replica's agents; on
            // SQLite only this hint does.
            Ok(Some(deleted)) if deleted > 0 => shared.hints.notify("entry"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "failed to prune expired entries"),
        }
        let retention = i64::try_from(ENTRY_CHANGE_RETENTION.as_secs()).unwrap_or(i64::MAX);
        let pruned = run_exclusive(datastore, PRUNE_ENTRY_CHANGES_JOB, async {
            datastore
                .prune_entry_changes(now.saturating_sub(retention))
                .await
        })
        .await;
        if let Err(error) = pruned {
            tracing::warn!(error = %error, "failed to prune entry change rows");
        }
    }
}

/// Runs `job` while holding the job lock `name`, and returns its output, or `None` without
/// running it when another replica holds the lock. On SQLite the job always runs.
///
/// # Errors
/// Returns the failure to take the lock, or the job's own error.
pub(crate) async fn run_exclusive<T, E>(
    datastore: &twid_datastore::Datastore,
    name: &str,
    job: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, E>
where
    E: From<twid_datastore::DatastoreError>,
{
    let Some(lock) = datastore.try_lock_job(name).await? else {
        tracing::debug!(job = name, "job skipped: another replica runs it");
        return Ok(None);
    };
    let output = job.await;
    drop(lock);
    output.map(Some)
}

/// Formats an error with its sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
