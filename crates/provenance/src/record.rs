//! Log records: what callers append and what they read back, and the conversion to and from
//! stored rows.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use twid_datastore::{IssuanceLogRecord, IssuanceLogRowRef};
use twid_spiffe::SpiffeId;
use twid_types::Selector;

use crate::encoding::{canonical_json, sha256};
use crate::error::LogError;

/// The event a record documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An X.509-SVID was issued.
    X509,
    /// A JWT-SVID was issued.
    Jwt,
    /// A workload identity token (WIT) was issued.
    Wit,
    /// A credential request was rejected.
    Refusal,
}

impl RecordKind {
    /// Returns the stored name: `x509`, `jwt`, `wit` or `refusal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
            Self::Wit => "wit",
            Self::Refusal => "refusal",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "x509" => Ok(Self::X509),
            "jwt" => Ok(Self::Jwt),
            "wit" => Ok(Self::Wit),
            "refusal" => Ok(Self::Refusal),
            other => Err(format!(
                "unknown record kind {other:?}; expected x509, jwt, wit or refusal"
            )),
        }
    }
}

/// The contents of one issuance or rejection.
///
/// [`IssuanceLog::append`](crate::IssuanceLog::append) enforces: an [`X509`](RecordKind::X509)
/// record has a `serial`, a [`Jwt`](RecordKind::Jwt) or [`Wit`](RecordKind::Wit) record has a
/// `jti`, a [`Refusal`](RecordKind::Refusal) record has a `refusal_reason` and no other kind
/// has one, and a serial contains only hex digits. The serial and the `jti` are at most
/// [`MAX_INDEXED_BYTES`] long, no text field contains U+0000, and the attestation result nests
/// at most [`MAX_JSON_DEPTH`] arrays and objects. Text fields are stored as given, except the
/// serial, which is stored in lowercase.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The event the record documents.
    pub kind: RecordKind,
    /// The X.509 serial number in hex, without separators.
    pub serial: Option<String>,
    /// The `jti` claim of a JWT-SVID or WIT.
    pub jti: Option<String>,
    /// The SPIFFE ID issued, or requested in a rejected request.
    pub spiffe_id: Option<SpiffeId>,
    /// The registration entry ID.
    pub entry_id: Option<String>,
    /// The SPIFFE ID of the agent that requested the credential.
    pub agent_id: Option<SpiffeId>,
    /// The selectors that matched the entry, in the order given.
    pub selectors: Vec<Selector>,
    /// SHA-256 of the subject public key's SubjectPublicKeyInfo DER, see [`key_fingerprint`].
    pub key_fingerprint: Option<[u8; 32]>,
    /// SHA-256 of the attestation evidence, see [`evidence_digest`].
    pub evidence_digest: Option<[u8; 32]>,
    /// The attestation result. It is stored as canonical JSON, so object keys come back
    /// sorted.
    pub attestation_result: Option<Value>,
    /// The version of the policy that allowed or rejected the request.
    pub policy_version: Option<String>,
    /// The reason the request was rejected.
    pub refusal_reason: Option<String>,
    /// When the credential was issued or the request rejected. Stored to the millisecond.
    pub time: SystemTime,
}

impl NewRecord {
    /// Builds a record of `kind` at the current time with every optional field empty.
    pub fn new(kind: RecordKind) -> Self {
        Self {
            kind,
            serial: None,
            jti: None,
            spiffe_id: None,
            entry_id: None,
            agent_id: None,
            selectors: Vec::new(),
            key_fingerprint: None,
            evidence_digest: None,
            attestation_result: None,
            policy_version: None,
            refusal_reason: None,
            time: SystemTime::now(),
        }
    }

    /// Builds an X.509-SVID issuance record at the current time.
    pub fn x509(serial_hex: impl Into<String>, spiffe_id: SpiffeId) -> Self {
        Self {
            serial: Some(serial_hex.into()),
            spiffe_id: Some(spiffe_id),
            ..Self::new(RecordKind::X509)
        }
    }

