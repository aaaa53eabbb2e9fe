//! Quote layouts: SGX quote v3 and TDX quote v4 and v5, as Intel's quoting enclaves emit them.
//!
//! All integers are little-endian. The quote header is 48 bytes. The SGX body is a 384-byte
//! enclave report, and the TDX body is a 584-byte TD report (TDX 1.0). After the body comes a
//! u32 signature data length and then the ECDSA-P256 signature data. Its fields are the
//! attestation key's signature over header and body, the attestation key, and the
//! certification data.

use aws_lc_rs::digest::{SHA256, digest};

use super::pki::{SigningKey, pem};
use super::{SgxReportSpec, TdReportSpec, TestPlatform};

/// Intel's QE vendor ID, in every quote header from Intel's quoting enclaves.
const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// MRSIGNER and ISVPRODID of Intel's SGX quoting enclave (QE identity id `QE`).
pub(super) const SGX_QE_MR_SIGNER: [u8; 32] =
    hex_literal("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff");
pub(super) const SGX_QE_PROD_ID: u16 = 1;
/// MRSIGNER and ISVPRODID of Intel's TD quoting enclave (QE identity id `TD_QE`).
pub(super) const TD_QE_MR_SIGNER: [u8; 32] =
    hex_literal("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5");
pub(super) const TD_QE_PROD_ID: u16 = 2;
/// MRENCLAVE values of released quoting enclaves. QE identity does not constrain them.
const SGX_QE_MR_ENCLAVE: [u8; 32] =
    hex_literal("96b347a64e5a045e27369c26e6dcda51fd7c850e9b3a3a79e718f43261dee1e4");
const TD_QE_MR_ENCLAVE: [u8; 32] =
    hex_literal("e5a3a7b5d830c2953b98534c6c59a3a34fdc34e933f7f5898f0a85cf08846bca");
/// The QE's ATTRIBUTES: flags INIT | MODE64BIT | PROVISIONKEY, XFRM 0xe7.
const QE_ATTRIBUTES: [u8; 16] = [0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0];

/// The QE authentication data Intel's quoting enclaves put in quotes: the bytes 0 to 31.
const QE_AUTH_DATA: [u8; 32] = {
    let mut data = [0u8; 32];
    let mut index = 0;
    while index < 32 {
        data[index] = index as u8;
        index += 1;
    }
    data
};

const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
const TEE_TYPE_SGX: u32 = 0x0000_0000;
const TEE_TYPE_TDX: u32 = 0x0000_0081;
/// Certification data type 5: the PCK leaf, PCK CA and root certificates as PEM.
const CERT_DATA_PCK_CHAIN: u16 = 5;
/// Certification data type 6: the QE report certification data, which nests type 5.
const CERT_DATA_QE_REPORT: u16 = 6;
/// Body types of quote v5.
const BODY_TYPE_TD10: u16 = 2;
const BODY_TYPE_TD15: u16 = 3;
const SGX_REPORT_BODY_LEN: usize = 384;
const TD10_REPORT_BODY_LEN: usize = 584;
const TD15_REPORT_BODY_LEN: usize = 648;
const HEADER_LEN: usize = 48;

const fn hex_literal<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() == 2 * N, "hex literal has the wrong length");
    let mut out = [0u8; N];
    let mut index = 0;
    while index < N {
        out[index] = (hex_digit(bytes[2 * index]) << 4) | hex_digit(bytes[2 * index + 1]);
        index += 1;
    }
    out
}

const fn hex_digit(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => panic!("hex literal must be lowercase hex"),
    }
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn len_u32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("quote sections are far below 4 GiB")
}

/// Builds the 48-byte quote header. Bytes 4..8 are the TEE type, which is zero in v3.
/// Bytes 8..12 carry QE SVN and PCE SVN in v3 and are reserved in v4 and v5.
/// User data is the QE ID followed by four zero bytes.
fn header(version: u16, tee_type: u32, qe_svn: u16, pce_svn: u16, qe_id: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    put_u16(&mut out, version);
    put_u16(&mut out, ATTESTATION_KEY_TYPE_ECDSA_P256);
    put_u32(&mut out, tee_type);
    put_u16(&mut out, qe_svn);
    put_u16(&mut out, pce_svn);
    out.extend_from_slice(&INTEL_QE_VENDOR_ID);
    out.extend_from_slice(qe_id);
    out.extend_from_slice(&[0u8; 4]);
    out
}

