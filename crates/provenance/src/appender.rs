//! Group commit: one task takes every queued record, writes them in one transaction in queue
//! order, and sends each caller its result after the commit.
//!
//! One commit per batch instead of one per record is what makes the log cheap: a commit waits
//! for a disk sync (SQLite with `synchronous=FULL`) or a WAL flush (PostgreSQL), while hashing
//! and inserting a record costs microseconds.
//!
//! Batches start at most once per [`crate::LogOptions::batch_interval`], so that under load one
//! commit serves tens of records. The commit's fixed cost (disk sync, locks, WAL header) is
//! most of what the log costs.
//!
//! Limit: batches commit one at a time. At saturation the log costs about 8 % of the signing
//! rate on SQLite and 10 to 14 % on PostgreSQL, whose server spends its share per row; with
//! few concurrent signers each waits for a commit, and the rate is bound by commit latency.
//!
//! The task runs on a thread of its own with a single-threaded Tokio runtime. On the callers'
//! runtime, a task woken by the database driver waits behind the runnable tasks, and a server
//! busy signing SVIDs has many. In the signing benchmark, each await of a batch waited there
//! for up to a millisecond. The appender also remembers the head it wrote last, so a
//! batch needs no read of the head row unless another process has appended.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use twid_datastore::{
    Datastore, DatastoreError, IssuanceLogCheckpoint, IssuanceLogRecord, IssuanceLogWriter,
    WriteOutcome,
};

use crate::checkpoint::SigningKey;
use crate::encoding::chain_hash;
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
    /// The row's record encoding, computed by the caller.
    pub(crate) encoding: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<RecordPosition, LogError>>,
}

/// The state of the appender task.
pub(crate) struct Appender {
    pub(crate) store: Datastore,
    pub(crate) writer: IssuanceLogWriter,
    pub(crate) signing_key: Option<Arc<SigningKey>>,
    pub(crate) checkpoint_every: u64,
    pub(crate) batch_interval: Duration,
    /// The seq and hash the next record continues from, as this task last wrote or read them,
    /// or `None` when they must be read from the head row.
    pub(crate) head: Option<(u64, [u8; 32])>,
}