    /// Builds a JWT-SVID issuance record at the current time.
    pub fn jwt(jti: impl Into<String>, spiffe_id: SpiffeId) -> Self {
        Self {
            jti: Some(jti.into()),
            spiffe_id: Some(spiffe_id),
            ..Self::new(RecordKind::Jwt)
        }
    }

    /// Builds a WIT issuance record at the current time.
    pub fn wit(jti: impl Into<String>, spiffe_id: SpiffeId) -> Self {
        Self {
            jti: Some(jti.into()),
            spiffe_id: Some(spiffe_id),
            ..Self::new(RecordKind::Wit)
        }
    }

    /// Builds a rejection record at the current time.
    pub fn refusal(reason: impl Into<String>) -> Self {
        Self {
            refusal_reason: Some(reason.into()),
            ..Self::new(RecordKind::Refusal)
        }
    }
}

/// The position of an appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordPosition {
    /// The record's seq: 0 for the first record, then consecutive.
    pub seq: u64,
    /// The record's chain hash.
    pub hash: [u8; 32],
}

/// A stored record with its chain position.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's seq.
    pub seq: u64,
    /// The hash of the record before it, or 32 zero bytes for seq 0.
    pub prev_hash: [u8; 32],
    /// The record's chain hash.
    pub hash: [u8; 32],
    /// The contents as appended, with the serial in lowercase, object keys of the attestation
    /// result sorted and the time cut to milliseconds.
    pub content: NewRecord,
}

/// Returns the key fingerprint the log stores: the SHA-256 of a SubjectPublicKeyInfo DER.
pub fn key_fingerprint(spki_der: &[u8]) -> [u8; 32] {
    sha256(spki_der)
}

/// Returns the evidence digest the log stores: the SHA-256 of the evidence bytes.
pub fn evidence_digest(evidence: &[u8]) -> [u8; 32] {
    sha256(evidence)
}

/// Returns `serial` in lowercase after checking that it is non-empty hex. A record's serial
/// comes from the certificate that twid signed, so it never has separators.
pub(crate) fn normalize_serial(serial: &str) -> Result<String, LogError> {
    check_serial(serial)?;
    Ok(serial.to_ascii_lowercase())
}

/// Checks that `serial` is non-empty hex.
fn check_serial(serial: &str) -> Result<(), LogError> {
    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LogError::InvalidRecord(format!(
            "serial {serial:?} is not a hex number; pass the certificate serial as hex digits"
        )));
    }
    Ok(())
}

/// Returns the serial that a lookup requests in the stored form: lowercase hex without the
/// colons that tools such as `openssl x509 -serial` print between bytes.
pub(crate) fn lookup_serial(serial: &str) -> Result<String, LogError> {
    let digits: String = serial.chars().filter(|&c| c != ':').collect();
    normalize_serial(&digits).map_err(|_| {
        LogError::InvalidRecord(format!(
            "serial {serial:?} is not a hex number; pass the certificate serial as hex digits, \
             optionally separated by colons"
        ))
    })
}

/// Checks `record` and converts it to a row whose `seq`, `prev_hash` and `hash` the appender
/// fills in.
#[cfg(test)]
pub(crate) fn to_row(record: NewRecord) -> Result<IssuanceLogRecord, LogError> {
    to_row_encoded(record).map(|(row, _)| row)
}

/// Like [`to_row`], and also returns the row's record encoding (see
/// [`crate::encoding::record_encoding`]).
///
/// Appends use [`EncodedRecord::new`]; this builds the same row and encoding the plain way, for
/// tests to compare with.
#[cfg(test)]
pub(crate) fn to_row_encoded(record: NewRecord) -> Result<(IssuanceLogRecord, Vec<u8>), LogError> {
    check(&record)?;
    let serial = record.serial.as_deref().map(normalize_serial).transpose()?;
    let time_unix_ms = record_time(&record)?;
    let selectors = serde_json::to_string(&record.selectors)
        .map_err(|e| LogError::InvalidRecord(format!("selectors cannot be serialized: {e}")))?;
    let row = IssuanceLogRecord {
        seq: 0,
        prev_hash: Vec::new(),
        hash: Vec::new(),
        kind: record.kind.as_str().to_owned(),
        serial,
        jti: record.jti,
        spiffe_id: record.spiffe_id.map(|id| id.to_string()),
        entry_id: record.entry_id,
        agent_id: record.agent_id.map(|id| id.to_string()),
        selectors,
        key_fingerprint: record.key_fingerprint.map(|f| f.to_vec()),
        evidence_digest: record.evidence_digest.map(|d| d.to_vec()),
        attestation_result: record.attestation_result.as_ref().map(canonical_json),
        policy_version: record.policy_version,
        refusal_reason: record.refusal_reason,
        time_unix_ms,
    };
    let encoding = crate::encoding::record_encoding(
        &row,
        record
            .selectors
            .iter()
            .map(|selector| (selector.kind.as_str(), selector.value.as_str())),
    );
    Ok((row, encoding))
}