/// The fields of a 384-byte SGX enclave report body (`sgx_report_body_t`) that this kit sets.
/// Every reserved field and ISVEXTPRODID, CONFIGID, CONFIGSVN and ISVFAMILYID are zero.
struct ReportBody<'a> {
    cpu_svn: &'a [u8; 16],
    misc_select: u32,
    attributes: &'a [u8; 16],
    mr_enclave: &'a [u8; 32],
    mr_signer: &'a [u8; 32],
    isv_prod_id: u16,
    isv_svn: u16,
    report_data: &'a [u8; 64],
}

fn report_body(fields: &ReportBody<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(SGX_REPORT_BODY_LEN);
    out.extend_from_slice(fields.cpu_svn); // 0: CPUSVN
    put_u32(&mut out, fields.misc_select); // 16: MISCSELECT
    out.extend_from_slice(&[0u8; 12]); // 20: reserved
    out.extend_from_slice(&[0u8; 16]); // 32: ISVEXTPRODID
    out.extend_from_slice(fields.attributes); // 48: ATTRIBUTES
    out.extend_from_slice(fields.mr_enclave); // 64: MRENCLAVE
    out.extend_from_slice(&[0u8; 32]); // 96: reserved
    out.extend_from_slice(fields.mr_signer); // 128: MRSIGNER
    out.extend_from_slice(&[0u8; 32]); // 160: reserved
    out.extend_from_slice(&[0u8; 64]); // 192: CONFIGID
    put_u16(&mut out, fields.isv_prod_id); // 256: ISVPRODID
    put_u16(&mut out, fields.isv_svn); // 258: ISVSVN
    put_u16(&mut out, 0); // 260: CONFIGSVN
    out.extend_from_slice(&[0u8; 42]); // 262: reserved
    out.extend_from_slice(&[0u8; 16]); // 304: ISVFAMILYID
    out.extend_from_slice(fields.report_data); // 320: REPORTDATA
    debug_assert_eq!(out.len(), SGX_REPORT_BODY_LEN);
    out
}

/// Builds the 584-byte TD report body of TDX 1.0, followed by TEE_TCB_SVN2 and MRSERVICETD
/// (648 bytes in all) when `report.td15` is set.
fn td_report_body(report: &TdReportSpec) -> Vec<u8> {
    let mut out = Vec::with_capacity(TD15_REPORT_BODY_LEN);
    out.extend_from_slice(&report.tee_tcb_svn); // 0: TEE_TCB_SVN
    out.extend_from_slice(&report.mr_seam); // 16: MRSEAM
    out.extend_from_slice(&report.mr_signer_seam); // 64: MRSIGNERSEAM
    out.extend_from_slice(&report.seam_attributes); // 112: SEAMATTRIBUTES
    out.extend_from_slice(&report.td_attributes); // 120: TDATTRIBUTES
    out.extend_from_slice(&report.xfam); // 128: XFAM
    out.extend_from_slice(&report.mr_td); // 136: MRTD
    out.extend_from_slice(&report.mr_config_id); // 184: MRCONFIGID
    out.extend_from_slice(&report.mr_owner); // 232: MROWNER
    out.extend_from_slice(&report.mr_owner_config); // 280: MROWNERCONFIG
    for rtmr in &report.rtmr {
        out.extend_from_slice(rtmr); // 328, 376, 424, 472: RTMR0..3
    }
    out.extend_from_slice(&report.report_data); // 520: REPORTDATA
    debug_assert_eq!(out.len(), TD10_REPORT_BODY_LEN);
    if let Some(td15) = &report.td15 {
        out.extend_from_slice(&td15.tee_tcb_svn2); // 584: TEE_TCB_SVN2
        out.extend_from_slice(&td15.mr_service_td); // 600: MRSERVICETD
        debug_assert_eq!(out.len(), TD15_REPORT_BODY_LEN);
    }
    out
}

