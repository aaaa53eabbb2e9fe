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
