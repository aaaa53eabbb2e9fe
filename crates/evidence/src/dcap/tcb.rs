//! TCB info and QE identity documents (Intel PCS API v3/v4 layouts) and the TCB level
//! selection that Intel's Quote Verification Library performs.

use serde::Deserialize;
use serde_json::Value;

use super::pki::parse_time;
use crate::{Reason, TcbStatus, VerifyError};

/// One TCB level of a TCB info document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbLevel {
    pub sgx_components: [u16; 16],
    pub pce_svn: u16,
    /// The 16 TDX component SVNs, in TDX TCB info only.
    pub tdx_components: Option<[u16; 16]>,
    pub tcb_date: String,
    pub status: TcbStatus,
    pub advisory_ids: Vec<String>,
}

/// The TDX module signer and attributes that TDX TCB info expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxModule {
    pub mr_signer: Vec<u8>,
    pub attributes: Vec<u8>,
    pub attributes_mask: Vec<u8>,
}

/// A TDX module identity of TDX TCB info (`TDX_01`, `TDX_03`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxModuleIdentity {
    pub id: String,
    pub module: TdxModule,
    pub levels: Vec<IsvLevel>,
}

/// A level keyed by one ISV SVN: QE identity and TDX module identity levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsvLevel {
    pub isv_svn: u16,
    pub tcb_date: String,
    pub status: TcbStatus,
    pub advisory_ids: Vec<String>,
}

/// A parsed TCB info document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbInfo {
    /// `SGX` or `TDX`; version 2 documents have no `id` and are SGX.
    pub id: String,
    pub version: u32,
    pub issue_date: i64,
    pub next_update: i64,
    pub fmspc: [u8; 6],
    pub pce_id: [u8; 2],
    pub levels: Vec<TcbLevel>,
    /// The `tdxModule` MRSIGNER, attributes and mask, in TDX TCB info.
    pub tdx_module: Option<TdxModule>,
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
}

/// A parsed QE identity document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeIdentity {
    /// `QE` for SGX quotes, `TD_QE` for TDX quotes.
    pub id: String,
    pub version: u32,
    pub issue_date: i64,
    pub next_update: i64,
    /// MISCSELECT bytes in report order (the hex string lists the bytes as the report stores
    /// them, not a big-endian number).
    pub misc_select: [u8; 4],
    pub misc_select_mask: [u8; 4],
    pub attributes: [u8; 16],
    pub attributes_mask: [u8; 16],
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub levels: Vec<IsvLevel>,
}

fn malformed(context: &str, detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::malformed(format!("{context}: {detail}"))
}

fn hex_exact<const N: usize>(
    value: &str,
    context: &str,
    field: &str,
) -> Result<[u8; N], VerifyError> {
    let bytes = hex::decode(value)
        .map_err(|error| malformed(context, format!("{field} {value:?} is not hex: {error}")))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        malformed(
            context,
            format!("{field} has {} bytes; expected {N}", bytes.len()),
        )
    })
}

