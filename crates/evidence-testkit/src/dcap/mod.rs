//! Intel SGX and TDX DCAP quotes with their collateral, signed under a test "Intel SGX Root CA".
//!
//! Quotes have the byte layout of Intel's quoting enclaves (SGX quote v3, TDX quote v4 and
//! v5), and certificates and CRLs that of Intel's PCK PKI. TCB info v3 and QE identity v2 are
//! in the form Intel's PCS API v4 returns. This crate's tests compare them field by field with
//! real samples and run them through `twid_evidence::dcap::verify`, which accepts them once
//! [`TestPlatform::root_der`] is a trust anchor.
//!
//! Every key is P-256 and is generated per [`TestPlatform`]: five key pairs, four certificates,
//! two CRLs and four collateral signatures, cheap enough to build one per test.

mod collateral;
mod der;
mod pki;
mod quote;

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use twid_evidence::TcbStatus;
pub use twid_evidence::dcap::Collateral;

use collateral::SignedJson;
use pki::{Pki, SigningKey, pem};

/// A validity window in Unix seconds, both ends inclusive: notBefore and notAfter for
/// certificates, issueDate or thisUpdate and nextUpdate for collateral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// The CA that issues the PCK certificate. Its name decides which PCK CRL applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PckCa {
    /// "Intel SGX PCK Processor CA": SGX type Standard, no platform fields.
    Processor,
    /// "Intel SGX PCK Platform CA": SGX type Scalable, with PlatformInstanceID and
    /// Configuration, as on TDX-capable servers.
    Platform,
}

/// The values a test platform reports and its collateral states about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub fmspc: [u8; 6],
    pub pce_id: [u8; 2],
    pub pce_svn: u16,
    /// The 16 SGX TCB component SVNs. They also serve as the CPUSVN of the PCK certificate and
    /// of every report in the quotes, as on platforms whose CPUSVN is its component SVNs.
    pub cpu_svn_components: [u8; 16],
    /// The TDX TCB component SVNs of the platform's TCB level in TDX TCB info. Element 0 is
    /// also the ISVSVN from which the TDX module identities TDX_01 and TDX_03 are UpToDate.
    pub tdx_components: [u8; 16],
    pub ppid: [u8; 16],
    /// Written to PCK Platform CA certificates only.
    pub platform_instance_id: [u8; 16],
    /// The quoting enclave's ISVSVN; the QE identity is UpToDate from this SVN.
    pub qe_isv_svn: u16,
    pub pck_ca: PckCa,
    pub root_validity: Validity,
    /// Validity of the PCK CA and the TCB signing certificate.
    pub ca_validity: Validity,
    pub pck_validity: Validity,
    pub tcb_info_validity: Validity,
    pub qe_identity_validity: Validity,
    /// thisUpdate and nextUpdate of both the root CA CRL and the PCK CRL.
    pub crl_validity: Validity,
    /// Lists the PCK leaf in the PCK CRL.
    pub revoked_pck: bool,
    /// Lists the PCK CA in the root CA CRL.
    pub revoked_pck_ca: bool,
    /// The status of the TCB level that matches this platform exactly. When it is not
    /// UpToDate, the TCB info also has an UpToDate level the platform does not reach.
    pub tcb_status: TcbStatus,
    /// Advisory IDs of the matching TCB level.
    pub advisory_ids: Vec<String>,
    pub tcb_evaluation_data_number: u32,
}

