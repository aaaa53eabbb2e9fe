//! TCB info (version 3) and QE identity (version 2) documents in the form Intel's PCS v4 API
//! returns them: compact JSON with keys in Intel's order, signed with ECDSA P-256 over the
//! exact bytes of the inner object.

use serde_json::{Value, json};
use time::macros::format_description;

use super::PlatformSpec;
use super::pki::{SigningKey, to_datetime};
use super::quote::{SGX_QE_MR_SIGNER, SGX_QE_PROD_ID, TD_QE_MR_SIGNER, TD_QE_PROD_ID};
use twid_evidence::TcbStatus;

const DAY: i64 = 24 * 60 * 60;
/// The advisory on the generated OutOfDate level below the platform's level.
const OUT_OF_DATE_ADVISORY: &str = "INTEL-SA-00837";

/// A signed collateral document: the exact JSON text of the inner object and its raw r||s
/// signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SignedJson {
    pub(super) json: String,
    pub(super) signature: [u8; 64],
}

impl SignedJson {
    fn sign(value: &Value, key: &SigningKey) -> SignedJson {
        let json = value.to_string();
        let signature = key.sign_raw(json.as_bytes());
        SignedJson { json, signature }
    }

    /// Formats the PCS response body: `{"<field>":<inner>,"signature":"<hex>"}`, with the inner object
    /// copied byte for byte so its signature still verifies.
    pub(super) fn pcs_body(&self, field: &str) -> String {
        format!(
            "{{\"{field}\":{},\"signature\":\"{}\"}}",
            self.json,
            hex::encode(self.signature)
        )
    }
}

/// Formats Unix seconds as Intel's collateral timestamps, for example `2025-06-19T10:16:03Z`.
pub(super) fn timestamp(unix_seconds: i64) -> String {
    to_datetime(unix_seconds)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .expect("formatting a UTC date cannot fail")
}

fn midnight(unix_seconds: i64) -> i64 {
    unix_seconds - unix_seconds.rem_euclid(DAY)
}

/// Intel's category and type labels of the SGX TCB components in TDX TCB info; index 6 and
/// 8 onwards are unlabelled.
fn sgx_component_label(index: usize) -> Option<(&'static str, Option<&'static str>)> {
    match index {
        0 => Some(("BIOS", Some("Early Microcode Update"))),
        1 => Some(("OS/VMM", Some("SGX Late Microcode Update"))),
        2 => Some(("OS/VMM", Some("TXT SINIT"))),
        3..=5 => Some(("BIOS", None)),
        7 => Some(("OS/VMM", Some("SEAMLDR ACM"))),
        _ => None,
    }
}

fn tdx_component_label(index: usize) -> Option<(&'static str, Option<&'static str>)> {
    match index {
        0 | 1 => Some(("OS/VMM", Some("TDX Module"))),
        2 => Some(("OS/VMM", Some("TDX Late Microcode Update"))),
        _ => None,
    }
}

fn components(
    svns: &[u8; 16],
    label: impl Fn(usize) -> Option<(&'static str, Option<&'static str>)>,
) -> Value {
    let entries = svns
        .iter()
        .enumerate()
        .map(|(index, svn)| {
            let mut entry = serde_json::Map::new();
            entry.insert("svn".into(), json!(svn));
            if let Some((category, component_type)) = label(index) {
                entry.insert("category".into(), json!(category));
                if let Some(component_type) = component_type {
                    entry.insert("type".into(), json!(component_type));
                }
            }
            Value::Object(entry)
        })
        .collect();
    Value::Array(entries)
}

/// One TCB level's SVNs.
#[derive(Clone)]
struct LevelTcb {
    sgx: [u8; 16],
    pce_svn: u16,
    tdx: [u8; 16],
}

impl LevelTcb {
    /// Returns a TCB one step above `self`, which the platform does not reach.
    fn above(&self) -> LevelTcb {
        let mut next = self.clone();
        match self.pce_svn.checked_add(1) {
            Some(pce_svn) => next.pce_svn = pce_svn,
            // NOTE: with PCESVN 65535 and every SGX component at 255 no higher level exists,
            // so this level matches the platform too.
            None => {
                if let Some(svn) = next.sgx.iter_mut().find(|svn| **svn < u8::MAX) {
                    *svn += 1;
                }
            }
        }
        next
    }

    /// Returns a TCB one step below `self`, or `None` when every SVN is already zero.
    fn below(&self) -> Option<LevelTcb> {
        let mut next = self.clone();
        if let Some(pce_svn) = self.pce_svn.checked_sub(1) {
            next.pce_svn = pce_svn;
            return Some(next);
        }
        let svn = next.sgx.iter_mut().find(|svn| **svn > 0)?;
        *svn -= 1;
        Some(next)
    }
}

fn level(tcb: &LevelTcb, tdx: bool, date: i64, status: TcbStatus, advisories: &[String]) -> Value {
    let mut tcb_value = serde_json::Map::new();
    tcb_value.insert(
        "sgxtcbcomponents".into(),
        if tdx {
            components(&tcb.sgx, sgx_component_label)
        } else {
            components(&tcb.sgx, |_| None)
        },
    );
    tcb_value.insert("pcesvn".into(), json!(tcb.pce_svn));
    if tdx {
        tcb_value.insert(
            "tdxtcbcomponents".into(),
            components(&tcb.tdx, tdx_component_label),
        );
    }
    let mut out = serde_json::Map::new();
    out.insert("tcb".into(), Value::Object(tcb_value));
    out.insert("tcbDate".into(), json!(timestamp(date)));
    out.insert("tcbStatus".into(), json!(status.as_str()));
    if !advisories.is_empty() {
        out.insert("advisoryIDs".into(), json!(advisories));
    }
    Value::Object(out)
}

