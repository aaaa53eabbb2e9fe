//! Reads that tolerate replication lag, served by a read-only replica of the PostgreSQL
//! database when `ro_connection_string` names one, and by the primary otherwise.
//!
//! The contract of such a read: the caller names the revision it needs (a value of the change
//! counter that it read from the primary), and gets data at least that new. The replica
//! serves the read when its copy of the counter has reached that revision within [`LAG_WAIT`].
//! Otherwise, and whenever the replica fails, the primary serves it.
//!
//! Only a hot standby of the same database serves reads. Every new connection to the replica
//! must return the primary's datastore ID and be in recovery, and every read checks again that
//! the server is still in recovery and that its revision carries the primary's token for that
//! revision. A promoted standby takes its own writes and is no longer a copy, and a standby
//! of such a copy is in recovery with the right ID but gives its revisions other tokens.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::{DatastoreError, to_u64};

/// How long a read waits for the replica to replay up to the revision it needs before the
/// primary serves the read instead. Replay on a healthy replica takes milliseconds, and the
/// wait bounds what a lagging replica adds to the propagation of a change.
pub(crate) const LAG_WAIT: Duration = Duration::from_millis(250);

/// The pause between two looks at a lagging replica's revision.
const LAG_POLL: Duration = Duration::from_millis(5);

/// How long a failed replica is left alone before the next attempt. Each further failure in a
/// row doubles it, up to [`MAX_RETRY_AFTER`], so that a replica that keeps failing costs a
/// timeout rarely instead of once per read.
const RETRY_AFTER: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long a connection attempt, and each statement that checks the replica's state, may
/// take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a read of the entries changed since a revision may take on the replica before the
/// primary serves it instead. The read holds the index's refresh lock, so every agent sync
/// waits for it. A replica behind a broken network path can leave a statement without a
/// response, which PostgreSQL's own `statement_timeout` cannot end.
pub(crate) const CHANGES_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read of every entry may take on the replica. It runs when the server starts
/// and when its index must be rebuilt, so it allows for large indexes.
pub(crate) const FULL_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the replica may lag behind every read before a warning is logged.
const LAG_WARN_AFTER: Duration = Duration::from_secs(30);

/// How long opening the datastore waits for a reachable replica to show the datastore ID,
/// which a new database's replica receives only when it replays the migration.
const IDENTITY_WAIT: Duration = Duration::from_secs(2);

const REPLICA_POOL_SIZE: u32 = 4;

/// The isolation a replica read runs in: one snapshot for all its statements. PostgreSQL
/// allows `REPEATABLE READ` on a hot standby.
pub(crate) const SNAPSHOT_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Counts of reads that tolerate lag, for tests and telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Reads the replica served.
    pub replica_reads: u64,
    /// Reads the primary served because the replica lagged, failed or was not usable.
    pub primary_fallbacks: u64,
}

/// Whether the replica is tried, and after how many failures in a row it was left alone.
#[derive(Debug, Clone, Copy)]
enum Health {
    Usable,
    /// Not tried again before `until`.
    Failed {
        until: Instant,
        failures: u32,
    },
}

/// Since when the replica has lagged behind every read, and whether that was logged.
#[derive(Debug, Default)]
struct Lag {
    since: Option<Instant>,
    warned: bool,
}

/// The replica's connection pool, health and read counts.
#[derive(Debug)]
pub(crate) struct Replica {
    pool: AnyPool,
    /// The primary's pool, for the token check of each read.
    primary: AnyPool,
    /// The reason the pool last rejected a new connection, which the pool reports only as a
    /// timeout.
    last_rejection: std::sync::Arc<Mutex<Option<String>>>,
    health: Mutex<Health>,
    lag: Mutex<Lag>,
    replica_reads: AtomicU64,
    primary_fallbacks: AtomicU64,
}

/// The datastore ID and recovery state that a connection to the replica returned.
struct Inspection {
    /// The datastore ID, or `None` before the replica has replayed the migration that made it.
    datastore_id: Option<String>,
    /// Whether the server is a standby in recovery.
    in_recovery: bool,
}