impl Default for PlatformSpec {
    /// Returns an UpToDate TDX-capable platform (Platform CA) whose collateral is valid from
    /// 2026-06-01T10:32:27Z to 2026-07-01T10:00:35Z, as [`PlatformSpec::valid_window`] returns.
    fn default() -> Self {
        PlatformSpec {
            fmspc: [0xb0, 0xc0, 0x6f, 0x00, 0x00, 0x00],
            pce_id: [0, 0],
            pce_svn: 11,
            cpu_svn_components: [3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
            tdx_components: [5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ppid: [0x5a; 16],
            platform_instance_id: [0xa5; 16],
            qe_isv_svn: 6,
            pck_ca: PckCa::Platform,
            // 2018-05-21T10:45:10Z .. 2049-12-31T23:59:59Z, as Intel's production root.
            root_validity: Validity {
                not_before: 1_526_899_510,
                not_after: 2_524_607_999,
            },
            // 2018-05-21T10:50:10Z .. 2033-05-21T10:50:10Z.
            ca_validity: Validity {
                not_before: 1_526_899_810,
                not_after: 2_000_285_410,
            },
            // 2025-02-06T23:25:51Z .. 2032-02-06T23:25:51Z.
            pck_validity: Validity {
                not_before: 1_738_884_351,
                not_after: 1_959_722_751,
            },
            // 2026-06-01T10:16:03Z .. 2026-07-01T10:16:03Z.
            tcb_info_validity: Validity {
                not_before: 1_780_308_963,
                not_after: 1_782_900_963,
            },
            // 2026-06-01T10:32:27Z .. 2026-07-01T10:32:27Z.
            qe_identity_validity: Validity {
                not_before: 1_780_309_947,
                not_after: 1_782_901_947,
            },
            // 2026-06-01T10:00:35Z .. 2026-07-01T10:00:35Z.
            crl_validity: Validity {
                not_before: 1_780_308_035,
                not_after: 1_782_900_035,
            },
            revoked_pck: false,
            revoked_pck_ca: false,
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            tcb_evaluation_data_number: 17,
        }
    }
}

impl PlatformSpec {
    /// A time inside every validity window of the default spec: 2026-06-15T00:00:00Z.
    pub const DEFAULT_NOW: i64 = 1_781_481_600;

    /// Returns the default spec changed to an SGX-only platform: PCK Processor CA, the SGX QE's
    /// SVN, and FMSPC 00A067110000.
    pub fn sgx() -> Self {
        PlatformSpec {
            fmspc: [0x00, 0xa0, 0x67, 0x11, 0x00, 0x00],
            pce_svn: 13,
            cpu_svn_components: [11, 11, 2, 2, 255, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tdx_components: [0; 16],
            qe_isv_svn: 8,
            pck_ca: PckCa::Processor,
            ..PlatformSpec::default()
        }
    }

    /// Sets the issue and next-update times of the TCB info, the QE identity and both CRLs.
    pub fn with_collateral_validity(mut self, validity: Validity) -> Self {
        self.tcb_info_validity = validity;
        self.qe_identity_validity = validity;
        self.crl_validity = validity;
        self
    }

    fn windows(&self) -> [Validity; 6] {
        [
            self.root_validity,
            self.ca_validity,
            self.pck_validity,
            self.tcb_info_validity,
            self.qe_identity_validity,
            self.crl_validity,
        ]
    }

    /// Returns the times at which every certificate, CRL and collateral document is valid: the
    /// latest start and the earliest end. A verifier must accept at both ends and reject one second
    /// outside. When the windows do not overlap, `not_before` is after `not_after`.
    pub fn valid_window(&self) -> Validity {
        let windows = self.windows();
        Validity {
            not_before: windows.iter().map(|w| w.not_before).max().unwrap_or(0),
            not_after: windows.iter().map(|w| w.not_after).min().unwrap_or(0),
        }
    }

    /// Returns the earliest issue time of the dated collateral (TCB info, QE identity, CRLs),
    /// which a verifier reports as `collateral_issued_at`.
    pub fn collateral_issued_at(&self) -> i64 {
        self.tcb_info_validity
            .not_before
            .min(self.qe_identity_validity.not_before)
            .min(self.crl_validity.not_before)
    }
}

/// The application enclave report that an SGX quote carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgxReportSpec {
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    /// ATTRIBUTES: 8 bytes of flags, then 8 bytes of XFRM. Flag bit 1 is DEBUG.
    pub attributes: [u8; 16],
    pub misc_select: u32,
    pub report_data: [u8; 64],
}

impl Default for SgxReportSpec {
    /// Returns a production (non-debug) enclave with flags INIT | MODE64BIT and XFRM 0xe7.
    fn default() -> Self {
        SgxReportSpec {
            mr_enclave: [0x11; 32],
            mr_signer: [0x22; 32],
            isv_prod_id: 0,
            isv_svn: 0,
            attributes: [0x05, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0],
            misc_select: 0,
            report_data: [0; 64],
        }
    }
}

impl SgxReportSpec {
    /// The DEBUG flag in the first byte of ATTRIBUTES.
    pub const DEBUG_FLAG: u8 = 0x02;

    /// Sets or clears the DEBUG attribute.
    pub fn set_debug(&mut self, debug: bool) {
        if debug {
            self.attributes[0] |= Self::DEBUG_FLAG;
        } else {
            self.attributes[0] &= !Self::DEBUG_FLAG;
        }
    }
}

/// The TD report (TDX 1.0 layout) that a TDX quote carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReportSpec {
    /// TEE_TCB_SVN: byte 0 is the TDX module SVN and byte 1 its major version. The platform's
    /// TDX TCB level matches when each byte is at least the `tdx_components` byte.
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM: zero for Intel's TDX modules, as the TCB info's `tdxModule` expects.
    pub mr_signer_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES, little-endian. Bit 0 is DEBUG; bit 28 is SEPT_VE_DISABLE.
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// TEE_TCB_SVN2 and MRSERVICETD of a TD 1.5 report body. When set, a v5 quote carries
    /// body type 3 (648 bytes) instead of the TD 1.0 body; v4 quotes cannot carry them.
    pub td15: Option<Td15Fields>,
}

/// The fields that a TD 1.5 report body appends to the TD 1.0 body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Td15Fields {
    pub tee_tcb_svn2: [u8; 16],
    pub mr_service_td: [u8; 48],
}

