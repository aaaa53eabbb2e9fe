//! Reads that tolerate replication lag, served by a read-only replica of the PostgreSQL
//! database when `ro_connection_string` names one, and by the primary otherwise.
//!
//! The contract of such a read: the caller names the revision it needs (a value of the change
//! counter that it read from the primary), and gets data at least that new. The replica
//! serves the read when its copy of the counter has reached that revision within [`LAG_WAIT`];
//! otherwise, and whenever the replica fails, the primary serves it. A replica is used only after
//! it returned the primary's datastore ID, so a connection string that reaches another
//! database is never read from.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::{DatastoreError, to_u64};

/// How long a read waits for the replica to replay up to the revision it needs before the
/// primary serves the read instead. Replay on a healthy replica takes milliseconds; the wait bounds
/// what a lagging one adds to the propagation of a change.
pub(crate) const LAG_WAIT: Duration = Duration::from_millis(250);

/// The pause between two looks at a lagging replica's revision.
const LAG_POLL: Duration = Duration::from_millis(5);

/// How long a failed replica is left alone before the next attempt, so that a dead replica
/// costs one connection timeout per interval instead of one per read.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long a connection attempt, and each statement that checks the replica's state, may
/// take. A dead replica costs one such wait per [`RETRY_AFTER`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a read on the replica may take before the primary serves it instead. A replica
/// behind a broken network path can leave a statement without a response; PostgreSQL's own
/// `statement_timeout` cannot end that, so the client bounds it.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening the datastore waits for a reachable replica to show the datastore ID,
/// which a new database's replica receives only when it replays the migration.
const IDENTITY_WAIT: Duration = Duration::from_secs(5);

const REPLICA_POOL_SIZE: u32 = 4;

/// The isolation a replica read runs in: one snapshot for all its statements. PostgreSQL
/// allows `REPEATABLE READ` on a hot standby.
pub(crate) const SNAPSHOT_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Counts of reads that tolerate lag, for tests and telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Reads the replica served.
    pub replica_reads: u64,
    /// Reads the primary served because the replica lagged, failed or was not yet verified.
    pub primary_fallbacks: u64,
}

#[derive(Debug, Clone, Copy)]
enum Health {
    /// Not yet shown to hold the primary's datastore ID.
    Unverified,
    Verified,
    /// Failed; not tried again before this instant.
    Failed(Instant),
}

/// The replica's connection pool, health and read counts.
#[derive(Debug)]
pub(crate) struct Replica {
    pool: AnyPool,
    primary_id: String,
    health: Mutex<Health>,
    replica_reads: AtomicU64,
    primary_fallbacks: AtomicU64,
}

/// The result of comparing the replica's datastore ID with the primary's.
enum Identity {
    Same,
    Missing,
    Different(String),
}

impl Replica {
    /// Connects lazily to `url` and checks, when the replica responds within a few seconds, that
    /// it contains `primary_id`. An unreachable replica is not an error: the primary serves until
    /// it responds.
    ///
    /// # Errors
    /// Returns [`DatastoreError::ReplicaMismatch`] when the replica has another database's
    /// ID, and [`DatastoreError::InvalidConfig`] for a URL sqlx cannot parse.
    pub(crate) async fn open(url: &str, primary_id: String) -> Result<Self, DatastoreError> {
        let pool = AnyPoolOptions::new()
            .max_connections(REPLICA_POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy(url)
            .map_err(|error| {
                DatastoreError::InvalidConfig(format!(
                    "ro_connection_string is not usable: {error}"
                ))
            })?;
        let replica = Self {
            pool,
            primary_id,
            health: Mutex::new(Health::Unverified),
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: AtomicU64::new(0),
        };
        let started = Instant::now();
        loop {
            match replica.identity().await {
                Ok(Identity::Same) => {
                    replica.set_health(Health::Verified);
                    tracing::info!("read-only replica verified; index reads go to it");
                    break;
                }
                Ok(Identity::Different(found)) => {
                    return Err(DatastoreError::ReplicaMismatch {
                        found,
                        expected: replica.primary_id.clone(),
                    });
                }
                Ok(Identity::Missing) if started.elapsed() < IDENTITY_WAIT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Identity::Missing) => {
                    tracing::warn!(
                        "the read-only replica has no datastore ID yet; the primary serves \
                         every read until the replica has replayed the schema"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "the read-only replica did not respond; the primary serves every read \
                         until it does"
                    );
                    replica.set_health(Health::Failed(Instant::now() + RETRY_AFTER));
                    break;
                }
            }
        }
        Ok(replica)
    }

