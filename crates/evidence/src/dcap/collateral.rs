//! DCAP collateral: the PCS documents that endorse a quote, in the two layouts twid reads.

use serde::Deserialize;

use super::{der, pem};
use crate::VerifyError;

/// The collateral to verify one quote: CRLs, the signed TCB info and QE identity, and the
/// chains that sign them. Certificates and CRLs are DER; signatures are raw r||s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    pub pck_crl_issuer_chain: Vec<Vec<u8>>,
    pub root_ca_crl: Vec<u8>,
    pub pck_crl: Vec<u8>,
    pub tcb_info_issuer_chain: Vec<Vec<u8>>,
    /// The exact signed JSON text of the TCB info object.
    pub tcb_info: String,
    pub tcb_info_signature: Vec<u8>,
    pub qe_identity_issuer_chain: Vec<Vec<u8>>,
    /// The exact signed JSON text of the QE identity object.
    pub qe_identity: String,
    pub qe_identity_signature: Vec<u8>,
}

/// The raw files of a collateral folder, as Intel's PCS API returns them.
#[derive(Clone, Copy, Debug)]
pub struct PcsFiles<'a> {
    /// The TCB info response, `{"tcbInfo":{..},"signature":"hex"}`.
    pub tcb_info: &'a [u8],
    /// The QE identity response, `{"enclaveIdentity":{..},"signature":"hex"}`.
    pub qe_identity: &'a [u8],
    /// PEM certificates that sign the TCB info, signer then root.
    pub tcb_info_issuer_chain: &'a [u8],
    /// PEM certificates that sign the QE identity; `None` means the TCB info chain.
    pub qe_identity_issuer_chain: Option<&'a [u8]>,
    /// The PCK CRL as DER, PEM or hex.
    pub pck_crl: &'a [u8],
    /// PEM certificates that sign the PCK CRL.
    pub pck_crl_issuer_chain: &'a [u8],
    /// The Intel SGX Root CA CRL as DER, PEM or hex.
    pub root_ca_crl: &'a [u8],
}

/// File names in a collateral folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcsFileNames {
    pub tcb_info: &'static str,
    pub qe_identity: &'static str,
    pub tcb_info_issuer_chain: &'static str,
    /// Optional: when absent the TCB info chain signs the QE identity too.
    pub qe_identity_issuer_chain: &'static str,
    pub pck_crl: &'static str,
    pub pck_crl_issuer_chain: &'static str,
    pub root_ca_crl: &'static str,
}

/// File names in a collateral folder, for `twid attest verify --collateral DIR` and the
/// server's collateral cache.
pub const PCS_FILE_NAMES: PcsFileNames = PcsFileNames {
    tcb_info: "tcb_info.json",
    qe_identity: "qe_identity.json",
    tcb_info_issuer_chain: "tcb_info_issuer_chain.pem",
    qe_identity_issuer_chain: "qe_identity_issuer_chain.pem",
    pck_crl: "pck_crl.der",
    pck_crl_issuer_chain: "pck_crl_issuer_chain.pem",
    root_ca_crl: "root_ca_crl.der",
};

/// The JSON layout of dcap-qvl's `QuoteCollateralV3`: PEM chains, hex CRLs and hex signatures.
#[derive(Deserialize)]
struct DcapQvlJson {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
}

