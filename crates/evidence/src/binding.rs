//! The binding rule between a challenge and the key that evidence vouches for.
//!
//! The attester puts `SHA-512(nonce || public key)` into the evidence's report data (SGX, TDX
//! and SEV-SNP report data, Nitro `user_data`). A TPM gets the SHA-256 of that value as its
//! `extraData` instead, because a TPM's qualifying data contains at most one digest of its largest
//! hash algorithm, and many TPMs implement nothing larger than SHA-256 or SHA-384. The verifier
//! recomputes the value from
//! the nonce it issued and the public key of the credential it is about to sign, so evidence
//! cannot be replayed under a new nonce or reused for another key.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, SHA512, digest};

use crate::{Reason, Verified, VerifyError};

/// Length of the binding value: a SHA-512 digest.
pub const BINDING_LEN: usize = 64;

/// Computes the report data an attester must bind: SHA-512 over the nonce followed by the DER
/// SubjectPublicKeyInfo of the key.
pub fn report_data(nonce: &[u8], public_key_spki_der: &[u8]) -> [u8; BINDING_LEN] {
    let mut input = Vec::with_capacity(nonce.len() + public_key_spki_der.len());
    input.extend_from_slice(nonce);
    input.extend_from_slice(public_key_spki_der);
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(digest(&SHA512, &input).as_ref());
    out
}

/// Derives a TPM quote's qualifying data from the report data: its SHA-256, which every TPM
/// 2.0 accepts.
pub fn tpm_qualifying_data(report_data: &[u8; BINDING_LEN]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, report_data).as_ref());
    out
}

/// Checks that verified evidence binds `nonce` and the key whose DER SubjectPublicKeyInfo is
/// `public_key_spki_der`.
pub fn check(
    verified: &Verified,
    nonce: &[u8],
    public_key_spki_der: &[u8],
) -> Result<(), VerifyError> {
    let report_data = report_data(nonce, public_key_spki_der);
    let tpm_data;
    let expected: &[u8] = if verified.kind == crate::Kind::Tpm {
        tpm_data = tpm_qualifying_data(&report_data);
        &tpm_data
    } else {
        &report_data
    };
    let bound = verified.bound_data().ok_or_else(|| {
        VerifyError::new(
            Reason::Binding,
            format!(
                "{} evidence carries no data that binds a nonce and key",
                verified.kind
            ),
        )
    })?;
    let bound = bound.get(..BINDING_LEN).unwrap_or(bound);
    verify_slices_are_equal(bound, expected).map_err(|_| {
        VerifyError::new(
            Reason::Binding,
            "the evidence's report data is not SHA-512 of the issued nonce and this public key; \
             the nonce may be old or the evidence made for another key",
        )
    })
}