/// The maximum length in bytes of a record's serial and `jti`, which the log indexes.
/// PostgreSQL rejects a B-tree index entry of more than about 2,700 bytes, and a rejected row
/// would fail every record of its batch.
pub const MAX_INDEXED_BYTES: usize = 1024;

/// The maximum nesting of arrays and objects in an attestation result. Reading a record back
/// parses the stored JSON, and serde_json stops at a depth of 128.
pub const MAX_JSON_DEPTH: usize = 64;

/// Checks the rules of [`NewRecord`] that do not concern the serial's digits. A record that
/// the database would reject must be caught here, before it joins a batch, because the
/// database rejects a batch as a whole.
fn check(record: &NewRecord) -> Result<(), LogError> {
    let invalid = |message: &str| Err(LogError::InvalidRecord(message.to_owned()));
    let needs_present = |field: &Option<String>| field.as_deref().is_some_and(|v| !v.is_empty());
    match record.kind {
        RecordKind::X509 if !needs_present(&record.serial) => {
            return invalid("an x509 record needs a serial");
        }
        RecordKind::Jwt | RecordKind::Wit if !needs_present(&record.jti) => {
            return invalid("a jwt or wit record needs a jti");
        }
        RecordKind::Refusal if !needs_present(&record.refusal_reason) => {
            return invalid("a refusal record needs a refusal_reason");
        }
        RecordKind::X509 | RecordKind::Jwt | RecordKind::Wit if record.refusal_reason.is_some() => {
            return invalid("only a refusal record may have a refusal_reason");
        }
        _ => {}
    }
    for (name, value) in [("serial", &record.serial), ("jti", &record.jti)] {
        if let Some(value) = value
            && value.len() > MAX_INDEXED_BYTES
        {
            return Err(LogError::InvalidRecord(format!(
                "the {name} is {} bytes long, more than the maximum of {MAX_INDEXED_BYTES}",
                value.len()
            )));
        }
    }
    // PostgreSQL cannot store U+0000 in text. Selectors and the attestation result are stored
    // as JSON, which escapes it, and SPIFFE IDs cannot contain it.
    let texts = [
        ("jti", &record.jti),
        ("entry_id", &record.entry_id),
        ("policy_version", &record.policy_version),
        ("refusal_reason", &record.refusal_reason),
    ];
    for (name, value) in texts {
        if value.as_deref().is_some_and(|text| text.contains('\0')) {
            return Err(LogError::InvalidRecord(format!(
                "the {name} contains the character U+0000, which the log cannot store; escape \
                 or remove it"
            )));
        }
    }
    if let Some(result) = &record.attestation_result
        && json_depth(result) > MAX_JSON_DEPTH
    {
        return Err(LogError::InvalidRecord(format!(
            "the attestation result nests more than {MAX_JSON_DEPTH} arrays and objects"
        )));
    }
    Ok(())
}

/// Returns how deeply `value` nests arrays and objects: 0 for a scalar.
fn json_depth(value: &Value) -> usize {
    // An explicit stack, so that a deep value cannot overflow the thread's stack here.
    let mut deepest = 0;
    let mut stack = vec![(value, 0_usize)];
    while let Some((value, depth)) = stack.pop() {
        let inner = depth + 1;
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|item| (item, inner))),
            Value::Object(map) => stack.extend(map.values().map(|item| (item, inner))),
            _ => continue,
        }
        deepest = deepest.max(inner);
        if deepest > MAX_JSON_DEPTH {
            break;
        }
    }
    deepest
}