fn parse_status(value: &str, context: &str) -> Result<TcbStatus, VerifyError> {
    value
        .parse::<TcbStatus>()
        .map_err(|_| malformed(context, format!("unknown tcbStatus {value:?}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTcbInfo {
    id: Option<String>,
    version: u32,
    issue_date: String,
    next_update: String,
    fmspc: String,
    pce_id: String,
    tcb_levels: Vec<RawLevel>,
    tdx_module: Option<RawModule>,
    #[serde(default)]
    tdx_module_identities: Vec<RawModule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLevel {
    tcb: Value,
    tcb_date: String,
    tcb_status: String,
    #[serde(default, rename = "advisoryIDs")]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawModule {
    id: Option<String>,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    #[serde(default)]
    tcb_levels: Vec<RawLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawQeIdentity {
    id: String,
    version: u32,
    issue_date: String,
    next_update: String,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<RawLevel>,
}

/// Reads an SVN field as u16.
fn svn(value: Option<&Value>, context: &str, field: &str) -> Result<u16, VerifyError> {
    value
        .and_then(Value::as_u64)
        .and_then(|svn| u16::try_from(svn).ok())
        .ok_or_else(|| {
            malformed(
                context,
                format!("{field} is missing or not an SVN from 0 to 65535"),
            )
        })
}

/// Reads 16 component SVNs from a v3 `[{"svn": n}, ...]` array.
fn component_array(
    value: Option<&Value>,
    context: &str,
    field: &str,
) -> Result<[u16; 16], VerifyError> {
    let items = value
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(context, format!("{field} is missing")))?;
    if items.len() != 16 {
        return Err(malformed(
            context,
            format!("{field} has {} components; expected 16", items.len()),
        ));
    }
    let mut out = [0u16; 16];
    for (slot, item) in out.iter_mut().zip(items) {
        *slot = svn(item.get("svn"), context, field)?;
    }
    Ok(out)
}

fn parse_level(raw: RawLevel, version: u32, context: &str) -> Result<TcbLevel, VerifyError> {
    let (sgx_components, tdx_components) = if version >= 3 {
        let sgx = component_array(raw.tcb.get("sgxtcbcomponents"), context, "sgxtcbcomponents")?;
        let tdx = match raw.tcb.get("tdxtcbcomponents") {
            Some(value) => Some(component_array(Some(value), context, "tdxtcbcomponents")?),
            None => None,
        };
        (sgx, tdx)
    } else {
        let mut sgx = [0u16; 16];
        for (index, slot) in sgx.iter_mut().enumerate() {
            let field = format!("sgxtcbcomp{:02}svn", index + 1);
            *slot = svn(raw.tcb.get(&field), context, &field)?;
        }
        (sgx, None)
    };
    Ok(TcbLevel {
        sgx_components,
        pce_svn: svn(raw.tcb.get("pcesvn"), context, "pcesvn")?,
        tdx_components,
        tcb_date: raw.tcb_date,
        status: parse_status(&raw.tcb_status, context)?,
        advisory_ids: raw.advisory_ids,
    })
}

fn parse_isv_level(raw: RawLevel, context: &str) -> Result<IsvLevel, VerifyError> {
    Ok(IsvLevel {
        isv_svn: svn(raw.tcb.get("isvsvn"), context, "isvsvn")?,
        tcb_date: raw.tcb_date,
        status: parse_status(&raw.tcb_status, context)?,
        advisory_ids: raw.advisory_ids,
    })
}

fn hex_vec(value: &str, context: &str, field: &str) -> Result<Vec<u8>, VerifyError> {
    hex::decode(value)
        .map_err(|error| malformed(context, format!("{field} {value:?} is not hex: {error}")))
}

/// Parses the signed TCB info object (the text the signature covers).
pub fn parse_tcb_info(json: &str) -> Result<TcbInfo, VerifyError> {
    let context = "TCB info";
    let raw: RawTcbInfo = serde_json::from_str(json).map_err(|error| malformed(context, error))?;
    if !matches!(raw.version, 2 | 3) {
        return Err(malformed(
            context,
            format!("version {} is not supported; expected 2 or 3", raw.version),
        ));
    }
    let levels = raw
        .tcb_levels
        .into_iter()
        .map(|level| parse_level(level, raw.version, context))
        .collect::<Result<Vec<_>, _>>()?;
    let module = |raw: &RawModule| -> Result<TdxModule, VerifyError> {
        Ok(TdxModule {
            mr_signer: hex_vec(&raw.mrsigner, context, "tdxModule mrsigner")?,
            attributes: hex_vec(&raw.attributes, context, "tdxModule attributes")?,
            attributes_mask: hex_vec(&raw.attributes_mask, context, "tdxModule attributesMask")?,
        })
    };
    let tdx_module = raw.tdx_module.as_ref().map(module).transpose()?;
    let mut identities = Vec::new();
    for identity in raw.tdx_module_identities {
        identities.push(TdxModuleIdentity {
            module: module(&identity)?,
            id: identity.id.unwrap_or_default(),
            levels: identity
                .tcb_levels
                .into_iter()
                .map(|level| parse_isv_level(level, context))
                .collect::<Result<Vec<_>, _>>()?,
        });
    }
    Ok(TcbInfo {
        id: raw.id.unwrap_or_else(|| "SGX".to_owned()),
        version: raw.version,
        issue_date: parse_time(&raw.issue_date, "TCB info issueDate")?,
        next_update: parse_time(&raw.next_update, "TCB info nextUpdate")?,
        fmspc: hex_exact(&raw.fmspc, context, "fmspc")?,
        pce_id: hex_exact(&raw.pce_id, context, "pceId")?,
        levels,
        tdx_module,
        tdx_module_identities: identities,
    })
}

/// Parses the signed QE identity object (the text the signature covers).
pub fn parse_qe_identity(json: &str) -> Result<QeIdentity, VerifyError> {
    let context = "QE identity";
    let raw: RawQeIdentity =
        serde_json::from_str(json).map_err(|error| malformed(context, error))?;
    if raw.version != 2 {
        return Err(malformed(
            context,
            format!("version {} is not supported; expected 2", raw.version),
        ));
    }
    Ok(QeIdentity {
        issue_date: parse_time(&raw.issue_date, "QE identity issueDate")?,
        next_update: parse_time(&raw.next_update, "QE identity nextUpdate")?,
        misc_select: hex_exact(&raw.miscselect, context, "miscselect")?,
        misc_select_mask: hex_exact(&raw.miscselect_mask, context, "miscselectMask")?,
        attributes: hex_exact(&raw.attributes, context, "attributes")?,
        attributes_mask: hex_exact(&raw.attributes_mask, context, "attributesMask")?,
        mr_signer: hex_exact(&raw.mrsigner, context, "mrsigner")?,
        isv_prod_id: raw.isvprodid,
        levels: raw
            .tcb_levels
            .into_iter()
            .map(|level| parse_isv_level(level, context))
            .collect::<Result<Vec<_>, _>>()?,
        id: raw.id,
        version: raw.version,
    })
}

/// The outcome of TCB evaluation: a status and its advisories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Evaluation {
    pub(crate) status: TcbStatus,
    pub(crate) advisory_ids: Vec<String>,
}

/// The platform TCB as the quote and the PCK certificate report it.
pub(crate) struct PlatformTcb<'a> {
    pub(crate) cpu_svn_components: &'a [u8; 16],
    pub(crate) pce_svn: u16,
    /// TEE_TCB_SVN, MRSIGNERSEAM and SEAMATTRIBUTES of a TD report.
    pub(crate) tdx: Option<(&'a [u8; 16], &'a [u8; 48], &'a [u8; 8])>,
}

/// Picks the platform TCB level: the first level, in document order, whose SGX component SVNs
/// and PCESVN (and for TDX, TDX component SVNs) are all at most the platform's.
pub(crate) fn platform_level<'a>(
    info: &'a TcbInfo,
    platform: &PlatformTcb<'_>,
) -> Result<&'a TcbLevel, VerifyError> {
    let sgx_ok = |level: &TcbLevel| {
        level
            .sgx_components
            .iter()
            .zip(platform.cpu_svn_components)
            .all(|(required, actual)| *required <= u16::from(*actual))
            && level.pce_svn <= platform.pce_svn
    };
    let tdx_ok = |level: &TcbLevel| match platform.tdx {
        None => true,
        Some((tee_tcb_svn, _, _)) => {
            let Some(components) = &level.tdx_components else {
                return false;
            };
            // With a TDX module major version (TEE_TCB_SVN[1]) above 0, the first two bytes
            // are the module's own SVN and version, which the module identity levels judge.
            let skip = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
            components
                .iter()
                .zip(tee_tcb_svn)
                .skip(skip)
                .all(|(required, actual)| *required <= u16::from(*actual))
        }
    };
    info.levels
        .iter()
        .find(|level| sgx_ok(level) && tdx_ok(level))
        .ok_or_else(|| {
            VerifyError::new(
                Reason::TcbLevel,
                format!(
                    "no TCB level matches: PCK component SVNs {:?} with PCESVN {}{} are below every one of the {} levels of TCB info for FMSPC {}",
                    platform.cpu_svn_components,
                    platform.pce_svn,
                    platform
                        .tdx
                        .map(|(svn, _, _)| format!(" and TEE_TCB_SVN {}", hex::encode(svn)))
                        .unwrap_or_default(),
                    info.levels.len(),
                    hex::encode_upper(info.fmspc)
                ),
            )
        })
}

fn masked_equal(actual: &[u8], expected: &[u8], mask: &[u8]) -> bool {
    actual.len() == expected.len()
        && actual.len() == mask.len()
        && actual
            .iter()
            .zip(expected)
            .zip(mask)
            .all(|((a, e), m)| a & m == e & m)
}

/// Evaluates the TDX module: the `TDX_<major>` identity when TEE_TCB_SVN[1] > 0, else the
/// `tdxModule` MRSIGNER and attributes only. Returns the module's level when it has one.
pub(crate) fn tdx_module_level<'a>(
    info: &'a TcbInfo,
    tee_tcb_svn: &[u8; 16],
    mr_signer_seam: &[u8; 48],
    seam_attributes: &[u8; 8],
) -> Result<Option<&'a IsvLevel>, VerifyError> {
    let major = tee_tcb_svn[1];
    if major == 0 {
        if let Some(module) = &info.tdx_module {
            check_module_identity("tdxModule", module, mr_signer_seam, seam_attributes)?;
        }
        return Ok(None);
    }
    let id = format!("TDX_{major:02}");
    let identity = info
        .tdx_module_identities
        .iter()
        .find(|identity| identity.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| {
            VerifyError::new(
                Reason::TcbLevel,
                format!(
                    "TCB info has no TDX module identity {id} for TEE_TCB_SVN {}",
                    hex::encode(tee_tcb_svn)
                ),
            )
        })?;
    check_module_identity(&id, &identity.module, mr_signer_seam, seam_attributes)?;
    let module_svn = u16::from(tee_tcb_svn[0]);
    identity
        .levels
        .iter()
        .find(|level| level.isv_svn <= module_svn)
        .map(Some)
        .ok_or_else(|| {
            VerifyError::new(
                Reason::TcbLevel,
                format!(
                    "no TCB level matches: TDX module {id} SVN {module_svn} is below every level"
                ),
            )
        })
}

