//! A tamper-evident log of every credential the server issues and every request it rejects,
//! stored in the server's datastore (SQLite or PostgreSQL).
//!
//! Each record is chained to the one before it by a SHA-256 hash, so editing, deleting,
//! reordering or inserting a record breaks the chain at that point, and
//! [`IssuanceLog::verify`] reports where and how. A database administrator can still rewrite
//! the whole chain from some point on and recompute every hash. Checkpoints catch that: every
//! [`LogOptions::checkpoint_every`] records, and on [`IssuanceLog::checkpoint`], the log signs
//! a record's `(seq, hash)` with a key the database does not hold.
//!
//! # Record hash
//!
//! The record at position `seq` (0, 1, 2, ...) stores `prev_hash`, the hash of the record at
//! `seq - 1` (32 zero bytes for seq 0), and
//!
//! ```text
//! hash = SHA-256( "twid-provenance issuance-log record v1" || 0x00
//!                 || seq as u64 big-endian
//!                 || prev_hash (32 bytes)
//!                 || record encoding )
//! ```
//!
//! The record encoding concatenates these fields in this order. A string or byte string is
//! its length as u64 big-endian followed by its bytes (strings in UTF-8). An optional field
//! is the byte `0x00` when absent, or `0x01` followed by the value. So every field has one
//! encoding, and no two records share an encoding.
//!
//! 1. kind, a string: `x509`, `jwt`, `wit` or `refusal`
//! 2. serial, optional string: the X.509 serial number in lowercase hex
//! 3. jti, optional string
//! 4. SPIFFE ID, optional string
//! 5. registration entry ID, optional string
//! 6. agent SPIFFE ID, optional string
//! 7. selectors: their count as u64 big-endian, then for each the type and the value as
//!    strings
//! 8. key fingerprint, optional byte string: SHA-256 of the subject public key's
//!    SubjectPublicKeyInfo DER
//! 9. evidence digest, optional byte string: SHA-256 of the attestation evidence
//! 10. attestation result, optional string: canonical JSON with object keys sorted by their
//!     UTF-8 bytes and no whitespace. The hash covers the stored text, so a verifier hashes
//!     it as stored and never re-serializes it.
//! 11. policy version, optional string
//! 12. refusal reason, optional string
//! 13. time: milliseconds since the unix epoch as i64 big-endian (two's complement)
//!
//! [`record_hash`] computes this hash from a stored row.
//!
//! # Checkpoints
//!
//! A checkpoint signs
//! `"twid-provenance issuance-log checkpoint v1" || 0x00 || seq as u64 big-endian || hash`
//! with Ed25519 or with ECDSA P-256 and SHA-256 (an ASN.1 DER signature). A checkpoint due
//! every [`LogOptions::checkpoint_every`] records is written in the same transaction as its
//! record, by whichever process appends that record, if that process has a signing key.
//!
//! Limits: a chain and its checkpoints cannot reveal that records were removed from the end
//! if the administrator also removes the checkpoints past the new end and rewinds the head
//! row. Comparing a checkpoint kept outside the database with the stored record (see
//! [`IssuanceLog::list`]) closes that gap. Without the public key, [`IssuanceLog::verify`]
//! compares checkpoint hashes but not signatures, so a checkpoint row rewritten to match a
//! rewritten chain passes.
//!
//! # Concurrency
//!
//! One chain spans every server replica that shares a PostgreSQL database. Within a process,
//! an appender task on a thread of its own batches concurrent [`IssuanceLog::append`] calls
//! into one transaction (group commit), at most one batch per
//! [`LogOptions::batch_interval`] while records keep arriving. It remembers the head it wrote
//! last and stores the next batch on the condition that the head row still contains that
//! head, which on PostgreSQL is one statement. When another process has appended in between,
//! the batch is rebuilt in a transaction that locks the head row with `SELECT ... FOR UPDATE`
//! (SQLite: `BEGIN IMMEDIATE`), so appends from several processes take turns and each makes
//! progress.

#![forbid(unsafe_code)]

mod appender;
mod checkpoint;
mod encoding;
mod error;
mod record;
mod verify;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use twid_datastore::Datastore;

pub use checkpoint::{Checkpoint, CheckpointAlgorithm, PublicKey, SigningKey};
pub use encoding::{GENESIS_HASH, record_hash};
pub use error::LogError;
pub use record::{
    MAX_INDEXED_BYTES, MAX_JSON_DEPTH, NewRecord, Record, RecordKind, RecordPosition,
    evidence_digest, key_fingerprint,
};
pub use verify::{Alteration, AlterationKind, VerifyReport};

use crate::appender::{Appender, CallerCount, MAX_BATCH, Pending};
use crate::record::{EncodedRecord, from_row, lookup_serial};

/// Records that may wait for the appender before [`IssuanceLog::append`] waits for room.
const QUEUE_CAPACITY: usize = 8 * MAX_BATCH;

/// The default [`LogOptions::batch_interval`].
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(2);