/// Returns the record's time in milliseconds since the unix epoch.
fn record_time(record: &NewRecord) -> Result<i64, LogError> {
    unix_ms(record.time).ok_or_else(|| {
        LogError::InvalidRecord("time is out of range for milliseconds in an i64".into())
    })
}

/// A checked record as one buffer: its record encoding (see [`crate::encoding`]), followed by
/// the JSON text of its `selectors` column, with the place of each column's value in the
/// encoding.
///
/// An append hands this to the appender's thread. One buffer costs one allocation on the
/// caller's thread and one free on the appender's, where a row of owned strings cost about ten
/// of each. The system allocator frees memory that another thread allocated slowly. The
/// appender binds the stored columns straight from the buffer.
pub(crate) struct EncodedRecord {
    bytes: Vec<u8>,
    /// End of the record encoding, where the selectors' JSON text begins.
    encoding_end: usize,
    kind: RecordKind,
    /// Offset and length in `bytes` of each optional column's value, `None` for NULL.
    columns: [Option<(u32, u32)>; COLUMNS],
    time_unix_ms: i64,
}

/// The optional columns of [`EncodedRecord`], in the order of the record encoding.
const SERIAL: usize = 0;
const JTI: usize = 1;
const SPIFFE_ID: usize = 2;
const ENTRY_ID: usize = 3;
const AGENT_ID: usize = 4;
const KEY_FINGERPRINT: usize = 5;
const EVIDENCE_DIGEST: usize = 6;
const ATTESTATION_RESULT: usize = 7;
const POLICY_VERSION: usize = 8;
const REFUSAL_REASON: usize = 9;
const COLUMNS: usize = 10;

impl EncodedRecord {
    /// Checks `record` and encodes it. The serial is stored in lowercase and the attestation
    /// result as canonical JSON, as [`NewRecord`] documents.
    pub(crate) fn new(record: &NewRecord) -> Result<Self, LogError> {
        check(record)?;
        if let Some(serial) = &record.serial {
            // Checks the digits; the lowercase form is written below.
            check_serial(serial)?;
        }
        let time_unix_ms = record_time(record)?;
        let attestation_result = record.attestation_result.as_ref().map(canonical_json);
        let spiffe_id = record.spiffe_id.as_ref().map(SpiffeId::as_str);
        let agent_id = record.agent_id.as_ref().map(SpiffeId::as_str);
        let texts = [
            record.serial.as_deref(),
            record.jti.as_deref(),
            spiffe_id,
            record.entry_id.as_deref(),
            agent_id,
            attestation_result.as_deref(),
            record.policy_version.as_deref(),
            record.refusal_reason.as_deref(),
        ];
        let selector_bytes: usize = record
            .selectors
            .iter()
            .map(|selector| selector.kind.len() + selector.value.len())
            .sum();
        // Length prefixes and flags, the values, the selectors twice (encoding and JSON, with
        // its punctuation), the digests and the time. JSON escapes may need more.
        let capacity = 16 * 9
            + texts.iter().flatten().map(|text| text.len()).sum::<usize>()
            + 2 * selector_bytes
            + 48 * record.selectors.len()
            + 2 * (8 + 32)
            + 8;
        let mut out = SpanWriter(Vec::with_capacity(capacity));
        let mut columns = [None; COLUMNS];

        out.text(record.kind.as_str());
        columns[SERIAL] = match &record.serial {
            None => out.absent(),
            Some(serial) => out.present(serial.len(), |bytes| {
                bytes.extend(serial.bytes().map(|b| b.to_ascii_lowercase()));
            }),
        }?;
        columns[JTI] = out.optional(record.jti.as_deref().map(str::as_bytes))?;
        columns[SPIFFE_ID] = out.optional(spiffe_id.map(str::as_bytes))?;
        columns[ENTRY_ID] = out.optional(record.entry_id.as_deref().map(str::as_bytes))?;
        columns[AGENT_ID] = out.optional(agent_id.map(str::as_bytes))?;
        out.length(record.selectors.len());
        for selector in &record.selectors {
            out.text(&selector.kind);
            out.text(&selector.value);
        }
        columns[KEY_FINGERPRINT] = out.optional(record.key_fingerprint.as_ref().map(|f| &f[..]))?;
        columns[EVIDENCE_DIGEST] = out.optional(record.evidence_digest.as_ref().map(|d| &d[..]))?;
        columns[ATTESTATION_RESULT] =
            out.optional(attestation_result.as_deref().map(str::as_bytes))?;
        columns[POLICY_VERSION] =
            out.optional(record.policy_version.as_deref().map(str::as_bytes))?;
        columns[REFUSAL_REASON] =
            out.optional(record.refusal_reason.as_deref().map(str::as_bytes))?;
        out.0.extend_from_slice(&time_unix_ms.to_be_bytes());

        let encoding_end = out.0.len();
        serde_json::to_writer(&mut out.0, &record.selectors)
            .map_err(|e| LogError::InvalidRecord(format!("selectors cannot be serialized: {e}")))?;
        Ok(Self {
            bytes: out.0,
            encoding_end,
            kind: record.kind,
            columns,
            time_unix_ms,
        })
    }

