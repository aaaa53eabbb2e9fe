//! The AWS Nitro Enclaves attestation document: a COSE_Sign1 (RFC 9052) whose payload is a
//! CBOR map of the fields AWS documents in "Verifying the root of trust" (Nitro Enclaves user
//! guide) and the NSM API.

use std::collections::BTreeMap;

use ciborium::Value;
use coset::{CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable};

use crate::VerifyError;

/// The most PCRs a document may carry: the NSM has 32.
pub const MAX_PCRS: usize = 32;
/// The longest `public_key`, `user_data` or `nonce`, in bytes, that the NSM API accepts.
pub const MAX_USER_FIELD_LEN: usize = 1024;
/// Maximum number of certificates in `cabundle`. AWS chains have four.
pub const MAX_CABUNDLE_LEN: usize = 16;

/// A parsed attestation document. Parsing checks the structure and field types, and
/// [`super::verify`] checks the signature and certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The serialized protected header, exactly as signed.
    pub protected: Vec<u8>,
    /// The COSE `alg` in the protected header (-35 is ES384), `None` if absent or text.
    pub algorithm: Option<i64>,
    /// The serialized payload, exactly as signed.
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub module_id: String,
    /// The PCR hash algorithm: `SHA256`, `SHA384` or `SHA512`.
    pub digest: String,
    /// Milliseconds since the Unix epoch when the NSM made the document.
    pub timestamp: u64,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The DER certificate whose key signed the document.
    pub certificate: Vec<u8>,
    /// The issuing chain in DER, root first: `cabundle[0]` is the root and the last entry
    /// issued `certificate`.
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

/// Parses a COSE_Sign1 attestation document, with or without CBOR tag 18, and its payload.
pub fn parse_document(bytes: &[u8]) -> Result<Document, VerifyError> {
    // Major type 6 in the first byte's top three bits is a CBOR tag.
    let tagged = bytes.first().is_some_and(|byte| byte >> 5 == 6);
    let sign1 = if tagged {
        CoseSign1::from_tagged_slice(bytes)
    } else {
        CoseSign1::from_slice(bytes)
    }
    .map_err(|error| {
        VerifyError::malformed(format!(
            "Nitro attestation document is not a COSE_Sign1: {error}"
        ))
    })?;

    let algorithm = match &sign1.protected.header.alg {
        Some(RegisteredLabelWithPrivate::Assigned(algorithm)) => Some(*algorithm as i64),
        Some(RegisteredLabelWithPrivate::PrivateUse(value)) => Some(*value),
        Some(RegisteredLabelWithPrivate::Text(_)) | None => None,
    };
    let protected = sign1.protected.original_data.clone().unwrap_or_default();
    let payload = sign1
        .payload
        .ok_or_else(|| VerifyError::malformed("Nitro attestation document has no payload (nil)"))?;
    let fields = Payload::parse(&payload)?;
    Ok(Document {
        protected,
        algorithm,
        signature: sign1.signature,
        module_id: fields.module_id,
        digest: fields.digest,
        timestamp: fields.timestamp,
        pcrs: fields.pcrs,
        certificate: fields.certificate,
        cabundle: fields.cabundle,
        public_key: fields.public_key,
        user_data: fields.user_data,
        nonce: fields.nonce,
        payload,
    })
}

struct Payload {
    module_id: String,
    digest: String,
    timestamp: u64,
    pcrs: BTreeMap<u8, Vec<u8>>,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

impl Payload {
    fn parse(payload: &[u8]) -> Result<Self, VerifyError> {
        let mut reader = payload;
        let value: Value = ciborium::de::from_reader(&mut reader).map_err(|error| {
            VerifyError::malformed(format!("Nitro document payload is not CBOR: {error}"))
        })?;
        if !reader.is_empty() {
            return Err(VerifyError::malformed(format!(
                "Nitro document payload has {} bytes after its CBOR map",
                reader.len()
            )));
        }
        let Value::Map(entries) = value else {
            return Err(VerifyError::malformed(
                "Nitro document payload is not a CBOR map",
            ));
        };

        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(VerifyError::malformed(
                    "Nitro document payload has a map key that is not text",
                ));
            };
            if fields.contains_key(&key) {
                return Err(VerifyError::malformed(format!(
                    "Nitro document payload has the field {key:?} twice"
                )));
            }
            fields.insert(key, value);
        }

