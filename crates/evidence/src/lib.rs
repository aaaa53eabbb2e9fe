//! Verifiers for hardware-signed evidence: Intel SGX and TDX DCAP quotes, SGX EPID reports from
//! the Intel Attestation Service, AMD SEV-SNP reports, AWS Nitro Enclaves attestation documents
//! and TPM 2.0 quotes.
//!
//! In the IETF RATS architecture (RFC 9334) this crate is the Verifier: it turns Evidence plus
//! Endorsements (certificate chains, CRLs, TCB info) into typed claims, a [`Verified`]. A
//! [`policy::Policy`] then decides whether those claims are acceptable. Nothing here reads files,
//! opens sockets or reads the clock: every caller passes the bytes, the trust anchors and `now`.

#![forbid(unsafe_code)]

pub mod binding;
pub mod claims;
pub mod dcap;
pub mod envelope;
mod error;
pub mod ias;
pub mod nitro;
pub mod policy;
pub mod result;
pub mod roots;
pub mod snp;
pub mod svid_claims;
pub mod tpm;
pub mod verify;

pub use claims::{Claims, Kind, TcbStatus, Verified};
pub use envelope::Envelope;
pub use error::{Reason, VerifyError};
pub use roots::TrustAnchors;

/// Formats Unix seconds as RFC 3339 in UTC for messages, or as the bare number when out of
/// range.
pub fn utc_text(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_formats_and_falls_back() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(utc_text(i64::MAX), i64::MAX.to_string());
    }
}