impl Appender {
    /// Starts the appender on a thread of its own and returns at once. If the thread or its
    /// runtime cannot start, the queue closes and every append fails with
    /// [`LogError::Closed`].
    pub(crate) fn start(self, queue: mpsc::Receiver<Pending>) {
        let spawned = std::thread::Builder::new()
            .name("issuance-log-appender".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(self.run(queue)),
                    Err(error) => tracing::error!(
                        error = %error,
                        "starting the issuance log appender runtime failed; appends will fail"
                    ),
                }
            });
        if let Err(error) = spawned {
            tracing::error!(
                error = %error,
                "starting the issuance log appender thread failed; appends will fail"
            );
        }
    }

    /// Writes queued records until every sender is dropped and the queue is empty.
    async fn run(mut self, mut queue: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_start: Option<Instant> = None;
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            if let Some(due) = last_start.map(|start| start + self.batch_interval) {
                let now = Instant::now();
                if now < due && batch.len() < MAX_BATCH {
                    // Sleeping blocks only this thread, whose runtime has no other task, and
                    // is precise to tens of microseconds where Tokio's timer rounds up to
                    // whole milliseconds.
                    std::thread::sleep(due - now);
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(pending) => batch.push(pending),
                            Err(_) => break,
                        }
                    }
                }
            }
            last_start = Some(Instant::now());
            let mut rows = Vec::with_capacity(batch.len());
            let mut encodings = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for pending in batch.drain(..) {
                rows.push(pending.row);
                encodings.push(pending.encoding);
                replies.push(pending.reply);
            }
            let outcome = self.write_with_retry(&mut rows, &encodings).await;
            match outcome {
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

    async fn write_with_retry(
        &mut self,
        rows: &mut [IssuanceLogRecord],
        encodings: &[Vec<u8>],
    ) -> Result<(), LogError> {
        let mut attempt = 1;
        loop {
            match self.write(rows, encodings).await {
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

    /// Chains `rows` onto the head, signs any checkpoints that fall due, and stores them all
    /// in one transaction.
    ///
    /// With a remembered head, the batch is stored on the condition that the head row still
    /// contains it. When another process has appended since, or no head is remembered, the batch
    /// is written in a transaction that locks the head row first, which always makes
    /// progress. The conditional path alone could starve behind a replica that keeps winning.
    async fn write(
        &mut self,
        rows: &mut [IssuanceLogRecord],
        encodings: &[Vec<u8>],
    ) -> Result<(), LogError> {
        // A failure leaves the remembered head unknown, so the next batch reads it again.
        if let Some((first_seq, head_hash)) = self.head.take() {
            let (last, checkpoints) = self.chain(first_seq, head_hash, rows, encodings)?;
            let outcome = self
                .writer
                .append(stored_seq(first_seq)?, &head_hash, rows, &checkpoints)
                .await?;
            if outcome == WriteOutcome::Committed {
                self.committed(first_seq, rows.len(), last, &checkpoints);
                return Ok(());
            }
            tracing::debug!(
                records = rows.len(),
                "issuance log head moved; writing the batch under the head row's lock"
            );
        }

        let mut tx = self.store.begin_issuance_log_append().await?;
        let head_seq = tx.next_seq();
        let head_corrupt = |reason: &str| LogError::Corrupt {
            seq: head_seq,
            reason: format!("the issuance_log_head row {reason}"),
        };
        let first_seq = u64::try_from(head_seq).map_err(|_| head_corrupt("has a negative seq"))?;
        let head_hash = hash_array(tx.head_hash())
            .ok_or_else(|| head_corrupt("has a hash that is not 32 bytes"))?;
        let (last, checkpoints) = self.chain(first_seq, head_hash, rows, encodings)?;
        tx.insert_records(rows).await?;
        for checkpoint in &checkpoints {
            tx.insert_checkpoint(checkpoint).await?;
        }
        tx.commit().await?;
        self.committed(first_seq, rows.len(), last, &checkpoints);
        Ok(())
    }

    /// Sets the seq, `prev_hash` and hash of `rows` as a chain that starts at `first_seq`
    /// after `head_hash`, and signs the checkpoints that fall due. Returns the last hash and
    /// the checkpoints.
    fn chain(
        &self,
        first_seq: u64,
        head_hash: [u8; 32],
        rows: &mut [IssuanceLogRecord],
        encodings: &[Vec<u8>],
    ) -> Result<([u8; 32], Vec<IssuanceLogCheckpoint>), LogError> {
        let now = SystemTime::now();
        let mut prev = head_hash;
        let mut checkpoints = Vec::new();
        for ((seq, row), encoding) in (first_seq..).zip(rows.iter_mut()).zip(encodings) {
            row.seq = stored_seq(seq)?;
            row.prev_hash = prev.to_vec();
            let hash = chain_hash(seq, &prev, encoding);
            row.hash = hash.to_vec();
            if let Some(key) = &self.signing_key
                && self.checkpoint_every > 0
                && (seq + 1) % self.checkpoint_every == 0
            {
                checkpoints.push(key.sign(seq, &hash, now)?);
            }
            prev = hash;
        }
        Ok((prev, checkpoints))
    }

    /// Remembers the head after a committed batch.
    fn committed(
        &mut self,
        first_seq: u64,
        count: usize,
        last_hash: [u8; 32],
        checkpoints: &[IssuanceLogCheckpoint],
    ) {
        // usize is at most 64 bits on every supported target.
        self.head = Some((first_seq + count as u64, last_hash));
        if let Some(last) = checkpoints.last() {
            tracing::debug!(seq = last.seq, "issuance log checkpoint signed");
        }
    }
}

/// Converts a seq to the stored type.
fn stored_seq(seq: u64) -> Result<i64, LogError> {
    i64::try_from(seq).map_err(|_| LogError::Corrupt {
        seq: i64::MAX,
        reason: format!("seq {seq} is beyond the largest seq the datastore can store"),
    })
}

fn position(row: &IssuanceLogRecord) -> RecordPosition {
    RecordPosition {
        // write() set both fields from a u64 seq and a 32-byte hash.
        seq: u64::try_from(row.seq).unwrap_or_default(),
        hash: hash_array(&row.hash).unwrap_or_default(),
    }
}
