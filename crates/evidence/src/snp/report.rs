//! The SEV-SNP ATTESTATION_REPORT structure (AMD SEV-SNP firmware ABI specification, table
//! "ATTESTATION_REPORT Structure"), report versions 2 to 5.

use crate::claims::{SnpSigningKey, SnpTcb};
use crate::{Reason, VerifyError};

use super::SnpProduct;

/// Size of an ATTESTATION_REPORT in every version this module reads.
pub const REPORT_LEN: usize = 1184;

/// Length of the signed part: the signature covers bytes `0..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2a0;

/// The SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only algorithm AMD defines.
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The lowest and highest report versions this module parses.
pub const MIN_VERSION: u32 = 2;
pub const MAX_VERSION: u32 = 5;

/// Policy bit 19: the guest allows debugging, so the host can read and change its memory.
pub const POLICY_DEBUG: u64 = 1 << 19;

/// Every field of an ATTESTATION_REPORT. TCB versions are kept raw because their byte layout
/// depends on the product (see [`decode_tcb`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    /// The 32-bit word at 0x48: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1) and SIGNING_KEY
    /// (bits 4:2). Versions before 3 define only bit 0.
    pub key_info: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// CPUID family, model and stepping of the chip, in report versions 3 and later.
    pub cpuid_fam_id: Option<u8>,
    pub cpuid_mod_id: Option<u8>,
    pub cpuid_step: Option<u8>,
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    pub current_build: u8,
    pub current_minor: u8,
    pub current_major: u8,
    pub committed_build: u8,
    pub committed_minor: u8,
    pub committed_major: u8,
    pub launch_tcb: u64,
    /// Mitigation vectors, in report version 5 and later.
    pub launch_mit_vector: Option<u64>,
    pub current_mit_vector: Option<u64>,
    /// The signature's r and s, little-endian, zero-extended to 72 bytes.
    pub signature_r: [u8; 72],
    pub signature_s: [u8; 72],
}

impl Report {
    /// AUTHOR_KEY_EN: the digest of the ID block's author key is in `author_key_digest`.
    pub fn author_key_en(&self) -> bool {
        self.key_info & 1 != 0
    }

    /// MASK_CHIP_KEY: the firmware zeroed `chip_id` at the guest's request.
    pub fn mask_chip_key(&self) -> bool {
        self.key_info & 0b10 != 0
    }

    /// Returns the raw SIGNING_KEY field: 0 for the VCEK, 1 for the VLEK, 7 for no key.
    pub fn signing_key_field(&self) -> u32 {
        (self.key_info >> 2) & 0b111
    }

    /// Returns the key that signed the report, as the report states it.
    pub fn signing_key(&self) -> Result<SnpSigningKey, VerifyError> {
        match self.signing_key_field() {
            0 => Ok(SnpSigningKey::Vcek),
            1 => Ok(SnpSigningKey::Vlek),
            7 => Err(VerifyError::signature(
                "the report's SIGNING_KEY field is 7: the firmware did not sign it",
            )),
            other => Err(VerifyError::malformed(format!(
                "the report's SIGNING_KEY field is {other}; expected 0 (VCEK) or 1 (VLEK)"
            ))),
        }
    }

    /// Policy bit 19 (DEBUG).
    pub fn debug(&self) -> bool {
        self.policy & POLICY_DEBUG != 0
    }

    /// Returns the product that the CPUID family and model name, for report versions 3 and
    /// later. Returns `None` for version 2 reports and for unknown family and model pairs.
    pub fn cpuid_product(&self) -> Option<SnpProduct> {
        SnpProduct::from_cpuid(self.cpuid_fam_id?, self.cpuid_mod_id?)
    }
}