/// Builds the part of the signature data that certifies the attestation key: the QE report,
/// its signature by the PCK key, the QE authentication data and the type 5 PCK chain.
fn qe_certification(platform: &TestPlatform, tdx: bool, attestation_key: &[u8; 64]) -> Vec<u8> {
    let mut report_data = [0u8; 64];
    let mut hashed = attestation_key.to_vec();
    hashed.extend_from_slice(&QE_AUTH_DATA);
    report_data[..32].copy_from_slice(digest(&SHA256, &hashed).as_ref());

    let (mr_enclave, mr_signer, isv_prod_id) = if tdx {
        (&TD_QE_MR_ENCLAVE, &TD_QE_MR_SIGNER, TD_QE_PROD_ID)
    } else {
        (&SGX_QE_MR_ENCLAVE, &SGX_QE_MR_SIGNER, SGX_QE_PROD_ID)
    };
    let qe_report = report_body(&ReportBody {
        cpu_svn: &platform.spec.cpu_svn_components,
        misc_select: 0,
        attributes: &QE_ATTRIBUTES,
        mr_enclave,
        mr_signer,
        isv_prod_id,
        isv_svn: platform.spec.qe_isv_svn,
        report_data: &report_data,
    });
    let qe_report_signature = platform.pki.pck.key.sign_raw(&qe_report);

    let mut out = qe_report;
    out.extend_from_slice(&qe_report_signature);
    put_u16(&mut out, QE_AUTH_DATA.len() as u16);
    out.extend_from_slice(&QE_AUTH_DATA);
    let chain = pck_chain(platform);
    put_u16(&mut out, CERT_DATA_PCK_CHAIN);
    put_u32(&mut out, len_u32(&chain));
    out.extend_from_slice(&chain);
    out
}

/// Builds the type 5 certification data: PCK leaf, PCK CA and root as PEM, ending with a NUL
/// byte as in quotes from Intel's quoting enclaves.
fn pck_chain(platform: &TestPlatform) -> Vec<u8> {
    let pki = &platform.pki;
    let mut chain = String::new();
    for der in [&pki.pck.der, &pki.pck_ca.der, &pki.root.der] {
        chain.push_str(&pem(der));
    }
    let mut bytes = chain.into_bytes();
    bytes.push(0);
    bytes
}

/// Appends the signature data length and the signature data to `signed` (header and body).
fn sign(
    mut signed: Vec<u8>,
    attestation_key: &SigningKey,
    certification: impl FnOnce(&[u8; 64]) -> Vec<u8>,
) -> Vec<u8> {
    let public_key = attestation_key.public_xy();
    let signature = attestation_key.sign_raw(&signed);
    let certification = certification(&public_key);

    let mut signature_data = Vec::with_capacity(128 + certification.len());
    signature_data.extend_from_slice(&signature);
    signature_data.extend_from_slice(&public_key);
    signature_data.extend_from_slice(&certification);

    put_u32(&mut signed, len_u32(&signature_data));
    signed.extend_from_slice(&signature_data);
    signed
}

pub(super) fn sgx_quote(platform: &TestPlatform, report: &SgxReportSpec) -> Vec<u8> {
    let spec = &platform.spec;
    let mut quote = header(
        3,
        TEE_TYPE_SGX,
        spec.qe_isv_svn,
        spec.pce_svn,
        &platform.qe_id,
    );
    quote.extend_from_slice(&report_body(&ReportBody {
        cpu_svn: &spec.cpu_svn_components,
        misc_select: report.misc_select,
        attributes: &report.attributes,
        mr_enclave: &report.mr_enclave,
        mr_signer: &report.mr_signer,
        isv_prod_id: report.isv_prod_id,
        isv_svn: report.isv_svn,
        report_data: &report.report_data,
    }));
    // Quote v3 carries the QE certification fields directly, ending in type 5 certification
    // data, instead of wrapping them in type 6.
    sign(quote, &platform.attestation_key, |public_key| {
        qe_certification(platform, false, public_key)
    })
}

pub(super) fn tdx_quote(platform: &TestPlatform, report: &TdReportSpec, version: u16) -> Vec<u8> {
    assert!(
        version == 4 || version == 5,
        "TDX quote version {version} is not supported; expected 4 or 5"
    );
    assert!(
        version == 5 || report.td15.is_none(),
        "TDX quote version 4 cannot carry a TD 1.5 body; use version 5"
    );
    let mut quote = header(version, TEE_TYPE_TDX, 0, 0, &platform.qe_id);
    let body = td_report_body(report);
    if version == 5 {
        let body_type = match report.td15 {
            Some(_) => BODY_TYPE_TD15,
            None => BODY_TYPE_TD10,
        };
        put_u16(&mut quote, body_type);
        put_u32(&mut quote, len_u32(&body));
    }
    quote.extend_from_slice(&body);
    sign(quote, &platform.attestation_key, |public_key| {
        let inner = qe_certification(platform, true, public_key);
        let mut out = Vec::with_capacity(6 + inner.len());
        put_u16(&mut out, CERT_DATA_QE_REPORT);
        put_u32(&mut out, len_u32(&inner));
        out.extend_from_slice(&inner);
        out
    })
}
