//! Storage for the issuance log: hash-chained records of issued credentials and rejected
//! requests, the head row that serializes appends, and signed checkpoints.
//!
//! This module stores and returns rows exactly as given. The `twid-provenance` crate computes
//! hashes and signatures and checks them, so the row types here carry raw column values and
//! a row that an administrator altered still loads.
//!
//! Appends go through [`IssuanceLogAppend`], a transaction that holds the lock on the single
//! head row from [`Datastore::begin_issuance_log_append`] until it commits. On PostgreSQL the
//! lock is `SELECT ... FOR UPDATE`, so appenders in several server processes take turns. On
//! SQLite the transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock.
//!
//! [`IssuanceLogWriter`] is the faster path that the appender uses. It continues from a head
//! that the caller remembers and stores a whole batch only if the head row still contains that
//! value, so a batch needs no read of the head. On PostgreSQL it uses a connection of its own
//! and stores a batch, its checkpoints and the new head with one statement.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Any, AnyConnection, AssertSqlSafe, ConnectOptions as _, Row, Transaction};

use crate::{DatabaseType, Datastore, DatastoreError, to_u64};

/// One issuance log row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceLogRecord {
    /// Position in the chain: 0 for the first record, then consecutive. Signed because an
    /// altered row may hold any value.
    pub seq: i64,
    /// The hash of the record at `seq - 1`, or 32 zero bytes for seq 0.
    pub prev_hash: Vec<u8>,
    /// The record's chain hash.
    pub hash: Vec<u8>,
    /// `x509`, `jwt`, `wit` or `refusal`.
    pub kind: String,
    /// Lowercase hex X.509 serial number.
    pub serial: Option<String>,
    /// JWT ID claim.
    pub jti: Option<String>,
    /// The SPIFFE ID issued or requested.
    pub spiffe_id: Option<String>,
    /// The registration entry the credential was issued for.
    pub entry_id: Option<String>,
    /// The SPIFFE ID of the agent that requested the credential.
    pub agent_id: Option<String>,
    /// JSON array of `{"type","value"}` objects.
    pub selectors: String,
    /// SHA-256 of the subject public key's SubjectPublicKeyInfo DER.
    pub key_fingerprint: Option<Vec<u8>>,
    /// SHA-256 of the attestation evidence.
    pub evidence_digest: Option<Vec<u8>>,
    /// The attestation result as JSON text.
    pub attestation_result: Option<String>,
    /// The version of the policy that allowed or rejected the request.
    pub policy_version: Option<String>,
    /// The reason the request was rejected.
    pub refusal_reason: Option<String>,
    /// Time of the issuance or rejection, in milliseconds since the unix epoch.
    pub time_unix_ms: i64,
}

/// A row of the issuance log as read for verification: a record, or the seq of a row whose
/// values do not decode as one.
// Nearly every row is a record, so boxing it would only add an allocation per row.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredLogRow {
    /// A row that decodes.
    Record(IssuanceLogRecord),
    /// A row with a value that does not decode as its column's type, such as text in an
    /// integer column of SQLite, which stores any value in any column. twid never writes
    /// one, so an edit outside twid left it.
    Undecodable {
        /// The row's seq.
        seq: i64,
        /// The column whose value does not decode, and the decoder's error.
        reason: String,
    },
}

/// One issuance log row that [`IssuanceLogWriter::append`] stores, with its values borrowed,
/// so that a writer needs no copy of values that its caller keeps in another form. The fields
/// mean what those of [`IssuanceLogRecord`] mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuanceLogRowRef<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub kind: &'a str,
    pub serial: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
    pub entry_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub selectors: &'a str,
    pub key_fingerprint: Option<&'a [u8]>,
    pub evidence_digest: Option<&'a [u8]>,
    pub attestation_result: Option<&'a str>,
    pub policy_version: Option<&'a str>,
    pub refusal_reason: Option<&'a str>,
    pub time_unix_ms: i64,
}

impl IssuanceLogRowRef<'_> {
    /// Copies the row into an owned record.
    pub fn to_record(&self) -> IssuanceLogRecord {
        IssuanceLogRecord {
            seq: self.seq,
            prev_hash: self.prev_hash.to_vec(),
            hash: self.hash.to_vec(),
            kind: self.kind.to_owned(),
            serial: self.serial.map(str::to_owned),
            jti: self.jti.map(str::to_owned),
            spiffe_id: self.spiffe_id.map(str::to_owned),
            entry_id: self.entry_id.map(str::to_owned),
            agent_id: self.agent_id.map(str::to_owned),
            selectors: self.selectors.to_owned(),
            key_fingerprint: self.key_fingerprint.map(<[u8]>::to_vec),
            evidence_digest: self.evidence_digest.map(<[u8]>::to_vec),
            attestation_result: self.attestation_result.map(str::to_owned),
            policy_version: self.policy_version.map(str::to_owned),
            refusal_reason: self.refusal_reason.map(str::to_owned),
            time_unix_ms: self.time_unix_ms,
        }
    }
}