/// The largest [`LogOptions::batch_interval`]. A longer one is cut to this, because a batch may
/// gather for eight intervals and its callers wait that long for their commit, and because
/// the appender adds the interval to the current time, which overflows near `Duration::MAX`.
pub const MAX_BATCH_INTERVAL: Duration = Duration::from_secs(60);

/// Settings for [`IssuanceLog::new`].
#[derive(Debug)]
pub struct LogOptions {
    /// Sign a checkpoint for every record whose `seq + 1` is a multiple of this. 0 turns
    /// periodic checkpoints off. Ignored without a signing key.
    pub checkpoint_every: u64,
    /// The checkpoint signing key, or `None` to write no checkpoints.
    pub signing_key: Option<SigningKey>,
    /// The minimum time from the start of one batch to the start of the next while records
    /// keep arriving, so that one commit (a disk sync) serves many. A batch starts sooner
    /// when it is full, or when records that came in quick succession stop for three times
    /// their mean gap and at least a twentieth of this time. A record that arrives after a
    /// quiet spell is written at once. When 16 or more wait and more keep arriving fast, they
    /// gather for up to eight times this long, or until three quarters of the callers seen
    /// waiting at once wait. Zero writes every batch as soon as the previous one has
    /// committed. At most [`MAX_BATCH_INTERVAL`].
    pub batch_interval: Duration,
}

impl Default for LogOptions {
    /// Checkpoints every 1000 records, with no signing key, and batches at most every
    /// [`DEFAULT_BATCH_INTERVAL`].
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            signing_key: None,
            batch_interval: DEFAULT_BATCH_INTERVAL,
        }
    }
}

/// The issuance log. Clones share one appender task, which stops when the last clone is
/// dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct IssuanceLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Datastore,
    signing_key: Option<Arc<SigningKey>>,
    /// The interval of periodic checkpoints, when this log signs them.
    checkpoint_every: Option<u64>,
    queue: mpsc::Sender<Pending>,
}

impl IssuanceLog {
    /// Opens the log stored in `store` and starts its appender task on a thread of its own.
    /// If the appender cannot start, the error is logged and every append fails with
    /// [`LogError::Closed`].
    pub fn new(store: Datastore, options: LogOptions) -> Self {
        let signing_key = options.signing_key.map(Arc::new);
        let batch_interval = options.batch_interval.min(MAX_BATCH_INTERVAL);
        if batch_interval < options.batch_interval {
            tracing::warn!(
                requested = ?options.batch_interval,
                used = ?batch_interval,
                "issuance log batch interval is longer than the maximum; using the maximum"
            );
        }
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        match store.issuance_log_writer() {
            Ok(writer) => Appender {
                store: store.clone(),
                writer,
                signing_key: signing_key.clone(),
                checkpoint_every: options.checkpoint_every,
                batch_interval,
                head: None,
                callers: CallerCount::default(),
            }
            .start(receiver),
            Err(error) => tracing::error!(
                error = %error,
                "opening the issuance log writer failed; appends will fail"
            ),
        }
        let checkpoint_every = (signing_key.is_some() && options.checkpoint_every > 0)
            .then_some(options.checkpoint_every);
        Self {
            inner: Arc::new(Inner {
                store,
                signing_key,
                checkpoint_every,
                queue,
            }),
        }
    }

