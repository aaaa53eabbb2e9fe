//! The canonical record encoding, the chain hash and the checkpoint message. The crate
//! documentation specifies the byte layout that these functions produce.

use aws_lc_rs::digest::{Context, SHA256};
use serde::Deserialize;
use serde_json::Value;
use twid_datastore::IssuanceLogRecord;

/// The `prev_hash` of the record at seq 0.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Prefix of every hashed record, so a record hash never equals a hash of other data.
pub(crate) const RECORD_DOMAIN: &[u8] = b"twid-provenance issuance-log record v1\0";

/// Prefix of every signed checkpoint message.
pub(crate) const CHECKPOINT_DOMAIN: &[u8] = b"twid-provenance issuance-log checkpoint v1\0";

/// A selector as stored in the `selectors` JSON column.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSelector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

/// Computes the chain hash of `record` at position `seq` after `prev_hash`.
///
/// The record's own `seq`, `prev_hash` and `hash` fields are ignored, so callers can check a
/// stored record against any position.
///
/// # Errors
/// Returns the reason when the record's `selectors` column is not a JSON array of
/// `{"type","value"}` objects.
pub fn record_hash(
    seq: u64,
    prev_hash: &[u8; 32],
    record: &IssuanceLogRecord,
) -> Result<[u8; 32], String> {
    let selectors: Vec<StoredSelector> = serde_json::from_str(&record.selectors)
        .map_err(|e| format!("the selectors column is not a valid selector list: {e}"))?;
    let encoding = record_encoding(
        record,
        selectors
            .iter()
            .map(|selector| (selector.kind.as_str(), selector.value.as_str())),
    );
    Ok(chain_hash(seq, prev_hash, &encoding))
}

/// Returns the record encoding of `record` with `selectors` as (type, value) pairs in order,
/// which must be the selectors its `selectors` column holds. Appends compute it from the
/// caller's selectors, so the appender neither parses the JSON column nor feeds the hash
/// field by field.
pub(crate) fn record_encoding<'a>(
    record: &IssuanceLogRecord,
    selectors: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut encoder = Encoder(Vec::with_capacity(512));
    encoder.text(&record.kind);
    encoder.optional_text(record.serial.as_deref());
    encoder.optional_text(record.jti.as_deref());
    encoder.optional_text(record.spiffe_id.as_deref());
    encoder.optional_text(record.entry_id.as_deref());
    encoder.optional_text(record.agent_id.as_deref());
    encoder.length(selectors.len());
    for (kind, value) in selectors {
        encoder.text(kind);
        encoder.text(value);
    }
    encoder.optional_bytes(record.key_fingerprint.as_deref());
    encoder.optional_bytes(record.evidence_digest.as_deref());
    encoder.optional_text(record.attestation_result.as_deref());
    encoder.optional_text(record.policy_version.as_deref());
    encoder.optional_text(record.refusal_reason.as_deref());
    encoder.raw(&record.time_unix_ms.to_be_bytes());
    encoder.0
}

/// Computes the chain hash of the record with this encoding at position `seq` after
/// `prev_hash`.
pub(crate) fn chain_hash(seq: u64, prev_hash: &[u8; 32], encoding: &[u8]) -> [u8; 32] {
    let mut context = Context::new(&SHA256);
    context.update(RECORD_DOMAIN);
    context.update(&seq.to_be_bytes());
    context.update(prev_hash);
    context.update(encoding);
    let digest = context.finish();
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Returns the message a checkpoint signs: the domain tag, `seq` as 8 bytes big-endian and
/// the 32-byte `hash`.
pub(crate) fn checkpoint_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32);
    message.extend_from_slice(CHECKPOINT_DOMAIN);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

/// Returns the SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Writes `value` as canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// strings escaped and numbers printed as serde_json 1.x prints them.
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical_json(value, &mut out);
    out
}

fn write_canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // String's order is the order of its UTF-8 bytes.
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical_json(item, out);
            }
            out.push('}');
        }
        // Display prints scalars in compact JSON form.
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Feeds the length-prefixed fields of the canonical encoding into SHA-256.
/// Builds a record encoding.
struct Encoder(Vec<u8>);

impl Encoder {
    fn raw(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
    }

    fn length(&mut self, length: usize) {
        self.raw(&(length as u64).to_be_bytes());
    }

    fn bytes(&mut self, data: &[u8]) {
        self.length(data.len());
        self.raw(data);
    }

    fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    fn optional_bytes(&mut self, data: Option<&[u8]>) {
        match data {
            None => self.raw(&[0]),
            Some(data) => {
                self.raw(&[1]);
                self.bytes(data);
            }
        }
    }

    fn optional_text(&mut self, text: Option<&str>) {
        self.optional_bytes(text.map(str::as_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IssuanceLogRecord {
        IssuanceLogRecord {
            seq: 0,
            prev_hash: Vec::new(),
            hash: Vec::new(),
            kind: "x509".into(),
            serial: Some("01ab".into()),
            jti: None,
            spiffe_id: Some("spiffe://example.org/w".into()),
            entry_id: None,
            agent_id: None,
            selectors: r#"[{"type":"unix","value":"uid:0"}]"#.into(),
            key_fingerprint: Some(vec![7; 32]),
            evidence_digest: None,
            attestation_result: None,
            policy_version: None,
            refusal_reason: None,
            time_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn hash_covers_position_and_fields() {
        let base = record_hash(3, &GENESIS_HASH, &sample()).expect("hash");
        assert_ne!(
            base,
            record_hash(4, &GENESIS_HASH, &sample()).expect("hash")
        );
        assert_ne!(base, record_hash(3, &[1; 32], &sample()).expect("hash"));

        let mut empty_jti = sample();
        empty_jti.jti = Some(String::new());
        assert_ne!(
            base,
            record_hash(3, &GENESIS_HASH, &empty_jti).expect("hash")
        );

        // Moving bytes between adjacent fields changes the hash, because each is prefixed
        // with its length.
        let mut shifted = sample();
        shifted.selectors = r#"[{"type":"unix:","value":"uid0"}]"#.into();
        assert_ne!(base, record_hash(3, &GENESIS_HASH, &shifted).expect("hash"));
    }

    #[test]
    fn hash_rejects_invalid_selectors() {
        let mut record = sample();
        record.selectors = "not json".into();
        assert!(record_hash(0, &GENESIS_HASH, &record).is_err());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [1, {"z": null, "a": true}], "a": "x\"y", "é": 1.5 }"#)
                .expect("parse");
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"x\"y","b":[1,{"a":true,"z":null}],"é":1.5}"#
        );
    }
}