/// A row that [`IssuanceLogWriter::append`] can store.
pub trait AsIssuanceLogRow {
    /// Borrows the row's values.
    fn as_row(&self) -> IssuanceLogRowRef<'_>;
}

impl AsIssuanceLogRow for IssuanceLogRowRef<'_> {
    fn as_row(&self) -> IssuanceLogRowRef<'_> {
        *self
    }
}

impl AsIssuanceLogRow for IssuanceLogRecord {
    fn as_row(&self) -> IssuanceLogRowRef<'_> {
        IssuanceLogRowRef {
            seq: self.seq,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            kind: &self.kind,
            serial: self.serial.as_deref(),
            jti: self.jti.as_deref(),
            spiffe_id: self.spiffe_id.as_deref(),
            entry_id: self.entry_id.as_deref(),
            agent_id: self.agent_id.as_deref(),
            selectors: &self.selectors,
            key_fingerprint: self.key_fingerprint.as_deref(),
            evidence_digest: self.evidence_digest.as_deref(),
            attestation_result: self.attestation_result.as_deref(),
            policy_version: self.policy_version.as_deref(),
            refusal_reason: self.refusal_reason.as_deref(),
            time_unix_ms: self.time_unix_ms,
        }
    }
}

/// A signature over one record's `(seq, hash)`.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuanceLogCheckpoint {
    /// The signed record's seq.
    pub seq: i64,
    /// The signed record's hash.
    pub hash: Vec<u8>,
    /// Signature algorithm name, as the signer chose it.
    pub algorithm: String,
    /// Identifier of the signing key, as the signer chose it.
    pub key_id: String,
    /// The signature.
    pub signature: Vec<u8>,
    /// Creation time in milliseconds since the unix epoch.
    pub created_at_ms: i64,
}

impl fmt::Debug for IssuanceLogCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuanceLogCheckpoint")
            .field("seq", &self.seq)
            .field("hash", &hex::encode(&self.hash))
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("signature_len", &self.signature.len())
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// The head row and the highest stored seqs, read in one statement so that they come from
/// one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceLogHead {
    /// The seq the next record gets, which is the number of records appended.
    pub next_seq: i64,
    /// The hash of the record at `next_seq - 1`, or 32 zero bytes for an empty log.
    pub head_hash: Vec<u8>,
    /// The highest seq in the records table, or `None` if it is empty.
    pub max_record_seq: Option<i64>,
    /// The highest seq in the checkpoints table, or `None` if it is empty.
    pub max_checkpoint_seq: Option<i64>,
}

/// An open append transaction that holds the head row's lock. Dropping it without
/// [`commit`](Self::commit) rolls back every insert.
pub struct IssuanceLogAppend {
    tx: Transaction<'static, Any>,
    backend: DatabaseType,
    next_seq: i64,
    head_hash: Vec<u8>,
}

impl fmt::Debug for IssuanceLogAppend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuanceLogAppend")
            .field("next_seq", &self.next_seq)
            .field("head_hash", &hex::encode(&self.head_hash))
            .finish_non_exhaustive()
    }
}

/// The columns [`record_from_row`] reads, as a literal so that `concat!` can build `'static`
/// statements from it.
macro_rules! record_columns {
    () => {
        "seq, prev_hash, hash, kind, serial, jti, spiffe_id, entry_id, agent_id, selectors, \
         key_fingerprint, evidence_digest, attestation_result, policy_version, refusal_reason, \
         time_unix_ms"
    };
}

/// Number of columns in [`record_columns`], the bind parameters per inserted row.
const RECORD_COLUMN_COUNT: usize = 16;

/// Rows per multi-row INSERT statement, largest first. A batch is split greedily into these
/// sizes, so only five distinct statements exist and the prepared statement cache keeps them
/// all. 256 rows use 4096 bind parameters, well below the limits of SQLite (32766 since 3.32)
/// and PostgreSQL (65535).
const INSERT_CHUNK_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

impl Datastore {
    /// Begins an append transaction and locks the head row until it commits or is dropped.
    /// Other appenders, in this process or another, wait for the lock.
    ///
    /// # Errors
    /// Returns the database failure, or [`DatastoreError::Corrupt`] if the head row is
    /// missing.
    pub async fn begin_issuance_log_append(&self) -> Result<IssuanceLogAppend, DatastoreError> {
        let (begin, select) = match self.backend {
            // IMMEDIATE takes the write lock before the head is read, so no other connection
            // can append between the read and the commit.
            DatabaseType::Sqlite => (
                "BEGIN IMMEDIATE",
                "SELECT next_seq, head_hash FROM issuance_log_head",
            ),
            DatabaseType::Postgres => (
                "BEGIN",
                "SELECT next_seq, head_hash FROM issuance_log_head FOR UPDATE",
            ),
        };
        let mut tx = self.pool.begin_with(begin).await?;
        let row = only_head_row(sqlx::query(select).fetch_all(&mut *tx).await?)?;
        Ok(IssuanceLogAppend {
            tx,
            backend: self.backend,
            next_seq: row.try_get("next_seq")?,
            head_hash: row.try_get("head_hash")?,
        })
    }