    fn set_health(&self, health: Health) {
        *self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = health;
    }

    fn health(&self) -> Health {
        *self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn identity(&self) -> Result<Identity, sqlx::Error> {
        let query = sqlx::query("SELECT id FROM datastore_identity").fetch_optional(&self.pool);
        let Ok(result) = tokio::time::timeout(CONNECT_TIMEOUT, query).await else {
            return Err(sqlx::Error::PoolTimedOut);
        };
        let row = match result {
            Ok(row) => row,
            // 42P01: the table does not exist yet on the replica.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
                return Ok(Identity::Missing);
            }
            Err(error) => return Err(error),
        };
        let Some(row) = row else {
            return Ok(Identity::Missing);
        };
        let id: String = row.try_get("id")?;
        Ok(if id == self.primary_id {
            Identity::Same
        } else {
            Identity::Different(id)
        })
    }

    /// Returns a read transaction on the replica whose snapshot has reached `at_least`, or
    /// `None` when the primary must serve the read: the replica lags past [`LAG_WAIT`], fails, contains
    /// another database, or was recently found failed.
    pub(crate) async fn snapshot(
        &self,
        at_least: u64,
    ) -> Option<sqlx::Transaction<'static, sqlx::Any>> {
        match self.health() {
            Health::Verified => {}
            Health::Failed(until) if Instant::now() < until => return self.fall_back(),
            Health::Failed(_) | Health::Unverified => match self.identity().await {
                Ok(Identity::Same) => {
                    tracing::info!("read-only replica verified; index reads go to it");
                    self.set_health(Health::Verified);
                }
                Ok(Identity::Missing) => return self.fall_back(),
                Ok(Identity::Different(found)) => {
                    tracing::error!(
                        found,
                        expected = self.primary_id,
                        "the read-only replica contains another database; reads stay on the primary"
                    );
                    self.set_health(Health::Failed(Instant::now() + RETRY_AFTER));
                    return self.fall_back();
                }
                Err(error) => return self.failed(&error),
            },
        }
        let deadline = Instant::now() + LAG_WAIT;
        loop {
            let begin = tokio::time::timeout(CONNECT_TIMEOUT, self.pool.begin_with(SNAPSHOT_BEGIN));
            let mut tx = match begin.await {
                Ok(Ok(tx)) => tx,
                Ok(Err(error)) => return self.failed(&error),
                Err(_) => return self.failed(&"BEGIN timed out after 1 s"),
            };
            let look = tokio::time::timeout(
                CONNECT_TIMEOUT,
                sqlx::query("SELECT revision FROM changes").fetch_one(&mut *tx),
            );
            let revision = match look.await {
                Err(_) => return self.failed(&"the revision read timed out after 1 s"),
                Ok(Err(error)) => return self.failed(&error),
                Ok(Ok(row)) => row
                    .try_get::<i64, _>("revision")
                    .map_err(DatastoreError::from)
                    .and_then(|value| to_u64("changes.revision", value)),
            };
            match revision {
                Ok(revision) if revision >= at_least => return Some(tx),
                Ok(revision) if Instant::now() < deadline => {
                    drop(tx);
                    tracing::trace!(revision, at_least, "read-only replica lags; waiting");
                    tokio::time::sleep(LAG_POLL).await;
                }
                Ok(revision) => {
                    tracing::debug!(
                        revision,
                        at_least,
                        "read-only replica lags; the primary serves the read"
                    );
                    return self.fall_back();
                }
                Err(error) => {
                    tracing::warn!(%error, "the read-only replica returned a bad revision");
                    self.set_health(Health::Failed(Instant::now() + RETRY_AFTER));
                    return self.fall_back();
                }
            }
        }
    }

    /// Records that the replica served a read from a [`Replica::snapshot`] transaction.
    pub(crate) fn record_served(&self) {
        self.replica_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that the replica failed a read that the primary will now serve.
    pub(crate) fn failed<T>(&self, error: &dyn std::fmt::Display) -> Option<T> {
        if !matches!(self.health(), Health::Failed(_)) {
            tracing::warn!(
                %error,
                retry_after_s = RETRY_AFTER.as_secs(),
                "the read-only replica failed; the primary serves reads until it responds"
            );
        }
        self.set_health(Health::Failed(Instant::now() + RETRY_AFTER));
        self.fall_back()
    }

    fn fall_back<T>(&self) -> Option<T> {
        self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(crate) fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            replica_reads: self.replica_reads.load(Ordering::Relaxed),
            primary_fallbacks: self.primary_fallbacks.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}
