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
//! came in quick succession stop (see [`pace`]), because then every caller waits for it. When 16
//! or more records wait and more keep arriving, the batch gathers them for up to eight
//! intervals, so that at saturation a commit serves hundreds. It stops at three quarters of the
//! callers it last saw waiting at once (see [`CallerCount`]), so that callers that each wait
//! for their commit do not all wait for the same one.
//!
//! Limit: on a 2-vCPU machine that signs 26,000 SVIDs a second, the log costs about 9 % of the
//! signing rate at saturation on SQLite, within the target of 10 %, and about 12 % on
//! PostgreSQL, above it. On one that signs about 16,000 a second, it costs about 6 and 9 %,
//! on another that signs about 18,000 a second, 10 to 13 and 13 to 17 %, and on one that
//! signs about 37,000 a second, about 10 and 15 %. There the queue, this thread and the
//! replies alone cost 6 %. SQLite takes three quarters of this thread's time. With few
//! concurrent signers each waits for a commit, batches commit one at a time, and the rate is
//! bound by commit latency: an eighth to a third lower with 64 signers.
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
    Datastore, DatastoreError, IssuanceLogCheckpoint, IssuanceLogRecord, IssuanceLogRowRef,
    IssuanceLogWriter, WriteOutcome,
};

use crate::checkpoint::SigningKey;
use crate::encoding::chain_hash;
use crate::error::LogError;
use crate::record::{EncodedRecord, RecordPosition, hash_array};

/// Maximum records per transaction, which bounds the transaction's size and the time the
/// head row stays locked.
pub(crate) const MAX_BATCH: usize = 1024;

/// Minimum records waiting at the start of a batch for the appender to gather more. Each
/// waiting record is a caller waiting for its commit.
const BUSY_BATCH: usize = 16;

/// How long a count of the callers that can wait at once stays in use. After that the next
/// busy batch gathers until arrivals stop or its time is up, and so counts them again.
const CALLERS_SEEN_FOR: Duration = Duration::from_secs(1);

/// Checks per batch interval of whether records still arrive, in the first step of a
/// gathering. Later steps grow (see [`next_gather_step`]).
const GATHER_STEPS_PER_INTERVAL: u32 = 8;

/// Maximum length of a gathering's step, in batch intervals.
const MAX_GATHER_STEP_INTERVALS: u32 = 2;

/// Minimum number of records that the last step's rate must predict before a step that brings
/// fewer than half of them counts as arrivals that stopped. Independent arrivals with a mean
/// of 32 per step bring fewer than 16 in less than one step in a thousand.
const DROP_CHECK_RECORDS: usize = 2 * BUSY_BATCH;

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
    pub(crate) record: EncodedRecord,
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
    /// The callers seen waiting at once when arrivals last stopped during a gathering.
    pub(crate) callers: CallerCount,
}

/// The number of callers that can wait for a batch at once, as last seen.
///
/// A closed loop of callers, each of which appends again only after its commit, stops
/// sending records once all of them wait. A batch that gathers until then leaves every core
/// idle while it commits. A batch that stops at three quarters of them leaves the rest
/// signing. Many independent callers never all wait, and their batches gather for as long as
/// [`MAX_GATHER_INTERVALS`] allows.
#[derive(Debug, Default)]
pub(crate) struct CallerCount {
    seen: Option<(usize, Instant)>,
}

impl CallerCount {
    /// Returns the batch size at which gathering stops: three quarters of the callers seen
    /// waiting at once, but at least [`BUSY_BATCH`], or [`MAX_BATCH`] when no count is recent.
    fn gather_limit(&self, now: Instant) -> usize {
        match self.seen {
            Some((callers, at)) if now.saturating_duration_since(at) < CALLERS_SEEN_FOR => {
                (callers - callers / 4).clamp(BUSY_BATCH, MAX_BATCH)
            }
            _ => MAX_BATCH,
        }
    }