    /// Returns a writer for [`IssuanceLogWriter::append`]. On PostgreSQL it connects on first
    /// use, so call this from the Tokio runtime that will drive the appends.
    ///
    /// # Errors
    /// Returns [`DatastoreError::InvalidConfig`] if the pool's PostgreSQL URL cannot be parsed
    /// again.
    pub fn issuance_log_writer(&self) -> Result<IssuanceLogWriter, DatastoreError> {
        let backend = match self.backend {
            DatabaseType::Sqlite => WriterBackend::Sqlite {
                path: self.sqlite_path.clone().ok_or_else(|| {
                    DatastoreError::InvalidConfig(
                        "the SQLite datastore has no file path for the issuance log writer".into(),
                    )
                })?,
                conn: None,
            },
            DatabaseType::Postgres => {
                let url = self.pool.connect_options().database_url.clone();
                let options = PgConnectOptions::from_url(&url).map_err(|error| {
                    DatastoreError::InvalidConfig(format!(
                        "the PostgreSQL connection string cannot be parsed for the issuance \
                         log writer: {error}"
                    ))
                })?;
                WriterBackend::Postgres {
                    options: Box::new(options),
                    conn: None,
                }
            }
        };
        Ok(IssuanceLogWriter { backend })
    }

    /// Returns up to `limit` records with `seq >= from_seq`, in seq order.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn issuance_log_records(
        &self,
        from_seq: i64,
        limit: u32,
    ) -> Result<Vec<IssuanceLogRecord>, DatastoreError> {
        let rows = self.issuance_log_rows(from_seq, limit).await?;
        rows.into_iter().map(decoded).collect()
    }

    /// Returns the record at `seq`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn get_issuance_log_record(
        &self,
        seq: i64,
    ) -> Result<Option<IssuanceLogRecord>, DatastoreError> {
        let row = self.get_issuance_log_row(seq).await?;
        row.map(decoded).transpose()
    }

    /// Returns up to `limit` rows with `seq >= from_seq`, in seq order. A row whose values do
    /// not decode is returned as [`StoredLogRow::Undecodable`] instead of failing the read, so
    /// that verification can name its seq.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn issuance_log_rows(
        &self,
        from_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredLogRow>, DatastoreError> {
        let fetched = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
        ))
        .bind(from_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await;
        match fetched {
            Ok(rows) => rows.iter().map(stored_row).collect(),
            // A driver may fail the whole fetch on a value it cannot convert. Reading the
            // rows one at a time then finds which ones do not decode.
            Err(error) if is_decode_error(&error) => {
                let seqs: Vec<i64> = sqlx::query_scalar(
                    "SELECT seq FROM issuance_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                )
                .bind(from_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                let mut rows = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    if let Some(row) = self.get_issuance_log_row(seq).await? {
                        rows.push(row);
                    }
                }
                Ok(rows)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Returns the row at `seq`, or `None`, as [`issuance_log_rows`](Self::issuance_log_rows)
    /// reads it.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn get_issuance_log_row(
        &self,
        seq: i64,
    ) -> Result<Option<StoredLogRow>, DatastoreError> {
        let fetched = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await;
        match fetched {
            Ok(row) => row.as_ref().map(stored_row).transpose(),
            Err(error) if is_decode_error(&error) => {
                let reason = match self.undecodable_column(seq).await? {
                    Some(column) => format!("column \"{column}\": {}", decode_reason(&error)),
                    None => decode_reason(&error),
                };
                Ok(Some(StoredLogRow::Undecodable { seq, reason }))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Returns the first column of the record at `seq` whose value the driver cannot read,
    /// when reading the whole row failed without naming one.
    async fn undecodable_column(&self, seq: i64) -> Result<Option<&'static str>, DatastoreError> {
        for column in record_columns!().split(", ") {
            // The column names are constants of this module.
            let sql = format!("SELECT {column} FROM issuance_log WHERE seq = $1");
            let fetched = sqlx::query(AssertSqlSafe(sql))
                .bind(seq)
                .fetch_optional(&self.pool)
                .await;
            match fetched {
                Err(error) if is_decode_error(&error) => return Ok(Some(column)),
                Err(error) => return Err(error.into()),
                Ok(_) => {}
            }
        }
        Ok(None)
    }

    /// Returns the newest record (highest seq) with this X.509 serial, or `None`. The serial
    /// is compared exactly, so pass it in the stored form (lowercase hex).
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn find_issuance_log_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<IssuanceLogRecord>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE serial = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Returns the newest record (highest seq) with this JWT ID, or `None`.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn find_issuance_log_by_jti(
        &self,
        jti: &str,
    ) -> Result<Option<IssuanceLogRecord>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE jti = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Returns the row with the lowest seq whose stored hash is `hash`, or `None`, as
    /// [`issuance_log_rows`](Self::issuance_log_rows) reads it. The hash column has no index,
    /// so this reads the whole table. It is meant for classifying an alteration that
    /// verification has found.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn find_issuance_log_row_by_hash(
        &self,
        hash: &[u8],
    ) -> Result<Option<StoredLogRow>, DatastoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM issuance_log WHERE hash = $1 ORDER BY seq LIMIT 1")
                .bind(hash.to_vec())
                .fetch_optional(&self.pool)
                .await?;
        match seq {
            Some(seq) => self.get_issuance_log_row(seq).await,
            None => Ok(None),
        }
    }

    /// Returns the head row and the highest stored record and checkpoint seqs.
    ///
    /// # Errors
    /// Returns the database failure, or [`DatastoreError::Corrupt`] if the head row is
    /// missing.
    pub async fn issuance_log_head(&self) -> Result<IssuanceLogHead, DatastoreError> {
        // One statement, so PostgreSQL reads all three tables from one snapshot.
        let rows = sqlx::query(
            "SELECT next_seq, head_hash, \
             (SELECT MAX(seq) FROM issuance_log) AS max_record_seq, \
             (SELECT MAX(seq) FROM issuance_log_checkpoints) AS max_checkpoint_seq \
             FROM issuance_log_head",
        )
        .fetch_all(&self.pool)
        .await?;
        let row = only_head_row(rows)?;
        Ok(IssuanceLogHead {
            next_seq: row.try_get("next_seq")?,
            head_hash: row.try_get("head_hash")?,
            max_record_seq: row.try_get("max_record_seq")?,
            max_checkpoint_seq: row.try_get("max_checkpoint_seq")?,
        })
    }

    /// Returns up to `limit` checkpoints with `seq >= from_seq`, in seq order.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn issuance_log_checkpoints(
        &self,
        from_seq: i64,
        limit: u32,
    ) -> Result<Vec<IssuanceLogCheckpoint>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, algorithm, key_id, signature, created_at_ms \
             FROM issuance_log_checkpoints WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(from_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// Stores a checkpoint outside an append transaction, and returns `false` without
    /// changing anything if a checkpoint for the same seq is stored.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn insert_issuance_log_checkpoint(
        &self,
        checkpoint: &IssuanceLogCheckpoint,
    ) -> Result<bool, DatastoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_checkpoint(&mut conn, checkpoint).await
    }

    /// Returns the number of stored records, which differs from the head's `next_seq` only
    /// if rows were deleted or inserted outside the log.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn count_issuance_log_records(&self) -> Result<u64, DatastoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM issuance_log")
            .fetch_one(&self.pool)
            .await?;
        to_u64("issuance_log count", row.try_get("count")?)
    }
}

