//! The server's SQL datastore: registration entries, attested agents, join tokens, trust
//! bundles and CA state, in SQLite (embedded, the default) or PostgreSQL.
//!
//! Both backends share one code path through sqlx's `Any` driver, so every statement uses `$n`
//! placeholders and only basic column types: times are BIGINT unix seconds and lists are JSON
//! text. Every entry, agent and bundle write also increments the single-row `changes` counter in
//! the same transaction, so [`Datastore::current_revision`] changes whenever such data does.
//! On PostgreSQL, the writes that agents depend on also send a change notification, which
//! other servers on the same database receive through [`Datastore::listen_for_changes`].
//! The datastore stores what the server decided and enforces no policy beyond uniqueness.

#![forbid(unsafe_code)]

mod agents;
mod bundles;
mod ca_state;
mod entries;
mod error;
mod federation;
mod issuance_log;
mod job_lock;
mod join_tokens;
mod migrate;
mod notify;
mod policy;
mod replica;
mod revocation;
mod sqlite;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection as _, Row};
use twid_spiffe::{SpiffeId, TrustDomain};

pub use bundles::StoredBundle;
pub use entries::{EntryChanges, EntryFilter, EntrySnapshot};
pub use error::DatastoreError;
pub use federation::{BundleEndpointProfile, FederationRelationship};
pub use issuance_log::{
    AsIssuanceLogRow, IssuanceLogAppend, IssuanceLogCheckpoint, IssuanceLogHead, IssuanceLogRecord,
    IssuanceLogRowRef, IssuanceLogWriter, StoredLogRow, WriteOutcome,
};
pub use job_lock::JobLock;
pub use join_tokens::JoinToken;
pub use notify::{CHANGES_CHANNEL, ChangeEvent, ChangeKind, ChangeListener};
pub use policy::PolicyVersion;
pub use replica::ReplicaStats;
pub use revocation::{IssuedCredential, NewRevocation, RevocationRule, RevokedCredential};

/// The SQL backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    /// An embedded SQLite file; the connection string is its path.
    #[serde(alias = "sqlite3")]
    Sqlite,
    /// A PostgreSQL server; the connection string is a `postgres://` URL.
    #[serde(alias = "postgresql")]
    Postgres,
}

/// Location and kind of the datastore.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DatastoreConfig {
    /// The backend.
    pub database_type: DatabaseType,
    /// A file path for SQLite, a `postgres://` URL for PostgreSQL.
    pub connection_string: String,
    /// A `postgres://` URL of a read-only replica of the same PostgreSQL database, which
    /// serves the reads that tolerate replication lag (SPIRE's `ro_connection_string`).
    #[serde(default)]
    pub ro_connection_string: Option<String>,
}

/// Connections to the store. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct Datastore {
    pool: AnyPool,
    backend: DatabaseType,
    /// The SQLite file, which the issuance log writer opens a connection of its own to.
    sqlite_path: Option<std::sync::Arc<Path>>,
    /// The PostgreSQL URL, which change listeners connect to on a connection of their own.
    postgres_url: Option<notify::PostgresUrl>,
    /// The read-only replica, when `ro_connection_string` names one.
    replica: Option<std::sync::Arc<replica::Replica>>,
}

/// The future of a read that [`Datastore::read_tolerating_lag`] runs on either connection.
type ReadFuture<'c, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, DatastoreError>> + Send + 'c>>;

/// Pool size for PostgreSQL. SQLite uses one connection because it allows one writer at a
/// time anyway, and a single connection avoids `SQLITE_BUSY` on lock upgrades.
const POSTGRES_POOL_SIZE: u32 = 8;

