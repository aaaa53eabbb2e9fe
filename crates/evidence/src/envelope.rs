//! The envelope an attester sends: evidence of one kind plus what the verifier needs beside it.
//!
//! The agent sends it as the response to the server's challenge during node attestation, and
//! `twid attest verify` reads it. It is JSON with base64 (standard alphabet, padded) byte fields.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Kind, VerifyError};

/// Upper bound on an encoded envelope. Real evidence with its certificates stays under 64 KiB;
/// DCAP collateral adds up to about 40 KiB.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Evidence plus its endorsements, as one attester submission.
///
/// Limit: an envelope carries evidence of one kind from one device, so a composite workload
/// (a CPU TEE with a GPU or NIC, or several devices) cannot attest as one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub kind: Kind,
    /// The evidence: a DCAP quote, an SEV-SNP report, a Nitro COSE document, an IAS report
    /// body, or for TPM the JSON form of [`crate::tpm::QuoteInput`].
    #[serde(with = "b64")]
    pub evidence: Vec<u8>,
    /// DER certificates the attester holds: for SEV-SNP the VCEK or VLEK first, then ASK, ASVK
    /// or ARK as available; for IAS the report signing chain.
    #[serde(default, with = "b64_list", skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Vec<u8>>,
    /// The IAS report signature (`X-IASReport-Signature`, decoded).
    #[serde(default, with = "b64_option", skip_serializing_if = "Option::is_none")]
    pub signature: Option<Vec<u8>>,
    /// DCAP collateral in dcap-qvl's JSON layout, when the attester ships it with the quote.
    #[serde(default, with = "b64_option", skip_serializing_if = "Option::is_none")]
    pub collateral: Option<Vec<u8>>,
}

impl Envelope {
    pub fn new(kind: Kind, evidence: Vec<u8>) -> Self {
        Self {
            kind,
            evidence,
            certificates: Vec::new(),
            signature: None,
            collateral: None,
        }
    }

    /// Parses an envelope, rejecting oversized input before decoding it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::malformed(format!(
                "evidence envelope is {} bytes; the maximum is {MAX_ENVELOPE_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|error| VerifyError::malformed(format!("invalid evidence envelope: {error}")))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, byte vectors and an enum cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

mod b64 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.trim())
            .map_err(|error| serde::de::Error::custom(format!("invalid base64: {error}")))
    }
}

mod b64_option {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        STANDARD
            .decode(text.trim())
            .map(Some)
            .map_err(|error| serde::de::Error::custom(format!("invalid base64: {error}")))
    }
}

mod b64_list {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        list: &[Vec<u8>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(|bytes| STANDARD.encode(bytes)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| {
                STANDARD
                    .decode(text.trim())
                    .map_err(|error| serde::de::Error::custom(format!("invalid base64: {error}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let mut envelope = Envelope::new(Kind::Snp, vec![1, 2, 3]);
        envelope.certificates = vec![vec![4], vec![5, 6]];
        let parsed = Envelope::from_json(&envelope.to_json()).expect("parse");
        assert_eq!(parsed, envelope);
    }

    #[test]
    fn envelope_rejects_unknown_kind() {
        let error = Envelope::from_json(br#"{"kind":"sev","evidence":""}"#).expect_err("kind");
        assert!(error.message.contains("unknown variant"), "{error}");
    }

    #[test]
    fn envelope_rejects_oversized_input() {
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        let error = Envelope::from_json(&big).expect_err("size");
        assert!(error.message.contains("maximum"), "{error}");
    }
}