        let module_id = required_text(&mut fields, "module_id")?;
        if module_id.is_empty() {
            return Err(VerifyError::malformed("Nitro document module_id is empty"));
        }
        let digest = required_text(&mut fields, "digest")?;
        let pcr_len = match digest.as_str() {
            "SHA256" => 32,
            "SHA384" => 48,
            "SHA512" => 64,
            other => {
                return Err(VerifyError::malformed(format!(
                    "Nitro document digest {other:?} is not SHA256, SHA384 or SHA512"
                )));
            }
        };
        let timestamp = match take(&mut fields, "timestamp")? {
            Value::Integer(integer) => u64::try_from(integer).ok().filter(|value| *value > 0),
            _ => None,
        }
        .ok_or_else(|| {
            VerifyError::malformed("Nitro document timestamp is not a positive integer")
        })?;
        let pcrs = parse_pcrs(take(&mut fields, "pcrs")?, pcr_len, &digest)?;
        let certificate = match take(&mut fields, "certificate")? {
            Value::Bytes(bytes) if !bytes.is_empty() => bytes,
            _ => {
                return Err(VerifyError::malformed(
                    "Nitro document certificate is not a non-empty byte string",
                ));
            }
        };
        let cabundle = parse_cabundle(take(&mut fields, "cabundle")?)?;
        Ok(Self {
            module_id,
            digest,
            timestamp,
            pcrs,
            certificate,
            cabundle,
            public_key: optional_bytes(&mut fields, "public_key")?,
            user_data: optional_bytes(&mut fields, "user_data")?,
            nonce: optional_bytes(&mut fields, "nonce")?,
        })
    }
}

fn take(fields: &mut BTreeMap<String, Value>, name: &str) -> Result<Value, VerifyError> {
    fields.remove(name).ok_or_else(|| {
        VerifyError::malformed(format!("Nitro document lacks the mandatory field {name}"))
    })
}

fn required_text(fields: &mut BTreeMap<String, Value>, name: &str) -> Result<String, VerifyError> {
    match take(fields, name)? {
        Value::Text(text) => Ok(text),
        _ => Err(VerifyError::malformed(format!(
            "Nitro document {name} is not a text string"
        ))),
    }
}

/// Reads an optional byte string: absent or CBOR null is `None`.
fn optional_bytes(
    fields: &mut BTreeMap<String, Value>,
    name: &str,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(bytes)) if bytes.len() <= MAX_USER_FIELD_LEN => Ok(Some(bytes)),
        Some(Value::Bytes(bytes)) => Err(VerifyError::malformed(format!(
            "Nitro document {name} is {} bytes; the NSM API allows at most {MAX_USER_FIELD_LEN}",
            bytes.len()
        ))),
        Some(_) => Err(VerifyError::malformed(format!(
            "Nitro document {name} is neither a byte string nor null"
        ))),
    }
}

fn parse_pcrs(
    value: Value,
    pcr_len: usize,
    digest: &str,
) -> Result<BTreeMap<u8, Vec<u8>>, VerifyError> {
    let Value::Map(entries) = value else {
        return Err(VerifyError::malformed("Nitro document pcrs is not a map"));
    };
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(VerifyError::malformed(format!(
            "Nitro document has {} PCRs; expected 1 to {MAX_PCRS}",
            entries.len()
        )));
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let index = match index {
            Value::Integer(integer) => u8::try_from(integer)
                .ok()
                .filter(|index| usize::from(*index) < MAX_PCRS),
            _ => None,
        }
        .ok_or_else(|| {
            VerifyError::malformed(format!(
                "Nitro document has a PCR index that is not an integer 0 to {}",
                MAX_PCRS - 1
            ))
        })?;
        let Value::Bytes(bytes) = value else {
            return Err(VerifyError::malformed(format!(
                "Nitro document PCR{index} is not a byte string"
            )));
        };
        if bytes.len() != pcr_len {
            return Err(VerifyError::malformed(format!(
                "Nitro document PCR{index} is {} bytes; a {digest} PCR is {pcr_len}",
                bytes.len()
            )));
        }
        if pcrs.insert(index, bytes).is_some() {
            return Err(VerifyError::malformed(format!(
                "Nitro document has PCR{index} twice"
            )));
        }
    }
    Ok(pcrs)
}

fn parse_cabundle(value: Value) -> Result<Vec<Vec<u8>>, VerifyError> {
    let Value::Array(items) = value else {
        return Err(VerifyError::malformed(
            "Nitro document cabundle is not an array",
        ));
    };
    if items.is_empty() || items.len() > MAX_CABUNDLE_LEN {
        return Err(VerifyError::malformed(format!(
            "Nitro document cabundle has {} certificates; expected 1 to {MAX_CABUNDLE_LEN}",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Bytes(bytes) if !bytes.is_empty() => Ok(bytes),
            _ => Err(VerifyError::malformed(format!(
                "Nitro document cabundle[{index}] is not a non-empty byte string"
            ))),
        })
        .collect()
}
