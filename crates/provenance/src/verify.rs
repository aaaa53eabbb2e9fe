//! Verification: reads the log page by page in seq order, recomputes every hash and link,
//! checks checkpoints, and names the first alteration.
//!
//! Classifying an alteration needs a few extra reads around the first bad record: to tell a
//! moved record from an edited one, the verifier finds the position whose hash the record's
//! contents match. Those reads look records up by hash, which has no index, so each one reads
//! the whole table. They happen only after an alteration was found.
//!
//! Limit: records removed from the end of the log, together with the checkpoints past the new
//! end and with the head row rewound, are not detected. Nothing outside the database keeps a
//! checkpoint that the stored log could be compared with.

use std::collections::VecDeque;
use std::fmt;

use twid_datastore::{Datastore, IssuanceLogCheckpoint, IssuanceLogRecord, StoredLogRow};

use crate::checkpoint::PublicKey;
use crate::encoding::{GENESIS_HASH, record_hash};
use crate::error::LogError;
use crate::record::hash_array;

/// Records or checkpoints read per query, which bounds the verifier's memory.
const PAGE_SIZE: u32 = 1000;

/// How many moved predecessors the verifier follows back to find where a record belongs.
const MAX_PREDECESSOR_WALK: usize = 8;

/// How far from its position the verifier searches for the seq that a record's contents
/// hash to, when following predecessors does not find it.
const NEARBY_SEQ_WINDOW: i64 = 64;

/// The outcome of [`IssuanceLog::verify`](crate::IssuanceLog::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records found intact: those before the first alteration's seq, or all of them.
    pub records: u64,
    /// Checkpoints found intact among those records: the hash matches, and the signature
    /// verifies when a key was given.
    pub checkpoints: u64,
    /// Whether the intact checkpoints' signatures were verified: a key was given and at
    /// least one checkpoint was found intact. A young log has no checkpoint yet, and then no
    /// signature vouches for its records.
    pub signatures_checked: bool,
    /// The first alteration, or `None` if the log is intact.
    pub alteration: Option<Alteration>,
}

impl VerifyReport {
    /// Returns whether no alteration was found.
    pub fn is_intact(&self) -> bool {
        self.alteration.is_none()
    }
}

/// The first place where the stored log differs from what was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alteration {
    /// The seq where the log stops being intact: the first missing, changed, moved or added
    /// record, or the seq of the checkpoint that fails.
    pub seq: u64,
    /// The kind of change.
    pub kind: AlterationKind,
    /// An explanation with the seqs and hashes involved.
    pub detail: String,
}

impl fmt::Display for Alteration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at seq {}: {}", self.kind, self.seq, self.detail)
    }
}

/// Kinds of alteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlterationKind {
    /// The record's stored hash does not match its contents, or a field cannot be decoded.
    Edited,
    /// Records are missing: a seq gap, a `prev_hash` that names no stored predecessor, records
    /// renumbered to close a gap, or records removed from the end.
    Deleted,
    /// The record at `seq` belongs at `original_seq`, and the record that belongs at `seq` is
    /// stored elsewhere.
    Reordered {
        /// The seq the record's contents hash to.
        original_seq: u64,
    },
    /// A record that was never appended: one placed before records that were shifted up,
    /// one past the head, or one with a negative seq.
    Inserted,
    /// A checkpoint's hash differs from the record it names, so the records up to it were
    /// rewritten (possibly with recomputed hashes) or the checkpoint row was changed.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify with the given key.
    BadCheckpointSignature,
    /// The record is one at which the log signs a periodic checkpoint, and none is stored, so
    /// the checkpoint row was deleted.
    CheckpointMissing,
}

impl fmt::Display for AlterationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited => f.write_str("record edited"),
            Self::Deleted => f.write_str("records deleted"),
            Self::Reordered { original_seq } => {
                write!(f, "records reordered (record from seq {original_seq})")
            }
            Self::Inserted => f.write_str("record inserted"),
            Self::CheckpointMismatch => f.write_str("checkpoint mismatch"),
            Self::BadCheckpointSignature => f.write_str("bad checkpoint signature"),
            Self::CheckpointMissing => f.write_str("checkpoint missing"),
        }
    }
}