/// Parses an ATTESTATION_REPORT of exactly [`REPORT_LEN`] bytes, versions 2 to 5. This checks
/// only the length and version, and [`super::verify`] checks the signature and content.
pub fn parse_report(bytes: &[u8]) -> Result<Report, VerifyError> {
    if bytes.len() != REPORT_LEN {
        return Err(VerifyError::malformed(format!(
            "SEV-SNP report is {} bytes; expected {REPORT_LEN}",
            bytes.len()
        )));
    }
    let fields = Fields(bytes);
    let version = fields.u32(0x00)?;
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(VerifyError::malformed(format!(
            "SEV-SNP report version {version} is not supported; expected {MIN_VERSION} to {MAX_VERSION}"
        )));
    }
    let has_cpuid = version >= 3;
    let has_mit_vectors = version >= 5;
    Ok(Report {
        version,
        guest_svn: fields.u32(0x04)?,
        policy: fields.u64(0x08)?,
        family_id: fields.array(0x10)?,
        image_id: fields.array(0x20)?,
        vmpl: fields.u32(0x30)?,
        signature_algo: fields.u32(0x34)?,
        current_tcb: fields.u64(0x38)?,
        platform_info: fields.u64(0x40)?,
        key_info: fields.u32(0x48)?,
        report_data: fields.array(0x50)?,
        measurement: fields.array(0x90)?,
        host_data: fields.array(0xc0)?,
        id_key_digest: fields.array(0xe0)?,
        author_key_digest: fields.array(0x110)?,
        report_id: fields.array(0x140)?,
        report_id_ma: fields.array(0x160)?,
        reported_tcb: fields.u64(0x180)?,
        cpuid_fam_id: has_cpuid.then(|| fields.u8(0x188)).transpose()?,
        cpuid_mod_id: has_cpuid.then(|| fields.u8(0x189)).transpose()?,
        cpuid_step: has_cpuid.then(|| fields.u8(0x18a)).transpose()?,
        chip_id: fields.array(0x1a0)?,
        committed_tcb: fields.u64(0x1e0)?,
        current_build: fields.u8(0x1e8)?,
        current_minor: fields.u8(0x1e9)?,
        current_major: fields.u8(0x1ea)?,
        committed_build: fields.u8(0x1ec)?,
        committed_minor: fields.u8(0x1ed)?,
        committed_major: fields.u8(0x1ee)?,
        launch_tcb: fields.u64(0x1f0)?,
        launch_mit_vector: has_mit_vectors.then(|| fields.u64(0x1f8)).transpose()?,
        current_mit_vector: has_mit_vectors.then(|| fields.u64(0x200)).transpose()?,
        signature_r: fields.array(0x2a0)?,
        signature_s: fields.array(0x2e8)?,
    })
}

/// Decodes a TCB_VERSION. Milan and Genoa put the boot loader SPL in byte 0, TEE in byte 1,
/// SNP in byte 6 and microcode in byte 7. Turin adds the FMC SPL in byte 0 and moves boot
/// loader, TEE and SNP to bytes 1, 2 and 3.
pub fn decode_tcb(raw: u64, product: SnpProduct) -> SnpTcb {
    let bytes = raw.to_le_bytes();
    match product {
        SnpProduct::Milan | SnpProduct::Genoa => SnpTcb {
            bootloader: bytes[0],
            tee: bytes[1],
            snp: bytes[6],
            microcode: bytes[7],
            fmc: None,
        },
        SnpProduct::Turin => SnpTcb {
            fmc: Some(bytes[0]),
            bootloader: bytes[1],
            tee: bytes[2],
            snp: bytes[3],
            microcode: bytes[7],
        },
    }
}

/// Little-endian field reads at fixed offsets, each bounds-checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], VerifyError> {
        offset
            .checked_add(N)
            .and_then(|end| self.0.get(offset..end))
            .and_then(|slice| <[u8; N]>::try_from(slice).ok())
            .ok_or_else(|| {
                VerifyError::new(
                    Reason::Malformed,
                    format!("SEV-SNP report field at {offset:#x} runs past the end"),
                )
            })
    }

    fn u8(&self, offset: usize) -> Result<u8, VerifyError> {
        Ok(self.array::<1>(offset)?[0])
    }

    fn u32(&self, offset: usize) -> Result<u32, VerifyError> {
        Ok(u32::from_le_bytes(self.array(offset)?))
    }

    fn u64(&self, offset: usize) -> Result<u64, VerifyError> {
        Ok(u64::from_le_bytes(self.array(offset)?))
    }
}
