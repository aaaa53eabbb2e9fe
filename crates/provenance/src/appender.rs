//! Group commit: one task takes every queued record, writes them in one transaction in queue
//! order, and sends each caller its result after the commit.
//!
//! One commit per batch instead of one per record is what makes the log cheap: a commit waits
//! for a disk sync (SQLite with `synchronous=FULL`) or a WAL flush (PostgreSQL), while hashing
//! and inserting a record costs microseconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use twid_datastore::{Datastore, DatastoreError, IssuanceLogRecord};

use crate::checkpoint::SigningKey;
use crate::encoding::record_hash;
use crate::error::LogError;
use crate::record::{RecordPosition, hash_array};

/// Maximum records per transaction, which bounds the transaction's size and the time the
/// head row stays locked.
pub(crate) const MAX_BATCH: usize = 1024;

/// Attempts per batch when the database reports a lock or serialization conflict.
const MAX_ATTEMPTS: u32 = 3;

/// A record waiting in the queue, with the channel that receives its outcome.
pub(crate) struct Pending {
    pub(crate) row: IssuanceLogRecord,
    pub(crate) reply: oneshot::Sender<Result<RecordPosition, LogError>>,
}

/// The state of the appender task.
pub(crate) struct Appender {
    pub(crate) store: Datastore,
    pub(crate) signing_key: Option<Arc<SigningKey>>,
    pub(crate) checkpoint_every: u64,
}

impl Appender {
    /// Writes queued records until every sender is dropped and the queue is empty.
    pub(crate) async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let (mut rows, replies): (Vec<_>, Vec<_>) = batch
                .drain(..)
                .map(|pending| (pending.row, pending.reply))
                .unzip();
            match self.write_with_retry(&mut rows).await {
                Ok(()) => {
                    for (row, reply) in rows.iter().zip(replies) {
                        // A caller that stopped waiting has dropped its receiver; its record
                        // is stored all the same.
                        let _ = reply.send(Ok(position(row)));
                    }
                }
                Err(error) => {
                    tracing::error!(
                        records = rows.len(),
                        error = %error,
                        "issuance log append failed; the records were not written"
                    );
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
        tracing::debug!("issuance log appender stopped");
    }

    async fn write_with_retry(&self, rows: &mut [IssuanceLogRecord]) -> Result<(), LogError> {
        let mut attempt = 1;
        loop {
            match self.write(rows).await {
                Err(LogError::Datastore(error))
                    if matches!(*error, DatastoreError::Conflict(_)) && attempt < MAX_ATTEMPTS =>
                {
                    tracing::warn!(
                        attempt,
                        records = rows.len(),
                        error = %error,
                        "issuance log append conflicted; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Chains `rows` onto the stored head, inserts them with any checkpoints that fall due,
    /// and commits. The head stays locked from the first read to the commit.
    async fn write(&self, rows: &mut [IssuanceLogRecord]) -> Result<(), LogError> {
        let mut tx = self.store.begin_issuance_log_append().await?;
        let head_seq = tx.next_seq();
        let head_corrupt = |reason: &str| LogError::Corrupt {
            seq: head_seq,
            reason: format!("the issuance_log_head row {reason}"),
        };
        let first_seq = u64::try_from(head_seq).map_err(|_| head_corrupt("has a negative seq"))?;
        let mut prev = hash_array(tx.head_hash())
            .ok_or_else(|| head_corrupt("has a hash that is not 32 bytes"))?;

        let now = SystemTime::now();
        let mut checkpoints = Vec::new();
        for (seq, row) in (first_seq..).zip(rows.iter_mut()) {
            row.seq =
                i64::try_from(seq).map_err(|_| head_corrupt("has reached the maximum seq"))?;
            row.prev_hash = prev.to_vec();
            let hash = record_hash(seq, &prev, row).map_err(LogError::InvalidRecord)?;
            row.hash = hash.to_vec();
            if let Some(key) = &self.signing_key
                && self.checkpoint_every > 0
                && (seq + 1) % self.checkpoint_every == 0
            {
                checkpoints.push(key.sign(seq, &hash, now)?);
            }
            prev = hash;
        }

        tx.insert_records(rows).await?;
        for checkpoint in &checkpoints {
            tx.insert_checkpoint(checkpoint).await?;
        }
        tx.commit().await?;
        if let Some(last) = checkpoints.last() {
            tracing::debug!(seq = last.seq, "issuance log checkpoint signed");
        }
        Ok(())
    }
}

fn position(row: &IssuanceLogRecord) -> RecordPosition {
    RecordPosition {
        // write() set both fields from a u64 seq and a 32-byte hash.
        seq: u64::try_from(row.seq).unwrap_or_default(),
        hash: hash_array(&row.hash).unwrap_or_default(),
    }
}