/// Verifies the log in `store`; see [`IssuanceLog::verify`](crate::IssuanceLog::verify).
pub(crate) async fn verify(
    store: &Datastore,
    key: Option<&PublicKey>,
    checkpoint_every: Option<u64>,
) -> Result<VerifyReport, LogError> {
    let mut verifier = Verifier {
        store,
        checkpoint_every: checkpoint_every.and_then(|every| i64::try_from(every).ok()),
        expected_seq: 0,
        expected_prev: GENESIS_HASH.to_vec(),
        checkpoints: CheckpointCursor {
            store,
            key,
            buffer: VecDeque::new(),
            next_from: i64::MIN,
            exhausted: false,
            matched: 0,
            last_matched: None,
        },
    };
    let alteration = verifier.run().await?;
    let chained = u64::try_from(verifier.expected_seq).unwrap_or_default();
    let records = match &alteration {
        Some(alteration) => chained.min(alteration.seq),
        None => chained,
    };
    Ok(VerifyReport {
        records,
        checkpoints: verifier.checkpoints.matched,
        signatures_checked: key.is_some() && verifier.checkpoints.matched > 0,
        alteration,
    })
}

/// Checks the newest end of the log in `store`; see
/// [`IssuanceLog::check_head`](crate::IssuanceLog::check_head).
pub(crate) async fn check_head(
    store: &Datastore,
    key: Option<&PublicKey>,
    checkpoint_every: Option<u64>,
) -> Result<Option<Alteration>, LogError> {
    // One statement reads the head row and the highest seqs, so appends by other processes
    // cannot make them disagree. Stored records and checkpoints never change, so the reads
    // after it see the same rows.
    let head = store.issuance_log_head().await?;
    let end = head.next_seq;
    if let Some(max) = head.max_record_seq
        && max >= end
    {
        return Ok(Some(alteration(
            end,
            AlterationKind::Inserted,
            format!("records up to seq {max} are stored past the head, which counts {end} records"),
        )));
    }

    if end > 0 {
        let newest = end - 1;
        let row = match store.get_issuance_log_row(newest).await? {
            Some(StoredLogRow::Record(row)) => row,
            Some(StoredLogRow::Undecodable { reason, .. }) => {
                return Ok(Some(undecodable(newest, &reason)));
            }
            None => {
                return Ok(Some(alteration(
                    newest,
                    AlterationKind::Deleted,
                    format!("the head row counts {end} records, but record {newest} is missing"),
                )));
            }
        };
        if !hashes_at(newest, &row) {
            return Ok(Some(alteration(
                newest,
                AlterationKind::Edited,
                format!("the stored hash of record {newest} does not match its contents"),
            )));
        }
        if row.hash != head.head_hash {
            return Ok(Some(alteration(
                newest,
                AlterationKind::Edited,
                format!(
                    "the head row stores hash {} for seq {newest}, but the record's hash is {}",
                    hex::encode(&head.head_hash),
                    hex::encode(&row.hash)
                ),
            )));
        }
    }

    // The newest periodic checkpoint that is due must be stored. The appender writes it in
    // the transaction of its record.
    if let Some(every) = checkpoint_every.and_then(|every| i64::try_from(every).ok())
        && every > 0
        && end >= every
    {
        let due = end / every * every - 1;
        let stored = store.issuance_log_checkpoints(due, 1).await?;
        if !stored.iter().any(|checkpoint| checkpoint.seq == due) {
            return Ok(Some(alteration(
                due,
                AlterationKind::CheckpointMissing,
                format!(
                    "the log signs a checkpoint every {every} records, but none is stored for \
                     seq {due}; the checkpoint row was deleted"
                ),
            )));
        }
    }

    let Some(seq) = head.max_checkpoint_seq else {
        return Ok(None);
    };
    if seq >= end {
        return Ok(Some(alteration(
            end,
            AlterationKind::Deleted,
            format!(
                "a checkpoint signs seq {seq}, but the head counts {end} records, so records \
                 were removed from the end"
            ),
        )));
    }
    let stored = store.issuance_log_checkpoints(seq, 1).await?;
    let Some(checkpoint) = stored.into_iter().find(|checkpoint| checkpoint.seq == seq) else {
        return Ok(None);
    };

    if let Some(key) = key
        && let Err(reason) = key.check(&checkpoint)
    {
        return Ok(Some(alteration(
            seq,
            AlterationKind::BadCheckpointSignature,
            format!("the checkpoint at seq {seq} does not verify: {reason}"),
        )));
    }

    let record = store.get_issuance_log_row(seq).await?;
    let intact = matches!(&record, Some(StoredLogRow::Record(row))
        if hashes_at(seq, row) && row.hash == checkpoint.hash);
    if intact {
        return Ok(None);
    }
    Ok(Some(alteration(
        seq,
        AlterationKind::CheckpointMismatch,
        format!(
            "the newest checkpoint signs hash {} for seq {seq}, which the stored record does \
             not have",
            hex::encode(&checkpoint.hash)
        ),
    )))
}

