//! One entry point for every evidence kind: verifies an [`Envelope`] with the verifier of its
//! kind.
//!
//! The node attestation server and `twid attest verify` call [`verify_envelope`]; it checks
//! signatures, chains, revocation and validity only. Binding ([`crate::binding::check`]) and
//! appraisal ([`crate::policy::Policy::check`]) are separate steps for the caller.

use crate::{
    Envelope, Kind, Reason, TrustAnchors, Verified, VerifyError, dcap, ias, nitro, snp, tpm,
};

/// Verifier inputs beside the envelope: trust anchors, DCAP collateral and certificates.
#[derive(Clone, Debug, Default)]
pub struct VerifyInputs {
    /// The trusted roots for the envelope's kind.
    pub anchors: TrustAnchors,
    /// DCAP collateral for the quote's FMSPC, used when the envelope carries none.
    pub dcap_collateral: Option<dcap::Collateral>,
    /// DER certificates the verifier has beside the attester's: the SEV-SNP ASK, ASVK and
    /// ARK from configuration, or the IAS report signing chain.
    pub extra_certificates: Vec<Vec<u8>>,
}

/// Verifies `envelope` at `now` (Unix seconds) with the verifier of its kind.
///
/// DCAP collateral comes from the envelope when it carries some, else from `inputs`. TPM
/// quotes are verified without an expected `extraData`: the caller checks the binding.
///
/// # Errors
/// Returns the verifier's [`VerifyError`], or [`crate::Reason::Malformed`] when the envelope
/// lacks a part its kind needs (the SEV-SNP VCEK or VLEK, the IAS signature) or when the
/// evidence is of another kind than the envelope names.
pub fn verify_envelope(
    envelope: &Envelope,
    inputs: &VerifyInputs,
    now: i64,
) -> Result<Verified, VerifyError> {
    let verified = match envelope.kind {
        Kind::SgxDcap | Kind::Tdx => verify_dcap(envelope, inputs, now)?,
        Kind::Snp => verify_snp(envelope, inputs, now)?,
        Kind::Nitro => nitro::verify(&envelope.evidence, &inputs.anchors, now)?,
        Kind::SgxIas => verify_ias(envelope, inputs, now)?,
        Kind::Tpm => verify_tpm(envelope, now)?,
    };
    if verified.kind != envelope.kind {
        return Err(VerifyError::malformed(format!(
            "the envelope names {} evidence, but the evidence is {}",
            envelope.kind, verified.kind
        )));
    }
    Ok(verified)
}

fn verify_dcap(
    envelope: &Envelope,
    inputs: &VerifyInputs,
    now: i64,
) -> Result<Verified, VerifyError> {
    let carried = envelope
        .collateral
        .as_deref()
        .map(dcap::Collateral::from_dcap_qvl_json)
        .transpose()?;
    let collateral = carried
        .as_ref()
        .or(inputs.dcap_collateral.as_ref())
        .ok_or_else(|| {
            VerifyError::new(
                Reason::Collateral,
                format!(
                    "no DCAP collateral for this {} quote: the envelope carries none and the \
                     verifier has none for its FMSPC; fetch the PCS collateral for the \
                     platform's FMSPC",
                    envelope.kind
                ),
            )
        })?;
    dcap::verify(&envelope.evidence, collateral, &inputs.anchors, now)
}

fn verify_snp(
    envelope: &Envelope,
    inputs: &VerifyInputs,
    now: i64,
) -> Result<Verified, VerifyError> {
    let Some((vek, carried_chain)) = envelope.certificates.split_first() else {
        return Err(VerifyError::malformed(
            "the SEV-SNP envelope carries no VCEK or VLEK certificate; the attester must \
             send it first in certificates",
        ));
    };
    let mut chain = carried_chain.to_vec();
    chain.extend(inputs.extra_certificates.iter().cloned());
    snp::verify(&envelope.evidence, vek, &chain, &inputs.anchors, now)
}

fn verify_ias(
    envelope: &Envelope,
    inputs: &VerifyInputs,
    now: i64,
) -> Result<Verified, VerifyError> {
    let signature = envelope.signature.as_deref().ok_or_else(|| {
        VerifyError::malformed(
            "the IAS envelope carries no report signature (X-IASReport-Signature)",
        )
    })?;
    let chain = if envelope.certificates.is_empty() {
        &inputs.extra_certificates
    } else {
        &envelope.certificates
    };
    ias::verify(&envelope.evidence, signature, chain, &inputs.anchors, now)
}

fn verify_tpm(envelope: &Envelope, now: i64) -> Result<Verified, VerifyError> {
    // verify_json hashes the evidence bytes as sent, like every other kind.
    tpm::verify_json(&envelope.evidence, None, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(envelope: &Envelope) -> (Reason, String) {
        let error = verify_envelope(envelope, &VerifyInputs::default(), 0).expect_err("reject");
        (error.reason, error.message)
    }

    #[test]
    fn dcap_without_collateral_rejected() {
        for kind in [Kind::SgxDcap, Kind::Tdx] {
            let (reason, message) = reason(&Envelope::new(kind, vec![0; 16]));
            assert_eq!(reason, Reason::Collateral, "{kind}");
            assert!(message.contains("no DCAP collateral"), "{message}");
        }
    }

    #[test]
    fn dcap_invalid_envelope_collateral() {
        let mut envelope = Envelope::new(Kind::Tdx, vec![0; 16]);
        envelope.collateral = Some(b"{}".to_vec());
        let (reason, message) = reason(&envelope);
        assert_eq!(reason, Reason::Malformed);
        assert!(message.contains("collateral"), "{message}");
    }

    #[test]
    fn snp_without_vek_rejected() {
        let (reason, message) = reason(&Envelope::new(Kind::Snp, vec![0; 1184]));
        assert_eq!(reason, Reason::Malformed);
        assert!(message.contains("VCEK or VLEK"), "{message}");
    }

    #[test]
    fn ias_without_signature_rejected() {
        let (reason, message) = reason(&Envelope::new(Kind::SgxIas, b"{}".to_vec()));
        assert_eq!(reason, Reason::Malformed);
        assert!(message.contains("X-IASReport-Signature"), "{message}");
    }

    #[test]
    fn garbage_evidence_is_malformed() {
        for kind in [Kind::Nitro, Kind::Tpm] {
            let (reason, _) = reason(&Envelope::new(kind, b"not evidence".to_vec()));
            assert_eq!(reason, Reason::Malformed, "{kind}");
        }
    }
}
