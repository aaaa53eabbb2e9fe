//! Parsing of DCAP quotes: SGX quote v3, TDX quote v4 and v5. No cryptography happens here.

use super::der;
use crate::VerifyError;

const SGX_REPORT_LEN: usize = 384;
const TD10_REPORT_LEN: usize = 584;
const TD15_REPORT_LEN: usize = 648;
const ECDSA_SIGNATURE_LEN: usize = 64;
const ECDSA_KEY_LEN: usize = 64;

/// Attestation key type 2: ECDSA-P256 with SHA-256, the only type Intel's QE produces today.
pub const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
/// TEE type of SGX quotes.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// TEE type of TDX quotes.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Certification data type 5: the PCK certificate chain.
pub const CERT_DATA_PCK_CHAIN: u16 = 5;
/// Certification data type 6: the QE report certification data, which nests a type 5 chain.
pub const CERT_DATA_QE_REPORT: u16 = 6;

/// A parsed DCAP quote: header, body, signature data and the PCK chain it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub version: u16,
    pub attestation_key_type: u16,
    /// 0 for SGX, 0x81 for TDX. Quote v3 has no TEE type field and always carries 0 there.
    pub tee_type: u32,
    pub qe_vendor_id: [u8; 16],
    pub user_data: [u8; 20],
    pub body: Body,
    /// The bytes the ISV signature covers: the header and body (with the v5 body descriptor).
    pub signed_data: Vec<u8>,
    /// ECDSA signature (raw r||s) over `signed_data` by the attestation key.
    pub signature: [u8; 64],
    /// The attestation public key as raw x||y coordinates.
    pub attestation_key: [u8; 64],
    /// The QE report: an SGX report body.
    pub qe_report: SgxReport,
    /// The raw 384 bytes of the QE report, which the PCK key signs.
    pub qe_report_bytes: Vec<u8>,
    /// ECDSA signature (raw r||s) over the QE report by the PCK key.
    pub qe_report_signature: [u8; 64],
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain as DER certificates, in the order the quote lists them.
    pub pck_chain: Vec<Vec<u8>>,
}

/// The attested report in a quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Sgx(SgxReport),
    /// A TD report: TD 1.0 (v4, v5 body type 2) or TD 1.5 (v5 body type 3).
    Td(Box<TdReport>),
}

/// An SGX report body (384 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgxReport {
    pub cpu_svn: [u8; 16],
    pub misc_select: u32,
    pub attributes: [u8; 16],
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub report_data: [u8; 64],
}

/// A TD report body: 584 bytes for TD 1.0, 648 for TD 1.5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mr_signer_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub tee_tcb_svn2: Option<[u8; 16]>,
    pub mr_service_td: Option<[u8; 48]>,
}

/// A bounds-checked cursor over quote bytes.
struct Reader<'a> {
    input: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input, offset: 0 }
    }

    fn take(&mut self, len: usize, context: &str) -> Result<&'a [u8], VerifyError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.input.len());
        match end {
            Some(end) => {
                let bytes = &self.input[self.offset..end];
                self.offset = end;
                Ok(bytes)
            }
            None => Err(VerifyError::malformed(format!(
                "quote truncated: {context} needs {len} bytes at offset {}, but only {} remain",
                self.offset,
                self.input.len().saturating_sub(self.offset)
            ))),
        }
    }

    fn array<const N: usize>(&mut self, context: &str) -> Result<[u8; N], VerifyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, context)?);
        Ok(out)
    }

    fn u16(&mut self, context: &str) -> Result<u16, VerifyError> {
        Ok(u16::from_le_bytes(self.array(context)?))
    }

    fn u32(&mut self, context: &str) -> Result<u32, VerifyError> {
        Ok(u32::from_le_bytes(self.array(context)?))
    }
}