    /// Appends `record` and returns its position once the transaction that stores it has
    /// committed. Concurrent calls share one transaction.
    ///
    /// If the returned future is dropped after the record was queued, the record may still
    /// be stored.
    ///
    /// # Errors
    /// Returns [`LogError::InvalidRecord`] if the record breaks a rule of [`NewRecord`], or
    /// the datastore failure, in which case the record was not stored unless the connection
    /// broke during the commit.
    pub async fn append(&self, record: NewRecord) -> Result<RecordPosition, LogError> {
        let record = EncodedRecord::new(&record)?;
        let (reply, outcome) = oneshot::channel();
        self.inner
            .queue
            .send(Pending { record, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        outcome.await.map_err(|_| LogError::Closed)?
    }

    /// Signs the newest record's `(seq, hash)` now and returns the checkpoint, or `None` for
    /// an empty log. If that record already has a checkpoint, returns the stored one.
    ///
    /// # Errors
    /// Returns [`LogError::NoSigningKey`] without a signing key, or the datastore failure.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, LogError> {
        let key = self
            .inner
            .signing_key
            .as_ref()
            .ok_or(LogError::NoSigningKey)?;
        let store = &self.inner.store;
        let head = store.issuance_log_head().await?;
        if head.next_seq <= 0 {
            return Ok(None);
        }

        let seq = head.next_seq - 1;
        let corrupt = |reason: &str| LogError::Corrupt {
            seq,
            reason: format!("the issuance_log_head row {reason}"),
        };
        let hash = record::hash_array(&head.head_hash)
            .ok_or_else(|| corrupt("has a hash that is not 32 bytes"))?;
        let unsigned_seq = u64::try_from(seq).map_err(|_| corrupt("has a negative seq"))?;
        let signed = key.sign(unsigned_seq, &hash, SystemTime::now())?;

        if store.insert_issuance_log_checkpoint(&signed).await? {
            tracing::info!(seq, "issuance log checkpoint signed on request");
            return Checkpoint::from_stored(signed).map(Some);
        }
        // A checkpoint for this seq exists already, made periodically or by another request.
        let stored = store.issuance_log_checkpoints(seq, 1).await?;
        match stored.into_iter().find(|checkpoint| checkpoint.seq == seq) {
            Some(existing) => Checkpoint::from_stored(existing).map(Some),
            None => Err(LogError::Corrupt {
                seq,
                reason: "the checkpoint table rejected a checkpoint for this seq but returns none"
                    .into(),
            }),
        }
    }

    /// Returns the newest record with this X.509 serial number (hex, any case, colons allowed),
    /// or `None`. The serial may lack the leading zeros of the stored form, the certificate's
    /// serial bytes in hex, because tools that print serials as integers drop them.
    ///
    /// # Errors
    /// Returns [`LogError::InvalidRecord`] for a serial that is not hex, the datastore
    /// failure, or [`LogError::Corrupt`].
    pub async fn find_by_serial(&self, serial: &str) -> Result<Option<Record>, LogError> {
        let serial = lookup_serial(serial)?;
        for candidate in serial_forms(&serial) {
            let row = self
                .inner
                .store
                .find_issuance_log_by_serial(&candidate)
                .await?;
            if let Some(row) = row {
                return from_row(row).map(Some);
            }
        }
        Ok(None)
    }

    /// Returns the newest record with this JWT ID, or `None`.
    ///
    /// # Errors
    /// Returns the datastore failure or [`LogError::Corrupt`].
    pub async fn find_by_jti(&self, jti: &str) -> Result<Option<Record>, LogError> {
        let row = self.inner.store.find_issuance_log_by_jti(jti).await?;
        row.map(from_row).transpose()
    }

    /// Returns up to `limit` records from `from_seq` on, in seq order. The records are read
    /// as stored and not verified.
    ///
    /// # Errors
    /// Returns the datastore failure or [`LogError::Corrupt`].
    pub async fn list(&self, from_seq: u64, limit: u32) -> Result<Vec<Record>, LogError> {
        let Ok(from_seq) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        let rows = self
            .inner
            .store
            .issuance_log_records(from_seq, limit)
            .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Reads the whole log in seq order, page by page, and checks every record's hash and
    /// link, every checkpoint's hash, and with `checkpoint_key` every checkpoint's signature.
    /// When this log signs periodic checkpoints, a record at which one is due must have it.
    /// Returns the first alteration, or the number of intact records.
    ///
    /// Appends may continue meanwhile: the records up to the head read at the start are
    /// verified.
    ///
    /// NOTE: every checkpoint is checked against the one `checkpoint_key`, so after a change
    /// of signing key the checkpoints signed with the earlier key fail as
    /// [`AlterationKind::BadCheckpointSignature`].
    ///
    /// # Errors
    /// Returns the datastore failure. Tampering is reported in the [`VerifyReport`], not as an
    /// error.
    pub async fn verify(
        &self,
        checkpoint_key: Option<&PublicKey>,
    ) -> Result<VerifyReport, LogError> {
        verify::verify(
            &self.inner.store,
            checkpoint_key,
            self.inner.checkpoint_every,
        )
        .await
    }

    /// Checks the newest end of the log in a few reads, cheap enough for every start. It
    /// looks for records past the head and compares the newest record's hash with its
    /// contents and with the head row. It checks that the newest periodic checkpoint due is
    /// stored, and the newest checkpoint against its record and, with a key, its signature.
    /// Returns the first alteration found, or `None`.
    ///
    /// Limit: this finds only alterations of the newest record, the head row and the newest
    /// checkpoint. Changes to older records need [`verify`](Self::verify), which reads the
    /// whole log.
    ///
    /// # Errors
    /// Returns the datastore failure.
    pub async fn check_head(
        &self,
        checkpoint_key: Option<&PublicKey>,
    ) -> Result<Option<Alteration>, LogError> {
        verify::check_head(
            &self.inner.store,
            checkpoint_key,
            self.inner.checkpoint_every,
        )
        .await
    }
}

/// Returns the stored forms that `serial` (normalized hex) may stand for, in lookup order.
/// The first is the serial as given. The second is its digits without leading zeros, padded
/// to whole bytes. The third adds the zero byte that DER puts before a serial whose first
/// byte has its high bit set.
fn serial_forms(serial: &str) -> Vec<String> {
    let digits = serial.trim_start_matches('0');
    let bytes = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits.to_owned()
    };
    let mut forms = vec![serial.to_owned()];
    for form in [bytes.clone(), format!("00{bytes}")] {
        if !form.is_empty() && !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}