fn check_module_identity(
    id: &str,
    module: &TdxModule,
    mr_signer_seam: &[u8; 48],
    seam_attributes: &[u8; 8],
) -> Result<(), VerifyError> {
    let TdxModule {
        mr_signer,
        attributes,
        attributes_mask: mask,
    } = module;
    if mr_signer.as_slice() != mr_signer_seam.as_slice() {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "TDX module {id} mrsigner {} does not match the quote's MRSIGNERSEAM {}",
                hex::encode(mr_signer),
                hex::encode(mr_signer_seam)
            ),
        ));
    }
    if !masked_equal(seam_attributes, attributes, mask) {
        return Err(VerifyError::new(
            Reason::Collateral,
            format!(
                "TDX module {id} attributes {} under mask {} do not match the quote's SEAMATTRIBUTES {}",
                hex::encode(attributes),
                hex::encode(mask),
                hex::encode(seam_attributes)
            ),
        ));
    }
    Ok(())
}

/// The QE report fields a QE identity judges.
pub(crate) struct QeReportFields<'a> {
    pub(crate) mr_signer: &'a [u8; 32],
    pub(crate) isv_prod_id: u16,
    pub(crate) misc_select: u32,
    pub(crate) attributes: &'a [u8; 16],
    pub(crate) isv_svn: u16,
}

