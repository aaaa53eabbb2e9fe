//! The JSON forms of TPM evidence: twid's own layout and the layouts of go-attestation and
//! trustee test data.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::QuoteInput;
use super::wire::{HashAlg, parse_attest};
use crate::VerifyError;
use crate::envelope::MAX_ENVELOPE_BYTES;

/// twid's layout. Byte fields are standard base64 and PCR values are hex, keyed by the decimal
/// PCR index.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnLayout {
    ak_public: String,
    quote: String,
    signature: String,
    pcrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_log: Option<String>,
}

/// trustee's layout: `pcrs` is a list of hex values indexed from PCR 0. It sits inside
/// `tpm_quote` in trustee's test data, and at the top level in some versions.
#[derive(Deserialize)]
struct TrusteeLayout {
    ak_public: String,
    tpm_quote: TrusteeQuote,
    #[serde(default)]
    pcrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TrusteeQuote {
    message: String,
    signature: String,
    #[serde(default)]
    pcrs: Option<Vec<String>>,
}

/// go-attestation's layout (`attest.PlatformParameters` encoded with Go's `encoding/json`,
/// which writes byte slices as standard base64).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoLayout {
    #[serde(rename = "AK")]
    ak: GoAk,
    quote: GoQuote,
    #[serde(default)]
    log: Option<GoLog>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoAk {
    public: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoQuote {
    quote: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoLog {
    #[serde(default, rename = "PCRs")]
    pcrs: Vec<GoPcr>,
    #[serde(default)]
    raw: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoPcr {
    index: u32,
    digest: String,
    /// A Go `crypto.Hash`: 3 is SHA-1, 5 SHA-256, 6 SHA-384, 7 SHA-512.
    digest_alg: u32,
}

fn go_hash(value: u32) -> Option<HashAlg> {
    match value {
        3 => Some(HashAlg::Sha1),
        5 => Some(HashAlg::Sha256),
        6 => Some(HashAlg::Sha384),
        7 => Some(HashAlg::Sha512),
        _ => None,
    }
}

fn base64_field(text: &str, field: &str) -> Result<Vec<u8>, VerifyError> {
    STANDARD.decode(text.trim()).map_err(|error| {
        VerifyError::malformed(format!("TPM evidence {field} is not valid base64: {error}"))
    })
}

fn hex_field(text: &str, field: &str) -> Result<Vec<u8>, VerifyError> {
    hex::decode(text.trim()).map_err(|error| {
        VerifyError::malformed(format!("TPM evidence {field} is not valid hex: {error}"))
    })
}

fn pcr_index(index: impl TryInto<u8> + std::fmt::Display + Copy) -> Result<u8, VerifyError> {
    index.try_into().map_err(|_| {
        VerifyError::malformed(format!(
            "TPM evidence names PCR {index}; the maximum is 255"
        ))
    })
}

impl QuoteInput {
    /// Parses TPM evidence JSON. Three layouts are recognized by their keys:
    ///
    /// * twid's own: `{"ak_public": b64, "quote": b64, "signature": b64,
    ///   "pcrs": {"0": "hex", ...}, "event_log": b64}`, with `event_log` optional;
    /// * go-attestation's: `{"AK": {"Public"}, "Quote": {"Quote", "Signature"},
    ///   "Log": {"PCRs": [{"Index", "Digest", "DigestAlg"}], "Raw"}}`;
    /// * trustee's: `{"ak_public", "tpm_quote": {"message", "signature", "pcrs": [hex, ...]}}`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::malformed(format!(
                "TPM evidence JSON is {} bytes; the maximum is {MAX_ENVELOPE_BYTES}",
                bytes.len()
            )));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|error| {
            VerifyError::malformed(format!("invalid TPM evidence JSON: {error}"))
        })?;
        let has = |key: &str| value.get(key).is_some();
        let decode_error = |error: serde_json::Error| {
            VerifyError::malformed(format!("invalid TPM evidence JSON: {error}"))
        };
        if has("tpm_quote") {
            from_trustee(serde_json::from_value(value).map_err(decode_error)?)
        } else if has("AK") && has("Quote") {
            from_go(serde_json::from_value(value).map_err(decode_error)?)
        } else if has("quote") {
            from_own(serde_json::from_value(value).map_err(decode_error)?)
        } else {
            Err(VerifyError::malformed(
                "unknown TPM evidence layout: expected the keys \"quote\" (twid), \"AK\" and \
                 \"Quote\" (go-attestation), or \"tpm_quote\" (trustee)",
            ))
        }
    }

    /// Encodes the evidence in twid's own layout (see [`QuoteInput::from_json`]).
    pub fn to_json(&self) -> Vec<u8> {
        let layout = OwnLayout {
            ak_public: STANDARD.encode(&self.ak_public),
            quote: STANDARD.encode(&self.attest),
            signature: STANDARD.encode(&self.signature),
            pcrs: self
                .pcrs
                .iter()
                .map(|(index, value)| (index.to_string(), hex::encode(value)))
                .collect(),
            event_log: self.event_log.as_ref().map(|log| STANDARD.encode(log)),
        };
        // Serializing strings and a map with string keys cannot fail.
        serde_json::to_vec(&layout).unwrap_or_default()
    }
}

