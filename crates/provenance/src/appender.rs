//! Group commit: one task takes every queued record, writes them in one transaction in queue
//! order, and sends each caller its result after the commit.
//!
//! One commit per batch instead of one per record is what makes the log cheap: a commit waits
//! for a disk sync (SQLite with `synchronous=FULL`) or a WAL flush (PostgreSQL), while hashing
//! and inserting a record costs microseconds.
//!
//! Batches start at most once per [`crate::LogOptions::batch_interval`] while records keep
//! arriving, so that one commit serves tens of records, because each commit has a fixed cost
//! (disk sync, locks, WAL flush). A batch waiting for its start begins early when records that
//! came in quick succession stop (see [`pace`]), because then every caller waits for it. When 64
//! or more records wait and more keep arriving, the batch gathers them for up to eight
//! intervals, so that at saturation a commit serves hundreds.
//!
//! Limit: the log costs 11 to 15 % of the signing rate at saturation on a 2-vCPU machine that
//! signs 40,000 SVIDs a second, above the target of 10 %. About half of that remains with the
//! database writes left out: handing records to this thread and waking their callers. With few
//! concurrent signers each waits for a commit, batches commit one at a time, and the rate is
//! bound by commit latency: about a third lower with 64 signers.
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

/// Minimum records waiting at the start of a batch for the appender to gather more. Each
/// waiting record is a caller waiting for its commit.
const BUSY_BATCH: usize = 64;

/// Checks per batch interval of whether records still arrive while a batch gathers.
const GATHER_STEPS_PER_INTERVAL: u32 = 8;

/// Checks per batch interval, while a batch waits for its start, of whether records still
/// arrive.
const PACE_STEPS_PER_INTERVAL: u32 = 20;

/// Length of a quiet spell that starts a batch early, in mean gaps between arrivals: with
/// independent arrivals, a spell of three gaps occurs after about one gap in twenty.
const QUIET_GAPS: u32 = 3;

/// Minimum records that must arrive during one step for the batch to keep gathering. At the
/// default interval that is 2 per 0.25 ms, or 8,000 per second.
const BUSY_STEP_RECORDS: usize = 2;

