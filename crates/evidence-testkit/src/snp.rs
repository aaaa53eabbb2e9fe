//! SEV-SNP attestation reports signed under a test ARK.
//!
//! [`TestAmd`] makes an RSA ARK and ASK (or ASVK) and a P-384 VCEK (or VLEK) carrying AMD's
//! extensions, all signed with RSASSA-PSS and SHA-384 like AMD's own certificates. rcgen cannot
//! make RSASSA-PSS signatures, so the certificates are written with the small DER writer below
//! and signed with aws-lc-rs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PSS_SHA384,
};
pub use twid_evidence::claims::{SnpSigningKey, SnpTcb};

/// Start of every test certificate's validity: 2020-01-01T00:00:00Z.
pub const CA_NOT_BEFORE: i64 = 1_577_836_800;
/// End of the test ARK's and ASK's validity: 2045-01-01T00:00:00Z.
pub const CA_NOT_AFTER: i64 = 2_366_841_600;
/// Default start of the VCEK's validity: 2024-01-01T00:00:00Z.
pub const VEK_NOT_BEFORE: i64 = 1_704_067_200;
/// Default end of the VCEK's validity: 2031-01-01T00:00:00Z. It ends before the CAs, so a
/// verified report's `valid_until` is this value.
pub const VEK_NOT_AFTER: i64 = 1_924_992_000;
/// A time inside every default validity window: 2026-01-01T00:00:00Z.
pub const NOW: i64 = 1_767_225_600;

/// Size of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 1184;
const SIGNED_LEN: usize = 0x2a0;

/// A test ARK, ASK (or ASVK) and VCEK (or VLEK) for one product, and the VEK's private key.
pub struct TestAmd {
    family: Family,
    signing_key: SnpSigningKey,
    tcb: SnpTcb,
    chip_id: [u8; 64],
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    vek_der: Vec<u8>,
    vek_key: EcdsaKeyPair,
}

/// Fields of a generated report. The TCB and chip ID come from the [`TestAmd`] unless set here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSpec {
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    /// Guest policy, where bit 19 allows debugging. The default, 0x30000, allows SMT and sets the
    /// reserved bit 17 that the firmware requires.
    pub policy: u64,
    pub host_data: [u8; 32],
    pub guest_svn: u32,
    /// Report version, 2 to 5. Versions 3 and later carry the product's CPUID.
    pub version: u32,
    pub vmpl: u32,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    /// Sets MASK_CHIP_KEY and zeroes chip_id, as when the guest requests that the firmware
    /// hide it.
    pub mask_chip_id: bool,
    /// The chip ID written into the report. `None` takes the one the [`TestAmd`] certifies.
    pub chip_id: Option<[u8; 64]>,
    /// The reported TCB. `None` takes the TCB in the VEK's extensions.
    pub reported_tcb: Option<SnpTcb>,
    /// The SIGNING_KEY field (bits 4:2 at 0x48). `None` names the VEK the [`TestAmd`] has.
    pub signing_key_field: Option<u32>,
    /// The CPUID family, model and stepping for versions 3 and later. `None` takes a value of
    /// the product.
    pub cpuid: Option<(u8, u8, u8)>,
}