fn from_own(layout: OwnLayout) -> Result<QuoteInput, VerifyError> {
    let mut pcrs = BTreeMap::new();
    for (index, value) in &layout.pcrs {
        let index: u8 = index.parse().map_err(|_| {
            VerifyError::malformed(format!(
                "TPM evidence PCR key {index:?} is not a PCR index from 0 to 255"
            ))
        })?;
        pcrs.insert(index, hex_field(value, &format!("PCR {index}"))?);
    }
    Ok(QuoteInput {
        attest: base64_field(&layout.quote, "quote")?,
        signature: base64_field(&layout.signature, "signature")?,
        ak_public: base64_field(&layout.ak_public, "ak_public")?,
        pcrs,
        event_log: match &layout.event_log {
            Some(log) => Some(base64_field(log, "event_log")?),
            None => None,
        },
    })
}

fn from_trustee(layout: TrusteeLayout) -> Result<QuoteInput, VerifyError> {
    let list = layout.tpm_quote.pcrs.or(layout.pcrs).unwrap_or_default();
    let mut pcrs = BTreeMap::new();
    for (index, value) in list.iter().enumerate() {
        let index = pcr_index(index)?;
        pcrs.insert(index, hex_field(value, &format!("PCR {index}"))?);
    }
    Ok(QuoteInput {
        attest: base64_field(&layout.tpm_quote.message, "tpm_quote.message")?,
        signature: base64_field(&layout.tpm_quote.signature, "tpm_quote.signature")?,
        ak_public: base64_field(&layout.ak_public, "ak_public")?,
        pcrs,
        event_log: None,
    })
}

fn from_go(layout: GoLayout) -> Result<QuoteInput, VerifyError> {
    let attest = base64_field(&layout.quote.quote, "Quote.Quote")?;
    let (entries, raw) = match layout.log {
        Some(log) => (log.pcrs, log.raw),
        None => (Vec::new(), None),
    };

    // QuoteInput contains one bank. When the log lists several, keep the quoted bank.
    let mut banks: Vec<u32> = entries.iter().map(|pcr| pcr.digest_alg).collect();
    banks.sort_unstable();
    banks.dedup();
    let keep = match banks.as_slice() {
        [single] => Some(*single),
        [] => None,
        _ => {
            let quoted = parse_attest(&attest)?
                .pcr_selections
                .first()
                .map(|selection| selection.bank);
            banks
                .iter()
                .copied()
                .find(|bank| go_hash(*bank).is_some() && go_hash(*bank) == quoted)
        }
    };

    let mut pcrs = BTreeMap::new();
    for entry in entries
        .iter()
        .filter(|entry| Some(entry.digest_alg) == keep)
    {
        let index = pcr_index(entry.index)?;
        pcrs.insert(
            index,
            base64_field(&entry.digest, &format!("Log.PCRs[{index}]"))?,
        );
    }
    Ok(QuoteInput {
        attest,
        signature: base64_field(&layout.quote.signature, "Quote.Signature")?,
        ak_public: base64_field(&layout.ak.public, "AK.Public")?,
        pcrs,
        event_log: match raw {
            Some(raw) if !raw.is_empty() => Some(base64_field(&raw, "Log.Raw")?),
            _ => None,
        },
    })
}