impl Inspection {
    /// Returns the reason a connection with this inspection must not serve reads, or `None`
    /// when it may.
    fn problem(&self, primary_id: &str) -> Option<String> {
        match &self.datastore_id {
            None => Some(
                "the read-only replica has no datastore ID: it has not replayed the schema yet, \
                 or ro_connection_string names a database that twid did not create"
                    .to_owned(),
            ),
            Some(found) if found != primary_id => Some(format!(
                "the read-only replica has datastore ID {found}, but the primary has \
                 {primary_id}: it is not a copy of the same database"
            )),
            Some(_) if !self.in_recovery => Some(
                "the read-only replica is not in recovery (pg_is_in_recovery() is false), so \
                 it is not a standby: a promoted standby takes its own writes"
                    .to_owned(),
            ),
            Some(_) => None,
        }
    }
}

/// Locks `mutex`, also after a panic in another holder: every value guarded here stays valid
/// between statements.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the datastore ID and recovery state over `conn`.
async fn inspect(conn: &mut AnyConnection) -> Result<Inspection, sqlx::Error> {
    let in_recovery: bool = sqlx::query("SELECT pg_is_in_recovery() AS in_recovery")
        .fetch_one(&mut *conn)
        .await?
        .try_get("in_recovery")?;
    let datastore_id = match sqlx::query("SELECT id FROM datastore_identity")
        .fetch_optional(&mut *conn)
        .await
    {
        Ok(row) => row.map(|row| row.try_get("id")).transpose()?,
        // 42P01: the table does not exist yet on the replica.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => None,
        Err(error) => return Err(error),
    };
    Ok(Inspection {
        datastore_id,
        in_recovery,
    })
}

impl Replica {
    /// Creates the replica's pool, which connects lazily and accepts a connection only to a
    /// standby with `primary_id`, and inspects the replica once when it responds within a few
    /// seconds. A replica that cannot be reached, or is not a standby, is not an error: the
    /// primary serves until it can be used.
    ///
    /// # Errors
    /// Returns [`DatastoreError::ReplicaMismatch`] when the replica has another database's
    /// ID, and [`DatastoreError::InvalidConfig`] for a URL sqlx cannot parse.
    pub(crate) async fn open(
        url: &str,
        primary: AnyPool,
        primary_id: String,
    ) -> Result<Self, DatastoreError> {
        let expected = primary_id.clone();
        let last_rejection = std::sync::Arc::new(Mutex::new(None));
        let rejection = std::sync::Arc::clone(&last_rejection);
        let pool = AnyPoolOptions::new()
            .max_connections(REPLICA_POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| {
                let expected = expected.clone();
                let rejection = std::sync::Arc::clone(&rejection);
                Box::pin(async move {
                    let problem = inspect(conn).await?.problem(&expected);
                    let mut last = lock(&rejection);
                    last.clone_from(&problem);
                    match problem {
                        None => Ok(()),
                        Some(problem) => Err(sqlx::Error::Configuration(problem.into())),
                    }
                })
            })
            .connect_lazy(url)
            .map_err(|error| {
                DatastoreError::InvalidConfig(format!(
                    "ro_connection_string is not usable: {error}"
                ))
            })?;
        let replica = Self {
            pool,
            primary,
            last_rejection,
            health: Mutex::new(Health::Usable),
            lag: Mutex::new(Lag::default()),
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: AtomicU64::new(0),
        };
        replica.check_at_open(url, &primary_id).await?;
        Ok(replica)
    }

