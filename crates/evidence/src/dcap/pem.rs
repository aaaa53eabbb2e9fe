//! PEM decoding for certificate chains and CRLs (RFC 7468, strict base64 inside each block).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::VerifyError;

/// Decodes every `-----BEGIN {label}-----` block in `input`, in order. Text outside the blocks
/// is ignored, so comments and trailing NUL bytes are harmless.
pub(crate) fn decode_all(
    input: &[u8],
    label: &str,
    context: &str,
) -> Result<Vec<Vec<u8>>, VerifyError> {
    let text = String::from_utf8_lossy(input);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find(&begin) {
        let after_begin = &rest[start + begin.len()..];
        let stop = after_begin.find(&end).ok_or_else(|| {
            VerifyError::malformed(format!("{context}: PEM block {label} has no END line"))
        })?;
        let body: String = after_begin[..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD.decode(body.as_bytes()).map_err(|error| {
            VerifyError::malformed(format!(
                "{context}: invalid base64 in PEM block {label}: {error}"
            ))
        })?;
        out.push(der);
        rest = &after_begin[stop + end.len()..];
    }
    Ok(out)
}

/// Encodes DER bytes as one PEM block with 64-character lines.
pub(crate) fn encode(der: &[u8], label: &str) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