impl Default for ReportSpec {
    fn default() -> Self {
        Self {
            report_data: [0; 64],
            measurement: [0; 48],
            policy: 0x30000,
            host_data: [0; 32],
            guest_svn: 0,
            version: 3,
            vmpl: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            mask_chip_id: false,
            chip_id: None,
            reported_tcb: None,
            signing_key_field: None,
            cpuid: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Milan,
    Genoa,
    Turin,
}

impl Family {
    fn parse(product: &str) -> Self {
        match product.split('-').next().unwrap_or(product) {
            "Milan" => Family::Milan,
            "Genoa" => Family::Genoa,
            "Turin" => Family::Turin,
            other => panic!("unknown SEV-SNP product {other:?}; expected Milan, Genoa or Turin"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Milan => "Milan",
            Family::Genoa => "Genoa",
            Family::Turin => "Turin",
        }
    }

    /// Returns a CPUID family, model and stepping of a chip of this product.
    fn cpuid(self) -> (u8, u8, u8) {
        match self {
            Family::Milan => (0x19, 0x01, 0x01),
            Family::Genoa => (0x19, 0x11, 0x01),
            Family::Turin => (0x1a, 0x02, 0x01),
        }
    }
}

impl TestAmd {
    /// Makes an ARK, ASK and VCEK for `product` (`Milan`, `Genoa` or `Turin`, optionally with a
    /// stepping such as `Milan-B0`, which goes into the VCEK's productName). The VCEK's hwID
    /// is `chip_id`, or its first 8 bytes on Turin, and its SPL extensions are `tcb`. On Turin
    /// a `tcb.fmc` of `None` is written as 0.
    ///
    /// # Panics
    /// On an unknown product, or when key generation or signing fails.
    pub fn new(product: &str, chip_id: [u8; 64], tcb: SnpTcb) -> TestAmd {
        Self::build(product, SnpSigningKey::Vcek, chip_id, tcb, None)
    }

    /// Makes an ARK, ASVK and VLEK for `product`, with the cspID extension `csp_id`.
    ///
    /// # Panics
    /// As [`TestAmd::new`].
    pub fn new_vlek(product: &str, tcb: SnpTcb, csp_id: &str) -> TestAmd {
        Self::build(product, SnpSigningKey::Vlek, [0; 64], tcb, Some(csp_id))
    }

    /// As [`TestAmd::new`], with the VCEK valid from `not_before` to `not_after` (Unix
    /// seconds).
    pub fn with_vek_validity(
        product: &str,
        chip_id: [u8; 64],
        tcb: SnpTcb,
        not_before: i64,
        not_after: i64,
    ) -> TestAmd {
        Self::build_with_validity(
            product,
            SnpSigningKey::Vcek,
            chip_id,
            tcb,
            None,
            (not_before, not_after),
        )
    }

    fn build(
        product: &str,
        signing_key: SnpSigningKey,
        chip_id: [u8; 64],
        tcb: SnpTcb,
        csp_id: Option<&str>,
    ) -> TestAmd {
        Self::build_with_validity(
            product,
            signing_key,
            chip_id,
            tcb,
            csp_id,
            (VEK_NOT_BEFORE, VEK_NOT_AFTER),
        )
    }

    fn build_with_validity(
        product: &str,
        signing_key: SnpSigningKey,
        chip_id: [u8; 64],
        tcb: SnpTcb,
        csp_id: Option<&str>,
        vek_validity: (i64, i64),
    ) -> TestAmd {
        let family = Family::parse(product);
        let tcb = SnpTcb {
            fmc: match family {
                Family::Turin => Some(tcb.fmc.unwrap_or(0)),
                Family::Milan | Family::Genoa => None,
            },
            ..tcb
        };
        let ark_key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate test ARK key");
        let ask_key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate test ASK key");
        let vek_key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
            .expect("generate test VEK key");

        let ark_cn = format!("ARK-{}", family.name());
        let ask_cn = match signing_key {
            SnpSigningKey::Vcek => format!("SEV-{}", family.name()),
            SnpSigningKey::Vlek => format!("SEV-VLEK-{}", family.name()),
        };
        let vek_cn = match signing_key {
            SnpSigningKey::Vcek => "SEV-VCEK",
            SnpSigningKey::Vlek => "SEV-VLEK",
        };

        let ark_der = sign_certificate(
            &CertificateFields {
                serial: 0x10000,
                issuer_cn: &ark_cn,
                subject_cn: &ark_cn,
                not_before: CA_NOT_BEFORE,
                not_after: CA_NOT_AFTER,
                spki: rsa_spki(&ark_key),
                extensions: ca_extensions(None),
            },
            &ark_key,
        );
        let ask_der = sign_certificate(
            &CertificateFields {
                serial: 0x10001,
                issuer_cn: &ark_cn,
                subject_cn: &ask_cn,
                not_before: CA_NOT_BEFORE,
                not_after: CA_NOT_AFTER,
                spki: rsa_spki(&ask_key),
                extensions: ca_extensions(Some(0)),
            },
            &ark_key,
        );
        let hw_id = match (signing_key, family) {
            (SnpSigningKey::Vlek, _) => None,
            (SnpSigningKey::Vcek, Family::Turin) => Some(&chip_id[..8]),
            (SnpSigningKey::Vcek, _) => Some(&chip_id[..]),
        };
        let vek_der = sign_certificate(
            &CertificateFields {
                // AMD issues every VCEK and VLEK with serial number 0.
                serial: 0,
                issuer_cn: &ask_cn,
                subject_cn: vek_cn,
                not_before: vek_validity.0,
                not_after: vek_validity.1,
                spki: p384_spki(vek_key.public_key().as_ref()),
                extensions: vek_extensions(product, &tcb, hw_id, csp_id),
            },
            &ask_key,
        );
        TestAmd {
            family,
            signing_key,
            tcb,
            chip_id,
            ark_der,
            ask_der,
            vek_der,
            vek_key,
        }
    }

    /// Returns the self-signed ARK, to trust with `TrustAnchors::add_certificate`.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// Returns the ASK, or the ASVK for a [`TestAmd::new_vlek`].
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// Returns the VCEK, or the VLEK for a [`TestAmd::new_vlek`].
    pub fn vcek_der(&self) -> &[u8] {
        &self.vek_der
    }

    /// Returns the CA chain as AMD's key distribution service serves it: ASK (or ASVK), then
    /// ARK.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        vec![self.ask_der.clone(), self.ark_der.clone()]
    }

    /// Returns the TCB in the VEK's extensions.
    pub fn tcb(&self) -> SnpTcb {
        self.tcb
    }

    /// Writes an ATTESTATION_REPORT and signs it with the VEK's key.
    ///
    /// # Panics
    /// When signing fails or `spec.version` is not 2 to 5.
    pub fn report(&self, spec: &ReportSpec) -> Vec<u8> {
        assert!(
            (2..=5).contains(&spec.version),
            "report version {} is not 2 to 5",
            spec.version
        );
        let mut report = vec![0u8; REPORT_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            report[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let tcb = encode_tcb(&spec.reported_tcb.unwrap_or(self.tcb), self.family);
        let signing_key_field = spec.signing_key_field.unwrap_or(match self.signing_key {
            SnpSigningKey::Vcek => 0,
            SnpSigningKey::Vlek => 1,
        });
        let mask_bit = if spec.mask_chip_id { 0b10 } else { 0 };
        let key_info = (signing_key_field << 2) | mask_bit;
        let chip_id = if spec.mask_chip_id {
            [0; 64]
        } else {
            spec.chip_id.unwrap_or(self.chip_id)
        };

        put(0x00, &spec.version.to_le_bytes());
        put(0x04, &spec.guest_svn.to_le_bytes());
        put(0x08, &spec.policy.to_le_bytes());
        put(0x10, &spec.family_id);
        put(0x20, &spec.image_id);
        put(0x30, &spec.vmpl.to_le_bytes());
        put(0x34, &1u32.to_le_bytes()); // ECDSA P-384 with SHA-384
        put(0x38, &tcb.to_le_bytes()); // current_tcb
        put(0x40, &0x3u64.to_le_bytes()); // platform_info: SMT and TSME enabled
        put(0x48, &key_info.to_le_bytes());
        put(0x50, &spec.report_data);
        put(0x90, &spec.measurement);
        put(0xc0, &spec.host_data);
        put(0xe0, &spec.id_key_digest);
        put(0x110, &spec.author_key_digest);
        put(0x140, &spec.report_id);
        put(0x160, &[0xff; 32]); // report_id_ma: no migration agent
        put(0x180, &tcb.to_le_bytes());
        if spec.version >= 3 {
            let (family, model, stepping) = spec.cpuid.unwrap_or(self.family.cpuid());
            put(0x188, &[family, model, stepping]);
        }
        put(0x1a0, &chip_id);
        put(0x1e0, &tcb.to_le_bytes()); // committed_tcb
        put(0x1e8, &[21, 55, 1]); // current build, minor, major: firmware 1.55.21
        put(0x1ec, &[21, 55, 1]); // committed build, minor, major
        put(0x1f0, &tcb.to_le_bytes()); // launch_tcb

        let signature = self
            .vek_key
            .sign(&SystemRandom::new(), &report[..SIGNED_LEN])
            .expect("sign test report");
        let (r, s) = signature.as_ref().split_at(48);
        // AMD stores r and s little-endian in 72-byte fields.
        for (field_offset, value) in [(0x2a0, r), (0x2e8, s)] {
            for (index, byte) in value.iter().rev().enumerate() {
                report[field_offset + index] = *byte;
            }
        }
        report
    }

    /// Returns the chip ID that reports carry: the one given to [`TestAmd::new`], zero for a
    /// VLEK.
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }
}

/// Encodes a TCB_VERSION: Milan and Genoa put boot loader, TEE, SNP and microcode in bytes 0,
/// 1, 6 and 7. Turin puts FMC, boot loader, TEE and SNP in bytes 0 to 3 and microcode in 7.
fn encode_tcb(tcb: &SnpTcb, family: Family) -> u64 {
    let bytes = match family {
        Family::Milan | Family::Genoa => {
            [tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode]
        }
        Family::Turin => [
            tcb.fmc.unwrap_or(0),
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            0,
            0,
            0,
            tcb.microcode,
        ],
    };
    u64::from_le_bytes(bytes)
}

const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_STRUCT_VERSION: &str = "1.3.6.1.4.1.3704.1.1";
const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
const OID_CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";

struct CertificateFields<'a> {
    serial: u64,
    issuer_cn: &'a str,
    subject_cn: &'a str,
    not_before: i64,
    not_after: i64,
    spki: Vec<u8>,
    extensions: Vec<Vec<u8>>,
}

/// Writes a TBSCertificate and signs it with RSASSA-PSS, SHA-384 and a 48-byte salt.
fn sign_certificate(fields: &CertificateFields<'_>, issuer_key: &RsaKeyPair) -> Vec<u8> {
    let tbs = der::sequence(&[
        der::explicit(0, &der::unsigned(2)),
        der::unsigned(fields.serial),
        pss_algorithm(),
        amd_name(fields.issuer_cn),
        der::sequence(&[der::time(fields.not_before), der::time(fields.not_after)]),
        amd_name(fields.subject_cn),
        fields.spki.clone(),
        der::explicit(3, &der::sequence(&fields.extensions)),
    ]);
    let mut signature = vec![0u8; issuer_key.public_modulus_len()];
    issuer_key
        .sign(&RSA_PSS_SHA384, &SystemRandom::new(), &tbs, &mut signature)
        .expect("sign test certificate");
    der::sequence(&[tbs, pss_algorithm(), der::bit_string(&signature)])
}

/// RSASSA-PSS parameters as AMD writes them: SHA-384, MGF1 with SHA-384, salt 48.
fn pss_algorithm() -> Vec<u8> {
    let sha384 = der::sequence(&[der::oid(OID_SHA384), der::null()]);
    der::sequence(&[
        der::oid(OID_RSASSA_PSS),
        der::sequence(&[
            der::explicit(0, &sha384),
            der::explicit(1, &der::sequence(&[der::oid(OID_MGF1), sha384.clone()])),
            der::explicit(2, &der::unsigned(48)),
        ]),
    ])
}

/// Writes a distinguished name in AMD's attribute order, with `cn` as the common name.
fn amd_name(cn: &str) -> Vec<u8> {
    let attribute = |oid: &str, value: Vec<u8>| der::set(&[der::sequence(&[der::oid(oid), value])]);
    der::sequence(&[
        attribute("2.5.4.11", der::utf8("Engineering")),
        attribute("2.5.4.6", der::printable("US")),
        attribute("2.5.4.7", der::utf8("Santa Clara")),
        attribute("2.5.4.8", der::utf8("CA")),
        attribute("2.5.4.10", der::utf8("Advanced Micro Devices")),
        attribute("2.5.4.3", der::utf8(cn)),
    ])
}

fn rsa_spki(key: &RsaKeyPair) -> Vec<u8> {
    der::sequence(&[
        der::sequence(&[der::oid(OID_RSA_ENCRYPTION), der::null()]),
        der::bit_string(key.public_key().as_ref()),
    ])
}

fn p384_spki(point: &[u8]) -> Vec<u8> {
    der::sequence(&[
        der::sequence(&[der::oid(OID_EC_PUBLIC_KEY), der::oid(OID_SECP384R1)]),
        der::bit_string(point),
    ])
}

fn extension(oid: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    let mut parts = vec![der::oid(oid)];
    if critical {
        parts.push(der::boolean(true));
    }
    parts.push(der::octet_string(value));
    der::sequence(&parts)
}

/// basicConstraints (cA, with an optional path length) and keyUsage (keyCertSign, cRLSign).
fn ca_extensions(path_length: Option<u64>) -> Vec<Vec<u8>> {
    let mut constraints = vec![der::boolean(true)];
    if let Some(length) = path_length {
        constraints.push(der::unsigned(length));
    }
    // Bits 5 (keyCertSign) and 6 (cRLSign) of the KeyUsage BIT STRING, one unused bit.
    let key_usage = der::tlv(0x03, &[0x01, 0x06]);
    vec![
        extension(OID_BASIC_CONSTRAINTS, true, &der::sequence(&constraints)),
        extension(OID_KEY_USAGE, true, &key_usage),
    ]
}

/// AMD's VCEK and VLEK extensions: structVersion, productName, the SPLs, and hwID (VCEK) or
/// cspID (VLEK).
fn vek_extensions(
    product: &str,
    tcb: &SnpTcb,
    hw_id: Option<&[u8]>,
    csp_id: Option<&str>,
) -> Vec<Vec<u8>> {
    let level = |value: u8| der::unsigned(u64::from(value));
    let mut extensions = vec![
        extension(OID_STRUCT_VERSION, false, &der::unsigned(1)),
        extension(OID_PRODUCT_NAME, false, &der::ia5(product)),
        extension(OID_BL_SPL, false, &level(tcb.bootloader)),
        extension(OID_TEE_SPL, false, &level(tcb.tee)),
        extension(OID_SNP_SPL, false, &level(tcb.snp)),
        extension("1.3.6.1.4.1.3704.1.3.4", false, &level(0)),
        extension("1.3.6.1.4.1.3704.1.3.5", false, &level(0)),
        extension("1.3.6.1.4.1.3704.1.3.6", false, &level(0)),
        extension("1.3.6.1.4.1.3704.1.3.7", false, &level(0)),
        extension(OID_UCODE_SPL, false, &level(tcb.microcode)),
    ];
    if let Some(fmc) = tcb.fmc {
        extensions.push(extension(OID_FMC_SPL, false, &level(fmc)));
    }
    if let Some(hw_id) = hw_id {
        // AMD puts the raw ID bytes in the extension value, with no inner OCTET STRING.
        extensions.push(extension(OID_HW_ID, false, hw_id));
    }
    if let Some(csp_id) = csp_id {
        extensions.push(extension(OID_CSP_ID, false, &der::ia5(csp_id)));
    }
    extensions
}

/// A DER writer for the handful of types the test certificates use.
mod der {
    use time::OffsetDateTime;

    pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let length = content.len();
        if length < 0x80 {
            out.push(length as u8);
        } else {
            let bytes = length.to_be_bytes();
            let skip = bytes.iter().take_while(|byte| **byte == 0).count();
            let significant = &bytes[skip..];
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    pub(super) fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &items.concat())
    }

    pub(super) fn set(items: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x31, &items.concat())
    }