/// Returns the alteration of a record at `seq` whose stored values do not decode.
fn undecodable(seq: i64, reason: &str) -> Alteration {
    alteration(
        seq,
        AlterationKind::Edited,
        format!("a stored value of record {seq} does not decode: {reason}"),
    )
}

/// Returns the seq of a stored row.
fn row_seq(row: &StoredLogRow) -> i64 {
    match row {
        StoredLogRow::Record(record) => record.seq,
        StoredLogRow::Undecodable { seq, .. } => *seq,
    }
}

struct Verifier<'a> {
    store: &'a Datastore,
    /// The interval of periodic checkpoints, when the log signs them.
    checkpoint_every: Option<i64>,
    /// The seq of the next record, which is also the number of intact records so far.
    expected_seq: i64,
    /// The hash of the last intact record, which the next record must name as `prev_hash`.
    expected_prev: Vec<u8>,
    checkpoints: CheckpointCursor<'a>,
}

impl Verifier<'_> {
    async fn run(&mut self) -> Result<Option<Alteration>, LogError> {
        // Records at or past the head read now were appended concurrently or added behind the
        // log's back. The final check in check_past_head separates the two.
        let head = self.store.issuance_log_head().await?;
        let end = head.next_seq;
        let mut from = i64::MIN;
        'pages: loop {
            let page = self.store.issuance_log_rows(from, PAGE_SIZE).await?;
            let Some(last) = page.last() else {
                break;
            };
            let next_from = row_seq(last).checked_add(1);
            for (index, stored) in page.iter().enumerate() {
                if row_seq(stored) >= end {
                    break 'pages;
                }
                let row = match stored {
                    StoredLogRow::Record(row) => row,
                    StoredLogRow::Undecodable { seq, reason } => {
                        return Ok(Some(self.check_undecodable(*seq, reason)));
                    }
                };
                if let Some(alteration) = self.check_record(row, page.get(index + 1)).await? {
                    return Ok(Some(alteration));
                }
                self.expected_seq += 1;
                self.expected_prev.clone_from(&row.hash);
                if let Some(alteration) = self.checkpoints.check_through(row.seq, &row.hash).await?
                {
                    return Ok(Some(alteration));
                }
                if let Some(alteration) = self.check_checkpoint_due(row.seq) {
                    return Ok(Some(alteration));
                }
            }
            match next_from {
                Some(next) => from = next,
                None => break,
            }
        }

        if self.expected_seq < end {
            return Ok(Some(alteration(
                self.expected_seq,
                AlterationKind::Deleted,
                format!(
                    "the head row counts {end} records, but the records from seq {} on are \
                     missing",
                    self.expected_seq
                ),
            )));
        }
        if end > 0 && head.head_hash != self.expected_prev {
            return Ok(Some(alteration(
                end - 1,
                AlterationKind::Edited,
                format!(
                    "the head row stores hash {} for seq {}, but the record's hash is {}; the \
                     record was rewritten after it was appended, or the head row was changed",
                    hex::encode(&head.head_hash),
                    end - 1,
                    hex::encode(&self.expected_prev)
                ),
            )));
        }
        self.check_past_head().await
    }

    /// Checks that a periodic checkpoint is stored for the intact record `seq` when one is due
    /// there. The appender stores such a checkpoint in the transaction of its record, so a
    /// missing one was deleted.
    fn check_checkpoint_due(&self, seq: i64) -> Option<Alteration> {
        let every = self.checkpoint_every?;
        if (seq + 1) % every != 0 || self.checkpoints.last_matched == Some(seq) {
            return None;
        }
        Some(alteration(
            seq,
            AlterationKind::CheckpointMissing,
            format!(
                "the log signs a checkpoint every {every} records, but none is stored for seq \
                 {seq}; the checkpoint row was deleted"
            ),
        ))
    }

    /// Checks that nothing lies past the current head. Appends move the head in the same
    /// transaction as their inserts, so in one snapshot every record and checkpoint is below
    /// it.
    async fn check_past_head(&self) -> Result<Option<Alteration>, LogError> {
        let head = self.store.issuance_log_head().await?;
        if let Some(max) = head.max_record_seq
            && max >= head.next_seq
        {
            return Ok(Some(alteration(
                head.next_seq,
                AlterationKind::Inserted,
                format!(
                    "records up to seq {max} are stored past the head, which counts {} records",
                    head.next_seq
                ),
            )));
        }
        if let Some(max) = head.max_checkpoint_seq
            && max >= head.next_seq
        {
            return Ok(Some(alteration(
                head.next_seq,
                AlterationKind::Deleted,
                format!(
                    "a checkpoint signs seq {max}, but the head counts {} records, so records \
                     were removed from the end",
                    head.next_seq
                ),
            )));
        }
        Ok(None)
    }

    /// Names the alteration at a row whose values do not decode. Its position is checked as
    /// any record's, and a row in place is an edited record.
    fn check_undecodable(&self, seq: i64, reason: &str) -> Alteration {
        self.check_position(seq)
            .unwrap_or_else(|| undecodable(self.expected_seq, reason))
    }

    /// Returns the alteration when a row stored at `seq` is not at the next expected
    /// position: a negative seq, or a gap before it.
    fn check_position(&self, seq: i64) -> Option<Alteration> {
        let p = self.expected_seq;
        if seq < 0 {
            return Some(alteration(
                0,
                AlterationKind::Inserted,
                format!("a record with the negative seq {seq} precedes seq 0"),
            ));
        }
        if seq > p {
            return Some(alteration(
                p,
                AlterationKind::Deleted,
                format!("records {p} to {} are missing", seq - 1),
            ));
        }
        None
    }

    /// Checks the record read at the expected position. `next` is the row after it in the
    /// same page, if any.
    async fn check_record(
        &self,
        row: &IssuanceLogRecord,
        next: Option<&StoredLogRow>,
    ) -> Result<Option<Alteration>, LogError> {
        let p = self.expected_seq;
        if let Some(alteration) = self.check_position(row.seq) {
            return Ok(Some(alteration));
        }

        if hashes_at(p, row) {
            if row.prev_hash == self.expected_prev {
                return Ok(None);
            }
            return Ok(Some(alteration(
                p,
                AlterationKind::Deleted,
                format!(
                    "its prev_hash {} is not the hash {} of record {}, so the record it followed \
                     was removed or rewritten",
                    hex::encode(&row.prev_hash),
                    hex::encode(&self.expected_prev),
                    p - 1
                ),
            )));
        }

        if let Some(original) = self.original_seq(row, p).await? {
            return self.classify_moved(p, original).await.map(Some);
        }

        // A next row that does not decode cannot continue the chain in this one's place.
        let next = match next {
            Some(next) => Some(next.clone()),
            None => self.store.get_issuance_log_row(p + 1).await?,
        };
        let next = match next {
            Some(StoredLogRow::Record(next)) => Some(next),
            Some(StoredLogRow::Undecodable { .. }) | None => None,
        };
        if let Some(next) = next
            && hashes_at(p, &next)
            && next.prev_hash == self.expected_prev
        {
            return Ok(Some(alteration(
                p,
                AlterationKind::Inserted,
                format!(
                    "the record at seq {p} is not part of the chain, and the record after it \
                     belongs at seq {p}"
                ),
            )));
        }
        Ok(Some(alteration(
            p,
            AlterationKind::Edited,
            edited_detail(p, row),
        )))
    }

    /// Classifies a record at `p` whose contents hash to seq `original` instead.
    async fn classify_moved(&self, p: i64, original: i64) -> Result<Alteration, LogError> {
        if original < p {
            // Records original..p-1 chained correctly, yet the record at p belongs at
            // original: they were added in front of it.
            return Ok(alteration(
                original,
                AlterationKind::Inserted,
                format!(
                    "records {original} to {} were inserted: the record now at seq {p} belongs \
                     at seq {original}",
                    p - 1
                ),
            ));
        }
        let displaced = match self.store.get_issuance_log_row(original).await? {
            Some(StoredLogRow::Record(displaced)) => Some(displaced),
            // Without the displaced record's contents a swap cannot be distinguished from a
            // removal, but the record at p was moved from `original` either way.
            Some(StoredLogRow::Undecodable { reason, .. }) => {
                return Ok(alteration(
                    p,
                    AlterationKind::Reordered {
                        original_seq: u64::try_from(original).unwrap_or_default(),
                    },
                    format!(
                        "the record now at seq {p} belongs at seq {original}, and the record \
                         stored at seq {original} cannot be read: {reason}"
                    ),
                ));
            }
            None => None,
        };
        if let Some(displaced) = displaced
            && hashes_at(p, &displaced)
            && displaced.prev_hash == self.expected_prev
        {
            return Ok(alteration(
                p,
                AlterationKind::Reordered {
                    original_seq: u64::try_from(original).unwrap_or_default(),
                },
                format!("the records at seq {p} and seq {original} swapped places"),
            ));
        }
        Ok(alteration(
            p,
            AlterationKind::Deleted,
            format!(
                "the record now at seq {p} belongs at seq {original}: records were removed \
                 and the later ones renumbered"
            ),
        ))
    }

    /// Returns the seq that `row`'s contents hash to, if it is not `p` and can be found.
    ///
    /// The seq follows from the record's predecessor, found by its hash: if the predecessor
    /// is intact at its own position q, the record belongs at q + 1. A predecessor that was
    /// moved too is followed back the same way, up to [`MAX_PREDECESSOR_WALK`] steps. When
    /// that fails, seqs within [`NEARBY_SEQ_WINDOW`] of `p` are tried.
    async fn original_seq(&self, row: &IssuanceLogRecord, p: i64) -> Result<Option<i64>, LogError> {
        let mut steps: i64 = 0;
        let mut prev_hash = row.prev_hash.clone();
        let base = loop {
            if prev_hash == GENESIS_HASH {
                break Some(-1);
            }
            // A predecessor that does not decode cannot place the record.
            let Some(StoredLogRow::Record(predecessor)) =
                self.store.find_issuance_log_row_by_hash(&prev_hash).await?
            else {
                break None;
            };
            if hashes_at(predecessor.seq, &predecessor) {
                break Some(predecessor.seq);
            }
            if steps >= MAX_PREDECESSOR_WALK as i64 {
                break None;
            }
            steps += 1;
            prev_hash = predecessor.prev_hash;
        };
        if let Some(candidate) = base.and_then(|base| base.checked_add(steps + 1))
            && candidate != p
            && hashes_at(candidate, row)
        {
            return Ok(Some(candidate));
        }
        for distance in 1..=NEARBY_SEQ_WINDOW {
            for candidate in [p + distance, p - distance] {
                if hashes_at(candidate, row) {
                    return Ok(Some(candidate));
                }
            }
        }
        Ok(None)
    }
}