/// Parses a DCAP quote (v3, v4 or v5) without checking any signature. Bytes after the
/// signature data are ignored, because real quotes may be padded with zeros.
pub fn parse_quote(bytes: &[u8]) -> Result<Quote, VerifyError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u16("header version")?;
    let attestation_key_type = reader.u16("header attestation key type")?;
    let tee_type = reader.u32("header TEE type")?;
    reader.take(4, "header reserved bytes")?;
    let qe_vendor_id = reader.array("header QE vendor ID")?;
    let user_data = reader.array("header user data")?;
    if attestation_key_type != ATTESTATION_KEY_ECDSA_P256 {
        return Err(VerifyError::malformed(format!(
            "quote attestation key type {attestation_key_type} is not supported; expected 2 (ECDSA-P256)"
        )));
    }

    let body = match version {
        3 => {
            if tee_type != TEE_TYPE_SGX {
                return Err(VerifyError::malformed(format!(
                    "quote v3 has TEE type 0x{tee_type:x}; expected 0 (SGX)"
                )));
            }
            Body::Sgx(parse_sgx_report(
                reader.take(SGX_REPORT_LEN, "SGX report body")?,
            ))
        }
        4 => match tee_type {
            TEE_TYPE_TDX => Body::Td(Box::new(parse_td_report(
                reader.take(TD10_REPORT_LEN, "TD report body")?,
                false,
            ))),
            TEE_TYPE_SGX => Body::Sgx(parse_sgx_report(
                reader.take(SGX_REPORT_LEN, "SGX report body")?,
            )),
            other => {
                return Err(VerifyError::malformed(format!(
                    "quote v4 has TEE type 0x{other:x}; expected 0x81 (TDX) or 0 (SGX)"
                )));
            }
        },
        5 => parse_v5_body(&mut reader, tee_type)?,
        other => {
            return Err(VerifyError::malformed(format!(
                "quote version {other} is not supported; expected 3, 4 or 5"
            )));
        }
    };
    let signed_data = bytes[..reader.offset].to_vec();

    let signature_data_len = reader.u32("signature data length")?;
    let signature_data = reader.take(
        usize::try_from(signature_data_len).unwrap_or(usize::MAX),
        "signature data",
    )?;
    let mut reader = Reader::new(signature_data);
    let signature = reader.array::<ECDSA_SIGNATURE_LEN>("ISV signature")?;
    let attestation_key = reader.array::<ECDSA_KEY_LEN>("attestation key")?;

    let (qe, pck_chain) = if version == 3 {
        let qe = parse_qe_certification(&mut reader)?;
        let (cert_type, cert_data) = read_cert_data(&mut reader, "certification data")?;
        if cert_type != CERT_DATA_PCK_CHAIN {
            return Err(VerifyError::malformed(format!(
                "quote v3 certification data type {cert_type} is not supported; expected 5 (PCK chain)"
            )));
        }
        (qe, parse_pck_chain(cert_data)?)
    } else {
        let (cert_type, cert_data) = read_cert_data(&mut reader, "certification data")?;
        if cert_type != CERT_DATA_QE_REPORT {
            return Err(VerifyError::malformed(format!(
                "quote v{version} certification data type {cert_type} is not supported; expected 6 (QE report)"
            )));
        }
        let mut inner = Reader::new(cert_data);
        let qe = parse_qe_certification(&mut inner)?;
        let (inner_type, inner_data) = read_cert_data(&mut inner, "QE certification data")?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(VerifyError::malformed(format!(
                "QE certification data type {inner_type} is not supported; expected 5 (PCK chain)"
            )));
        }
        (qe, parse_pck_chain(inner_data)?)
    };

    Ok(Quote {
        version,
        attestation_key_type,
        tee_type,
        qe_vendor_id,
        user_data,
        body,
        signed_data,
        signature,
        attestation_key,
        qe_report: parse_sgx_report(&qe.report),
        qe_report_bytes: qe.report,
        qe_report_signature: qe.signature,
        qe_auth_data: qe.auth_data,
        pck_chain,
    })
}

fn parse_v5_body(reader: &mut Reader<'_>, tee_type: u32) -> Result<Body, VerifyError> {
    let body_type = reader.u16("v5 body type")?;
    let body_size = reader.u32("v5 body size")?;
    let (expected_tee, expected_size) = match body_type {
        1 => (TEE_TYPE_SGX, SGX_REPORT_LEN),
        2 => (TEE_TYPE_TDX, TD10_REPORT_LEN),
        3 => (TEE_TYPE_TDX, TD15_REPORT_LEN),
        other => {
            return Err(VerifyError::malformed(format!(
                "quote v5 body type {other} is not supported; expected 1 (SGX), 2 (TD 1.0) or 3 (TD 1.5)"
            )));
        }
    };
    if tee_type != expected_tee {
        return Err(VerifyError::malformed(format!(
            "quote v5 body type {body_type} needs TEE type 0x{expected_tee:x}, but the header has 0x{tee_type:x}"
        )));
    }
    if usize::try_from(body_size).ok() != Some(expected_size) {
        return Err(VerifyError::malformed(format!(
            "quote v5 body type {body_type} has size {body_size}; expected {expected_size}"
        )));
    }
    let body = reader.take(expected_size, "v5 body")?;
    Ok(match body_type {
        1 => Body::Sgx(parse_sgx_report(body)),
        2 => Body::Td(Box::new(parse_td_report(body, false))),
        _ => Body::Td(Box::new(parse_td_report(body, true))),
    })
}