    /// Returns the record encoding, which the chain hash covers.
    pub(crate) fn encoding(&self) -> &[u8] {
        &self.bytes[..self.encoding_end]
    }

    /// Borrows the row to store at `seq` with these hashes.
    ///
    /// # Errors
    /// [`LogError::InvalidRecord`] if a text column is not UTF-8, which [`Self::new`] rules
    /// out since it copies the columns from strings.
    pub(crate) fn row<'a>(
        &'a self,
        seq: i64,
        prev_hash: &'a [u8],
        hash: &'a [u8],
    ) -> Result<IssuanceLogRowRef<'a>, LogError> {
        let bytes = |column: usize| {
            self.columns[column].map(|(at, len)| {
                // new() stored offsets within the buffer as u32.
                let (at, len) = (at as usize, len as usize);
                &self.bytes[at..at + len]
            })
        };
        let text = |column: usize| {
            bytes(column)
                .map(std::str::from_utf8)
                .transpose()
                .map_err(|_| LogError::InvalidRecord("a text column is not UTF-8".into()))
        };
        let selectors = std::str::from_utf8(&self.bytes[self.encoding_end..])
            .map_err(|_| LogError::InvalidRecord("the selectors JSON is not UTF-8".into()))?;
        Ok(IssuanceLogRowRef {
            seq,
            prev_hash,
            hash,
            kind: self.kind.as_str(),
            serial: text(SERIAL)?,
            jti: text(JTI)?,
            spiffe_id: text(SPIFFE_ID)?,
            entry_id: text(ENTRY_ID)?,
            agent_id: text(AGENT_ID)?,
            selectors,
            key_fingerprint: bytes(KEY_FINGERPRINT),
            evidence_digest: bytes(EVIDENCE_DIGEST),
            attestation_result: text(ATTESTATION_RESULT)?,
            policy_version: text(POLICY_VERSION)?,
            refusal_reason: text(REFUSAL_REASON)?,
            time_unix_ms: self.time_unix_ms,
        })
    }
}

/// Writes the record encoding and returns where values lie.
struct SpanWriter(Vec<u8>);

impl SpanWriter {
    fn length(&mut self, length: usize) {
        // usize is at most 64 bits on every supported target.
        self.0.extend_from_slice(&(length as u64).to_be_bytes());
    }

