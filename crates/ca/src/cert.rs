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

/// Length of the time prefix of a serial number: milliseconds since the Unix epoch, big-endian.
const SERIAL_TIME_LEN: usize = 6;

/// Returns a 16-byte serial number, never all zero: the low 48 bits of `now` in milliseconds
/// since the Unix epoch (0 before the epoch), big-endian, followed by 80 bits from the CSPRNG.
///
/// Serials made in later milliseconds compare greater, so the issuance log's serial index
/// grows at its right-most pages instead of on a random page per certificate. The top bit
/// stays 0, and the DER INTEGER stays positive and 16 bytes long, until the year 6429. The 80
/// random bits exceed the 64 bits of CSPRNG output that the CA/Browser Forum Baseline
/// Requirements (section 7.1) ask of a serial number.
pub(crate) fn random_serial(now: SystemTime) -> Result<[u8; 16], CaError> {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    // Truncation keeps the low 48 bits.
    let millis = millis as u64;
    let mut serial = [0u8; 16];
    serial[..SERIAL_TIME_LEN].copy_from_slice(&millis.to_be_bytes()[8 - SERIAL_TIME_LEN..]);
    loop {
        aws_lc_rs::rand::fill(&mut serial[SERIAL_TIME_LEN..]).map_err(|_| CaError::Random)?;
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
    fn serials_sort_by_millisecond() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_000);
        let first = random_serial(now).unwrap();
        let second = random_serial(now + std::time::Duration::from_millis(1)).unwrap();
        assert!(first < second, "{first:02x?} then {second:02x?}");
        assert_eq!(
            first[..SERIAL_TIME_LEN],
            1_796_000_000_000u64.to_be_bytes()[2..]
        );
        assert_ne!(first[SERIAL_TIME_LEN..], second[SERIAL_TIME_LEN..]);
        assert_eq!(first[0] & 0x80, 0, "the top bit must stay 0");
    }

    #[test]
    fn serial_random_part_differs_within_millisecond() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_000);
        let first = random_serial(now).unwrap();
        let second = random_serial(now).unwrap();
        assert_eq!(first[..SERIAL_TIME_LEN], second[..SERIAL_TIME_LEN]);
        assert_ne!(first[SERIAL_TIME_LEN..], second[SERIAL_TIME_LEN..]);
    }

    #[test]
    fn serial_before_epoch_is_not_zero() {
        let serial = random_serial(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(serial[..SERIAL_TIME_LEN], [0; SERIAL_TIME_LEN]);
        assert!(serial.iter().any(|&b| b != 0));
    }

    #[test]
    fn validity_rejects_out_of_range_times() {
        assert!(validity_der(0, 253_402_300_799).is_ok());
        let err = validity_der(0, 253_402_300_800).unwrap_err();
        assert!(matches!(err, CaError::TimeOutOfRange(_)), "{err}");
    }
}