/// Builds the TCB levels, highest first: an UpToDate level above the platform when the platform's
/// status is not UpToDate, the platform's own level with `spec.tcb_status`, and an OutOfDate
/// level below it.
fn tcb_levels(spec: &PlatformSpec, tdx: bool) -> Vec<Value> {
    let platform = LevelTcb {
        sgx: spec.cpu_svn_components,
        pce_svn: spec.pce_svn,
        tdx: spec.tdx_components,
    };
    let current = midnight(spec.tcb_info_validity.not_before);
    let mut levels = Vec::new();
    if spec.tcb_status != TcbStatus::UpToDate {
        levels.push(level(
            &platform.above(),
            tdx,
            current,
            TcbStatus::UpToDate,
            &[],
        ));
    }
    levels.push(level(
        &platform,
        tdx,
        current,
        spec.tcb_status,
        &spec.advisory_ids,
    ));
    if let Some(below) = platform.below() {
        let mut advisories = vec![OUT_OF_DATE_ADVISORY.to_owned()];
        advisories.extend(spec.advisory_ids.iter().cloned());
        levels.push(level(
            &below,
            tdx,
            current - 365 * DAY,
            TcbStatus::OutOfDate,
            &advisories,
        ));
    }
    levels
}

/// Builds the TDX module identities TDX_01 and TDX_03, each UpToDate from ISVSVN
/// `tdx_components[0]`, with the all-zero MRSIGNER and attributes of Intel's TDX modules.
fn tdx_module_identities(spec: &PlatformSpec) -> Value {
    let module_svn = spec.tdx_components[0];
    let current = midnight(spec.tcb_info_validity.not_before);
    let identities: Vec<Value> = ["TDX_01", "TDX_03"]
        .into_iter()
        .map(|id| {
            let mut levels = vec![json!({
                "tcb": { "isvsvn": module_svn },
                "tcbDate": timestamp(current),
                "tcbStatus": "UpToDate",
            })];
            if module_svn > 0 {
                levels.push(json!({
                    "tcb": { "isvsvn": module_svn - 1 },
                    "tcbDate": timestamp(current - 365 * DAY),
                    "tcbStatus": "OutOfDate",
                }));
            }
            json!({
                "id": id,
                "mrsigner": hex::encode_upper([0u8; 48]),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": levels,
            })
        })
        .collect();
    Value::Array(identities)
}

/// Builds and signs the TCB info: id `TDX` with the TDX module fields when `tdx`, else `SGX`.
pub(super) fn tcb_info(spec: &PlatformSpec, tdx: bool, key: &SigningKey) -> SignedJson {
    let mut info = serde_json::Map::new();
    info.insert("id".into(), json!(if tdx { "TDX" } else { "SGX" }));
    info.insert("version".into(), json!(3));
    info.insert(
        "issueDate".into(),
        json!(timestamp(spec.tcb_info_validity.not_before)),
    );
    info.insert(
        "nextUpdate".into(),
        json!(timestamp(spec.tcb_info_validity.not_after)),
    );
    info.insert("fmspc".into(), json!(hex::encode_upper(spec.fmspc)));
    info.insert("pceId".into(), json!(hex::encode_upper(spec.pce_id)));
    info.insert("tcbType".into(), json!(0));
    info.insert(
        "tcbEvaluationDataNumber".into(),
        json!(spec.tcb_evaluation_data_number),
    );

    if tdx {
        info.insert(
            "tdxModule".into(),
            json!({
                "mrsigner": hex::encode_upper([0u8; 48]),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }),
        );
        info.insert("tdxModuleIdentities".into(), tdx_module_identities(spec));
    }

    info.insert("tcbLevels".into(), Value::Array(tcb_levels(spec, tdx)));
    SignedJson::sign(&Value::Object(info), key)
}

/// Builds and signs the QE identity: UpToDate from ISVSVN `spec.qe_isv_svn`, OutOfDate one below it.
pub(super) fn qe_identity(spec: &PlatformSpec, tdx: bool, key: &SigningKey) -> SignedJson {
    let (id, mr_signer, isv_prod_id) = if tdx {
        ("TD_QE", TD_QE_MR_SIGNER, TD_QE_PROD_ID)
    } else {
        ("QE", SGX_QE_MR_SIGNER, SGX_QE_PROD_ID)
    };
    let current = midnight(spec.qe_identity_validity.not_before);
    let mut levels = vec![json!({
        "tcb": { "isvsvn": spec.qe_isv_svn },
        "tcbDate": timestamp(current),
        "tcbStatus": "UpToDate",
    })];
    if let Some(below) = spec.qe_isv_svn.checked_sub(1) {
        levels.push(json!({
            "tcb": { "isvsvn": below },
            "tcbDate": timestamp(current - 365 * DAY),
            "tcbStatus": "OutOfDate",
            "advisoryIDs": [OUT_OF_DATE_ADVISORY],
        }));
    }
    let identity = json!({
        "id": id,
        "version": 2,
        "issueDate": timestamp(spec.qe_identity_validity.not_before),
        "nextUpdate": timestamp(spec.qe_identity_validity.not_after),
        "tcbEvaluationDataNumber": spec.tcb_evaluation_data_number,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": hex::encode_upper(mr_signer),
        "isvprodid": isv_prod_id,
        "tcbLevels": levels,
    });
    SignedJson::sign(&identity, key)
}
