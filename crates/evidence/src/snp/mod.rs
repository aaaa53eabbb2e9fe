//! AMD SEV-SNP: the guest's ATTESTATION_REPORT, signed by the chip's VCEK (or a cloud
//! provider's VLEK), whose certificate chains through an ASK (or ASVK) to AMD's ARK.
//!
//! The layouts follow AMD's "SEV Secure Nested Paging Firmware ABI Specification" (the
//! ATTESTATION_REPORT and TCB_VERSION structures) and AMD's "Versioned Chip Endorsement Key
//! (VCEK) Certificate and KDS Interface Specification" (the certificate extensions).

pub(crate) mod certs;
mod der;
mod report;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::claims::{SnpClaims, SnpSigningKey, SnpTcb};
use crate::roots::{TrustAnchors, sha256};
use crate::{Claims, Kind, Reason, Verified, VerifyError};

pub use certs::{CaChain, VekChain};
pub use report::{
    MAX_VERSION, MIN_VERSION, POLICY_DEBUG, REPORT_LEN, Report, SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SIGNED_LEN, decode_tcb, parse_report,
};

/// An AMD EPYC product line with its own ARK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnpProduct {
    Milan,
    Genoa,
    Turin,
}

impl SnpProduct {
    pub const ALL: [SnpProduct; 3] = [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin];

    /// Returns the name as AMD's certificate CNs and key distribution service spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
        }
    }

    /// Parses a product name with an optional stepping suffix, as in the VCEK productName
    /// extension: `Milan`, `Milan-B0`, `Genoa`, `Turin`.
    pub fn from_name(name: &str) -> Option<Self> {
        let family = name.split('-').next().unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|product| product.as_str() == family)
    }

    /// Maps the CPUID family and model of report versions 3 and later to a product: family
    /// 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh are Genoa, family 1Ah models 00h-1Fh
    /// are Turin.
    // NOTE: the model ranges cover the EPYC 7003, 9004, 8004 and 9005 series. An unknown pair
    // returns `None`, so the certificate chain's product decides the TCB layout.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(SnpProduct::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(SnpProduct::Genoa),
            (0x1a, 0x00..=0x1f) => Some(SnpProduct::Turin),
            _ => None,
        }
    }
}