    fn text(&mut self, text: &str) {
        self.length(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn absent(&mut self) -> Result<Option<(u32, u32)>, LogError> {
        self.0.push(0);
        Ok(None)
    }

    /// Writes a present optional value of `len` bytes with `write`, and returns its place.
    fn present(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Option<(u32, u32)>, LogError> {
        self.0.push(1);
        self.length(len);
        let at = self.0.len();
        write(&mut self.0);
        let too_large = |_| LogError::InvalidRecord("the record is larger than 4 GiB".into());
        Ok(Some((
            u32::try_from(at).map_err(too_large)?,
            u32::try_from(len).map_err(too_large)?,
        )))
    }

    fn optional(&mut self, value: Option<&[u8]>) -> Result<Option<(u32, u32)>, LogError> {
        match value {
            None => self.absent(),
            Some(value) => self.present(value.len(), |bytes| bytes.extend_from_slice(value)),
        }
    }
}

/// Decodes a stored row.
pub(crate) fn from_row(row: IssuanceLogRecord) -> Result<Record, LogError> {
    let stored_seq = row.seq;
    let corrupt = |reason: String| LogError::Corrupt {
        seq: stored_seq,
        reason,
    };

    let seq = u64::try_from(row.seq).map_err(|_| corrupt("the seq is negative".into()))?;
    let prev_hash = parse_digest(Some(&row.prev_hash), "prev_hash")
        .map_err(corrupt)?
        .unwrap_or_default();
    let hash = parse_digest(Some(&row.hash), "hash")
        .map_err(corrupt)?
        .unwrap_or_default();

    let kind = row.kind.parse::<RecordKind>().map_err(corrupt)?;
    let spiffe_id = parse_id(row.spiffe_id.as_deref(), "spiffe_id").map_err(corrupt)?;
    let agent_id = parse_id(row.agent_id.as_deref(), "agent_id").map_err(corrupt)?;
    let selectors: Vec<Selector> = serde_json::from_str(&row.selectors)
        .map_err(|e| corrupt(format!("selectors is not a selector list: {e}")))?;
    let key_fingerprint =
        parse_digest(row.key_fingerprint.as_deref(), "key_fingerprint").map_err(corrupt)?;
    let evidence_digest =
        parse_digest(row.evidence_digest.as_deref(), "evidence_digest").map_err(corrupt)?;
    let attestation_result = row
        .attestation_result
        .as_deref()
        .map(serde_json::from_str::<Value>)
        .transpose()
        .map_err(|e| corrupt(format!("attestation_result is not JSON: {e}")))?;
    let time = system_time_from_unix_ms(row.time_unix_ms)
        .ok_or_else(|| corrupt("the time is out of range".into()))?;

    Ok(Record {
        seq,
        prev_hash,
        hash,
        content: NewRecord {
            kind,
            serial: row.serial,
            jti: row.jti,
            spiffe_id,
            entry_id: row.entry_id,
            agent_id,
            selectors,
            key_fingerprint,
            evidence_digest,
            attestation_result,
            policy_version: row.policy_version,
            refusal_reason: row.refusal_reason,
            time,
        },
    })
}

/// Converts an optional stored SHA-256 value to an array, naming `column` if it is not 32
/// bytes long.
fn parse_digest(bytes: Option<&[u8]>, column: &str) -> Result<Option<[u8; 32]>, String> {
    bytes
        .map(|bytes| {
            hash_array(bytes).ok_or_else(|| format!("{column} is {} bytes, not 32", bytes.len()))
        })
        .transpose()
}

fn parse_id(text: Option<&str>, column: &str) -> Result<Option<SpiffeId>, String> {
    text.map(|text| {
        SpiffeId::new(text)
            .map_err(|e| format!("{column} contains invalid SPIFFE ID {text:?}: {e}"))
    })
    .transpose()
}

/// Returns `bytes` as a 32-byte array, or `None` for another length.
pub(crate) fn hash_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// Returns `time` in milliseconds since the unix epoch, negative before it, or `None` if that
/// does not fit an i64.
pub(crate) fn unix_ms(time: SystemTime) -> Option<i64> {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok(),
        Err(before) => i64::try_from(before.duration().as_millis())
            .ok()
            .map(|ms| -ms),
    }
}

/// Converts milliseconds since the unix epoch back to a time.
pub(crate) fn system_time_from_unix_ms(ms: i64) -> Option<SystemTime> {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_serial_drops_colons() {
        assert_eq!(lookup_serial("01:A2:ff").expect("valid"), "01a2ff");
        assert_eq!(lookup_serial("01A2FF").expect("valid"), "01a2ff");
        assert!(lookup_serial("xyz").is_err());
        assert!(lookup_serial(":").is_err());
        assert!(lookup_serial("").is_err());
    }

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).expect("valid SPIFFE ID")
    }

