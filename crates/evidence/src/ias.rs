//! SGX EPID attestation reports from the Intel Attestation Service (IAS, API v3 and v4).
//!
//! IAS checks an EPID quote and returns a JSON report body, signed with
//! RSASSA-PKCS1-v1_5/SHA-256 by the Attestation Report Signing certificate. The signature
//! travels in the `X-IASReport-Signature` header and the signing chain in
//! `X-IASReport-Signing-Certificate`. The verifier checks that signature and chain, maps
//! `isvEnclaveQuoteStatus` onto a [`TcbStatus`], and returns the enclave report from the quote
//! body as [`SgxClaims`].

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use time::PrimitiveDateTime;
use time::macros::format_description;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::claims::SgxClaims;
use crate::roots::sha256;
use crate::{Claims, Kind, Reason, TcbStatus, TrustAnchors, Verified, VerifyError};

/// Upper bound on a report body. Real bodies are about 1 KiB, or a few KiB with a
/// `platformInfoBlob`.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Length of `isvEnclaveQuoteBody` once decoded: an `sgx_quote_t` without its signature fields.
pub const QUOTE_BODY_LEN: usize = 432;

/// Maximum number of certificates accepted in a signing chain.
const MAX_CHAIN_LEN: usize = 4;

/// How far the report timestamp may lie ahead of `now`, to absorb clock skew between IAS and
/// the verifier.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// An IAS attestation verification report, parsed but not verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub id: String,
    /// The timestamp as IAS wrote it: UTC with no zone designator, with fractional seconds.
    pub timestamp: String,
    /// `timestamp` in Unix seconds, with the fraction dropped.
    pub timestamp_unix: i64,
    pub version: u64,
    pub isv_enclave_quote_status: String,
    pub quote_body: QuoteBody,
    pub advisory_ids: Vec<String>,
    pub advisory_url: Option<String>,
    /// Hex TLV blob that IAS adds when the platform needs an update.
    pub platform_info_blob: Option<String>,
    pub revocation_reason: Option<u64>,
    pub pse_manifest_status: Option<String>,
    pub pse_manifest_hash: Option<String>,
    /// The nonce the relying party sent to IAS, echoed back.
    pub nonce: Option<String>,
    /// The EPID pseudonym, present for linkable quotes.
    pub epid_pseudonym: Option<Vec<u8>>,
}

/// The body of an EPID quote (`sgx_quote_t` without `signature_len` and `signature`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteBody {
    pub version: u16,
    /// 0 for unlinkable and 1 for linkable EPID signatures.
    pub sign_type: u16,
    pub epid_group_id: [u8; 4],
    pub qe_svn: u16,
    pub pce_svn: u16,
    pub xeid: u32,
    pub basename: [u8; 32],
    pub report: ReportBody,
}

/// An SGX enclave report body (`sgx_report_body_t`, 384 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBody {
    pub cpu_svn: [u8; 16],
    pub misc_select: u32,
    pub isv_ext_prod_id: [u8; 16],
    pub attributes: [u8; 16],
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
    pub config_id: [u8; 64],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub config_svn: u16,
    pub isv_family_id: [u8; 16],
    pub report_data: [u8; 64],
}

impl ReportBody {
    /// ATTRIBUTES.FLAGS bit 1: the enclave runs in debug mode.
    pub fn debug(&self) -> bool {
        self.attributes[0] & 0x02 != 0
    }
}

/// The report body's JSON fields, named as IAS names them.
#[derive(Deserialize)]
struct RawReport {
    id: String,
    timestamp: String,
    version: u64,
    #[serde(rename = "isvEnclaveQuoteStatus")]
    isv_enclave_quote_status: String,
    #[serde(rename = "isvEnclaveQuoteBody")]
    isv_enclave_quote_body: String,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
    #[serde(rename = "advisoryURL", default)]
    advisory_url: Option<String>,
    #[serde(rename = "platformInfoBlob", default)]
    platform_info_blob: Option<String>,
    #[serde(rename = "revocationReason", default)]
    revocation_reason: Option<u64>,
    #[serde(rename = "pseManifestStatus", default)]
    pse_manifest_status: Option<String>,
    #[serde(rename = "pseManifestHash", default)]
    pse_manifest_hash: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(rename = "epidPseudonym", default)]
    epid_pseudonym: Option<String>,
}