impl IssuanceLogAppend {
    /// Returns the seq the next inserted record must have.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Returns the hash the next inserted record must name as its `prev_hash`.
    pub fn head_hash(&self) -> &[u8] {
        &self.head_hash
    }

    /// Returns the stored hash of the record at `seq`, or `None` when no record has that seq.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn record_hash(&mut self, seq: i64) -> Result<Option<Vec<u8>>, DatastoreError> {
        let row = sqlx::query("SELECT hash FROM issuance_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("hash")?),
            None => None,
        })
    }

    /// Inserts `records` and moves the head past the last of them.
    ///
    /// The caller builds the chain: the records must have consecutive seqs starting at
    /// [`next_seq`](Self::next_seq), and each `prev_hash` must be the previous record's hash,
    /// starting with [`head_hash`](Self::head_hash). This method does not check the hashes.
    /// A seq that is already stored fails with a unique violation, but a gap is stored as
    /// given.
    ///
    /// # Errors
    /// Returns the database failure. The transaction is then unusable; drop it.
    pub async fn insert_records(
        &mut self,
        records: &[IssuanceLogRecord],
    ) -> Result<(), DatastoreError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let mut rest = records;
        for size in INSERT_CHUNK_ROWS {
            while rest.len() >= size {
                let (chunk, tail) = rest.split_at(size);
                insert_record_chunk(&mut self.tx, self.backend, chunk)
                    .await
                    .map_err(|error| record_past_head(error, self.next_seq))?;
                rest = tail;
            }
        }
        let next_seq = last.seq.checked_add(1).ok_or_else(|| {
            DatastoreError::Corrupt(format!("issuance log seq {} cannot grow", last.seq))
        })?;
        sqlx::query("UPDATE issuance_log_head SET next_seq = $1, head_hash = $2")
            .bind(next_seq)
            .bind(last.hash.clone())
            .execute(&mut *self.tx)
            .await?;
        self.next_seq = next_seq;
        self.head_hash.clone_from(&last.hash);
        Ok(())
    }

    /// Stores a checkpoint in this transaction, and returns `false` without changing anything
    /// if a checkpoint for the same seq is stored.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn insert_checkpoint(
        &mut self,
        checkpoint: &IssuanceLogCheckpoint,
    ) -> Result<bool, DatastoreError> {
        insert_checkpoint(&mut self.tx, checkpoint).await
    }

    /// Commits every insert and releases the head row's lock. When this returns `Ok`, the
    /// records are durable (SQLite runs with `synchronous=FULL`).
    ///
    /// # Errors
    /// Returns the database failure. If the connection broke during the commit, the records
    /// may or may not be stored.
    pub async fn commit(self) -> Result<(), DatastoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// The result of [`IssuanceLogWriter::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The records, the checkpoints and the new head are committed.
    Committed,
    /// The head row no longer contains the expected value, for example because another process
    /// appended. Nothing was stored; read the head again and rebuild the chain.
    HeadMoved,
}

