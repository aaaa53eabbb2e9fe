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

use std::fmt;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};

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
        let row = sqlx::query(select)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                DatastoreError::Corrupt("the issuance_log_head table has no row".into())
            })?;
        Ok(IssuanceLogAppend {
            tx,
            backend: self.backend,
            next_seq: row.try_get("next_seq")?,
            head_hash: row.try_get("head_hash")?,
        })
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
        ))
        .bind(from_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Returns the record at `seq`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn get_issuance_log_record(
        &self,
        seq: i64,
    ) -> Result<Option<IssuanceLogRecord>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
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

    /// Returns the record with the lowest seq whose chain hash is `hash`, or `None`. The hash
    /// column has no index, so this reads the whole table; it is meant for classifying an
    /// alteration that verification has found.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn find_issuance_log_by_hash(
        &self,
        hash: &[u8],
    ) -> Result<Option<IssuanceLogRecord>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM issuance_log WHERE hash = $1 ORDER BY seq LIMIT 1"
        ))
        .bind(hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Returns the head row and the highest stored record and checkpoint seqs.
    ///
    /// # Errors
    /// Returns the database failure, or [`DatastoreError::Corrupt`] if the head row is
    /// missing.
    pub async fn issuance_log_head(&self) -> Result<IssuanceLogHead, DatastoreError> {
        // One statement, so PostgreSQL reads all three tables from one snapshot.
        let row = sqlx::query(
            "SELECT next_seq, head_hash, \
             (SELECT MAX(seq) FROM issuance_log) AS max_record_seq, \
             (SELECT MAX(seq) FROM issuance_log_checkpoints) AS max_checkpoint_seq \
             FROM issuance_log_head",
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| DatastoreError::Corrupt("the issuance_log_head table has no row".into()))?;
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
                insert_record_chunk(&mut self.tx, self.backend, chunk).await?;
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