/// Matches the QE report against the QE identity and returns the QE's TCB level.
pub(crate) fn qe_level<'a>(
    identity: &'a QeIdentity,
    report: &QeReportFields<'_>,
) -> Result<&'a IsvLevel, VerifyError> {
    let mismatch = |message: String| Err(VerifyError::new(Reason::Collateral, message));
    if &identity.mr_signer != report.mr_signer {
        return mismatch(format!(
            "QE identity mrsigner {} does not match the QE report MRSIGNER {}",
            hex::encode(identity.mr_signer),
            hex::encode(report.mr_signer)
        ));
    }
    if identity.isv_prod_id != report.isv_prod_id {
        return mismatch(format!(
            "QE identity isvprodid {} does not match the QE report ISVPRODID {}",
            identity.isv_prod_id, report.isv_prod_id
        ));
    }
    let misc_select = report.misc_select.to_le_bytes();
    if !masked_equal(
        &misc_select,
        &identity.misc_select,
        &identity.misc_select_mask,
    ) {
        return mismatch(format!(
            "QE identity miscselect {} under mask {} does not match the QE report MISCSELECT {}",
            hex::encode(identity.misc_select),
            hex::encode(identity.misc_select_mask),
            hex::encode(misc_select)
        ));
    }
    if !masked_equal(
        report.attributes,
        &identity.attributes,
        &identity.attributes_mask,
    ) {
        return mismatch(format!(
            "QE identity attributes {} under mask {} do not match the QE report ATTRIBUTES {}",
            hex::encode(identity.attributes),
            hex::encode(identity.attributes_mask),
            hex::encode(report.attributes)
        ));
    }
    identity
        .levels
        .iter()
        .find(|level| level.isv_svn <= report.isv_svn)
        .ok_or_else(|| {
            VerifyError::new(
                Reason::TcbLevel,
                format!(
                    "no TCB level matches: QE ISVSVN {} is below every level of QE identity {}",
                    report.isv_svn, identity.id
                ),
            )
        })
}