struct QeCertification {
    report: Vec<u8>,
    signature: [u8; 64],
    auth_data: Vec<u8>,
}

/// Reads the QE report, its signature and the QE authentication data.
fn parse_qe_certification(reader: &mut Reader<'_>) -> Result<QeCertification, VerifyError> {
    let report = reader.take(SGX_REPORT_LEN, "QE report")?.to_vec();
    let signature = reader.array::<ECDSA_SIGNATURE_LEN>("QE report signature")?;
    let auth_len = reader.u16("QE authentication data length")?;
    let auth_data = reader
        .take(usize::from(auth_len), "QE authentication data")?
        .to_vec();
    Ok(QeCertification {
        report,
        signature,
        auth_data,
    })
}

fn read_cert_data<'a>(
    reader: &mut Reader<'a>,
    context: &str,
) -> Result<(u16, &'a [u8]), VerifyError> {
    let cert_type = reader.u16(&format!("{context} type"))?;
    let size = reader.u32(&format!("{context} size"))?;
    let data = reader.take(
        usize::try_from(size).unwrap_or(usize::MAX),
        &format!("{context} (type {cert_type})"),
    )?;
    Ok((cert_type, data))
}

/// Decodes the type 5 certification data: PEM certificates or concatenated DER certificates,
/// in either order.
fn parse_pck_chain(data: &[u8]) -> Result<Vec<Vec<u8>>, VerifyError> {
    let trimmed = trim_trailing_nul(data);
    let certs: Vec<Vec<u8>> = if trimmed.first() == Some(&der::TAG_SEQUENCE) {
        der::split_sequences(trimmed, "PCK certificate chain")?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        super::pem::decode_all(trimmed, "CERTIFICATE", "PCK certificate chain")?
    };
    if certs.is_empty() {
        return Err(VerifyError::malformed(
            "quote PCK certificate chain contains no certificate",
        ));
    }
    Ok(certs)
}

fn trim_trailing_nul(data: &[u8]) -> &[u8] {
    let end = data
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |index| index + 1);
    &data[..end]
}

fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(slice) = bytes.get(offset..offset + N) {
        out.copy_from_slice(slice);
    }
    out
}

/// Decodes an SGX report body. The caller passes exactly 384 bytes.
fn parse_sgx_report(body: &[u8]) -> SgxReport {
    SgxReport {
        cpu_svn: array_at(body, 0),
        misc_select: u32::from_le_bytes(array_at(body, 16)),
        attributes: array_at(body, 48),
        mr_enclave: array_at(body, 64),
        mr_signer: array_at(body, 128),
        isv_prod_id: u16::from_le_bytes(array_at(body, 256)),
        isv_svn: u16::from_le_bytes(array_at(body, 258)),
        report_data: array_at(body, 320),
    }
}

/// Decodes a TD report body. The caller passes exactly 584 (TD 1.0) or 648 (TD 1.5) bytes.
fn parse_td_report(body: &[u8], td15: bool) -> TdReport {
    TdReport {
        tee_tcb_svn: array_at(body, 0),
        mr_seam: array_at(body, 16),
        mr_signer_seam: array_at(body, 64),
        seam_attributes: array_at(body, 112),
        td_attributes: array_at(body, 120),
        xfam: array_at(body, 128),
        mr_td: array_at(body, 136),
        mr_config_id: array_at(body, 184),
        mr_owner: array_at(body, 232),
        mr_owner_config: array_at(body, 280),
        rtmr: [
            array_at(body, 328),
            array_at(body, 376),
            array_at(body, 424),
            array_at(body, 472),
        ],
        report_data: array_at(body, 520),
        tee_tcb_svn2: td15.then(|| array_at(body, 584)),
        mr_service_td: td15.then(|| array_at(body, 600)),
    }
}