/// Parses a report body without checking its signature. Never panics.
pub fn parse_report(body: &[u8]) -> Result<Report, VerifyError> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(VerifyError::malformed(format!(
            "IAS report body is {} bytes; the maximum is {MAX_REPORT_BYTES}",
            body.len()
        )));
    }
    let raw: RawReport = serde_json::from_slice(body)
        .map_err(|error| VerifyError::malformed(format!("invalid IAS report body: {error}")))?;

    if !matches!(raw.version, 3 | 4) {
        return Err(VerifyError::malformed(format!(
            "IAS report version {} is not supported; expected 3 or 4",
            raw.version
        )));
    }
    let timestamp_unix = parse_timestamp(&raw.timestamp)?;
    let quote = STANDARD
        .decode(raw.isv_enclave_quote_body.as_bytes())
        .map_err(|error| {
            VerifyError::malformed(format!("isvEnclaveQuoteBody is not valid base64: {error}"))
        })?;
    let quote_body = parse_quote_body(&quote)?;
    let epid_pseudonym = match raw.epid_pseudonym {
        Some(text) => Some(STANDARD.decode(text.as_bytes()).map_err(|error| {
            VerifyError::malformed(format!("epidPseudonym is not valid base64: {error}"))
        })?),
        None => None,
    };

    Ok(Report {
        id: raw.id,
        timestamp: raw.timestamp,
        timestamp_unix,
        version: raw.version,
        isv_enclave_quote_status: raw.isv_enclave_quote_status,
        quote_body,
        advisory_ids: raw.advisory_ids,
        advisory_url: raw.advisory_url,
        platform_info_blob: raw.platform_info_blob,
        revocation_reason: raw.revocation_reason,
        pse_manifest_status: raw.pse_manifest_status,
        pse_manifest_hash: raw.pse_manifest_hash,
        nonce: raw.nonce,
        epid_pseudonym,
    })
}

/// Parses an IAS timestamp such as `2018-08-24T00:15:38.012200` (UTC, no zone designator) into
/// Unix seconds, dropping the fraction.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    let invalid = || {
        VerifyError::malformed(format!(
            "IAS report timestamp {text:?} is not of the form YYYY-MM-DDThh:mm:ss[.ffffff]"
        ))
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    if fraction.len() > 9 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let parsed = PrimitiveDateTime::parse(whole, &format).map_err(|_| invalid())?;
    Ok(parsed.assume_utc().unix_timestamp())
}

/// Decodes the 432-byte `sgx_quote_t` body.
fn parse_quote_body(quote: &[u8]) -> Result<QuoteBody, VerifyError> {
    let quote: &[u8; QUOTE_BODY_LEN] = quote.try_into().map_err(|_| {
        VerifyError::malformed(format!(
            "isvEnclaveQuoteBody is {} bytes once decoded; expected {QUOTE_BODY_LEN}",
            quote.len()
        ))
    })?;
    let report = &quote[48..];
    Ok(QuoteBody {
        version: le16(quote, 0),
        sign_type: le16(quote, 2),
        epid_group_id: array(quote, 4),
        qe_svn: le16(quote, 8),
        pce_svn: le16(quote, 10),
        xeid: u32::from_le_bytes(array(quote, 12)),
        basename: array(quote, 16),
        report: ReportBody {
            cpu_svn: array(report, 0),
            misc_select: u32::from_le_bytes(array(report, 16)),
            isv_ext_prod_id: array(report, 32),
            attributes: array(report, 48),
            mr_enclave: array(report, 64),
            mr_signer: array(report, 128),
            config_id: array(report, 192),
            isv_prod_id: le16(report, 256),
            isv_svn: le16(report, 258),
            config_svn: le16(report, 260),
            isv_family_id: array(report, 304),
            report_data: array(report, 320),
        },
    })
}

/// Copies `N` bytes at `offset`. Callers pass offsets inside the fixed-size quote, and a
/// short slice yields zeros rather than a panic.
fn array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(source) = bytes.get(offset..offset + N) {
        out.copy_from_slice(source);
    }
    out
}

fn le16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(array(bytes, offset))
}