/// How long opening the datastore waits for its first PostgreSQL connection, as long as the
/// pool waits for one.
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Datastore {
    /// Opens the configured datastore and applies pending migrations.
    ///
    /// # Errors
    /// Returns [`DatastoreError::SchemaTooNew`] for a database migrated by a newer binary,
    /// or the connection or migration failure.
    pub async fn open(config: &DatastoreConfig) -> Result<Self, DatastoreError> {
        match config.database_type {
            DatabaseType::Sqlite if config.ro_connection_string.is_some() => {
                Err(DatastoreError::InvalidConfig(
                    "ro_connection_string needs database_type \"postgres\"; an embedded \
                     SQLite file has no replicas"
                        .into(),
                ))
            }
            DatabaseType::Sqlite => Self::open_sqlite(Path::new(&config.connection_string)).await,
            DatabaseType::Postgres => {
                let mut store = Self::open_postgres(&config.connection_string).await?;
                if let Some(url) = &config.ro_connection_string {
                    let id = store.datastore_id().await?;
                    store.replica = Some(std::sync::Arc::new(
                        replica::Replica::open(url, store.pool.clone(), id).await?,
                    ));
                }
                Ok(store)
            }
        }
    }

    /// Opens (creating with mode 0600 if missing) the SQLite file at `path` and applies pending
    /// migrations. The file runs in WAL mode with `synchronous=FULL`.
    ///
    /// # Errors
    /// Returns the file, connection or migration failure.
    pub async fn open_sqlite(path: &Path) -> Result<Self, DatastoreError> {
        let url = sqlite::prepare_file(path)?;
        sqlx::any::install_default_drivers();
        // One direct connection first: a pool would retry a corrupt file until its acquire
        // timeout and then report only "pool timed out", without the file or the cause.
        let open_error = |source| DatastoreError::Open {
            path: path.to_owned(),
            source,
        };
        // While another process switches a new file to WAL mode, SQLite can report the file
        // as locked at once, without waiting for busy_timeout, so the probe retries for a while.
        let started = std::time::Instant::now();
        loop {
            match sqlite::probe(&url).await {
                Err(error)
                    if sqlite::is_busy(&error) && started.elapsed() < sqlite::OPEN_BUSY_RETRY =>
                {
                    tracing::debug!(%error, "sqlite file busy while opening; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => {
                    result.map_err(open_error)?;
                    break;
                }
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| Box::pin(sqlite::configure_connection(conn)))
            .connect(&url)
            .await?;
        let mut store = Self::finish_open(pool, DatabaseType::Sqlite).await?;
        store.sqlite_path = Some(path.into());
        Ok(store)
    }

    async fn open_postgres(url: &str) -> Result<Self, DatastoreError> {
        sqlx::any::install_default_drivers();
        // A pool retries a failed connection until its acquire timeout and then reports only
        // the timeout, so one connection first reports why PostgreSQL cannot be reached.
        match tokio::time::timeout(POSTGRES_CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
            Ok(Ok(probe)) => {
                // The pool opens its own connections, so a failed close changes nothing.
                let _ = probe.close().await;
            }
            Ok(Err(error)) => return Err(postgres_connect_error(error)),
            Err(_) => {
                return Err(DatastoreError::Unreachable(format!(
                    "no connection within {} s",
                    POSTGRES_CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(POSTGRES_POOL_SIZE)
            .connect(url)
            .await
            .map_err(postgres_connect_error)?;
        let mut store = Self::finish_open(pool, DatabaseType::Postgres).await?;
        store.postgres_url = Some(notify::PostgresUrl(url.into()));
        Ok(store)
    }

    async fn finish_open(pool: AnyPool, backend: DatabaseType) -> Result<Self, DatastoreError> {
        migrate::run(&pool, backend).await?;
        tracing::debug!(backend = ?backend, "datastore opened");
        Ok(Self {
            pool,
            backend,
            sqlite_path: None,
            postgres_url: None,
            replica: None,
        })
    }

    /// Returns the backend this store runs on.
    pub fn database_type(&self) -> DatabaseType {
        self.backend
    }

    /// Returns the change counter, which grows with every entry, agent or bundle write. Agents'
    /// sync can skip work while it stays the same.
    ///
    /// # Errors
    /// Returns the query failure, or [`DatastoreError::Corrupt`] if the counter row is missing.
    pub async fn current_revision(&self) -> Result<u64, DatastoreError> {
        let row = sqlx::query("SELECT revision FROM changes")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DatastoreError::Corrupt("the changes table has no row".into()))?;
        to_u64("changes.revision", row.try_get("revision")?)
    }

    /// Returns the change counter, and the change token of revision `of` or `None` when that
    /// revision has none, in one query. A reader that keeps the token of the revision it has
    /// read compares it with this one to notice that the database lost that revision, as in a
    /// failover to a standby that had not received it.
    ///
    /// # Errors
    /// Returns the query failure, or [`DatastoreError::Corrupt`] if the counter row is missing.
    pub async fn current_revision_and_token_of(
        &self,
        of: u64,
    ) -> Result<(u64, Option<i64>), DatastoreError> {
        let of = i64::try_from(of)
            .map_err(|_| DatastoreError::Corrupt(format!("revision {of} exceeds BIGINT")))?;
        let row = sqlx::query(
            "SELECT revision, (SELECT token FROM change_tokens WHERE revision = $1) AS token \
             FROM changes",
        )
        .bind(of)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| DatastoreError::Corrupt("the changes table has no row".into()))?;
        let revision = to_u64("changes.revision", row.try_get("revision")?)?;
        Ok((revision, row.try_get("token")?))
    }

    /// Returns the random ID the migrations gave this database, which its replicas share.
    ///
    /// # Errors
    /// Returns the query failure, or [`DatastoreError::Corrupt`] if the row is missing.
    pub async fn datastore_id(&self) -> Result<String, DatastoreError> {
        let row = sqlx::query("SELECT id FROM datastore_identity")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DatastoreError::Corrupt("datastore_identity has no row".into()))?;
        Ok(row.try_get("id")?)
    }

    /// Returns how many lag-tolerant reads the read-only replica and the primary served, or
    /// `None` without a replica.
    pub fn replica_stats(&self) -> Option<ReplicaStats> {
        self.replica.as_ref().map(|replica| replica.stats())
    }

    /// Runs `read` with `argument` in one snapshot of the read-only replica when the replica
    /// has reached revision `at_least`. The primary serves the read instead when there is no
    /// replica or the replica lags, fails, or does not finish within `timeout`.
    async fn read_tolerating_lag<T>(
        &self,
        at_least: u64,
        timeout: Duration,
        description: &'static str,
        argument: u64,
        read: for<'c> fn(&'c mut AnyConnection, u64) -> ReadFuture<'c, T>,
    ) -> Result<T, DatastoreError> {
        if let Some(replica) = &self.replica
            && let Some(mut tx) = replica.snapshot(at_least).await
        {
            match tokio::time::timeout(timeout, read(&mut tx, argument)).await {
                Ok(Ok(value)) => {
                    replica.record_served();
                    tracing::debug!(source = "replica", at_least, "{description} read");
                    return Ok(value);
                }
                Ok(Err(error)) => replica.failed::<()>(&error),
                Err(_) => replica.failed::<()>(&format_args!(
                    "the {description} read timed out after {} s",
                    timeout.as_secs()
                )),
            };
        }
        self.read_on_primary(description, argument, read).await
    }

    /// Runs `read` with `argument` in one snapshot of the primary.
    async fn read_on_primary<T>(
        &self,
        description: &'static str,
        argument: u64,
        read: for<'c> fn(&'c mut AnyConnection, u64) -> ReadFuture<'c, T>,
    ) -> Result<T, DatastoreError> {
        let mut tx = self.begin_snapshot().await?;
        let value = read(&mut tx, argument).await?;
        tx.commit().await?;
        tracing::debug!(source = "primary", "{description} read");
        Ok(value)
    }

    /// Begins a read-only transaction whose statements all see one snapshot. SQLite's deferred
    /// `BEGIN` takes its snapshot at the first read, in WAL mode without blocking writers.
    async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            DatabaseType::Sqlite => self.pool.begin().await,
            DatabaseType::Postgres => self.pool.begin_with(replica::SNAPSHOT_BEGIN).await,
        }
    }

    /// Begins a transaction for a write. On SQLite it takes the write lock at once with
    /// `BEGIN IMMEDIATE`, because the issuance log writes through a connection of its own. A
    /// deferred transaction that read before that connection committed could not upgrade to a
    /// write lock (`SQLITE_BUSY_SNAPSHOT`), and busy_timeout does not wait that out.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            DatabaseType::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            DatabaseType::Postgres => self.pool.begin().await,
        }
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        if let Some(replica) = &self.replica {
            replica.close().await;
        }
        self.pool.close().await;
    }
}

