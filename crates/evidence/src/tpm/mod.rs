//! TPM 2.0 quotes: a TPMS_ATTEST signed by an attestation key (AK), with the PCR values it
//! covers and optionally the TCG event log that produced them.
//!
//! The verifier checks the AK's signature over the TPMS_ATTEST, the qualifying data (nonce),
//! and that the given PCR values hash to the quoted `pcrDigest`. An event log, when present, is
//! replayed and must agree with every quoted PCR it extends. Whether the AK belongs to a
//! genuine TPM is decided at enrolment (credential activation against the EK), not here:
//! `ak_sha256` in the claims lets a policy pin the enrolled AK.

use std::collections::BTreeMap;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::signature::{self, RsaPssSaltLength, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::claims::TpmClaims;
use crate::roots::sha256;
use crate::{Claims, Kind, Reason, Verified, VerifyError};

mod event_log;
mod json;
mod wire;

pub use event_log::{EV_NO_ACTION, Event, EventLog, EventLogFormat, parse_event_log};
pub use wire::{
    Attest, EccCurve, HashAlg, KeyParams, PcrSelection, PublicKey, Signature, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE, TPMA_OBJECT_RESTRICTED, TPMA_OBJECT_SIGN, parse_attest, parse_public,
    parse_signature,
};

/// A TPM quote with everything needed to check it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuoteInput {
    /// The TPMS_ATTEST the TPM signed.
    pub attest: Vec<u8>,
    /// The TPMT_SIGNATURE over `attest`.
    pub signature: Vec<u8>,
    /// The AK as a TPMT_PUBLIC, a TPM2B_PUBLIC or a DER SubjectPublicKeyInfo.
    pub ak_public: Vec<u8>,
    /// PCR values of the quoted bank by index. Values of PCRs the quote does not select are
    /// ignored.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// A TCG PC Client event log, SHA-1 or crypto-agile format.
    pub event_log: Option<Vec<u8>>,
}

/// Verifies a quote. `expected_extra_data`, when given, must equal the quote's `extraData`
/// exactly. `now` is not used: TPM quotes carry no certificates or dated collateral.
///
/// `evidence_sha256` in the result is SHA-256 of the TPMS_ATTEST; [`verify_json`] hashes the
/// JSON evidence instead.
pub fn verify(
    input: &QuoteInput,
    expected_extra_data: Option<&[u8]>,
    now: i64,
) -> Result<Verified, VerifyError> {
    let _ = now;
    let attest = parse_attest(&input.attest)?;
    let signature = parse_signature(&input.signature)?;
    let key = parse_public(&input.ak_public)?;

    if let Some(attributes) = key.object_attributes {
        let required = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN;
        if attributes & required != required {
            return Err(VerifyError::policy(format!(
                "the AK's objectAttributes 0x{attributes:08x} lack restricted and sign, so the \
                 key could sign data the TPM did not generate"
            )));
        }
    }
    verify_signature(&key, &signature, &input.attest)?;

    if let Some(expected) = expected_extra_data
        && verify_slices_are_equal(expected, &attest.extra_data).is_err()
    {
        return Err(VerifyError::new(
            Reason::Freshness,
            format!(
                "nonce mismatch: the quote's extraData is {} bytes and differs from the expected \
                 {} bytes",
                attest.extra_data.len(),
                expected.len()
            ),
        ));
    }

    let (bank, selected) = quoted_bank(&attest)?;
    let pcrs = selected_values(input, bank, &selected)?;
    check_pcr_digest(&attest, &signature, bank, &pcrs)?;

    let replayed_pcrs = match &input.event_log {
        Some(log) => replay_against(log, bank, &pcrs)?,
        None => Vec::new(),
    };

    Ok(Verified {
        kind: Kind::Tpm,
        claims: Claims::Tpm(TpmClaims {
            pcr_bank: bank.name().to_owned(),
            pcrs,
            extra_data: attest.extra_data,
            pcr_digest: attest.pcr_digest,
            clock: attest.clock,
            reset_count: attest.reset_count,
            restart_count: attest.restart_count,
            safe: attest.safe,
            firmware_version: attest.firmware_version,
            ak_sha256: sha256(&key.spki_der),
            replayed_pcrs,
        }),
        tcb_status: None,
        advisory_ids: Vec::new(),
        collateral_issued_at: None,
        valid_until: None,
        evidence_sha256: sha256(&input.attest),
    })
}