    pub(super) fn explicit(number: u8, content: &[u8]) -> Vec<u8> {
        tlv(0xa0 | number, content)
    }

    pub(super) fn boolean(value: bool) -> Vec<u8> {
        tlv(0x01, &[if value { 0xff } else { 0 }])
    }

    /// Writes a non-negative INTEGER in the fewest bytes, with a leading zero when the high bit
    /// is set.
    pub(super) fn unsigned(value: u64) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let skip = bytes
            .iter()
            .take_while(|byte| **byte == 0)
            .count()
            .min(bytes.len() - 1);
        let mut content = bytes[skip..].to_vec();
        if content[0] & 0x80 != 0 {
            content.insert(0, 0);
        }
        tlv(0x02, &content)
    }

    pub(super) fn null() -> Vec<u8> {
        tlv(0x05, &[])
    }

    pub(super) fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted
            .split('.')
            .map(|arc| arc.parse().expect("test OID arc is a number"))
            .collect();
        let mut content = Vec::new();
        let mut push_arc = |mut arc: u64| {
            let mut base128 = vec![(arc & 0x7f) as u8];
            arc >>= 7;
            while arc > 0 {
                base128.push(0x80 | (arc & 0x7f) as u8);
                arc >>= 7;
            }
            base128.reverse();
            content.extend_from_slice(&base128);
        };
        push_arc(arcs[0] * 40 + arcs[1]);
        for arc in &arcs[2..] {
            push_arc(*arc);
        }
        tlv(0x06, &content)
    }

    pub(super) fn utf8(text: &str) -> Vec<u8> {
        tlv(0x0c, text.as_bytes())
    }

    pub(super) fn printable(text: &str) -> Vec<u8> {
        tlv(0x13, text.as_bytes())
    }

    pub(super) fn ia5(text: &str) -> Vec<u8> {
        tlv(0x16, text.as_bytes())
    }

    pub(super) fn octet_string(bytes: &[u8]) -> Vec<u8> {
        tlv(0x04, bytes)
    }

    pub(super) fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = vec![0u8];
        content.extend_from_slice(bytes);
        tlv(0x03, &content)
    }

    /// UTCTime for the years 1950 to 2049 and GeneralizedTime otherwise (RFC 5280, 4.1.2.5).
    pub(super) fn time(unix_seconds: i64) -> Vec<u8> {
        let time = OffsetDateTime::from_unix_timestamp(unix_seconds).expect("test time in range");
        let rest = format!(
            "{:02}{:02}{:02}{:02}{:02}Z",
            u8::from(time.month()),
            time.day(),
            time.hour(),
            time.minute(),
            time.second()
        );
        let year = time.year();
        if (1950..2050).contains(&year) {
            tlv(0x17, format!("{:02}{rest}", year % 100).as_bytes())
        } else {
            tlv(0x18, format!("{year:04}{rest}").as_bytes())
        }
    }
}