    /// Inspects the replica over a connection of its own, so that a replica of another
    /// database stops the start. Waits up to [`IDENTITY_WAIT`] for the datastore ID, which a
    /// replica receives only when it replays the migration that the primary just ran.
    async fn check_at_open(&self, url: &str, primary_id: &str) -> Result<(), DatastoreError> {
        let started = Instant::now();
        loop {
            let inspection = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut conn = AnyConnection::connect(url).await?;
                let inspection = inspect(&mut conn).await;
                let _ = conn.close().await;
                inspection
            })
            .await;
            let inspection = match inspection {
                Ok(Ok(inspection)) => inspection,
                Ok(Err(error)) => {
                    self.mark_failed(&error);
                    return Ok(());
                }
                Err(_) => {
                    self.mark_failed(&"the first connection timed out after 1 s");
                    return Ok(());
                }
            };
            match &inspection.datastore_id {
                Some(found) if found != primary_id => {
                    return Err(DatastoreError::ReplicaMismatch {
                        found: found.clone(),
                        expected: primary_id.to_owned(),
                    });
                }
                None if started.elapsed() < IDENTITY_WAIT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => match inspection.problem(primary_id) {
                    None => {
                        tracing::info!("read-only replica verified; index reads go to it");
                        return Ok(());
                    }
                    Some(problem) => {
                        self.mark_failed(&problem);
                        return Ok(());
                    }
                },
            }
        }
    }

    fn health(&self) -> Health {
        *lock(&self.health)
    }

    /// Returns a read transaction on the replica whose snapshot has reached `at_least`, or
    /// `None` when the primary must serve the read: the replica lags past [`LAG_WAIT`], fails,
    /// is not a standby of the same database, or failed recently.
    pub(crate) async fn snapshot(
        &self,
        at_least: u64,
    ) -> Option<sqlx::Transaction<'static, sqlx::Any>> {
        if let Health::Failed { until, .. } = self.health()
            && Instant::now() < until
        {
            return self.fall_back();
        }
        let started = Instant::now();
        let deadline = started + LAG_WAIT;
        loop {
            let begin = tokio::time::timeout(CONNECT_TIMEOUT, self.pool.begin_with(SNAPSHOT_BEGIN));
            let mut tx = match begin.await {
                Ok(Ok(tx)) => tx,
                Ok(Err(sqlx::Error::PoolTimedOut)) => {
                    let rejection = lock(&self.last_rejection).clone();
                    return match rejection {
                        Some(reason) => self.failed(&reason),
                        None => self.failed(&sqlx::Error::PoolTimedOut),
                    };
                }
                Ok(Err(error)) => return self.failed(&error),
                Err(_) => return self.failed(&"BEGIN timed out after 1 s"),
            };
            let revision_query = tokio::time::timeout(
                CONNECT_TIMEOUT,
                sqlx::query(
                    "SELECT c.revision, t.token, pg_is_in_recovery() AS in_recovery \
                     FROM changes c LEFT JOIN change_tokens t ON t.revision = c.revision",
                )
                .fetch_one(&mut *tx),
            );
            let row = match revision_query.await {
                Err(_) => return self.failed(&"the revision read timed out after 1 s"),
                Ok(Err(error)) => return self.failed(&error),
                Ok(Ok(row)) => row,
            };
            match row.try_get::<bool, _>("in_recovery") {
                Ok(true) => {}
                Ok(false) => {
                    return self.failed(
                        &"the read-only replica left recovery (was it promoted?) and is no \
                          longer a copy of the primary",
                    );
                }
                Err(error) => return self.failed(&error),
            }
            let revision = match row
                .try_get::<i64, _>("revision")
                .map_err(DatastoreError::from)
                .and_then(|value| to_u64("changes.revision", value))
            {
                Ok(revision) => revision,
                Err(error) => return self.failed(&error),
            };
            if revision >= at_least {
                let token = match row.try_get::<Option<i64>, _>("token") {
                    Ok(token) => token,
                    Err(error) => return self.failed(&error),
                };
                if !self.same_history(revision, token).await {
                    return self.fall_back();
                }
                self.caught_up();
                return Some(tx);
            }
            drop(tx);
            if Instant::now() >= deadline {
                tracing::debug!(
                    revision,
                    at_least,
                    "read-only replica lags; the primary serves the read"
                );
                self.lagged(revision, at_least);
                if started.elapsed() > LAG_WAIT * 2 {
                    // Each look took long as well, so the next reads would wait as long. A
                    // retry interval keeps them on the primary.
                    return self.failed(&format_args!(
                        "the read-only replica lags and took {} ms to report its revision",
                        started.elapsed().as_millis()
                    ));
                }
                return self.fall_back();
            }
            tokio::time::sleep(LAG_POLL).await;
        }
    }

    /// Returns whether the primary has the replica's `token` for `revision`, which shows
    /// that both have the same history up to that revision. Records the failure otherwise.
    async fn same_history(&self, revision: u64, token: Option<i64>) -> bool {
        let Ok(revision_i64) = i64::try_from(revision) else {
            self.mark_failed(&"the replica's revision exceeds BIGINT");
            return false;
        };
        let primary_token = sqlx::query("SELECT token FROM change_tokens WHERE revision = $1")
            .bind(revision_i64)
            .fetch_optional(&self.primary)
            .await
            .and_then(|row| row.map(|row| row.try_get::<i64, _>("token")).transpose());
        match (primary_token, token) {
            (Ok(Some(expected)), Some(found)) if expected == found => true,
            (Ok(None), _) => {
                self.mark_failed(&format_args!(
                    "the primary has no change token for revision {revision}, so the replica's \
                     history cannot be checked; a server of an older twid version may have \
                     written that revision"
                ));
                false
            }
            (Err(error), _) => {
                // The primary failed, not the replica, and the primary's own read reports it.
                tracing::debug!(%error, "the primary failed the replica's token check");
                false
            }
            _ => {
                tracing::error!(
                    revision,
                    "the read-only replica's history differs from the primary's at this \
                     revision: it is a promoted copy or a standby of one; reads stay on the \
                     primary"
                );
                self.mark_failed(&"the replica's change token differs from the primary's");
                false
            }
        }
    }

    /// Records that the replica lagged past [`LAG_WAIT`], and warns once when it has lagged
    /// behind every read for [`LAG_WARN_AFTER`].
    fn lagged(&self, revision: u64, at_least: u64) {
        let mut lag = lock(&self.lag);
        let since = *lag.since.get_or_insert_with(Instant::now);
        if !lag.warned && since.elapsed() >= LAG_WARN_AFTER {
            lag.warned = true;
            tracing::warn!(
                revision,
                at_least,
                lagging_s = since.elapsed().as_secs(),
                "the read-only replica has not caught up with the primary; the primary serves \
                 the index reads until it does"
            );
        }
    }

    fn caught_up(&self) {
        let mut lag = lock(&self.lag);
        if lag.since.take().is_some() && lag.warned {
            tracing::info!("the read-only replica caught up; index reads go to it again");
        }
        lag.warned = false;
    }

    /// Records that the replica served a read from a [`Replica::snapshot`] transaction.
    pub(crate) fn record_served(&self) {
        self.replica_reads.fetch_add(1, Ordering::Relaxed);
        let mut health = lock(&self.health);
        if matches!(*health, Health::Failed { .. }) {
            tracing::info!("the read-only replica serves index reads again");
        }
        *health = Health::Usable;
    }

    /// Records that the replica failed a read that the primary will now serve.
    pub(crate) fn failed<T>(&self, error: &dyn std::fmt::Display) -> Option<T> {
        self.mark_failed(error);
        self.fall_back()
    }

    /// Leaves the replica alone for a retry interval that doubles with each failure in a row.
    fn mark_failed(&self, error: &dyn std::fmt::Display) {
        let mut health = lock(&self.health);
        let failures = match *health {
            Health::Usable => 1,
            Health::Failed { failures, .. } => failures.saturating_add(1),
        };
        let retry_after = RETRY_AFTER
            .saturating_mul(1 << (failures - 1).min(5))
            .min(MAX_RETRY_AFTER);
        if failures == 1 {
            tracing::warn!(
                %error,
                retry_after_s = retry_after.as_secs(),
                "the read-only replica cannot be used; the primary serves reads until it can"
            );
        } else {
            tracing::debug!(
                %error,
                failures,
                retry_after_s = retry_after.as_secs(),
                "the read-only replica failed again"
            );
        }
        *health = Health::Failed {
            until: Instant::now() + retry_after,
            failures,
        };
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