/// Verifies a VCEK or VLEK certificate chain without a report. The VEK must be signed by an
/// ASK or ASVK in `chain_der`, and that by a self-signed ARK pinned in `anchors`. When
/// `chain_der` lacks the ARK, `anchors` must contain it in full. Every signature is RSASSA-PSS
/// with SHA-384, and every certificate must be valid at `now`.
pub fn verify_vek_chain(
    vek_der: &[u8],
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<VekChain, VerifyError> {
    certs::verify_chain(vek_der, chain_der, anchors, now).map(|(chain, _)| chain)
}

/// Verifies AMD's CA certificates alone, as the key distribution service serves them for a
/// product (ASK and ARK, or ASVK and ARK): each ASK or ASVK in `chain_der` is signed by the ARK,
/// the ARK is self-signed and trusted, and all are valid at `now`.
pub fn verify_ca_chain(
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<CaChain, VerifyError> {
    certs::verify_ca_chain(chain_der, anchors, now)
}

/// Verifies an ATTESTATION_REPORT: the VEK chain (see [`verify_vek_chain`]), the report's
/// ECDSA P-384 signature under the VEK, and that the VEK's extensions match the report's
/// signing key, product, reported TCB and (for a VCEK) chip ID.
pub fn verify(
    report: &[u8],
    vek_der: &[u8],
    chain_der: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<Verified, VerifyError> {
    let parsed = parse_report(report)?;
    if parsed.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
        return Err(VerifyError::malformed(format!(
            "the report's SIGNATURE_ALGO is {}; expected {SIGNATURE_ALGO_ECDSA_P384_SHA384} \
             (ECDSA P-384 with SHA-384)",
            parsed.signature_algo
        )));
    }
    let report_key = parsed.signing_key()?;

    let (chain, public_key) = certs::verify_chain(vek_der, chain_der, anchors, now)?;
    if report_key != chain.signing_key {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "the report's SIGNING_KEY is {} but the certificate is a {}",
                key_name(report_key),
                key_name(chain.signing_key)
            ),
        ));
    }
    verify_report_signature(report, &parsed, &public_key, chain.signing_key)?;

    let product = chain.product;
    if let Some(cpuid_product) = parsed.cpuid_product()
        && cpuid_product != product
    {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "the report's CPUID family {:#04x} model {:#04x} is {} but the certificate \
                 chain is for {}",
                parsed.cpuid_fam_id.unwrap_or(0),
                parsed.cpuid_mod_id.unwrap_or(0),
                cpuid_product.as_str(),
                product.as_str()
            ),
        ));
    }
    let reported_tcb = decode_tcb(parsed.reported_tcb, product);
    compare_tcb(&reported_tcb, &chain)?;
    if let Some(hw_id) = &chain.hw_id {
        compare_chip_id(&parsed, hw_id, product)?;
    }

    let claims = SnpClaims {
        version: parsed.version,
        guest_svn: parsed.guest_svn,
        policy: parsed.policy,
        debug: parsed.debug(),
        vmpl: parsed.vmpl,
        family_id: parsed.family_id,
        image_id: parsed.image_id,
        measurement: parsed.measurement,
        host_data: parsed.host_data,
        id_key_digest: parsed.id_key_digest,
        report_data: parsed.report_data,
        chip_id: parsed.chip_id,
        report_id: parsed.report_id,
        reported_tcb,
        committed_tcb: decode_tcb(parsed.committed_tcb, product),
        launch_tcb: decode_tcb(parsed.launch_tcb, product),
        current_tcb: decode_tcb(parsed.current_tcb, product),
        signing_key: chain.signing_key,
        product: product.as_str().to_owned(),
    };
    Ok(Verified {
        kind: Kind::Snp,
        claims: Claims::Snp(claims),
        tcb_status: None,
        advisory_ids: Vec::new(),
        collateral_issued_at: None,
        valid_until: Some(chain.valid_until),
        evidence_sha256: sha256(report),
    })
}

/// Splits a PEM file into the DER of each CERTIFICATE block, in file order. Text outside the
/// blocks is ignored, but a block with another label, an unterminated block or invalid base64
/// is an error.
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<Vec<u8>>, VerifyError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const LABEL: &str = "CERTIFICATE-----";

    let text = std::str::from_utf8(pem)
        .map_err(|_| VerifyError::malformed("PEM certificate chain is not valid UTF-8"))?;
    let mut certificates = Vec::new();
    let mut body: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let line_number = index + 1;
        match body.as_mut() {
            None => {
                if let Some(label) = line.strip_prefix(BEGIN) {
                    if label != LABEL {
                        return Err(VerifyError::malformed(format!(
                            "PEM block at line {line_number} is {line:?}; expected \
                             -----BEGIN CERTIFICATE-----"
                        )));
                    }
                    body = Some(String::new());
                }
            }
            Some(encoded) => {
                if let Some(label) = line.strip_prefix(END) {
                    if label != LABEL {
                        return Err(VerifyError::malformed(format!(
                            "PEM block ends at line {line_number} with {line:?}; expected \
                             -----END CERTIFICATE-----"
                        )));
                    }
                    let der = STANDARD.decode(encoded.as_bytes()).map_err(|error| {
                        VerifyError::malformed(format!(
                            "PEM certificate ending at line {line_number} has invalid base64: \
                             {error}"
                        ))
                    })?;
                    certificates.push(der);
                    body = None;
                } else {
                    encoded.push_str(line);
                }
            }
        }
    }
    if body.is_some() {
        return Err(VerifyError::malformed(
            "PEM certificate chain ends inside a CERTIFICATE block",
        ));
    }
    if certificates.is_empty() {
        return Err(VerifyError::malformed(
            "PEM certificate chain contains no CERTIFICATE block",
        ));
    }
    Ok(certificates)
}