/// Verifies an IAS report: the signing chain up to a root in `anchors`, the validity of every
/// certificate at `now`, the signature over the exact `body` bytes, the quote status and the
/// report timestamp, in that order.
///
/// `signature` is the raw RSA signature (256, 384 or 512 bytes) or the base64 text of the
/// `X-IASReport-Signature` header. `signing_chain_der` starts with the signing certificate; the
/// root may be left out, and then it must be one of `anchors.certificates()`.
pub fn verify(
    body: &[u8],
    signature: &[u8],
    signing_chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<Verified, VerifyError> {
    // The signature covers the exact bytes, so it is checked before the body is parsed.
    let signature = decode_signature(signature)?;

    let signing_der = signing_chain_der.first().ok_or_else(|| {
        VerifyError::chain(
            "the IAS report signing chain is empty; pass the certificates of the \
                 X-IASReport-Signing-Certificate header",
        )
    })?;
    let valid_until = verify_chain(signing_chain_der, anchors, now)?;

    let (_, signing_cert) = X509Certificate::from_der(signing_der).map_err(|error| {
        VerifyError::malformed(format!("invalid IAS report signing certificate: {error}"))
    })?;
    let key = UnparsedPublicKey::new(
        &RSA_PKCS1_2048_8192_SHA256,
        signing_cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(body, &signature).map_err(|_| {
        VerifyError::signature(format!(
            "IAS report signature does not verify under the key of {}",
            describe(&signing_cert)
        ))
    })?;

    let report = parse_report(body)?;
    let tcb_status = map_status(&report.isv_enclave_quote_status)?;

    if report.timestamp_unix > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(VerifyError::new(
            Reason::Freshness,
            format!(
                "IAS report timestamp {} is more than {MAX_CLOCK_SKEW_SECS} s after now {}",
                report.timestamp,
                crate::utc_text(now)
            ),
        ));
    }

    let enclave = &report.quote_body.report;
    Ok(Verified {
        kind: Kind::SgxIas,
        claims: Claims::Sgx(SgxClaims {
            mr_enclave: enclave.mr_enclave,
            mr_signer: enclave.mr_signer,
            isv_prod_id: enclave.isv_prod_id,
            isv_svn: enclave.isv_svn,
            attributes: enclave.attributes,
            cpu_svn: enclave.cpu_svn,
            report_data: enclave.report_data,
            debug: enclave.debug(),
            platform: None,
        }),
        tcb_status: Some(tcb_status),
        advisory_ids: report.advisory_ids,
        collateral_issued_at: Some(report.timestamp_unix),
        valid_until: Some(valid_until),
        evidence_sha256: sha256(body),
    })
}

/// Accepts the signature raw or as the base64 header text. Raw RSA signatures have the length of
/// a 2048-, 3072- or 4096-bit modulus; base64 text of such a signature never has those lengths.
fn decode_signature(signature: &[u8]) -> Result<Vec<u8>, VerifyError> {
    if matches!(signature.len(), 256 | 384 | 512) {
        return Ok(signature.to_vec());
    }
    let text = signature.trim_ascii();
    if text.len() > 1024 {
        return Err(VerifyError::malformed(format!(
            "IAS report signature is {} bytes; expected a raw RSA signature or its base64 text",
            signature.len()
        )));
    }
    let decoded = STANDARD.decode(text).map_err(|error| {
        VerifyError::malformed(format!(
            "IAS report signature is neither a raw RSA signature (256, 384 or 512 bytes) \
             nor valid base64: {error}"
        ))
    })?;
    if !matches!(decoded.len(), 256 | 384 | 512) {
        return Err(VerifyError::malformed(format!(
            "IAS report signature is {} bytes once decoded; expected 256, 384 or 512",
            decoded.len()
        )));
    }
    Ok(decoded)
}

/// Maps `isvEnclaveQuoteStatus` onto a TCB status, or rejects the report.
fn map_status(status: &str) -> Result<TcbStatus, VerifyError> {
    match status {
        "OK" => Ok(TcbStatus::UpToDate),
        "SW_HARDENING_NEEDED" => Ok(TcbStatus::SWHardeningNeeded),
        "CONFIGURATION_NEEDED" => Ok(TcbStatus::ConfigurationNeeded),
        "CONFIGURATION_AND_SW_HARDENING_NEEDED" => Ok(TcbStatus::ConfigurationAndSWHardeningNeeded),
        "GROUP_OUT_OF_DATE" => Ok(TcbStatus::OutOfDate),
        "GROUP_REVOKED" | "KEY_REVOKED" | "SIGNATURE_REVOKED" => Err(VerifyError::new(
            Reason::Revoked,
            format!(
                "IAS reported isvEnclaveQuoteStatus {status}: the EPID key or group is revoked"
            ),
        )),
        "SIGNATURE_INVALID" => Err(VerifyError::signature(
            "IAS reported isvEnclaveQuoteStatus SIGNATURE_INVALID: the EPID signature over the \
             quote is invalid",
        )),
        other => Err(VerifyError::malformed(format!(
            "unknown or unusable isvEnclaveQuoteStatus {other:?}"
        ))),
    }
}

/// Checks the signing chain and returns the earliest notAfter of the certificates used,
/// including a root taken from `anchors`.
fn verify_chain(
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<i64, VerifyError> {
    if chain_der.len() > MAX_CHAIN_LEN {
        return Err(VerifyError::chain(format!(
            "the IAS report signing chain has {} certificates; the maximum is {MAX_CHAIN_LEN}",
            chain_der.len()
        )));
    }
    let mut chain = Vec::with_capacity(chain_der.len());
    for (index, der) in chain_der.iter().enumerate() {
        chain.push(parse_certificate(der, index)?);
    }
    let mut valid_until = i64::MAX;
    for cert in &chain {
        valid_until = valid_until.min(check_validity(cert, now)?);
    }
    for pair in chain.windows(2) {
        let [child, issuer] = pair else { continue };
        check_issued_by(child, issuer)?;
    }

    let (Some(last), Some(last_der)) = (chain.last(), chain_der.last()) else {
        return Err(VerifyError::chain("the IAS report signing chain is empty"));
    };
    if is_self_signed(last) {
        if !anchors.contains(last_der) {
            return Err(VerifyError::chain(format!(
                "the IAS report signing chain ends at {}, which is not a trusted root",
                describe(last)
            )));
        }
        return Ok(valid_until);
    }
    for root_der in anchors.certificates() {
        let Ok((_, root)) = X509Certificate::from_der(root_der) else {
            continue;
        };
        if root.subject().as_raw() != last.issuer().as_raw() {
            continue;
        }
        if check_issued_by(last, &root).is_ok() {
            valid_until = valid_until.min(check_validity(&root, now)?);
            return Ok(valid_until);
        }
    }
    // Roots pinned by fingerprint only (the production default) can vouch only for a chain
    // that carries the root itself, as IAS's X-IASReport-Signing-Certificate header does.
    Err(VerifyError::chain(format!(
        "{} is not signed by any trusted root certificate (issuer {}); include the Intel SGX \
         Attestation Report Signing CA in the chain, as IAS sends it in the \
         X-IASReport-Signing-Certificate header, or trust that CA as a root certificate file",
        describe(last),
        last.issuer()
    )))
}

fn parse_certificate(der: &[u8], index: usize) -> Result<X509Certificate<'_>, VerifyError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|error| {
        VerifyError::malformed(format!(
            "certificate {index} of the IAS report signing chain is invalid: {error}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(VerifyError::malformed(format!(
            "certificate {index} of the IAS report signing chain has {} trailing bytes",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Checks notBefore <= now <= notAfter and returns notAfter.
fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<i64, VerifyError> {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(VerifyError::expired(format!(
            "certificate {} notBefore {} is after now {}",
            describe(cert),
            crate::utc_text(not_before),
            crate::utc_text(now)
        )));
    }
    if now > not_after {
        return Err(VerifyError::expired(format!(
            "certificate {} notAfter {} is before now {}",
            describe(cert),
            crate::utc_text(not_after),
            crate::utc_text(now)
        )));
    }
    Ok(not_after)
}

/// Checks that `issuer` is a CA whose key signed `child`.
fn check_issued_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), VerifyError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(VerifyError::chain(format!(
            "{} names issuer {}, but the next certificate is {}",
            describe(child),
            child.issuer(),
            issuer.subject()
        )));
    }
    let is_ca = matches!(issuer.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca);
    if !is_ca {
        return Err(VerifyError::chain(format!(
            "{} signs {} but is not a CA certificate",
            describe(issuer),
            describe(child)
        )));
    }
    child
        .verify_signature(Some(issuer.public_key()))
        .map_err(|error| {
            VerifyError::signature(format!(
                "signature of {} by {} is invalid: {error}",
                describe(child),
                describe(issuer)
            ))
        })
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// Names a certificate by its subject CN, or the whole subject when it has no CN.
fn describe(cert: &X509Certificate<'_>) -> String {
    match cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        Some(cn) => format!("\"{cn}\""),
        None => format!("\"{}\"", cert.subject()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_without_fraction_parses() {
        assert_eq!(parse_timestamp("2018-08-24T00:15:38"), Ok(1535069738));
    }

    #[test]
    fn timestamp_with_fraction_truncates() {
        assert_eq!(
            parse_timestamp("2018-08-24T00:15:38.999999"),
            Ok(1535069738)
        );
    }

    #[test]
    fn timestamp_with_zone_rejected() {
        let error = parse_timestamp("2018-08-24T00:15:38Z").expect_err("zone");
        assert_eq!(error.reason, Reason::Malformed);
    }

    #[test]
    fn short_quote_body_rejected() {
        let error = parse_quote_body(&[0u8; 431]).expect_err("short");
        assert!(error.message.contains("431 bytes"), "{error}");
    }

    #[test]
    fn unknown_status_is_malformed() {
        let error = map_status("SIGRL_VERSION_MISMATCH").expect_err("status");
        assert_eq!(error.reason, Reason::Malformed);
    }
}