impl Collateral {
    /// Reads collateral in the JSON layout of dcap-qvl's `QuoteCollateralV3`.
    pub fn from_dcap_qvl_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        let json: DcapQvlJson = serde_json::from_slice(bytes).map_err(|error| {
            VerifyError::malformed(format!("collateral JSON is invalid: {error}"))
        })?;
        Ok(Self {
            pck_crl_issuer_chain: certificates(
                json.pck_crl_issuer_chain.as_bytes(),
                "pck_crl_issuer_chain",
            )?,
            root_ca_crl: crl_bytes(json.root_ca_crl.as_bytes(), "root_ca_crl")?,
            pck_crl: crl_bytes(json.pck_crl.as_bytes(), "pck_crl")?,
            tcb_info_issuer_chain: certificates(
                json.tcb_info_issuer_chain.as_bytes(),
                "tcb_info_issuer_chain",
            )?,
            tcb_info: json.tcb_info,
            tcb_info_signature: hex_field(&json.tcb_info_signature, "tcb_info_signature")?,
            qe_identity_issuer_chain: certificates(
                json.qe_identity_issuer_chain.as_bytes(),
                "qe_identity_issuer_chain",
            )?,
            qe_identity: json.qe_identity,
            qe_identity_signature: hex_field(&json.qe_identity_signature, "qe_identity_signature")?,
        })
    }

    /// Reads collateral from the raw PCS files of a collateral folder.
    pub fn from_pcs_files(files: &PcsFiles<'_>) -> Result<Self, VerifyError> {
        let (tcb_info, tcb_info_signature) =
            signed_object(files.tcb_info, &["tcbInfo"], PCS_FILE_NAMES.tcb_info)?;
        let (qe_identity, qe_identity_signature) = signed_object(
            files.qe_identity,
            &["enclaveIdentity", "qeIdentity"],
            PCS_FILE_NAMES.qe_identity,
        )?;
        let tcb_info_issuer_chain = certificates(
            files.tcb_info_issuer_chain,
            PCS_FILE_NAMES.tcb_info_issuer_chain,
        )?;
        let qe_identity_issuer_chain = match files.qe_identity_issuer_chain {
            Some(pem) => certificates(pem, PCS_FILE_NAMES.qe_identity_issuer_chain)?,
            None => tcb_info_issuer_chain.clone(),
        };
        Ok(Self {
            pck_crl_issuer_chain: certificates(
                files.pck_crl_issuer_chain,
                PCS_FILE_NAMES.pck_crl_issuer_chain,
            )?,
            root_ca_crl: crl_bytes(files.root_ca_crl, PCS_FILE_NAMES.root_ca_crl)?,
            pck_crl: crl_bytes(files.pck_crl, PCS_FILE_NAMES.pck_crl)?,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
        })
    }

    /// Writes the collateral in dcap-qvl's `QuoteCollateralV3` JSON layout, which
    /// [`Collateral::from_dcap_qvl_json`] reads back unchanged.
    pub fn to_dcap_qvl_json(&self) -> String {
        let chain = |certs: &[Vec<u8>]| {
            certs
                .iter()
                .map(|der| pem::encode(der, "CERTIFICATE"))
                .collect::<String>()
        };
        serde_json::json!({
            "pck_crl_issuer_chain": chain(&self.pck_crl_issuer_chain),
            "root_ca_crl": hex::encode(&self.root_ca_crl),
            "pck_crl": hex::encode(&self.pck_crl),
            "tcb_info_issuer_chain": chain(&self.tcb_info_issuer_chain),
            "tcb_info": self.tcb_info,
            "tcb_info_signature": hex::encode(&self.tcb_info_signature),
            "qe_identity_issuer_chain": chain(&self.qe_identity_issuer_chain),
            "qe_identity": self.qe_identity,
            "qe_identity_signature": hex::encode(&self.qe_identity_signature),
        })
        .to_string()
    }
}

/// Decodes PEM certificates, or concatenated DER certificates.
fn certificates(input: &[u8], context: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let certs = if input.first() == Some(&der::TAG_SEQUENCE) {
        der::split_sequences(input, context)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        pem::decode_all(input, "CERTIFICATE", context)?
    };
    if certs.is_empty() {
        return Err(VerifyError::malformed(format!(
            "{context} contains no certificate"
        )));
    }
    Ok(certs)
}

/// Decodes a CRL given as DER, PEM or hex text.
fn crl_bytes(input: &[u8], context: &str) -> Result<Vec<u8>, VerifyError> {
    if input.first() == Some(&der::TAG_SEQUENCE) {
        return Ok(input.to_vec());
    }
    let text = String::from_utf8_lossy(input);
    if text.contains("-----BEGIN X509 CRL-----") {
        let mut blocks = pem::decode_all(input, "X509 CRL", context)?;
        return match blocks.len() {
            1 => Ok(blocks.remove(0)),
            count => Err(VerifyError::malformed(format!(
                "{context} contains {count} PEM CRLs; expected one"
            ))),
        };
    }
    hex_field(text.trim(), context)
}

fn hex_field(value: &str, context: &str) -> Result<Vec<u8>, VerifyError> {
    hex::decode(value.trim())
        .map_err(|error| VerifyError::malformed(format!("{context} is not valid hex: {error}")))
}