fn key_name(key: SnpSigningKey) -> &'static str {
    match key {
        SnpSigningKey::Vcek => "VCEK",
        SnpSigningKey::Vlek => "VLEK",
    }
}

/// Checks the ECDSA P-384 signature over the first [`SIGNED_LEN`] bytes. AMD stores r and s
/// little-endian in 72-byte fields, so each is reversed into the 48-byte big-endian form.
fn verify_report_signature(
    report: &[u8],
    parsed: &Report,
    public_key: &[u8],
    signing_key: SnpSigningKey,
) -> Result<(), VerifyError> {
    let mut signature = [0u8; 96];
    for (half, (name, field)) in [("r", &parsed.signature_r), ("s", &parsed.signature_s)]
        .into_iter()
        .enumerate()
    {
        let (value, padding) = field.split_at(48);
        if padding.iter().any(|byte| *byte != 0) {
            return Err(VerifyError::signature(format!(
                "report signature {name} does not fit in 48 bytes"
            )));
        }
        for (target, source) in signature[half * 48..(half + 1) * 48]
            .iter_mut()
            .zip(value.iter().rev())
        {
            *target = *source;
        }
    }
    let signed = report
        .get(..SIGNED_LEN)
        .ok_or_else(|| VerifyError::malformed("SEV-SNP report is shorter than its signed part"))?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, public_key)
        .verify(signed, &signature)
        .map_err(|_| {
            VerifyError::signature(format!(
                "report signature is invalid under the {} public key",
                key_name(signing_key)
            ))
        })
}

fn compare_tcb(reported: &SnpTcb, chain: &VekChain) -> Result<(), VerifyError> {
    let certified = &chain.tcb;
    let fields = [
        (
            "boot loader",
            "blSPL",
            reported.bootloader,
            certified.bootloader,
        ),
        ("TEE", "teeSPL", reported.tee, certified.tee),
        ("SNP", "snpSPL", reported.snp, certified.snp),
        (
            "microcode",
            "ucodeSPL",
            reported.microcode,
            certified.microcode,
        ),
    ];
    let fmc = match (reported.fmc, certified.fmc) {
        (Some(reported), Some(certified)) => Some(("FMC", "fmcSPL", reported, certified)),
        _ => None,
    };
    for (field, extension, reported, certified) in fields.into_iter().chain(fmc) {
        if reported != certified {
            return Err(VerifyError::new(
                Reason::Collateral,
                format!(
                    "the report's reported_tcb {field} SPL is {reported} but the {} {extension} \
                     extension is {certified}",
                    key_name(chain.signing_key)
                ),
            ));
        }
    }
    Ok(())
}

/// Compares the VCEK's hwID with the report's chip_id. Turin VCEKs carry only the first 8
/// bytes of the chip ID. A report whose chip ID the guest masked (MASK_CHIP_KEY set, chip_id
/// zero) is exempt, because the VCEK signature alone already ties it to the chip.
fn compare_chip_id(report: &Report, hw_id: &[u8], product: SnpProduct) -> Result<(), VerifyError> {
    if report.mask_chip_key() && report.chip_id.iter().all(|byte| *byte == 0) {
        return Ok(());
    }
    let compared = match (product, hw_id.len()) {
        (SnpProduct::Turin, 8) => report.chip_id.get(..8).unwrap_or(&[]),
        _ => &report.chip_id[..],
    };
    if compared != hw_id {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "the report's chip_id {} does not match the VCEK hwID {}",
                hex::encode(compared),
                hex::encode(hw_id)
            ),
        ));
    }
    Ok(())
}