/// Checks, without connecting, that `url` is a PostgreSQL URL the datastore can use, and
/// returns the reason when it is not. The reason never repeats the URL, which may contain a
/// password.
///
/// # Errors
/// Returns the parse failure: an invalid port or an unknown `sslmode`, for example.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    use std::str::FromStr as _;
    match sqlx::postgres::PgConnectOptions::from_str(url) {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Configuration(source)) => {
            let reason = source.to_string();
            // Nested configuration errors repeat sqlx's generic prefix.
            let reason = reason.trim_start_matches("error with configuration: ");
            Err(reason.to_owned())
        }
        Err(_) => Err("not a valid PostgreSQL URL".to_owned()),
    }
}

/// Increments the change counter and returns its new value; call inside the transaction of
/// the write it records. The row lock this takes serializes writers until they commit, so
/// revisions become visible in order.
async fn bump_revision(conn: &mut AnyConnection) -> Result<u64, DatastoreError> {
    let row = sqlx::query("UPDATE changes SET revision = revision + 1 RETURNING revision")
        .fetch_one(&mut *conn)
        .await?;
    let revision: i64 = row.try_get("revision")?;
    sqlx::query("INSERT INTO change_tokens (revision, token) VALUES ($1, $2)")
        .bind(revision)
        .bind(random_token())
        .execute(&mut *conn)
        .await?;
    to_u64("changes.revision", revision)
}