/// Batch intervals, counted from the start of the previous batch, that a batch may gather for
/// under sustained load.
const MAX_GATHER_INTERVALS: u32 = 8;

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
            let mut quiet = false;
            if let Some(start) = last_start {
                let due = start + self.batch_interval;
                if Instant::now() < due && batch.len() < MAX_BATCH {
                    quiet = pace(&mut queue, &mut batch, start, self.batch_interval);
                }
            }
            if let Some(start) = last_start
                && !quiet
            {
                gather_while_busy(&mut queue, &mut batch, start, self.batch_interval);
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

/// Waits until `last_start + interval` for more records, and ends the wait early when none
/// arrived for a quiet spell: at least a step of `interval / PACE_STEPS_PER_INTERVAL`, and at
/// least [`QUIET_GAPS`] times the mean gap between the records that arrived since
/// `last_start`. Returns whether it ended early, in which case gathering more would only wait
/// longer.
///
/// Records that stop arriving while they came at a fast rate mean that every caller with a
/// record to append already waits for this batch. Waiting on would leave the cores idle. The
/// spell in units of the mean gap keeps independent arrivals at a moderate rate, whose gaps
/// vary at random, from starting a batch early and so from adding commits (disk syncs).
fn pace(
    queue: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    last_start: Instant,
    interval: Duration,
) -> bool {
    let due = last_start + interval;
    let step = interval / PACE_STEPS_PER_INTERVAL;
    // The records already in the batch arrived by now.
    let mut last_arrival = Instant::now();
    while batch.len() < MAX_BATCH {
        let now = Instant::now();
        if now >= due {
            return false;
        }
        let before = batch.len();
        // Sleeping blocks only this thread, whose runtime has no other task, and is precise
        // to tens of microseconds where Tokio's timer rounds up to whole milliseconds.
        std::thread::sleep(step.min(due - now));
        take_waiting(queue, batch);
        let now = Instant::now();
        if batch.len() > before {
            last_arrival = now;
            continue;
        }
        let records = u32::try_from(batch.len()).unwrap_or(u32::MAX).max(1);
        let mean_gap = last_arrival.saturating_duration_since(last_start) / records;
        if now - last_arrival >= step.max(mean_gap * QUIET_GAPS) {
            return true;
        }
    }
    false
}

/// Keeps adding to `batch` while records arrive at a rate of at least [`BUSY_STEP_RECORDS`]
/// per step of `interval / GATHER_STEPS_PER_INTERVAL`, until [`MAX_GATHER_INTERVALS`]
/// intervals after `last_start` or a full batch. Only a batch of [`BUSY_BATCH`] records or
/// more gathers.
///
/// Records that keep arriving while this many wait mean that other signers keep the cores
/// busy, and then a commit's fixed cost, which on PostgreSQL is that of about a hundred rows,
/// is better shared among more records. When every signer waits for this batch, arrivals stop
/// and the gathering ends after one step, so a closed loop of callers loses at most a step
/// per batch.
fn gather_while_busy(
    queue: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    last_start: Instant,
    interval: Duration,
) {
    if interval.is_zero() || batch.len() < BUSY_BATCH {
        return;
    }
    let step = interval / GATHER_STEPS_PER_INTERVAL;
    let until = last_start + interval * MAX_GATHER_INTERVALS;
    while batch.len() < MAX_BATCH {
        let now = Instant::now();
        if now >= until {
            return;
        }
        let before = batch.len();
        // Sleeping blocks only the appender's thread, as the pacing in `Appender::run` does.
        std::thread::sleep(step.min(until - now));
        take_waiting(queue, batch);
        // A sleep lasts longer than asked, so the rate is judged over the time that passed.
        let arrived = u128::try_from(batch.len() - before).unwrap_or(u128::MAX);
        let busy = u128::try_from(BUSY_STEP_RECORDS).unwrap_or(u128::MAX);
        if arrived < busy || arrived * step.as_nanos() < busy * now.elapsed().as_nanos() {
            return;
        }
    }
}

/// Moves records that are already queued into `batch`, up to [`MAX_BATCH`].
fn take_waiting(queue: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
}

fn position(row: &IssuanceLogRecord) -> RecordPosition {
    RecordPosition {
        // write() set both fields from a u64 seq and a 32-byte hash.
        seq: u64::try_from(row.seq).unwrap_or_default(),
        hash: hash_array(&row.hash).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long interval, so that the timing holds on a loaded machine: steps of 25 ms, and
    /// gathering ends at most 1.6 s after the previous batch started.
    const INTERVAL: Duration = Duration::from_millis(200);

    fn pending(seq: i64) -> Pending {
        let row = IssuanceLogRecord {
            seq,
            prev_hash: vec![0; 32],
            hash: vec![0; 32],
            kind: "x509".into(),
            serial: Some(format!("{seq:x}")),
            jti: None,
            spiffe_id: None,
            entry_id: None,
            agent_id: None,
            selectors: "[]".into(),
            key_fingerprint: None,
            evidence_digest: None,
            attestation_result: None,
            policy_version: None,
            refusal_reason: None,
            time_unix_ms: 0,
        };
        // The receiver is dropped: these tests only move records between queues.
        let (reply, _) = oneshot::channel();
        Pending {
            row,
            encoding: Vec::new(),
            reply,
        }
    }

    fn batch_of(count: usize) -> Vec<Pending> {
        (0..count).map(|n| pending(n as i64)).collect()
    }

    #[test]
    fn small_batch_does_not_gather() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        sender.try_send(pending(100)).expect("queue has room");
        let mut batch = batch_of(BUSY_BATCH - 1);
        let started = Instant::now();
        gather_while_busy(&mut queue, &mut batch, started, INTERVAL);
        assert!(started.elapsed() < INTERVAL / GATHER_STEPS_PER_INTERVAL);
        assert_eq!(
            batch.len(),
            BUSY_BATCH - 1,
            "a small batch took a queued record"
        );
    }

    #[test]
    fn gathering_stops_when_arrivals_stop() {
        let (_sender, mut queue) = mpsc::channel(QUEUE);
        let mut batch = batch_of(BUSY_BATCH);
        let started = Instant::now();
        gather_while_busy(&mut queue, &mut batch, started, INTERVAL);
        let waited = started.elapsed();
        assert!(
            waited < INTERVAL * 2,
            "gathered for {waited:?} while no record arrived"
        );
        assert_eq!(batch.len(), BUSY_BATCH);
    }

    #[test]
    fn steady_arrivals_gather_until_the_limit() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let producer = std::thread::spawn(move || {
            // Bursts of 10 records 5 ms apart, about 50 per 25 ms step against the threshold
            // of 2, for longer than the gathering may last.
            for burst in 0_i64.. {
                for n in 0..10 {
                    if sender
                        .blocking_send(pending(1000 + burst * 10 + n))
                        .is_err()
                    {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut batch = batch_of(BUSY_BATCH);
        let started = Instant::now();
        gather_while_busy(&mut queue, &mut batch, started, INTERVAL);
        let waited = started.elapsed();
        drop(queue);
        producer.join().expect("producer thread");
        let limit = INTERVAL * MAX_GATHER_INTERVALS;
        assert!(
            batch.len() == MAX_BATCH || waited >= limit,
            "gathering stopped after {waited:?} with {} records while records kept arriving",
            batch.len()
        );
        assert!(batch.len() > BUSY_BATCH, "no record was gathered");
    }

    #[test]
    fn pause_ends_after_a_step_without_records() {
        let (_sender, mut queue) = mpsc::channel(QUEUE);
        let mut batch = batch_of(1);
        let started = Instant::now();
        let quiet = pace(&mut queue, &mut batch, started, INTERVAL);
        let waited = started.elapsed();
        assert!(quiet, "a pause with no arrivals ran to its end");
        assert!(
            waited < INTERVAL / 2,
            "the pause lasted {waited:?} although no record arrived"
        );
    }

    #[test]
    fn pause_lasts_while_records_arrive() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let producer = std::thread::spawn(move || {
            // Bursts of 5 records 2 ms apart, about 25 bursts per 50 ms step, so that only a
            // producer stalled for a whole step ends the pause.
            for burst in 0_i64..1_000 {
                for n in 0..5 {
                    if sender.blocking_send(pending(1000 + burst * 5 + n)).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let interval = Duration::from_secs(1);
        let mut batch = batch_of(1);
        let started = Instant::now();
        let quiet = pace(&mut queue, &mut batch, started, interval);
        let waited = started.elapsed();
        drop(queue);
        producer.join().expect("producer thread");
        assert!(
            !quiet,
            "the pause ended after {waited:?} while records kept arriving"
        );
        assert!(
            batch.len() == MAX_BATCH || waited >= interval,
            "the pause ended after {waited:?} with {} records",
            batch.len()
        );
    }

    #[test]
    fn pause_lasts_through_gaps_of_moderate_arrivals() {
        // Steps of 50 ms, and a record every 80 ms: most steps see none, but no spell without
        // records reaches three mean gaps.
        let interval = Duration::from_secs(1);
        let gap = Duration::from_millis(80);
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let producer = std::thread::spawn(move || {
            for n in 0_i64..20 {
                std::thread::sleep(gap);
                if sender.blocking_send(pending(1000 + n)).is_err() {
                    return;
                }
            }
        });
        let mut batch = batch_of(1);
        let last_start = Instant::now() - gap;
        let quiet = pace(&mut queue, &mut batch, last_start, interval);
        let waited = last_start.elapsed();
        drop(queue);
        producer.join().expect("producer thread");
        assert!(
            !quiet,
            "records every {gap:?} ended the pause after {waited:?}"
        );
        assert!(waited >= interval, "the pause ended after {waited:?}");
    }

    /// A queue larger than any batch, as in the log.
    const QUEUE: usize = 4 * MAX_BATCH;
}