/// Appends batches of chained records for one appender. Dropping it closes its connection.
pub struct IssuanceLogWriter {
    backend: WriterBackend,
}

enum WriterBackend {
    /// A connection of the writer's own, opened on first use and again after a failure.
    /// Calling SQLite on the appender's thread, with statements that stay prepared, costs a
    /// fraction of going through sqlx's worker thread: no thread switch or message per
    /// statement and row, and no per-batch encoding. Other connections see the batch when it
    /// commits. The datastore's own SQLite transactions begin with `BEGIN IMMEDIATE`, so they
    /// wait for the writer's lock instead of failing on a lock upgrade.
    Sqlite {
        path: Arc<Path>,
        conn: Option<rusqlite::Connection>,
    },
    /// A connection of the writer's own, opened on first use and again after a failure. It
    /// belongs to the runtime that drives the writer, so appends do not wait for the pool or
    /// for the I/O driver of another runtime.
    Postgres {
        options: Box<PgConnectOptions>,
        conn: Option<PgConnection>,
    },
}

impl fmt::Debug for IssuanceLogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            WriterBackend::Sqlite { .. } => "sqlite",
            WriterBackend::Postgres { .. } => "postgres",
        };
        f.debug_struct("IssuanceLogWriter")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

/// Stores a PostgreSQL batch in one statement, so that it costs one round trip and commits
/// when the statement ends. The head row is updated only if it contains `$3` and `$4`, and both
/// inserts depend on that update: a head moved by another process stores nothing. Under READ
/// COMMITTED, a concurrent appender's lock on the head row makes the update wait, and the
/// update then rechecks its condition against the committed row.
///
/// The records' arrays are unnested in the select list, where PostgreSQL walks them in step
/// and hands each row straight to the insert. `FROM UNNEST(...)` first copies every row into a
/// tuple store, which cost about a sixth of the server's CPU per record.
const POSTGRES_APPEND: &str = concat!(
    "WITH head AS (UPDATE issuance_log_head SET next_seq = $1, head_hash = $2 \
     WHERE next_seq = $3 AND head_hash = $4 RETURNING 1), \
     checkpoints AS (INSERT INTO issuance_log_checkpoints \
     (seq, hash, algorithm, key_id, signature, created_at_ms) \
     SELECT * FROM UNNEST($5::int8[], $6::bytea[], $7::text[], $8::text[], $9::bytea[], \
     $10::int8[]) WHERE EXISTS (SELECT 1 FROM head) ON CONFLICT (seq) DO NOTHING) \
     INSERT INTO issuance_log (",
    record_columns!(),
    ") SELECT unnest($11::int8[]), unnest($12::bytea[]), unnest($13::bytea[]), \
     unnest($14::text[]), unnest($15::text[]), unnest($16::text[]), unnest($17::text[]), \
     unnest($18::text[]), unnest($19::text[]), unnest($20::text[]), unnest($21::bytea[]), \
     unnest($22::bytea[]), unnest($23::text[]), unnest($24::text[]), unnest($25::text[]), \
     unnest($26::int8[]) \
     WHERE EXISTS (SELECT 1 FROM head)"
);