/// Returns a random token for [`bump_revision`], which a replica's copy must match.
fn random_token() -> i64 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator must work");
    i64::from_le_bytes(bytes)
}

/// Converts a stored count or sequence number to `u64`, reporting a negative value as corrupt.
fn to_u64(column: &str, value: i64) -> Result<u64, DatastoreError> {
    u64::try_from(value).map_err(|_| DatastoreError::Corrupt(format!("{column} is {value}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("selectors, strings and trust domains must serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> Result<T, DatastoreError> {
    serde_json::from_str(text).map_err(|e| {
        DatastoreError::Corrupt(format!("{column} contains invalid JSON {text:?}: {e}"))
    })
}

/// Reads a flag column, which is BOOLEAN on PostgreSQL and INTEGER 0/1 on SQLite.
fn get_bool(row: &AnyRow, column: &str) -> Result<bool, DatastoreError> {
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(row.try_get::<i64, _>(column)? != 0),
        Err(other) => Err(other.into()),
    }
}

fn parse_spiffe_id(column: &str, text: &str) -> Result<SpiffeId, DatastoreError> {
    SpiffeId::new(text).map_err(|e| {
        DatastoreError::Corrupt(format!("{column} contains invalid SPIFFE ID {text:?}: {e}"))
    })
}

fn parse_trust_domain(column: &str, text: &str) -> Result<TrustDomain, DatastoreError> {
    TrustDomain::new(text).map_err(|e| {
        DatastoreError::Corrupt(format!(
            "{column} contains invalid trust domain {text:?}: {e}"
        ))
    })
}

/// Returns the lowercase hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Returns the wall clock in unix seconds, for timestamps the caller does not supply.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Converts the connection errors that an operator fixes in PostgreSQL or in
/// `connection_string` into configuration errors with the fix, and I/O errors into
/// [`DatastoreError::Unreachable`]. The URL is left out, because it may contain a password.
fn postgres_connect_error(error: sqlx::Error) -> DatastoreError {
    if let sqlx::Error::Database(database) = &error {
        let hint = match database.code().as_deref() {
            Some("3D000") => Some(
                "create it, for example with `createdb` as a PostgreSQL superuser, or correct \
                 the database name in connection_string",
            ),
            Some("28000" | "28P01") => Some(
                "check the user and password in connection_string and the server's pg_hba.conf",
            ),
            _ => None,
        };
        if let Some(hint) = hint {
            return DatastoreError::InvalidConfig(format!(
                "PostgreSQL refused the connection: {}; {hint}",
                database.message()
            ));
        }
    }
    if let sqlx::Error::Io(io) = &error {
        return DatastoreError::Unreachable(io.to_string());
    }
    DatastoreError::Backend(error)
}
