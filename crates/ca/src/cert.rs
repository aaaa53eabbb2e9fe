//! Certificate fields shared by CA and leaf certificates, and readers for issued certificates.

use std::time::SystemTime;

use aws_lc_rs::digest::{SHA256, digest};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::der::{DerWriter, TAG_CONTEXT_0, TAG_SEQUENCE};
use crate::timestamp::{from_unix_seconds, write_x509_time};
use crate::{CaError, PrivateKey};

/// How far `notBefore` lies before the signing time, so that verifiers whose clocks run a
/// little behind the CA's accept a fresh certificate. SPIRE uses the same 10 seconds.
pub(crate) const NOT_BEFORE_BACKDATE_SECONDS: i64 = 10;

/// Length of a subject or authority key identifier.
pub(crate) const KEY_ID_LEN: usize = 20;

/// Returns a key identifier per RFC 7093 section 2 method 1: the leftmost 160 bits of the
/// SHA-256 hash of the subjectPublicKey BIT STRING content.
pub(crate) fn key_identifier(public_key_bits: &[u8]) -> [u8; KEY_ID_LEN] {
    let hash = digest(&SHA256, public_key_bits);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
    id
}

/// Returns 128 random bits for a serial number, never all zero.
pub(crate) fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    loop {
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| CaError::Random)?;
        if serial.iter().any(|&b| b != 0) {
            return Ok(serial);
        }
    }
}

/// Encodes a Validity SEQUENCE, rejecting times X.509 cannot hold.
pub(crate) fn validity_der(not_before: i64, not_after: i64) -> Result<Vec<u8>, CaError> {
    let mut writer = DerWriter::with_capacity(36);
    let mut in_range = true;
    writer.nested(TAG_SEQUENCE, |w| {
        for time in [not_before, not_after] {
            in_range = in_range && write_x509_time(w, time).is_some();
        }
    });
    if !in_range {
        let bad = [not_before, not_after]
            .into_iter()
            .find(|&t| write_x509_time(&mut DerWriter::with_capacity(20), t).is_none())
            .unwrap_or(not_after);
        return Err(CaError::TimeOutOfRange(from_unix_seconds(bad)));
    }
    Ok(writer.into_vec())
}

/// Writes the fields every TBSCertificate here starts with: version v3, serial number,
/// signature algorithm, issuer and validity.
pub(crate) fn write_tbs_header(
    writer: &mut DerWriter,
    serial: &[u8],
    signer: &PrivateKey,
    issuer_name: &[u8],
    validity: &[u8],
) {
    writer.raw(&[TAG_CONTEXT_0, 0x03, 0x02, 0x01, 0x02]);
    writer.unsigned_integer(serial);
    writer.raw(signer.signature_algorithm_der());
    writer.raw(issuer_name);
    writer.raw(validity);
}

/// Builds a signed certificate: `write_tbs` appends the complete TBSCertificate, which is
/// then signed with `signer`.
pub(crate) fn sign_certificate(
    signer: &PrivateKey,
    capacity: usize,
    write_tbs: impl FnOnce(&mut DerWriter),
) -> Result<CertificateDer<'static>, CaError> {
    let mut writer = DerWriter::with_capacity(capacity);
    let mut result = Ok(());
    writer.nested(TAG_SEQUENCE, |w| {
        let tbs_start = w.len();
        write_tbs(w);
        match signer.sign_x509(w.bytes_from(tbs_start)) {
            Ok(signature) => {
                w.raw(signer.signature_algorithm_der());
                w.bit_string(&signature);
            }
            Err(error) => result = Err(error),
        }
    });
    result.map(|()| CertificateDer::from(writer.into_vec()))
}

/// Parses one DER certificate with no trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| CaError::InvalidCertificate(format!("malformed DER: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCertificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Returns the end of a certificate's validity period.
///
/// # Errors
/// Returns [`CaError::InvalidCertificate`] when the DER is not one certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    let parsed = parse_certificate(cert)?;
    Ok(from_unix_seconds(parsed.validity().not_after.timestamp()))
}

/// Returns a certificate's serial number as lowercase hex of the DER INTEGER content octets.
///
/// The hex keeps the leading `00` octet that DER adds when the first magnitude bit is set,
/// so serial 0x80 gives `"0080"`. DER allows no other leading zeros. The node API stores
/// agent SVID serials in this form.
///
/// # Errors
/// Returns [`CaError::InvalidCertificate`] when the DER is not one certificate.
pub fn serial_hex(cert: &CertificateDer<'_>) -> Result<String, CaError> {
    let parsed = parse_certificate(cert)?;
    Ok(hex::encode(parsed.raw_serial()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_rejects_out_of_range_times() {
        assert!(validity_der(0, 253_402_300_799).is_ok());
        let err = validity_der(0, 253_402_300_800).unwrap_err();
        assert!(matches!(err, CaError::TimeOutOfRange(_)), "{err}");
    }
}