impl IssuanceLogWriter {
    /// Stores `records` and `checkpoints` and moves the head past the last record, in one
    /// transaction, if the head row contains `next_seq` and `head_hash`. Returns once the
    /// transaction has committed, or with [`WriteOutcome::HeadMoved`] having stored nothing.
    ///
    /// As for [`IssuanceLogAppend::insert_records`], the caller builds the chain: consecutive
    /// seqs from `next_seq`, the first `prev_hash` equal to `head_hash`. A checkpoint whose seq
    /// is stored already is skipped.
    ///
    /// On SQLite the call blocks its thread for the whole transaction, the commit's disk sync
    /// included, so drive the writer from a thread of its own.
    ///
    /// # Errors
    /// Returns the database failure, after which nothing is stored unless the connection broke
    /// during the commit. On PostgreSQL the writer then reconnects on its next call.
    pub async fn append<R: AsIssuanceLogRow>(
        &mut self,
        next_seq: i64,
        head_hash: &[u8],
        records: &[R],
        checkpoints: &[IssuanceLogCheckpoint],
    ) -> Result<WriteOutcome, DatastoreError> {
        let Some(last) = records.last().map(AsIssuanceLogRow::as_row) else {
            return Ok(WriteOutcome::Committed);
        };
        let new_next_seq = last.seq.checked_add(1).ok_or_else(|| {
            DatastoreError::Corrupt(format!("issuance log seq {} cannot grow", last.seq))
        })?;
        let head = HeadUpdate {
            expected_next_seq: next_seq,
            expected_hash: head_hash,
            new_next_seq,
            new_hash: last.hash,
        };
        let result = match &mut self.backend {
            WriterBackend::Sqlite { path, conn } => {
                let connection = match conn {
                    Some(connection) => connection,
                    None => conn.insert(open_sqlite_writer(path)?),
                };
                let result = append_sqlite(connection, &head, records, checkpoints);
                if result.is_err() {
                    *conn = None;
                }
                result
            }
            WriterBackend::Postgres { options, conn } => {
                let result = async {
                    let connection = postgres_connection(options, conn).await?;
                    append_postgres(connection, &head, records, checkpoints).await
                }
                .await;
                if result.is_err() {
                    *conn = None;
                }
                result
            }
        };
        result.map_err(|error| record_past_head(error, next_seq))
    }
}

/// Returns the one row of the head table. Appends update every row that matches, so a second
/// row, added outside twid, would let readers and appenders follow different heads.
fn only_head_row(mut rows: Vec<AnyRow>) -> Result<AnyRow, DatastoreError> {
    match rows.len() {
        1 => Ok(rows.remove(0)),
        0 => Err(DatastoreError::Corrupt(
            "the issuance_log_head table has no row".into(),
        )),
        count => Err(DatastoreError::Corrupt(format!(
            "the issuance_log_head table has {count} rows, but it must have exactly one"
        ))),
    }
}

/// Turns a unique violation of an append into [`DatastoreError::Corrupt`]. The head row
/// matched, so the only unique key that an append can violate, the records' seq, was taken
/// by a record stored outside twid, past the head. Every later append fails the same way
/// until an operator removes it, so retrying does not help.
fn record_past_head(error: DatastoreError, next_seq: i64) -> DatastoreError {
    let unique = match &error {
        DatastoreError::Backend(error) => crate::error::is_unique_violation(error),
        DatastoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        ),
        _ => false,
    };
    if !unique {
        return error;
    }
    DatastoreError::Corrupt(format!(
        "the issuance log stores a record at seq {next_seq} or later, past its head row, so \
         it was added outside twid and no record can be appended; run `twid log verify` to \
         find it ({error})"
    ))
}

/// The compare-and-set of the head row that makes a batch conditional.
struct HeadUpdate<'a> {
    expected_next_seq: i64,
    expected_hash: &'a [u8],
    new_next_seq: i64,
    new_hash: &'a [u8],
}

/// Returns the writer's PostgreSQL connection, connecting first if it has none.
async fn postgres_connection<'c>(
    options: &PgConnectOptions,
    conn: &'c mut Option<PgConnection>,
) -> Result<&'c mut PgConnection, DatastoreError> {
    match conn {
        Some(connection) => Ok(connection),
        None => Ok(conn.insert(options.connect().await?)),
    }
}

/// Opens the writer's own connection to the SQLite file, with the settings of the pool's
/// connections. The pool has created and migrated the file already.
fn open_sqlite_writer(path: &Path) -> Result<rusqlite::Connection, DatastoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Another connection of this process, or another process, may hold the write lock for
    // the length of its transaction.
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL is a property of the file, set when the pool opened it; synchronous is per
    // connection, and FULL syncs the WAL on every commit.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DatastoreError::InvalidConfig(format!(
            "the SQLite file {} stays in journal mode {mode:?}; the issuance log needs WAL",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Stores a SQLite batch in one `BEGIN IMMEDIATE` transaction on the writer's own connection,