/// Extracts the exact text of the signed object (the value of the first of `keys` present at
/// the top level) and the hex `signature` from a PCS response.
fn signed_object(
    input: &[u8],
    keys: &[&str],
    context: &str,
) -> Result<(String, Vec<u8>), VerifyError> {
    let text = std::str::from_utf8(input)
        .map_err(|_| VerifyError::malformed(format!("{context} is not UTF-8")))?;
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| VerifyError::malformed(format!("{context} is not valid JSON: {error}")))?;
    let signature = parsed
        .get("signature")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| VerifyError::malformed(format!("{context} has no \"signature\" string")))?;
    let signature = hex_field(signature, &format!("{context} signature"))?;
    for key in keys {
        if let Some(raw) = top_level_raw_value(text, key) {
            return Ok((raw.to_owned(), signature));
        }
    }
    Err(VerifyError::malformed(format!(
        "{context} has no top-level {:?} object",
        keys.first().copied().unwrap_or_default()
    )))
}

/// Finds the raw text of the value of `key` in the top-level object of valid JSON `text`.
/// The signature covers these exact bytes, so re-serializing the parsed value would not do.
fn top_level_raw_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut index = 0usize;
    // The start of the last string token seen at depth 1 and whether it was followed by ':'.
    let mut pending_key: Option<(usize, usize)> = None;
    let mut value_start: Option<usize> = None;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'"' => {
                let start = index;
                index += 1;
                while index < bytes.len() && bytes[index] != b'"' {
                    if bytes[index] == b'\\' {
                        index += 1;
                    }
                    index += 1;
                }
                if depth == 1 && value_start.is_none() {
                    pending_key = Some((start + 1, index));
                }
                if let Some(begin) = value_start
                    && depth == 1
                {
                    return text.get(begin..=index);
                }
            }
            b':' if depth == 1 => {
                if let Some((start, end)) = pending_key.take()
                    && text.get(start..end) == Some(key)
                {
                    let rest = &bytes[index + 1..];
                    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                    value_start = Some(index + 1 + skip);
                }
            }
            b'{' | b'[' => {
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if let Some(begin) = value_start
                    && depth == 1
                {
                    return text.get(begin..=index);
                }
            }
            b',' if depth == 1 => {
                if let Some(begin) = value_start {
                    return text.get(begin..index).map(str::trim_end);
                }
                pending_key = None;
            }
            _ => {}
        }
        index += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_value_keeps_exact_text() {
        let text = r#"{"signature":"ab","tcbInfo": {"id":"SGX","note":"a } \" {","levels":[{"x":1}]} ,"z":1}"#;
        assert_eq!(
            top_level_raw_value(text, "tcbInfo"),
            Some(r#"{"id":"SGX","note":"a } \" {","levels":[{"x":1}]}"#)
        );
        assert_eq!(top_level_raw_value(text, "signature"), Some("\"ab\""));
        assert_eq!(top_level_raw_value(text, "id"), None);
        assert_eq!(top_level_raw_value(text, "missing"), None);
    }

    #[test]
    fn signed_object_needs_signature() {
        let error = signed_object(
            br#"{"tcbInfo":{"id":"SGX"}}"#,
            &["tcbInfo"],
            "tcb_info.json",
        )
        .expect_err("no signature");
        assert!(error.message.contains("signature"), "{error}");
        let (object, signature) = signed_object(
            br#"{"tcbInfo":{"id":"SGX"},"signature":"0a0b"}"#,
            &["tcbInfo"],
            "f",
        )
        .expect("parses");
        assert_eq!(object, r#"{"id":"SGX"}"#);
        assert_eq!(signature, [0x0a, 0x0b]);
    }

    #[test]
    fn crl_accepts_der_pem_and_hex() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x00];
        assert_eq!(crl_bytes(&der, "crl").expect("DER"), der);
        assert_eq!(crl_bytes(b"3003020100\n", "crl").expect("hex"), der);
        let pem = pem::encode(&der, "X509 CRL");
        assert_eq!(crl_bytes(pem.as_bytes(), "crl").expect("PEM"), der);
        assert!(crl_bytes(b"not a crl", "crl").is_err());
    }
}