/// Merges the checkpoints into the record stream, in seq order.
struct CheckpointCursor<'a> {
    store: &'a Datastore,
    key: Option<&'a PublicKey>,
    buffer: VecDeque<IssuanceLogCheckpoint>,
    next_from: i64,
    exhausted: bool,
    matched: u64,
    last_matched: Option<i64>,
}

impl CheckpointCursor<'_> {
    /// Checks every checkpoint with a seq up to `seq` against the intact record `seq`, whose
    /// hash is `hash`. Earlier records are intact and were checked before.
    async fn check_through(
        &mut self,
        seq: i64,
        hash: &[u8],
    ) -> Result<Option<Alteration>, LogError> {
        loop {
            if self.buffer.is_empty() && !self.exhausted {
                self.refill().await?;
            }
            let Some(front) = self.buffer.front() else {
                return Ok(None);
            };
            if front.seq > seq {
                return Ok(None);
            }
            let Some(checkpoint) = self.buffer.pop_front() else {
                return Ok(None);
            };
            if checkpoint.seq < seq {
                // Records from seq 0 are contiguous, so only a negative seq gets here.
                return Ok(Some(alteration(
                    0,
                    AlterationKind::CheckpointMismatch,
                    format!(
                        "a checkpoint names seq {}, which no record can have",
                        checkpoint.seq
                    ),
                )));
            }
            if let Some(key) = self.key
                && let Err(reason) = key.check(&checkpoint)
            {
                return Ok(Some(alteration(
                    seq,
                    AlterationKind::BadCheckpointSignature,
                    format!("the checkpoint at seq {seq} does not verify: {reason}"),
                )));
            }
            if checkpoint.hash != hash {
                let since = match self.last_matched {
                    Some(last) => format!("after the intact checkpoint at seq {last}"),
                    None => "before it".to_owned(),
                };
                return Ok(Some(alteration(
                    seq,
                    AlterationKind::CheckpointMismatch,
                    format!(
                        "the checkpoint signs hash {} but the record's hash is {}; records {since} \
                         were rewritten, or the checkpoint row was changed",
                        hex::encode(&checkpoint.hash),
                        hex::encode(hash)
                    ),
                )));
            }
            self.matched += 1;
            self.last_matched = Some(seq);
        }
    }

    async fn refill(&mut self) -> Result<(), LogError> {
        let page = self
            .store
            .issuance_log_checkpoints(self.next_from, PAGE_SIZE)
            .await?;
        match page.last().and_then(|last| last.seq.checked_add(1)) {
            Some(next) => self.next_from = next,
            None => self.exhausted = true,
        }
        self.buffer.extend(page);
        Ok(())
    }
}

