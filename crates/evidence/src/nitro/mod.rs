//! AWS Nitro Enclaves attestation documents: a COSE_Sign1 signed with ES384 by a short-lived
//! certificate that chains, through the document's `cabundle`, to the AWS Nitro Enclaves root.

mod chain;
mod document;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};

use crate::claims::NitroClaims;
use crate::roots::{TrustAnchors, sha256};
use crate::{Claims, Kind, Verified, VerifyError};

pub use document::{Document, MAX_CABUNDLE_LEN, MAX_PCRS, MAX_USER_FIELD_LEN, parse_document};

/// The COSE algorithm ES384 (ECDSA with P-384 and SHA-384), the only one the NSM uses.
pub const ALG_ES384: i64 = -35;

/// Verifies an attestation document. The protected header must name ES384, and the chain must
/// run from `certificate` through `cabundle` to a self-signed root pinned in `anchors`. Every
/// certificate must be valid at `now`, and the signature over the COSE Sig_structure must verify
/// under `certificate`'s key.
pub fn verify(document: &[u8], anchors: &TrustAnchors, now: i64) -> Result<Verified, VerifyError> {
    let parsed = parse_document(document)?;
    if parsed.algorithm != Some(ALG_ES384) {
        return Err(VerifyError::malformed(format!(
            "Nitro document protected header alg is {}; expected ES384 ({ALG_ES384})",
            parsed
                .algorithm
                .map_or_else(|| "absent".to_owned(), |alg| alg.to_string())
        )));
    }
    let chain = chain::verify_chain(&parsed.certificate, &parsed.cabundle, anchors, now)?;

    if parsed.signature.len() != 96 {
        return Err(VerifyError::signature(format!(
            "Nitro document signature is {} bytes; ES384 signatures are 96 (r || s)",
            parsed.signature.len()
        )));
    }
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &chain.leaf_key)
        .verify(
            &sig_structure(&parsed.protected, &parsed.payload),
            &parsed.signature,
        )
        .map_err(|_| {
            VerifyError::signature(format!(
                "Nitro document COSE_Sign1 signature is invalid under the key of {}",
                chain.leaf_cn
            ))
        })?;

    // The NSM reports PCR0 as zero for an enclave started in debug mode. A document without
    // PCR0 cannot show it is not one, so it counts as debug too.
    let debug = parsed
        .pcrs
        .get(&0)
        .is_none_or(|pcr0| pcr0.iter().all(|byte| *byte == 0));
    let claims = NitroClaims {
        module_id: parsed.module_id,
        digest: parsed.digest,
        timestamp_ms: parsed.timestamp,
        pcrs: parsed.pcrs,
        public_key: parsed.public_key,
        user_data: parsed.user_data,
        nonce: parsed.nonce,
        debug,
    };
    Ok(Verified {
        kind: Kind::Nitro,
        claims: Claims::Nitro(claims),
        tcb_status: None,
        advisory_ids: Vec::new(),
        collateral_issued_at: None,
        valid_until: Some(chain.valid_until),
        evidence_sha256: sha256(document),
    })
}

/// Encodes the COSE Sig_structure for a COSE_Sign1 with no external data (RFC 9052, section
/// 4.4): `["Signature1", protected, h'', payload]`.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"Signature1";
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    out.push(0x84); // array of 4
    push_header(&mut out, 3, CONTEXT.len());
    out.extend_from_slice(CONTEXT);
    push_header(&mut out, 2, protected.len());
    out.extend_from_slice(protected);
    push_header(&mut out, 2, 0); // external_aad: empty
    push_header(&mut out, 2, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Appends a CBOR head of `major` type with argument `length` in the shortest form.
fn push_header(out: &mut Vec<u8>, major: u8, length: usize) {
    let major = major << 5;
    let length = length as u64;
    if length < 24 {
        out.push(major | length as u8);
    } else if let Ok(short) = u8::try_from(length) {
        out.push(major | 24);
        out.push(short);
    } else if let Ok(short) = u16::try_from(length) {
        out.push(major | 25);
        out.extend_from_slice(&short.to_be_bytes());
    } else if let Ok(short) = u32::try_from(length) {
        out.push(major | 26);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&length.to_be_bytes());
    }
}