/// Parses TPM evidence JSON (any layout [`QuoteInput::from_json`] accepts) and verifies it,
/// with `evidence_sha256` set to SHA-256 of `evidence` as passed in.
pub fn verify_json(
    evidence: &[u8],
    expected_extra_data: Option<&[u8]>,
    now: i64,
) -> Result<Verified, VerifyError> {
    let input = QuoteInput::from_json(evidence)?;
    let mut verified = verify(&input, expected_extra_data, now)?;
    verified.evidence_sha256 = sha256(evidence);
    Ok(verified)
}

/// Returns the one bank the quote selects and its PCR indexes in ascending order.
fn quoted_bank(attest: &Attest) -> Result<(HashAlg, Vec<u8>), VerifyError> {
    let mut bank = None;
    let mut selected = Vec::new();
    for selection in attest.pcr_selections.iter().filter(|s| !s.pcrs.is_empty()) {
        match bank {
            Some(existing) if existing != selection.bank => {
                return Err(VerifyError::malformed(format!(
                    "the quote selects PCRs from both the {} and {} banks; quotes over more \
                     than one bank are not supported",
                    HashAlg::name(existing),
                    selection.bank.name()
                )));
            }
            _ => bank = Some(selection.bank),
        }
        selected.extend_from_slice(&selection.pcrs);
    }
    selected.sort_unstable();
    selected.dedup();
    let bank = bank.ok_or_else(|| VerifyError::malformed("the quote selects no PCRs"))?;
    Ok((bank, selected))
}

fn selected_values(
    input: &QuoteInput,
    bank: HashAlg,
    selected: &[u8],
) -> Result<BTreeMap<u8, Vec<u8>>, VerifyError> {
    let mut pcrs = BTreeMap::new();
    for index in selected {
        let value = input.pcrs.get(index).ok_or_else(|| {
            VerifyError::new(
                Reason::Collateral,
                format!("PCR {index} is selected by the quote but missing from the PCR values"),
            )
        })?;
        if value.len() != bank.digest_len() {
            return Err(VerifyError::malformed(format!(
                "PCR {index} value is {} bytes; {} PCRs are {} bytes",
                value.len(),
                bank.name(),
                bank.digest_len()
            )));
        }
        pcrs.insert(*index, value.clone());
    }
    Ok(pcrs)
}

/// Recomputes `pcrDigest`: the hash of the selected PCR values concatenated in index order.
/// TPM2_Quote hashes with the signing scheme's hash, which for real AKs is also the bank's.
/// When the digest length shows otherwise, the bank's hash is used.
fn check_pcr_digest(
    attest: &Attest,
    signature: &Signature,
    bank: HashAlg,
    pcrs: &BTreeMap<u8, Vec<u8>>,
) -> Result<(), VerifyError> {
    let algorithm = [signature.hash(), bank]
        .into_iter()
        .find(|hash| hash.digest_len() == attest.pcr_digest.len())
        .ok_or_else(|| {
            VerifyError::malformed(format!(
                "the quote's pcrDigest is {} bytes, which matches neither the signature hash {} \
                 nor the {} bank",
                attest.pcr_digest.len(),
                signature.hash().name(),
                bank.name()
            ))
        })?;
    let values: Vec<&[u8]> = pcrs.values().map(Vec::as_slice).collect();
    let digest = algorithm.hash(&values);
    if digest != attest.pcr_digest {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "PCR values do not match the quoted digest: {} over PCRs {:?} is {}, the quote \
                 has {}",
                algorithm.name(),
                pcrs.keys().collect::<Vec<_>>(),
                hex::encode(&digest),
                hex::encode(&attest.pcr_digest)
            ),
        ));
    }
    Ok(())
}