/// Returns whether `row`'s stored hash is the hash of its contents at `seq` after its stored
/// `prev_hash`. Rows with malformed hashes or selectors never match.
fn hashes_at(seq: i64, row: &IssuanceLogRecord) -> bool {
    let Ok(seq) = u64::try_from(seq) else {
        return false;
    };
    let Some(prev_hash) = hash_array(&row.prev_hash) else {
        return false;
    };
    match record_hash(seq, &prev_hash, row) {
        Ok(hash) => hash.as_slice() == row.hash.as_slice(),
        Err(_) => false,
    }
}

fn edited_detail(p: i64, row: &IssuanceLogRecord) -> String {
    if row.hash.len() != 32 || row.prev_hash.len() != 32 {
        return format!("the record at seq {p} has a hash or prev_hash that is not 32 bytes");
    }
    let Ok(seq) = u64::try_from(p) else {
        return format!("the record at seq {p} has a negative seq");
    };
    let prev = hash_array(&row.prev_hash).unwrap_or(GENESIS_HASH);
    match record_hash(seq, &prev, row) {
        Ok(computed) => format!(
            "its contents hash to {} but it stores hash {}",
            hex::encode(computed),
            hex::encode(&row.hash)
        ),
        Err(reason) => format!("its contents cannot be hashed: {reason}"),
    }
}

fn alteration(seq: i64, kind: AlterationKind, detail: String) -> Alteration {
    Alteration {
        seq: u64::try_from(seq).unwrap_or_default(),
        kind,
        detail,
    }
}