    #[test]
    fn kind_rules_are_enforced() {
        let mut missing_serial = NewRecord::x509("", id("spiffe://example.org/w"));
        assert!(to_row(missing_serial.clone()).is_err());
        missing_serial.serial = None;
        assert!(to_row(missing_serial).is_err());

        let mut jwt = NewRecord::jwt("id-1", id("spiffe://example.org/w"));
        jwt.jti = None;
        assert!(to_row(jwt).is_err());

        assert!(to_row(NewRecord::new(RecordKind::Refusal)).is_err());

        let mut reasoned = NewRecord::wit("id-2", id("spiffe://example.org/w"));
        reasoned.refusal_reason = Some("no".into());
        assert!(to_row(reasoned).is_err());

        assert!(to_row(NewRecord::refusal("no matching entry")).is_ok());
    }

    #[test]
    fn serial_must_be_hex() {
        assert!(to_row(NewRecord::x509("01:ab", id("spiffe://example.org/w"))).is_err());
        let row = to_row(NewRecord::x509("01AB", id("spiffe://example.org/w"))).expect("valid");
        assert_eq!(row.serial.as_deref(), Some("01ab"));
    }

    #[test]
    fn row_round_trip_keeps_content() {
        let mut record = NewRecord::x509("0a", id("spiffe://example.org/w"));
        record.agent_id = Some(id("spiffe://example.org/agent"));
        record.entry_id = Some("entry-1".into());
        record.selectors = vec![Selector::new("unix", "uid:0"), Selector::new("k8s", "ns:a")];
        record.key_fingerprint = Some([1; 32]);
        record.evidence_digest = Some([2; 32]);
        record.attestation_result = Some(serde_json::json!({"ok": true, "tcb": 3}));
        record.policy_version = Some("v7".into());
        record.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);

