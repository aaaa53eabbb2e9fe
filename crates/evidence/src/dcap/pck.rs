//! The Intel SGX extension (OID 1.2.840.113741.1.13.1) of PCK certificates, which carries the
//! platform's FMSPC, PCE ID and TCB (Intel's "PCK Certificate and CRL Profile").

use x509_parser::certificate::X509Certificate;

use super::der;
use crate::VerifyError;

/// DER content of OID 1.2.840.113741.1.13.1, the SGX extension.
const SGX_EXTENSION_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];

/// The platform values a PCK certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PckExtension {
    pub ppid: [u8; 16],
    /// The 16 CPUSVN component SVNs, which TCB levels compare one by one.
    pub cpu_svn_components: [u8; 16],
    pub pce_svn: u16,
    pub cpu_svn: [u8; 16],
    pub pce_id: [u8; 2],
    pub fmspc: [u8; 6],
}

/// Checks whether the certificate carries the SGX extension, which marks a PCK leaf.
pub(crate) fn has_sgx_extension(cert: &X509Certificate<'_>) -> bool {
    cert.extensions()
        .iter()
        .any(|ext| ext.oid.as_bytes() == SGX_EXTENSION_OID)
}

/// Reads the SGX extension of a PCK certificate.
pub fn parse_pck_extension(cert: &X509Certificate<'_>) -> Result<PckExtension, VerifyError> {
    let extension = cert
        .extensions()
        .iter()
        .find(|ext| ext.oid.as_bytes() == SGX_EXTENSION_OID)
        .ok_or_else(|| {
            VerifyError::malformed("PCK certificate has no SGX extension (1.2.840.113741.1.13.1)")
        })?;
    let context = "PCK certificate SGX extension";
    let (outer, _) = der::expect(extension.value, der::TAG_SEQUENCE, context)?;

    let mut ppid = None;
    let mut tcb = None;
    let mut pce_id = None;
    let mut fmspc = None;
    let mut rest = outer.content;
    while !rest.is_empty() {
        let (entry, after) = der::expect(rest, der::TAG_SEQUENCE, context)?;
        rest = after;
        let (oid, value) = der::expect(entry.content, der::TAG_OID, context)?;
        let Some(suffix) = oid.content.strip_prefix(&SGX_EXTENSION_OID[..]) else {
            continue;
        };
        match suffix {
            [1] => ppid = Some(octets::<16>(value, "PPID")?),
            [2] => tcb = Some(parse_tcb(value)?),
            [3] => pce_id = Some(octets::<2>(value, "PCE-ID")?),
            [4] => fmspc = Some(octets::<6>(value, "FMSPC")?),
            _ => {}
        }
    }

    let missing = |field: &str| VerifyError::malformed(format!("{context}: {field} is missing"));
    let (cpu_svn_components, pce_svn, cpu_svn) = tcb.ok_or_else(|| missing("TCB"))?;
    Ok(PckExtension {
        ppid: ppid.ok_or_else(|| missing("PPID"))?,
        cpu_svn_components,
        pce_svn,
        cpu_svn,
        pce_id: pce_id.ok_or_else(|| missing("PCE-ID"))?,
        fmspc: fmspc.ok_or_else(|| missing("FMSPC"))?,
    })
}

fn octets<const N: usize>(value: &[u8], field: &str) -> Result<[u8; N], VerifyError> {
    let context = format!("PCK certificate SGX extension {field}");
    let (element, _) = der::expect(value, der::TAG_OCTET_STRING, &context)?;
    <[u8; N]>::try_from(element.content).map_err(|_| {
        VerifyError::malformed(format!(
            "{context} has {} bytes; expected {N}",
            element.content.len()
        ))
    })
}

/// Reads the TCB sequence: 16 component SVNs (sub-OIDs 1..16), PCESVN (17) and CPUSVN (18).
fn parse_tcb(value: &[u8]) -> Result<([u8; 16], u16, [u8; 16]), VerifyError> {
    let context = "PCK certificate SGX extension TCB";
    let (sequence, _) = der::expect(value, der::TAG_SEQUENCE, context)?;

    let mut components = [None::<u8>; 16];
    let mut pce_svn = None;
    let mut cpu_svn = None;
    let mut rest = sequence.content;
    while !rest.is_empty() {
        let (entry, after) = der::expect(rest, der::TAG_SEQUENCE, context)?;
        rest = after;
        let (oid, value) = der::expect(entry.content, der::TAG_OID, context)?;
        let Some(suffix) = oid.content.strip_prefix(&SGX_EXTENSION_OID[..]) else {
            continue;
        };
        match suffix {
            [2, index @ 1..=16] => {
                let (integer, _) = der::expect(value, der::TAG_INTEGER, context)?;
                let svn = der::unsigned(integer.content, context)?;
                let svn = u8::try_from(svn).map_err(|_| {
                    VerifyError::malformed(format!(
                        "{context}: component {index} SVN {svn} exceeds 255"
                    ))
                })?;
                if let Some(slot) = components.get_mut(usize::from(*index) - 1) {
                    *slot = Some(svn);
                }
            }
            [2, 17] => {
                let (integer, _) = der::expect(value, der::TAG_INTEGER, context)?;
                let svn = der::unsigned(integer.content, context)?;
                pce_svn = Some(u16::try_from(svn).map_err(|_| {
                    VerifyError::malformed(format!("{context}: PCESVN {svn} exceeds 65535"))
                })?);
            }
            [2, 18] => cpu_svn = Some(octets::<16>(value, "CPUSVN")?),
            _ => {}
        }
    }

    let mut out = [0u8; 16];
    for (index, (slot, component)) in out.iter_mut().zip(components).enumerate() {
        *slot = component.ok_or_else(|| {
            VerifyError::malformed(format!("{context}: component {} SVN is missing", index + 1))
        })?;
    }
    let pce_svn =
        pce_svn.ok_or_else(|| VerifyError::malformed(format!("{context}: PCESVN is missing")))?;
    let cpu_svn =
        cpu_svn.ok_or_else(|| VerifyError::malformed(format!("{context}: CPUSVN is missing")))?;
    Ok((out, pce_svn, cpu_svn))
}