/// Replays the event log and returns the quoted PCRs it reproduces. A quoted PCR the log
/// extends to a different value rejects the evidence.
fn replay_against(
    log: &[u8],
    bank: HashAlg,
    pcrs: &BTreeMap<u8, Vec<u8>>,
) -> Result<Vec<u8>, VerifyError> {
    let replayed = parse_event_log(log)?.replay(bank)?;
    let mut reproduced = Vec::new();
    for (index, quoted) in pcrs {
        let Some(value) = replayed.get(&u32::from(*index)) else {
            continue;
        };
        if value != quoted {
            return Err(VerifyError::new(
                Reason::Collateral,
                format!(
                    "event log replay gives PCR {index} = {}, but the quoted value is {}",
                    hex::encode(value),
                    hex::encode(quoted)
                ),
            ));
        }
        reproduced.push(*index);
    }
    Ok(reproduced)
}

/// Checks the AK's signature over the TPMS_ATTEST bytes.
fn verify_signature(
    key: &PublicKey,
    signature: &Signature,
    message: &[u8],
) -> Result<(), VerifyError> {
    let invalid = || {
        VerifyError::signature(format!(
            "the quote signature ({}) does not verify under the AK",
            describe(signature)
        ))
    };
    match (signature, &key.params) {
        (Signature::RsaSsa { hash, signature }, KeyParams::Rsa { modulus, exponent }) => {
            let parameters = match hash {
                HashAlg::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            let components = RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            };
            components
                .verify(parameters, message, signature)
                .map_err(|_| invalid())
        }
        (Signature::RsaPss { hash, signature }, KeyParams::Rsa { modulus, exponent }) => {
            let parameters = match hash {
                HashAlg::Sha1 => {
                    return Err(VerifyError::malformed(
                        "RSAPSS quote signatures with SHA-1 are not supported",
                    ));
                }
                HashAlg::Sha256 => signature::RSA_PSS_2048_8192_SHA256,
                HashAlg::Sha384 => signature::RSA_PSS_2048_8192_SHA384,
                HashAlg::Sha512 => signature::RSA_PSS_2048_8192_SHA512,
            };
            let components = RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            };
            // TPMs use either a salt as long as the digest (FIPS 186-4) or the maximum salt
            // the modulus allows (older TPM library revisions), so both are accepted.
            if components.verify(&parameters, message, signature).is_ok() {
                return Ok(());
            }
            let with_max_salt = parameters.with_pss_salt_length(RsaPssSaltLength::Max);
            components
                .verify(&with_max_salt, message, signature)
                .map_err(|_| invalid())
        }
        (Signature::Ecdsa { hash, r, s }, KeyParams::Ecc { curve, x, y }) => {
            let algorithm = match (curve, hash) {
                (EccCurve::P256, HashAlg::Sha1) => &signature::ECDSA_P256_SHA1_ASN1,
                (EccCurve::P256, HashAlg::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (EccCurve::P256, HashAlg::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (EccCurve::P256, HashAlg::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
                (EccCurve::P384, HashAlg::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (EccCurve::P384, HashAlg::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                (EccCurve::P384, HashAlg::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
                (EccCurve::P384, HashAlg::Sha1) => {
                    return Err(VerifyError::malformed(
                        "ECDSA P-384 quote signatures with SHA-1 are not supported",
                    ));
                }
            };
            let point = [&[0x04][..], x, y].concat();
            let der_signature =
                wire::der(0x30, &[wire::der_integer(r), wire::der_integer(s)].concat());
            UnparsedPublicKey::new(algorithm, &point)
                .verify(message, &der_signature)
                .map_err(|_| invalid())
        }
        _ => Err(VerifyError::signature(format!(
            "the quote signature ({}) does not fit the AK's key type ({})",
            describe(signature),
            match key.params {
                KeyParams::Rsa { .. } => "RSA",
                KeyParams::Ecc { .. } => "ECC",
            }
        ))),
    }
}

fn describe(signature: &Signature) -> String {
    match signature {
        Signature::RsaSsa { hash, .. } => format!("RSASSA-PKCS1-v1_5 with {}", hash.name()),
        Signature::RsaPss { hash, .. } => format!("RSASSA-PSS with {}", hash.name()),
        Signature::Ecdsa { hash, .. } => format!("ECDSA with {}", hash.name()),
    }
}