        let mut row = to_row(record.clone()).expect("valid");
        row.prev_hash = vec![0; 32];
        row.hash = vec![9; 32];
        let decoded = from_row(row).expect("decodes");
        assert_eq!(decoded.content, record);
        assert_eq!(decoded.hash, [9; 32]);
    }

    #[test]
    fn time_conversion_handles_pre_epoch() {
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(unix_ms(before), Some(-1500));
        assert_eq!(system_time_from_unix_ms(-1500), Some(before));
    }

    /// Records that between them set every field, absent and present, empty and not, with
    /// text that JSON must escape.
    fn varied_records() -> Vec<NewRecord> {
        let mut full = NewRecord::x509("0A1bFF", id("spiffe://example.org/ns/prod-1/sa/web_2.x"));
        full.jti = Some(String::new());
        full.entry_id = Some("entry \"1\"".into());
        full.agent_id = Some(id("spiffe://example.org/spire/agent/x509pop/node"));
        full.selectors = vec![
            Selector::new("unix", "uid:1000"),
            Selector::new("k8s", "label:\"quoted\" \\ \u{1f980}\n\u{1}"),
            Selector::new("", ""),
        ];
        full.key_fingerprint = Some([0xab; 32]);
        full.evidence_digest = Some([0; 32]);
        full.attestation_result = Some(serde_json::json!({
            "tee": "tdx", "measurements": {"mrtd": "00ff"}, "n": [1, 2.5, null]
        }));
        full.policy_version = Some("7".into());
        full.time = UNIX_EPOCH - Duration::from_millis(1500);
        let mut jwt = NewRecord::jwt("0190f0e4a1b2", id("spiffe://example.org/w"));
        jwt.selectors = vec![Selector::new("unix", "gid:0")];
        let mut refusal = NewRecord::refusal("no entry matches \u{2028}");
        refusal.attestation_result = Some(serde_json::json!([]));
        vec![
            full,
            jwt,
            refusal,
            NewRecord::wit("w", id("spiffe://example.org/w")),
        ]
    }

    #[test]
    fn encoded_record_matches_the_plain_row_and_encoding() {
        let (prev, hash) = ([3; 32], [4; 32]);
        for record in varied_records() {
            let encoded = EncodedRecord::new(&record).expect("valid");
            let (mut expected, encoding) = to_row_encoded(record.clone()).expect("valid");
            assert_eq!(encoded.encoding(), encoding, "encoding of {record:?}");
            let row = encoded.row(9, &prev, &hash).expect("row");
            expected.seq = 9;
            expected.prev_hash = prev.to_vec();
            expected.hash = hash.to_vec();
            assert_eq!(row.to_record(), expected, "row of {record:?}");
        }
    }

    #[test]
    fn encoded_record_checks_like_the_plain_row() {
        let mut reasoned = NewRecord::x509("01", id("spiffe://example.org/w"));
        reasoned.refusal_reason = Some("why".into());
        let invalid = [
            NewRecord::x509("", id("spiffe://example.org/w")),
            NewRecord::x509("01:ab", id("spiffe://example.org/w")),
            NewRecord::jwt("", id("spiffe://example.org/w")),
            NewRecord::new(RecordKind::Refusal),
            reasoned,
        ];
        for record in invalid {
            assert!(to_row(record.clone()).is_err(), "{record:?}");
            assert!(
                matches!(EncodedRecord::new(&record), Err(LogError::InvalidRecord(_))),
                "{record:?} was encoded"
            );
        }
    }

    #[test]
    fn record_values_the_database_rejects_are_invalid() {
        let long = "a".repeat(MAX_INDEXED_BYTES + 1);
        let mut long_jti = NewRecord::jwt(long.clone(), id("spiffe://example.org/w"));
        long_jti.selectors = vec![Selector::new("unix", "uid:0")];
        let mut nul_entry = NewRecord::x509("01", id("spiffe://example.org/w"));
        nul_entry.entry_id = Some("entry\0".into());
        let mut nul_policy = NewRecord::x509("01", id("spiffe://example.org/w"));
        nul_policy.policy_version = Some("\0".into());
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let mut too_deep = NewRecord::refusal("deep");
        too_deep.attestation_result = Some(serde_json::json!({ "a": deep.clone() }));
        let invalid = [
            NewRecord::x509(long, id("spiffe://example.org/w")),
            long_jti,
            NewRecord::jwt("j\0", id("spiffe://example.org/w")),
            nul_entry,
            nul_policy,
            NewRecord::refusal("reason \0"),
            too_deep,
        ];
        for record in invalid {
            assert!(
                matches!(EncodedRecord::new(&record), Err(LogError::InvalidRecord(_))),
                "{record:?} was encoded"
            );
        }

        // The limits themselves are allowed, and JSON and selectors escape U+0000.
        let mut at_limits =
            NewRecord::x509("a".repeat(MAX_INDEXED_BYTES), id("spiffe://example.org/w"));
        at_limits.jti = Some("b".repeat(MAX_INDEXED_BYTES));
        at_limits.attestation_result = Some(deep);
        at_limits.selectors = vec![Selector::new("k8s", "label:\0")];
        assert!(EncodedRecord::new(&at_limits).is_ok());
        let mut nul_json = NewRecord::refusal("nul in JSON");
        nul_json.attestation_result = Some(serde_json::json!({ "text": "\0" }));
        assert!(EncodedRecord::new(&nul_json).is_ok());
    }

    #[test]
    fn caller_encoding_hashes_like_the_stored_row() {
        let mut record = NewRecord::x509("0A1b", id("spiffe://example.org/w"));
        record.selectors = vec![
            Selector::new("unix", "uid:1000"),
            Selector::new("k8s", "label:\"quoted\" \\ \u{e9}\u{1f980}\n"),
        ];
        let (row, encoding) = to_row_encoded(record).expect("valid");
        let prev = [7; 32];
        assert_eq!(
            Ok(crate::encoding::chain_hash(41, &prev, &encoding)),
            crate::encoding::record_hash(41, &prev, &row),
            "the appender's hash of the caller's encoding must equal the verifier's hash of \
             the stored row"
        );
    }
}