    /// Counts the callers after a gathering, which counts them when arrivals stopped. A
    /// smaller count does not replace a recent larger one, because a lull that reads as a
    /// stop, when the machine stalls for a step, would otherwise shrink the batches.
    fn record(&mut self, gathered: Gathered, batch: usize, now: Instant) {
        if gathered != Gathered::Stopped {
            return;
        }
        // The larger count keeps its own time, so a count that is no longer right expires.
        match self.seen {
            Some((seen, at))
                if seen >= batch && now.saturating_duration_since(at) < CALLERS_SEEN_FOR => {}
            _ => self.seen = Some((batch, now)),
        }
    }
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
                let now = Instant::now();
                let limit = self.callers.gather_limit(now);
                let gathered =
                    gather_while_busy(&mut queue, &mut batch, start, self.batch_interval, limit);
                self.callers.record(gathered, batch.len(), Instant::now());
            }
            last_start = Some(Instant::now());
            let mut records = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for pending in batch.drain(..) {
                records.push(pending.record);
                replies.push(pending.reply);
            }
            let outcome = self.write_with_retry(&records).await;
            match outcome {
                Ok((first_seq, hashes)) => {
                    for ((seq, hash), reply) in (first_seq..).zip(hashes).zip(replies) {
                        // A caller that stopped waiting has dropped its receiver; its record
                        // is stored all the same.
                        let _ = reply.send(Ok(RecordPosition { seq, hash }));
                    }
                }
                Err(error) => {
                    tracing::error!(
                        records = records.len(),
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

    /// Writes `records` as [`Self::write`] does, and tries again after a conflict.
    async fn write_with_retry(
        &mut self,
        records: &[EncodedRecord],
    ) -> Result<(u64, Vec<[u8; 32]>), LogError> {
        let mut attempt = 1;
        loop {
            match self.write(records).await {
                Err(LogError::Datastore(error))
                    if matches!(*error, DatastoreError::Conflict(_)) && attempt < MAX_ATTEMPTS =>
                {
                    tracing::warn!(
                        attempt,
                        records = records.len(),
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

    /// Chains `records` onto the head, signs any checkpoints that fall due, and stores them
    /// all in one transaction. Returns the first record's seq and every record's hash.
    ///
    /// With a remembered head, the batch is stored on the condition that the head row still
    /// contains it. When another process has appended since, or no head is remembered, the batch
    /// is written in a transaction that locks the head row first, which always makes
    /// progress. The conditional path alone could starve behind a replica that keeps winning.
    async fn write(&mut self, records: &[EncodedRecord]) -> Result<(u64, Vec<[u8; 32]>), LogError> {
        // A failure leaves the remembered head unknown, so the next batch reads it again.
        if let Some((first_seq, head_hash)) = self.head.take() {
            let (hashes, checkpoints) = self.chain(first_seq, head_hash, records)?;
            let rows = rows(first_seq, &head_hash, records, &hashes)?;
            let outcome = self
                .writer
                .append(stored_seq(first_seq)?, &head_hash, &rows, &checkpoints)
                .await?;
            if outcome == WriteOutcome::Committed {
                self.committed(first_seq, &hashes, &checkpoints);
                return Ok((first_seq, hashes));
            }
            tracing::debug!(
                records = records.len(),
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
        // A head row changed outside twid would make the batch continue from a position or
        // hash that no record has, and leave a gap or a broken link in the chain.
        if let Some(newest) = head_seq.checked_sub(1).filter(|seq| *seq >= 0) {
            match tx.record_hash(newest).await? {
                Some(hash) if hash.as_slice() == head_hash.as_slice() => {}
                Some(hash) => {
                    return Err(head_corrupt(&format!(
                        "names hash {} for seq {newest}, but that record's hash is {}",
                        hex::encode(head_hash),
                        hex::encode(hash)
                    )));
                }
                None => {
                    return Err(head_corrupt(&format!(
                        "counts {head_seq} records, but record {newest} is missing"
                    )));
                }
            }
        }
        let (hashes, checkpoints) = self.chain(first_seq, head_hash, records)?;
        // This path runs after another process appended, or once at the start, so owned rows
        // cost little here.
        let owned: Vec<IssuanceLogRecord> = rows(first_seq, &head_hash, records, &hashes)?
            .iter()
            .map(IssuanceLogRowRef::to_record)
            .collect();
        tx.insert_records(&owned).await?;
        for checkpoint in &checkpoints {
            tx.insert_checkpoint(checkpoint).await?;
        }
        tx.commit().await?;
        self.committed(first_seq, &hashes, &checkpoints);
        Ok((first_seq, hashes))
    }

    /// Computes the chain hashes of `records` from `first_seq` on after `head_hash`, and signs
    /// the checkpoints that fall due. Returns the hashes and the checkpoints.
    fn chain(
        &self,
        first_seq: u64,
        head_hash: [u8; 32],
        records: &[EncodedRecord],
    ) -> Result<(Vec<[u8; 32]>, Vec<IssuanceLogCheckpoint>), LogError> {
        let now = SystemTime::now();
        let mut prev = head_hash;
        let mut hashes = Vec::with_capacity(records.len());
        let mut checkpoints = Vec::new();
        for (seq, record) in (first_seq..).zip(records) {
            let hash = chain_hash(seq, &prev, record.encoding());
            if let Some(key) = &self.signing_key
                && self.checkpoint_every > 0
                && (seq + 1) % self.checkpoint_every == 0
            {
                checkpoints.push(key.sign(seq, &hash, now)?);
            }
            hashes.push(hash);
            prev = hash;
        }
        Ok((hashes, checkpoints))
    }

    /// Remembers the head after a committed batch.
    fn committed(
        &mut self,
        first_seq: u64,
        hashes: &[[u8; 32]],
        checkpoints: &[IssuanceLogCheckpoint],
    ) {
        if let Some(last) = hashes.last() {
            // usize is at most 64 bits on every supported target.
            self.head = Some((first_seq + hashes.len() as u64, *last));
        }
        if let Some(last) = checkpoints.last() {
            tracing::debug!(seq = last.seq, "issuance log checkpoint signed");
        }
    }
}

/// Builds the rows that store `records` at consecutive seqs from `first_seq`, chained after
/// `head_hash` with `hashes`.
fn rows<'a>(
    first_seq: u64,
    head_hash: &'a [u8; 32],
    records: &'a [EncodedRecord],
    hashes: &'a [[u8; 32]],
) -> Result<Vec<IssuanceLogRowRef<'a>>, LogError> {
    let prevs = std::iter::once(head_hash).chain(hashes);
    (first_seq..)
        .zip(records)
        .zip(prevs.zip(hashes))
        .map(|((seq, record), (prev, hash))| record.row(stored_seq(seq)?, prev, hash))
        .collect()
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
        take_waiting(queue, batch, MAX_BATCH);
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

/// The reason [`gather_while_busy`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// The batch was too small to gather, or had reached the limit already.
    NotStarted,
    /// No record arrived in a step that took at most twice as long as requested, or fewer
    /// than half of those the last step's rate predicts (see [`arrivals_dropped`]): every
    /// caller waits, or nearly.
    Stopped,
    /// Fewer than [`BUSY_STEP_RECORDS`] arrived in a step, or they arrived more slowly than
    /// that many per first step. A step with no arrival that took more than twice as long as
    /// requested ends here too, because this thread may not have run, so the arrivals count
    /// for little.
    Slowed,
    /// The batch reached the limit or [`MAX_BATCH`] while records kept arriving.
    Full,
    /// [`MAX_GATHER_INTERVALS`] passed while records kept arriving.
    TimeUp,
}

/// Keeps adding to `batch` while records arrive at a rate of at least [`BUSY_STEP_RECORDS`]
/// per `interval / GATHER_STEPS_PER_INTERVAL`, until [`MAX_GATHER_INTERVALS`] intervals
/// after `last_start` or `limit` records. It checks the rate after steps that start at that
/// length and grow while records keep arriving (see [`next_gather_step`]). Only a batch of
/// [`BUSY_BATCH`] records or more gathers.
///
/// Records that keep arriving while this many wait mean that other callers keep the cores
/// busy. Then a commit's fixed cost is better shared among more records: a disk sync and WAL
/// frames, or on PostgreSQL the cost of about a hundred rows. When every caller waits for this
/// batch, arrivals stop and the gathering ends after one step; `limit` (see [`CallerCount`])
/// stops it before that.
fn gather_while_busy(
    queue: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    last_start: Instant,
    interval: Duration,
    limit: usize,
) -> Gathered {
    let limit = limit.min(MAX_BATCH);
    if interval.is_zero() || batch.len() < BUSY_BATCH || batch.len() >= limit {
        return Gathered::NotStarted;
    }
    let first_step = interval / GATHER_STEPS_PER_INTERVAL;
    let mut step = first_step;
    let until = last_start + interval * MAX_GATHER_INTERVALS;
    // The records and the time of the last step, whose rate predicts the next step's.
    let mut last_step: Option<(usize, Duration)> = None;
    loop {
        let now = Instant::now();
        if now >= until {
            return Gathered::TimeUp;
        }
        let before = batch.len();
        let requested = step.min(until - now);
        // Sleeping blocks only the appender's thread, as the pacing in `Appender::run` does.
        std::thread::sleep(requested);
        take_waiting(queue, batch, limit);
        if batch.len() >= limit {
            return Gathered::Full;
        }
        // A sleep lasts longer than asked, so the rate is judged over the time that passed.
        let took = now.elapsed();
        if batch.len() == before && took <= requested * 2 {
            return Gathered::Stopped;
        }
        let arrived = batch.len() - before;
        if took <= requested * 2
            && last_step.is_some_and(|last| arrivals_dropped(last, arrived, took))
        {
            return Gathered::Stopped;
        }
        if arrived < BUSY_STEP_RECORDS
            || wide(arrived) * first_step.as_nanos() < wide(BUSY_STEP_RECORDS) * took.as_nanos()
        {
            return Gathered::Slowed;
        }
        step = next_gather_step(
            step,
            first_step,
            interval,
            took,
            arrived,
            limit - batch.len(),
        );
        last_step = Some((arrived, took));
    }
}

/// Returns whether `arrived` records in `took` are fewer than half of what the last step's
/// rate predicts, when it predicts at least [`DROP_CHECK_RECORDS`].
///
/// A long step judged by its mean rate alone would not notice that arrivals stopped during
/// it, and the batch would wait through one more step before it saw a step without records.
fn arrivals_dropped(last_step: (usize, Duration), arrived: usize, took: Duration) -> bool {
    let (last_arrived, last_took) = last_step;
    let predicted = wide(last_arrived) * took.as_nanos() / last_took.as_nanos().max(1);
    predicted >= wide(DROP_CHECK_RECORDS) && wide(arrived) * 2 < predicted
}

/// Returns the length of the next step of a gathering whose last step was `step` long, took
/// `took` and brought `arrived` records (at least one), with `remaining` records to go to the
/// limit.
///
/// Each wake of the appender's thread interrupts a core that signs. So while records keep
/// arriving the steps double, from `first_step` up to [`MAX_GATHER_STEP_INTERVALS`]
/// intervals. A batch that gathers for eight intervals then wakes the thread at most eight
/// times instead of up to sixty-four. Once arrivals stop, a batch waits for the rest of the
/// current step (see [`arrivals_dropped`]), so the cap bounds that wait. A step never lasts
/// longer than the limit takes to fill at the last step's rate, so that callers counted by
/// [`CallerCount`] do not all wait for the end of a long step.
fn next_gather_step(
    step: Duration,
    first_step: Duration,
    interval: Duration,
    took: Duration,
    arrived: usize,
    remaining: usize,
) -> Duration {
    let to_limit_nanos = took.as_nanos() * wide(remaining) / wide(arrived.max(1));
    let to_limit = Duration::from_nanos(u64::try_from(to_limit_nanos).unwrap_or(u64::MAX));
    (step * 2)
        .min(interval * MAX_GATHER_STEP_INTERVALS)
        .min(to_limit)
        .max(first_step)
}

/// Widens a count for arithmetic with nanoseconds.
fn wide(count: usize) -> u128 {
    u128::try_from(count).unwrap_or(u128::MAX)
}

/// Moves records that are already queued into `batch`, up to `limit` records.
fn take_waiting(queue: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, limit: usize) {
    while batch.len() < limit {
        match queue.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long interval, so that the timing holds on a loaded machine: steps of 25 ms, and
    /// gathering ends at most 1.6 s after the previous batch started.
    const INTERVAL: Duration = Duration::from_millis(200);

    fn pending(seq: i64) -> Pending {
        let record = EncodedRecord::new(&crate::NewRecord::refusal(format!("record {seq}")))
            .expect("a valid record");
        // The receiver is dropped: these tests only move records between queues.
        let (reply, _) = oneshot::channel();
        Pending { record, reply }
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
        let gathered = gather_while_busy(&mut queue, &mut batch, started, INTERVAL, MAX_BATCH);
        assert_eq!(gathered, Gathered::NotStarted);
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
        let gathered = gather_while_busy(&mut queue, &mut batch, started, INTERVAL, MAX_BATCH);
        let waited = started.elapsed();
        assert!(
            matches!(gathered, Gathered::Stopped | Gathered::Slowed),
            "gathering ended with {gathered:?} while no record arrived"
        );
        assert!(
            waited < INTERVAL * 2,
            "gathered for {waited:?} while no record arrived"
        );
        assert_eq!(batch.len(), BUSY_BATCH);
    }

    /// Starts a thread that sends bursts of 10 records 5 ms apart, about 50 per 25 ms step
    /// against the threshold of 2, until the queue closes.
    fn steady_producer(sender: mpsc::Sender<Pending>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
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
        })
    }

    #[test]
    fn steady_arrivals_gather_until_the_limit() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let producer = steady_producer(sender);
        let mut batch = batch_of(BUSY_BATCH);
        let started = Instant::now();
        let gathered = gather_while_busy(&mut queue, &mut batch, started, INTERVAL, MAX_BATCH);
        let waited = started.elapsed();
        drop(queue);
        producer.join().expect("producer thread");
        assert!(
            matches!(gathered, Gathered::TimeUp | Gathered::Full),
            "gathering ended with {gathered:?} while records kept arriving"
        );
        let limit = INTERVAL * MAX_GATHER_INTERVALS;
        assert!(
            batch.len() == MAX_BATCH || waited >= limit,
            "gathering stopped after {waited:?} with {} records while records kept arriving",
            batch.len()
        );
        assert!(batch.len() > BUSY_BATCH, "no record was gathered");
    }

    #[test]
    fn gathering_stops_at_the_limit() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let producer = steady_producer(sender);
        let limit = BUSY_BATCH + 30;
        let mut batch = batch_of(BUSY_BATCH);
        let started = Instant::now();
        let gathered = gather_while_busy(&mut queue, &mut batch, started, INTERVAL, limit);
        drop(queue);
        producer.join().expect("producer thread");
        assert_eq!(gathered, Gathered::Full);
        assert_eq!(batch.len(), limit);
    }

    #[test]
    fn long_step_ends_when_arrivals_drop() {
        // Records arrive at about 1 per ms and stop after 475 ms. Steps of 25, 50, 100 and
        // 200 ms end at 375 ms, so arrivals stop a quarter of the way into a step of 400 ms,
        // and that step's mean rate is still above the busy rate.
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let arrivals_for = Duration::from_millis(475);
        let producer = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0_i64;
            let mut last_arrival = started;
            while started.elapsed() < arrivals_for {
                for _ in 0..5 {
                    sender
                        .blocking_send(pending(1000 + sent))
                        .expect("queue is open");
                    sent += 1;
                }
                last_arrival = Instant::now();
                std::thread::sleep(Duration::from_millis(5));
            }
            // The sender stays open, as callers that wait for their commit keep theirs.
            (sender, last_arrival, sent)
        });

        let mut batch = batch_of(BUSY_BATCH);
        let started = Instant::now();
        let gathered = gather_while_busy(&mut queue, &mut batch, started, INTERVAL, MAX_BATCH);
        let ended = Instant::now();
        let (_sender, last_arrival, sent) = producer.join().expect("producer thread");

        assert_eq!(gathered, Gathered::Stopped);
        assert_eq!(
            batch.len(),
            BUSY_BATCH + usize::try_from(sent).expect("count")
        );
        let waited = ended.saturating_duration_since(last_arrival);
        let longest_step = INTERVAL * MAX_GATHER_STEP_INTERVALS;
        assert!(
            waited < longest_step + INTERVAL / 2,
            "gathering ended {waited:?} after the last arrival"
        );
    }

    #[test]
    fn gathering_steps_double_while_records_arrive() {
        let first = INTERVAL / GATHER_STEPS_PER_INTERVAL;
        let mut step = first;
        let mut steps = Vec::new();
        for _ in 0..6 {
            step = next_gather_step(step, first, INTERVAL, step, 10, MAX_BATCH);
            steps.push(step);
        }
        let longest = INTERVAL * MAX_GATHER_STEP_INTERVALS;
        assert_eq!(
            steps,
            [first * 2, first * 4, first * 8, longest, longest, longest]
        );
    }

    #[test]
    fn step_ends_when_limit_should_fill() {
        let first = INTERVAL / GATHER_STEPS_PER_INTERVAL;
        // 10 records arrived in one first step, and 20 more fill the batch: two first steps.
        let step = next_gather_step(first * 8, first, INTERVAL, first, 10, 20);
        assert_eq!(step, first * 2);
        // One more record would take a tenth of a first step, but a step is never shorter.
        let step = next_gather_step(first * 8, first, INTERVAL, first, 10, 1);
        assert_eq!(step, first);
    }

    #[test]
    fn batch_at_the_limit_does_not_gather() {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        sender.try_send(pending(100)).expect("queue has room");
        let mut batch = batch_of(BUSY_BATCH * 2);
        let gathered =
            gather_while_busy(&mut queue, &mut batch, Instant::now(), INTERVAL, BUSY_BATCH);
        assert_eq!(gathered, Gathered::NotStarted);
        assert_eq!(
            batch.len(),
            BUSY_BATCH * 2,
            "a full batch took a queued record"
        );
    }

    #[test]
    fn caller_count_limits_gathering() {
        let start = Instant::now();
        let mut callers = CallerCount::default();
        assert_eq!(callers.gather_limit(start), MAX_BATCH, "no count yet");

        callers.record(Gathered::TimeUp, 300, start);
        callers.record(Gathered::Full, 300, start);
        callers.record(Gathered::NotStarted, 300, start);
        callers.record(Gathered::Slowed, 300, start);
        assert_eq!(
            callers.gather_limit(start),
            MAX_BATCH,
            "callers were counted while records kept arriving"
        );

        callers.record(Gathered::Stopped, 64, start);
        assert_eq!(callers.gather_limit(start), 48);
        assert_eq!(callers.gather_limit(start + CALLERS_SEEN_FOR / 2), 48);
        assert_eq!(
            callers.gather_limit(start + CALLERS_SEEN_FOR),
            MAX_BATCH,
            "an old count still limits gathering"
        );

        // A smaller count within the period keeps the larger one, which expires at its time.
        let later = start + CALLERS_SEEN_FOR / 2;
        callers.record(Gathered::Stopped, 20, later);
        assert_eq!(callers.gather_limit(later), 48);
        assert_eq!(callers.gather_limit(start + CALLERS_SEEN_FOR), MAX_BATCH);
        // After the period, a smaller count replaces it.
        let after = start + CALLERS_SEEN_FOR;
        callers.record(Gathered::Stopped, 5, after);
        assert_eq!(callers.gather_limit(after), BUSY_BATCH);
        callers.record(Gathered::Stopped, 4 * MAX_BATCH, after);
        assert_eq!(callers.gather_limit(after), MAX_BATCH);
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