impl Default for TdReportSpec {
    /// Returns a production (non-debug) TD with SEPT_VE_DISABLE set, on TDX module 1.x SVN 5.
    fn default() -> Self {
        TdReportSpec {
            tee_tcb_svn: [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mr_seam: [0x5e; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: [0, 0, 0, 0x10, 0, 0, 0, 0],
            xfam: [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0],
            mr_td: [0x33; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr: [[0x44; 48], [0x55; 48], [0x66; 48], [0; 48]],
            report_data: [0; 64],
            td15: None,
        }
    }
}

impl TdReportSpec {
    /// The DEBUG flag in the first byte of TDATTRIBUTES.
    pub const DEBUG_FLAG: u8 = 0x01;

    /// Sets or clears the DEBUG attribute.
    pub fn set_debug(&mut self, debug: bool) {
        if debug {
            self.td_attributes[0] |= Self::DEBUG_FLAG;
        } else {
            self.td_attributes[0] &= !Self::DEBUG_FLAG;
        }
    }
}

/// A simulated SGX/TDX platform: a test Intel PKI, a PCK certificate for the platform, a
/// quoting enclave attestation key, and the signed collateral that describes the platform.
pub struct TestPlatform {
    spec: PlatformSpec,
    pki: Pki,
    attestation_key: SigningKey,
    /// The QE ID in the quote header's user data.
    qe_id: [u8; 16],
    tcb_info_sgx: SignedJson,
    tcb_info_tdx: SignedJson,
    qe_identity_sgx: SignedJson,
    qe_identity_tdx: SignedJson,
}

/// Shows the spec only, so that no private key reaches a log.
impl fmt::Debug for TestPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPlatform")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TestPlatform {
    /// Generates the keys, certificates, CRLs and signed collateral for `spec`.
    ///
    /// # Panics
    ///
    /// When `crl_validity` ends before it starts, or a validity time is outside the range of
    /// `time::OffsetDateTime`. Other inverted windows are written as given.
    pub fn new(spec: &PlatformSpec) -> TestPlatform {
        let pki = Pki::generate(spec);
        let attestation_key = SigningKey::generate();
        let mut qe_id = [0u8; 16];
        let qe_id_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spec.ppid);
        qe_id.copy_from_slice(&qe_id_hash.as_ref()[..16]);

        let tcb_signing_key = &pki.tcb_signing.key;
        let tcb_info_sgx = collateral::tcb_info(spec, false, tcb_signing_key);
        let tcb_info_tdx = collateral::tcb_info(spec, true, tcb_signing_key);
        let qe_identity_sgx = collateral::qe_identity(spec, false, tcb_signing_key);
        let qe_identity_tdx = collateral::qe_identity(spec, true, tcb_signing_key);
        TestPlatform {
            spec: spec.clone(),
            pki,
            attestation_key,
            qe_id,
            tcb_info_sgx,
            tcb_info_tdx,
            qe_identity_sgx,
            qe_identity_tdx,
        }
    }

    /// Returns the spec this platform was built from.
    pub fn spec(&self) -> &PlatformSpec {
        &self.spec
    }

    /// Returns the test "Intel SGX Root CA" certificate (DER), the trust anchor for everything
    /// here.
    pub fn root_der(&self) -> Vec<u8> {
        self.pki.root.der.clone()
    }

    /// Returns the PCK CA certificate (DER), Processor or Platform as `spec.pck_ca` selects.
    pub fn pck_ca_der(&self) -> Vec<u8> {
        self.pki.pck_ca.der.clone()
    }

    /// Returns the platform's PCK certificate (DER), as the quotes embed it.
    pub fn pck_der(&self) -> Vec<u8> {
        self.pki.pck.der.clone()
    }

    /// Returns the TCB signing certificate (DER) that signs TCB info and QE identity.
    pub fn tcb_signing_der(&self) -> Vec<u8> {
        self.pki.tcb_signing.der.clone()
    }

    /// Returns the attestation public key as the 64 bytes x||y that quotes carry.
    pub fn attestation_public_key(&self) -> [u8; 64] {
        self.attestation_key.public_xy()
    }

    /// Returns the collateral for SGX quotes: TCB info with id `SGX` and QE identity with id `QE`.
    pub fn collateral_sgx(&self) -> Collateral {
        self.collateral(&self.tcb_info_sgx, &self.qe_identity_sgx)
    }

    /// Returns the collateral for TDX quotes: TCB info with id `TDX` (with `tdxModule`,
    /// `tdxModuleIdentities` and `tdxtcbcomponents`) and QE identity with id `TD_QE`.
    pub fn collateral_tdx(&self) -> Collateral {
        self.collateral(&self.tcb_info_tdx, &self.qe_identity_tdx)
    }

    fn collateral(&self, tcb_info: &SignedJson, qe_identity: &SignedJson) -> Collateral {
        let tcb_chain = vec![self.pki.tcb_signing.der.clone(), self.pki.root.der.clone()];
        Collateral {
            pck_crl_issuer_chain: vec![self.pki.pck_ca.der.clone(), self.pki.root.der.clone()],
            root_ca_crl: self.pki.root_crl.clone(),
            pck_crl: self.pki.pck_crl.clone(),
            tcb_info_issuer_chain: tcb_chain.clone(),
            tcb_info: tcb_info.json.clone(),
            tcb_info_signature: tcb_info.signature.to_vec(),
            qe_identity_issuer_chain: tcb_chain,
            qe_identity: qe_identity.json.clone(),
            qe_identity_signature: qe_identity.signature.to_vec(),
        }
    }

    /// Builds an SGX quote v3 for `report`, with type 5 certification data (the PEM PCK chain).
    pub fn sgx_quote(&self, report: &SgxReportSpec) -> Vec<u8> {
        quote::sgx_quote(self, report)
    }

    /// Builds a TDX quote of `version` 4, or 5 with a TD 1.0 body (body type 2) or, when
    /// `report.td15` is set, a TD 1.5 body (body type 3). The certification data is type 6 and
    /// nests the type 5 PEM PCK chain.
    ///
    /// # Panics
    ///
    /// When `version` is neither 4 nor 5, or is 4 with `report.td15` set.
    pub fn tdx_quote(&self, report: &TdReportSpec, version: u16) -> Vec<u8> {
        quote::tdx_quote(self, report, version)
    }

    /// Writes the collateral as PCS response files into `dir`, which must exist:
    /// `tcb_info.json` (`{"tcbInfo":..,"signature":..}`), `qe_identity.json`
    /// (`{"enclaveIdentity":..,"signature":..}`), `tcb_info_issuer_chain.pem`, `pck_crl.der`,
    /// `pck_crl_issuer_chain.pem` and `root_ca_crl.der`. The QE identity has the same issuer
    /// chain as the TCB info, so it gets no file of its own.
    pub fn write_pcs_folder(&self, dir: &Path, tdx: bool) -> io::Result<()> {
        let (tcb_info, qe_identity) = if tdx {
            (&self.tcb_info_tdx, &self.qe_identity_tdx)
        } else {
            (&self.tcb_info_sgx, &self.qe_identity_sgx)
        };
        let pki = &self.pki;
        fs::write(dir.join("tcb_info.json"), tcb_info.pcs_body("tcbInfo"))?;
        fs::write(
            dir.join("qe_identity.json"),
            qe_identity.pcs_body("enclaveIdentity"),
        )?;
        fs::write(
            dir.join("tcb_info_issuer_chain.pem"),
            pem(&pki.tcb_signing.der) + &pem(&pki.root.der),
        )?;
        fs::write(dir.join("pck_crl.der"), &pki.pck_crl)?;
        fs::write(
            dir.join("pck_crl_issuer_chain.pem"),
            pem(&pki.pck_ca.der) + &pem(&pki.root.der),
        )?;
        fs::write(dir.join("root_ca_crl.der"), &pki.root_crl)?;
        Ok(())
    }
}