/// with statements that stay prepared and values bound as given. The records and checkpoints
/// are inserted only if the head update matched, so a head moved by another writer stores
/// nothing.
///
/// This blocks the calling thread for the transaction, the commit's disk sync included.
fn append_sqlite<R: AsIssuanceLogRow>(
    conn: &mut rusqlite::Connection,
    head: &HeadUpdate<'_>,
    records: &[R],
    checkpoints: &[IssuanceLogCheckpoint],
) -> Result<WriteOutcome, DatastoreError> {
    // IMMEDIATE takes the write lock first, so the head cannot move before the commit.
    // Dropping the transaction without commit rolls it back.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let updated = tx
        .prepare_cached(
            "UPDATE issuance_log_head SET next_seq = ?1, head_hash = ?2 \
             WHERE next_seq = ?3 AND head_hash = ?4",
        )?
        .execute(rusqlite::params![
            head.new_next_seq,
            head.new_hash,
            head.expected_next_seq,
            head.expected_hash,
        ])?;
    if updated == 0 {
        return Ok(WriteOutcome::HeadMoved);
    }
    if updated > 1 {
        // Dropping the transaction rolls the update back.
        return Err(DatastoreError::Corrupt(format!(
            "the issuance_log_head table has {updated} rows, but it must have exactly one"
        )));
    }
    {
        let mut insert = tx.prepare_cached(concat!(
            "INSERT INTO issuance_log (",
            record_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ))?;
        for r in records.iter().map(AsIssuanceLogRow::as_row) {
            insert.execute(rusqlite::params![
                r.seq,
                r.prev_hash,
                r.hash,
                r.kind,
                r.serial,
                r.jti,
                r.spiffe_id,
                r.entry_id,
                r.agent_id,
                r.selectors,
                r.key_fingerprint,
                r.evidence_digest,
                r.attestation_result,
                r.policy_version,
                r.refusal_reason,
                r.time_unix_ms,
            ])?;
        }
    }
    if !checkpoints.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO issuance_log_checkpoints \
             (seq, hash, algorithm, key_id, signature, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (seq) DO NOTHING",
        )?;
        for c in checkpoints {
            insert.execute(rusqlite::params![
                c.seq,
                c.hash,
                c.algorithm,
                c.key_id,
                c.signature,
                c.created_at_ms,
            ])?;
        }
    }
    tx.commit()?;
    Ok(WriteOutcome::Committed)
}