/// Combines the platform status with an OutOfDate or Revoked status of another component
/// (the QE, or the TDX module), as Intel's QVL does: OutOfDate turns UpToDate and
/// SWHardeningNeeded into OutOfDate, and the configuration statuses into
/// OutOfDateConfigurationNeeded. Revoked wins over everything.
pub(crate) fn converge(platform: TcbStatus, other: TcbStatus) -> TcbStatus {
    match other {
        TcbStatus::Revoked => TcbStatus::Revoked,
        TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded => match platform {
            TcbStatus::UpToDate | TcbStatus::SWHardeningNeeded => TcbStatus::OutOfDate,
            TcbStatus::ConfigurationNeeded | TcbStatus::ConfigurationAndSWHardeningNeeded => {
                TcbStatus::OutOfDateConfigurationNeeded
            }
            unchanged => unchanged,
        },
        _ => platform,
    }
}

/// Merges advisory lists into one sorted list without duplicates.
pub(crate) fn merge_advisories<'a>(lists: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    let mut out: Vec<String> = lists.into_iter().flatten().cloned().collect();
    out.sort();
    out.dedup();
    out
}

pub(crate) fn evaluation(status: TcbStatus, advisory_ids: Vec<String>) -> Evaluation {
    Evaluation {
        status,
        advisory_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(mr_signer: &str) -> QeIdentity {
        let json = format!(
            "{{\"id\":\"TD_QE\",\"version\":2,\"issueDate\":\"2021-08-06T13:55:15Z\",\"nextUpdate\":\"2041-08-06T13:55:15Z\",\"tcbEvaluationDataNumber\":0,\"miscselect\":\"13373B09\",\"miscselectMask\":\"FFFFFFFF\",\"attributes\":\"0ccefa96ce1ed0f1bfc11bbf599bc0be\",\"attributesMask\":\"FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\",\"mrsigner\":\"{mr_signer}\",\"isvprodid\":29854,\"tcbLevels\":[{{\"tcb\":{{\"isvsvn\":5}},\"tcbDate\":\"2021-08-06T00:00:00Z\",\"tcbStatus\":\"UpToDate\"}},{{\"tcb\":{{\"isvsvn\":0}},\"tcbDate\":\"2020-01-01T00:00:00Z\",\"tcbStatus\":\"OutOfDate\",\"advisoryIDs\":[\"INTEL-SA-00001\"]}}]}}"
        );
        parse_qe_identity(&json).expect("QE identity parses")
    }

    fn report<'a>(
        mr_signer: &'a [u8; 32],
        attributes: &'a [u8; 16],
        isv_svn: u16,
    ) -> QeReportFields<'a> {
        QeReportFields {
            mr_signer,
            isv_prod_id: 29854,
            misc_select: u32::from_le_bytes([0x13, 0x37, 0x3b, 0x09]),
            attributes,
            isv_svn,
        }
    }

    #[test]
    fn qe_identity_matches_report_bytes() {
        let identity = identity(&"ab".repeat(32));
        let attributes: [u8; 16] =
            hex_exact("0ccefa96ce1ed0f1bfc11bbf599bc0be", "test", "attributes").expect("hex");
        let level = qe_level(&identity, &report(&[0xab; 32], &attributes, 7)).expect("matches");
        assert_eq!(level.status, TcbStatus::UpToDate);
        let level = qe_level(&identity, &report(&[0xab; 32], &attributes, 4)).expect("matches");
        assert_eq!(level.status, TcbStatus::OutOfDate);
        assert_eq!(level.advisory_ids, ["INTEL-SA-00001"]);
    }

    #[test]
    fn qe_identity_mismatch_names_field() {
        let identity = identity(&"ab".repeat(32));
        let attributes: [u8; 16] =
            hex_exact("0ccefa96ce1ed0f1bfc11bbf599bc0be", "test", "attributes").expect("hex");
        let error =
            qe_level(&identity, &report(&[0xcd; 32], &attributes, 7)).expect_err("mrsigner");
        assert_eq!(error.reason, Reason::Collateral);
        assert!(error.message.contains("mrsigner"), "{error}");

        let mut other = attributes;
        other[0] ^= 0x01;
        let error = qe_level(&identity, &report(&[0xab; 32], &other, 7)).expect_err("attributes");
        assert_eq!(error.reason, Reason::Collateral);
        assert!(error.message.contains("attributes"), "{error}");
    }

    #[test]
    fn statuses_converge_like_qvl() {
        use TcbStatus::*;
        let cases = [
            (UpToDate, UpToDate, UpToDate),
            (SWHardeningNeeded, UpToDate, SWHardeningNeeded),
            (UpToDate, OutOfDate, OutOfDate),
            (SWHardeningNeeded, OutOfDate, OutOfDate),
            (ConfigurationNeeded, OutOfDate, OutOfDateConfigurationNeeded),
            (
                ConfigurationAndSWHardeningNeeded,
                OutOfDate,
                OutOfDateConfigurationNeeded,
            ),
            (OutOfDate, OutOfDate, OutOfDate),
            (UpToDate, Revoked, Revoked),
            (Revoked, UpToDate, Revoked),
        ];
        for (platform, other, expected) in cases {
            assert_eq!(
                converge(platform, other),
                expected,
                "{platform} with {other}"
            );
        }
    }

    #[test]
    fn advisories_sorted_without_duplicates() {
        let first = vec!["INTEL-SA-00615".to_owned(), "INTEL-SA-00289".to_owned()];
        let second = vec!["INTEL-SA-00615".to_owned(), "INTEL-SA-00100".to_owned()];
        assert_eq!(
            merge_advisories([first.as_slice(), second.as_slice()]),
            ["INTEL-SA-00100", "INTEL-SA-00289", "INTEL-SA-00615"]
        );
    }
}