async fn append_postgres<R: AsIssuanceLogRow>(
    conn: &mut PgConnection,
    head: &HeadUpdate<'_>,
    records: &[R],
    checkpoints: &[IssuanceLogCheckpoint],
) -> Result<WriteOutcome, DatastoreError> {
    let records: Vec<IssuanceLogRowRef<'_>> =
        records.iter().map(AsIssuanceLogRow::as_row).collect();
    let column = |get: fn(IssuanceLogRowRef<'_>) -> Option<&str>| -> Vec<Option<&str>> {
        records.iter().copied().map(get).collect()
    };
    let bytes_column = |get: fn(IssuanceLogRowRef<'_>) -> Option<&[u8]>| -> Vec<Option<&[u8]>> {
        records.iter().copied().map(get).collect()
    };
    let query = sqlx::query(POSTGRES_APPEND)
        .bind(head.new_next_seq)
        .bind(head.new_hash)
        .bind(head.expected_next_seq)
        .bind(head.expected_hash)
        .bind(checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>())
        .bind(
            checkpoints
                .iter()
                .map(|c| c.hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            checkpoints
                .iter()
                .map(|c| c.algorithm.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            checkpoints
                .iter()
                .map(|c| c.key_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            checkpoints
                .iter()
                .map(|c| c.signature.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            checkpoints
                .iter()
                .map(|c| c.created_at_ms)
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.prev_hash).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.hash).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.kind).collect::<Vec<_>>())
        .bind(column(|r| r.serial))
        .bind(column(|r| r.jti))
        .bind(column(|r| r.spiffe_id))
        .bind(column(|r| r.entry_id))
        .bind(column(|r| r.agent_id))
        .bind(records.iter().map(|r| r.selectors).collect::<Vec<_>>())
        .bind(bytes_column(|r| r.key_fingerprint))
        .bind(bytes_column(|r| r.evidence_digest))
        .bind(column(|r| r.attestation_result))
        .bind(column(|r| r.policy_version))
        .bind(column(|r| r.refusal_reason))
        .bind(records.iter().map(|r| r.time_unix_ms).collect::<Vec<_>>());
    // execute() reads the server's replies up to ReadyForQuery, which PostgreSQL sends after
    // the statement's implicit transaction has committed (synchronous_commit stays on), so a
    // commit failure is returned here too.
    let inserted = query.execute(conn).await?.rows_affected();
    if inserted == 0 {
        return Ok(WriteOutcome::HeadMoved);
    }
    let expected = u64::try_from(records.len()).unwrap_or(u64::MAX);
    if inserted != expected {
        return Err(DatastoreError::Corrupt(format!(
            "the issuance log append committed {inserted} of {expected} records; run \
             `twid log verify` to find where the chain breaks"
        )));
    }
    Ok(WriteOutcome::Committed)
}

/// Inserts `records` with one multi-row INSERT, which costs one round trip instead of one per
/// row.
async fn insert_record_chunk(
    conn: &mut AnyConnection,
    backend: DatabaseType,
    records: &[IssuanceLogRecord],
) -> Result<(), DatastoreError> {
    let mut sql = String::from(concat!(
        "INSERT INTO issuance_log (",
        record_columns!(),
        ") VALUES "
    ));
    for row in 0..records.len() {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..RECORD_COLUMN_COUNT {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                // sqlx looks up the name of every numbered SQLite parameter with a call whose
                // cost grows with the parameter count, so numbered parameters make a large
                // statement quadratic. Anonymous `?` parameters bind in order without a name.
                DatabaseType::Sqlite => sql.push('?'),
                DatabaseType::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * RECORD_COLUMN_COUNT + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    // The statement contains only placeholders; every value is bound.
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for record in records {
        query = query
            .bind(record.seq)
            .bind(record.prev_hash.clone())
            .bind(record.hash.clone())
            .bind(record.kind.clone())
            .bind(record.serial.clone())
            .bind(record.jti.clone())
            .bind(record.spiffe_id.clone())
            .bind(record.entry_id.clone())
            .bind(record.agent_id.clone())
            .bind(record.selectors.clone())
            .bind(record.key_fingerprint.clone())
            .bind(record.evidence_digest.clone())
            .bind(record.attestation_result.clone())
            .bind(record.policy_version.clone())
            .bind(record.refusal_reason.clone())
            .bind(record.time_unix_ms);
    }
    query.execute(conn).await?;
    Ok(())
}

async fn insert_checkpoint(
    conn: &mut AnyConnection,
    checkpoint: &IssuanceLogCheckpoint,
) -> Result<bool, DatastoreError> {
    let inserted = sqlx::query(
        "INSERT INTO issuance_log_checkpoints \
         (seq, hash, algorithm, key_id, signature, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (seq) DO NOTHING",
    )
    .bind(checkpoint.seq)
    .bind(checkpoint.hash.clone())
    .bind(checkpoint.algorithm.clone())
    .bind(checkpoint.key_id.clone())
    .bind(checkpoint.signature.clone())
    .bind(checkpoint.created_at_ms)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

fn record_from_row(row: &AnyRow) -> Result<IssuanceLogRecord, DatastoreError> {
    Ok(decode_record(row)?)
}

fn decode_record(row: &AnyRow) -> Result<IssuanceLogRecord, sqlx::Error> {
    Ok(IssuanceLogRecord {
        seq: row.try_get("seq")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        kind: row.try_get("kind")?,
        serial: row.try_get("serial")?,
        jti: row.try_get("jti")?,
        spiffe_id: row.try_get("spiffe_id")?,
        entry_id: row.try_get("entry_id")?,
        agent_id: row.try_get("agent_id")?,
        selectors: row.try_get("selectors")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        evidence_digest: row.try_get("evidence_digest")?,
        attestation_result: row.try_get("attestation_result")?,
        policy_version: row.try_get("policy_version")?,
        refusal_reason: row.try_get("refusal_reason")?,
        time_unix_ms: row.try_get("time_unix_ms")?,
    })
}

/// Decodes `row` as a record, or as [`StoredLogRow::Undecodable`] when one of its values does
/// not decode. The seq must decode: both schemas make it an integer key.
fn stored_row(row: &AnyRow) -> Result<StoredLogRow, DatastoreError> {
    match decode_record(row) {
        Ok(record) => Ok(StoredLogRow::Record(record)),
        Err(error) if is_decode_error(&error) => Ok(StoredLogRow::Undecodable {
            seq: row.try_get("seq")?,
            reason: decode_reason(&error),
        }),
        Err(error) => Err(error.into()),
    }
}

/// Returns the decoder's explanation of `error`, with the column when it names one.
fn decode_reason(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::ColumnDecode { index, source } => format!("column {index}: {source}"),
        sqlx::Error::Decode(source) => source.to_string(),
        other => other.to_string(),
    }
}

/// Returns the record of `row`, or the [`DatastoreError::Corrupt`] error of a row that does
/// not decode.
fn decoded(row: StoredLogRow) -> Result<IssuanceLogRecord, DatastoreError> {
    match row {
        StoredLogRow::Record(record) => Ok(record),
        StoredLogRow::Undecodable { seq, reason } => Err(DatastoreError::Corrupt(format!(
            "the issuance log record at seq {seq} was changed outside twid: {reason}"
        ))),
    }
}

/// Returns whether `error` is a failure to convert a stored value to the requested type.
fn is_decode_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)
    )
}

fn checkpoint_from_row(row: &AnyRow) -> Result<IssuanceLogCheckpoint, DatastoreError> {
    Ok(IssuanceLogCheckpoint {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        algorithm: row.try_get("algorithm")?,
        key_id: row.try_get("key_id")?,
        signature: row.try_get("signature")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}
