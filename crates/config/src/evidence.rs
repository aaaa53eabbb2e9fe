//! Node attestors that verify hardware evidence: `NodeAttestor "sgx_dcap" | "tdx" | "sgx_ias" |
//! "snp" | "nitro" | "tpm"`, on the server (trust roots, collateral and policy) and on the
//! agent (how to collect the evidence).

use std::collections::BTreeMap;
use std::path::PathBuf;

use hcl_edit::expr::Expression;
use hcl_edit::structure::Body;
use twid_evidence::Kind;
use twid_evidence::claims::SnpTcb;
use twid_evidence::policy::Policy;

use crate::ConfigError;
use crate::document::{Entry, Node, Schema, Section, Source};
use crate::plugins::Plugin;
use crate::values;

/// Default `tsm_path` of the `configfs_tsm` collector.
pub const DEFAULT_TSM_PATH: &str = "/sys/kernel/config/tsm/report";
/// Default `pcr_bank` of the `tpm` collector.
pub const DEFAULT_PCR_BANK: &str = "sha256";
/// Default `pcrs` of the `tpm` collector: the firmware and boot loader PCRs.
pub const DEFAULT_TPM_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Returns the evidence kind of a node attestor name such as `sgx_dcap`, or `None` for other
/// attestors (`join_token`).
pub fn evidence_kind(attestor: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|kind| attestor_name(*kind) == attestor)
}

/// Returns the node attestor name of an evidence kind: the kind's name with `_` for `-`.
pub fn attestor_name(kind: Kind) -> &'static str {
    match kind {
        Kind::SgxDcap => "sgx_dcap",
        Kind::Tdx => "tdx",
        Kind::SgxIas => "sgx_ias",
        Kind::Snp => "snp",
        Kind::Nitro => "nitro",
        Kind::Tpm => "tpm",
    }
}

/// A server `NodeAttestor` block for one evidence kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceAttestorConfig {
    /// The attestor name, such as `sgx_dcap`; it is the third path segment of agent IDs.
    pub name: String,
    /// The evidence kind the attestor accepts.
    pub kind: Kind,
    /// PEM files of the roots to trust. Empty means the vendor's production roots, pinned by
    /// fingerprint.
    pub trusted_roots: Vec<PathBuf>,
    /// DCAP collateral cache: a folder per FMSPC (upper-case hex) with the PCS files, or a
    /// `<fmspc>.json` file in dcap-qvl's layout. SEV-SNP VCEKs fetched from `kds_url` are
    /// cached in its `snp` folder.
    pub collateral_dir: Option<PathBuf>,
    /// PEM file with the SEV-SNP ASK or ASVK and the ARK.
    pub vek_chain_path: Option<PathBuf>,
    /// Base URL of an Intel PCS v4 compatible service or a PCCS, without a trailing `/`. When
    /// set, collateral missing from `collateral_dir` or past its nextUpdate is fetched there.
    pub pcs_url: Option<String>,
    /// Base URL of an AMD KDS compatible service, without a trailing `/`. When set, a VCEK
    /// missing from an SEV-SNP envelope is fetched there.
    pub kds_url: Option<String>,
    /// Rules that the verified claims must satisfy.
    pub policy: Policy,
}

/// An agent `NodeAttestor` block for one evidence kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceNodeAttestor {
    /// The attestor name the agent sends, such as `tdx`.
    pub name: String,
    /// The evidence kind.
    pub kind: Kind,
    /// The agent's source of evidence.
    pub collector: CollectorConfig,
}

/// The agent's evidence source, the `collector` key and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectorConfig {
    /// The Linux configfs-tsm report interface (TDX and SEV-SNP guests).
    ConfigfsTsm {
        /// The configfs-tsm report folder. Default `/sys/kernel/config/tsm/report`.
        tsm_path: PathBuf,
    },
    /// A program that prints an evidence envelope as JSON.
    Exec {
        /// Program and arguments, run without a shell.
        command: Vec<String>,
    },
    /// A TPM 2.0 quote.
    Tpm(TpmCollectorConfig),
}

/// Settings of the `tpm` collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmCollectorConfig {
    /// TPM device path or tpm2-tss TCTI string such as `swtpm:host=127.0.0.1,port=2321`;
    /// `None` means `/dev/tpmrm0`.
    pub tcti: Option<String>,
    /// Persistent handle of the attestation key; `None` means 0x81010002.
    pub ak_handle: Option<u32>,
    /// PCR bank of the quote. Default `sha256`.
    pub pcr_bank: String,
    /// PCR indexes to quote. Default 0-7.
    pub pcrs: Vec<u8>,
}

const SERVER_SGX_DCAP: Schema = Schema {
    keys: &[
        "trusted_roots",
        "collateral_dir",
        "allow_debug",
        "allowed_measurements",
        "allowed_signers",
        "min_isv_svn",
        "allowed_tcb_statuses",
        "max_collateral_age",
        "pcs_url",
        "max_evidence_age",
    ],
    hints: &[],
    nested: None,
};

const SERVER_TDX: Schema = Schema {
    keys: &[
        "trusted_roots",
        "collateral_dir",
        "allow_debug",
        "allowed_measurements",
        "allowed_tcb_statuses",
        "max_collateral_age",
        "pcs_url",
        "max_evidence_age",
    ],
    hints: &[],
    nested: None,
};

const SERVER_SGX_IAS: Schema = Schema {
    keys: &[
        "trusted_roots",
        "allow_debug",
        "allowed_measurements",
        "allowed_signers",
        "min_isv_svn",
        "allowed_tcb_statuses",
        "max_evidence_age",
    ],
    hints: &[],
    nested: None,
};

const SERVER_SNP: Schema = Schema {
    keys: &[
        "trusted_roots",
        "collateral_dir",
        "vek_chain_path",
        "allow_debug",
        "allowed_measurements",
        "min_tcb",
        "allowed_chip_ids",
        "kds_url",
        "max_evidence_age",
    ],
    hints: &[],
    nested: None,
};

const SERVER_NITRO: Schema = Schema {
    keys: &[
        "trusted_roots",
        "allow_debug",
        "allowed_measurements",
        "pcrs",
        "max_evidence_age",
    ],
    hints: &[],
    nested: None,
};

const SERVER_TPM: Schema = Schema {
    keys: &["pcrs", "allowed_ak_sha256", "max_evidence_age"],
    hints: &[],
    nested: None,
};

const MIN_TCB: Schema = Schema {
    keys: &["bootloader", "tee", "snp", "microcode", "fmc"],
    hints: &[],
    nested: None,
};

/// Reads a server `NodeAttestor` block of an evidence kind.
pub(crate) fn server_attestor(
    plugin: &Plugin<'_>,
    kind: Kind,
) -> Result<EvidenceAttestorConfig, ConfigError> {
    let schema = match kind {
        Kind::SgxDcap => &SERVER_SGX_DCAP,
        Kind::Tdx => &SERVER_TDX,
        Kind::SgxIas => &SERVER_SGX_IAS,
        Kind::Snp => &SERVER_SNP,
        Kind::Nitro => &SERVER_NITRO,
        Kind::Tpm => &SERVER_TPM,
    };
    plugin.check_data(schema)?;
    let policy = read_policy(plugin.data.as_ref(), kind)?;

    let pcs_url = plugin.optional("pcs_url", service_url)?;
    let kds_url = plugin.optional("kds_url", service_url)?;
    let collateral_dir = if pcs_url.is_some() || kds_url.is_some() {
        // Fetched documents are cached there, because a fetch per attestation would load the
        // vendor service, which rate-limits clients.
        Some(plugin.required("collateral_dir", values::path)?)
    } else {
        plugin.optional("collateral_dir", values::path)?
    };
    Ok(EvidenceAttestorConfig {
        name: plugin.name.to_owned(),
        kind,
        trusted_roots: plugin
            .optional("trusted_roots", path_list)?
            .unwrap_or_default(),
        collateral_dir,
        vek_chain_path: plugin.optional("vek_chain_path", values::path)?,
        pcs_url,
        kds_url,
        policy,
    })
}

/// Converts an optional key of a section that may be absent.
fn optional<T>(
    data: Option<&Section<'_>>,
    key: &str,
    convert: impl FnOnce(&Expression) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    match data {
        Some(data) => data.optional(key, convert),
        None => Ok(None),
    }
}

/// Hint for a `plugin_data` key that a policy document may not set.
const CONFIG_ONLY: &str = "trust roots, collateral and fetch settings stay in the server \
                           configuration's NodeAttestor block";

const CONFIG_ONLY_KEYS: &[(&str, &str)] = &[
    ("trusted_roots", CONFIG_ONLY),
    ("collateral_dir", CONFIG_ONLY),
    ("vek_chain_path", CONFIG_ONLY),
    ("pcs_url", CONFIG_ONLY),
    ("kds_url", CONFIG_ONLY),
];

const POLICY_SGX_DCAP: Schema = Schema {
    keys: &[
        "allow_debug",
        "allowed_measurements",
        "allowed_signers",
        "min_isv_svn",
        "allowed_tcb_statuses",
        "max_collateral_age",
        "max_evidence_age",
    ],
    hints: CONFIG_ONLY_KEYS,
    nested: None,
};

const POLICY_TDX: Schema = Schema {
    keys: &[
        "allow_debug",
        "allowed_measurements",
        "allowed_tcb_statuses",
        "max_collateral_age",
        "max_evidence_age",
    ],
    hints: CONFIG_ONLY_KEYS,
    nested: None,
};

const POLICY_SGX_IAS: Schema = Schema {
    keys: &[
        "allow_debug",
        "allowed_measurements",
        "allowed_signers",
        "min_isv_svn",
        "allowed_tcb_statuses",
        "max_evidence_age",
    ],
    hints: CONFIG_ONLY_KEYS,
    nested: None,
};

const POLICY_SNP: Schema = Schema {
    keys: &[
        "allow_debug",
        "allowed_measurements",
        "min_tcb",
        "allowed_chip_ids",
        "max_evidence_age",
    ],
    hints: CONFIG_ONLY_KEYS,
    nested: None,
};

const POLICY_NITRO: Schema = Schema {
    keys: &[
        "allow_debug",
        "allowed_measurements",
        "pcrs",
        "max_evidence_age",
    ],
    hints: CONFIG_ONLY_KEYS,
    nested: None,
};

const POLICY_TPM: Schema = Schema {
    keys: &["pcrs", "allowed_ak_sha256", "max_evidence_age"],
    hints: &[],
    nested: None,
};

const ATTESTOR_NAMES: Schema = Schema {
    keys: &["sgx_dcap", "tdx", "sgx_ias", "snp", "nitro", "tpm"],
    hints: &[("join_token", "join tokens are not appraised with a policy")],
    nested: None,
};

/// The policy of one evidence attestor in a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentPolicy {
    /// The attestor name, such as `tdx`.
    pub attestor: String,
    /// The evidence kind of that attestor.
    pub kind: Kind,
    /// The rules, read with the same keys and value formats as `plugin_data`.
    pub policy: Policy,
}

/// Reads the `attestors` object of a policy document, JSON text such as
/// `{"version": 2, "attestors": {"tdx": {"allowed_measurements": ["..."]}}}`, into one policy
/// per attestor. Each attestor object takes the policy keys of that attestor's `plugin_data`
/// (not its roots, collateral or fetch settings), with the same value formats, and a missing
/// key has its `plugin_data` default. Other members of the document are not read here.
/// `source_name` names the document in errors, such as `policy version 2`; line numbers count
/// lines of `json`.
///
/// The caller validates `json` with a JSON parser first. This function rewrites it into HCL
/// that means the same (see [`json_as_hcl`]) and reads it with the configuration's HCL value
/// reader, which also rejects a member that appears twice in one object.
///
/// # Errors
/// Returns an error naming the attestor, key and value for an unknown attestor name or key,
/// for a value that the `plugin_data` key would reject, or for a member that appears twice.
pub fn document_policies(
    source_name: &str,
    json: &str,
) -> Result<Vec<DocumentPolicy>, ConfigError> {
    let hcl = json_as_hcl(json).map_err(|(offset, message)| {
        let before = &json[..offset.min(json.len())];
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        ConfigError::Syntax {
            file: source_name.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message,
        }
    })?;

    let source = Source::new(source_name, &hcl);
    let expr = hcl_edit::parser::parse_expr(&hcl).map_err(|error| ConfigError::Syntax {
        file: source_name.to_owned(),
        line: error.location().line(),
        column: error.location().column(),
        message: error.message().to_owned(),
    })?;
    let body = Body::default();
    let root = Section::root(&source, &body);
    let top = Entry {
        key: "",
        line: 1,
        node: Node::Value(&expr),
    };
    let document = root.child(&top)?;
    let Some(attestors) = document.section("attestors")? else {
        return Ok(Vec::new());
    };
    attestors.check_keys(&ATTESTOR_NAMES)?;
    let mut policies = Vec::with_capacity(attestors.entries.len());
    for entry in &attestors.entries {
        let kind = evidence_kind(entry.key)
            .ok_or_else(|| attestors.unknown_key(entry, &ATTESTOR_NAMES))?;
        let section = attestors.child(entry)?;
        section.check_keys(match kind {
            Kind::SgxDcap => &POLICY_SGX_DCAP,
            Kind::Tdx => &POLICY_TDX,
            Kind::SgxIas => &POLICY_SGX_IAS,
            Kind::Snp => &POLICY_SNP,
            Kind::Nitro => &POLICY_NITRO,
            Kind::Tpm => &POLICY_TPM,
        })?;
        policies.push(DocumentPolicy {
            attestor: entry.key.to_owned(),
            kind,
            policy: read_policy(Some(&section), kind)?,
        });
    }
    Ok(policies)
}

/// Rewrites JSON text into an HCL expression with the same value, keeping each object member
/// on its original line so that errors name lines of the JSON text. The HCL parser differs
/// from JSON in three ways that this handles:
///
/// - It rejects whitespace around the expression, so leading and trailing whitespace is dropped.
/// - Newlines end object members, so a newline after a member's key, after its `:` or before
///   its `,` is moved forward to the next place after `{`, `[` or `,`, or before `}` or `]`.
///   Every key keeps the number of newlines before it.
/// - It reads `${` and `%{` in strings as templates, and lacks the escapes `\/`, `\b`, `\f`
///   and UTF-16 surrogate pairs, so every string is decoded and written again with HCL escapes
///   (`\u0024{` for a literal `${`).
///
/// Carriage returns and tabs become spaces, so only `\n` separates lines in the HCL text.
/// Returns the byte offset in `json` and a message for text that is not JSON. Structure
/// errors such as a missing `,` are left to the HCL parser.
fn json_as_hcl(json: &str) -> Result<String, (usize, String)> {
    let mut hcl = String::with_capacity(json.len() + 16);
    let mut pending_newlines = 0usize;
    // Whether the last token written is `{`, `[` or `,`, after which a newline is allowed.
    let mut after_opening = false;
    let mut chars = json.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match c {
            '\n' => pending_newlines += 1,
            ' ' | '\t' | '\r' => {
                if !hcl.is_empty() {
                    hcl.push(' ');
                }
            }
            _ => {
                if after_opening || c == '}' || c == ']' {
                    hcl.extend(std::iter::repeat_n('\n', pending_newlines));
                    pending_newlines = 0;
                }
                after_opening = matches!(c, '{' | '[' | ',');
                match c {
                    '{' | '}' | '[' | ']' | ',' | ':' => hcl.push(c),
                    '"' => {
                        let text = json_string(json, offset, &mut chars)?;
                        push_hcl_string(&mut hcl, &text);
                    }
                    c if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.') => hcl.push(c),
                    c => return Err((offset, format!("unexpected character {c:?} in JSON"))),
                }
            }
        }
    }
    hcl.truncate(hcl.trim_end().len());
    Ok(hcl)
}

/// Decodes the JSON string that starts with the `"` at `start`, consuming it from `chars`.
fn json_string(
    json: &str,
    start: usize,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, (usize, String)> {
    let unterminated = || (start, "unterminated JSON string".to_owned());
    let mut text = String::new();
    loop {
        let (offset, c) = chars.next().ok_or_else(unterminated)?;
        match c {
            '"' => return Ok(text),
            '\\' => {
                let (_, escape) = chars.next().ok_or_else(unterminated)?;
                let decoded = match escape {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        let first = hex4(json, chars, offset)?;
                        let code = if (0xd800..0xdc00).contains(&first) {
                            let low = match (chars.next(), chars.next()) {
                                (Some((_, '\\')), Some((_, 'u'))) => hex4(json, chars, offset)?,
                                _ => return Err((offset, "unpaired UTF-16 surrogate".to_owned())),
                            };
                            if !(0xdc00..0xe000).contains(&low) {
                                return Err((offset, "unpaired UTF-16 surrogate".to_owned()));
                            }
                            0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
                        } else {
                            first
                        };
                        char::from_u32(code)
                            .ok_or_else(|| (offset, "unpaired UTF-16 surrogate".to_owned()))?
                    }
                    other => return Err((offset, format!("invalid escape \\{other} in a string"))),
                };
                text.push(decoded);
            }
            c if c < ' ' => {
                return Err((
                    offset,
                    "control character in a string; write it as an escape such as \\n".to_owned(),
                ));
            }
            c => text.push(c),
        }
    }
}

/// Reads the four hex digits of a `\uXXXX` escape.
fn hex4(
    json: &str,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    escape_offset: usize,
) -> Result<u32, (usize, String)> {
    let invalid = || {
        let escape: String = json[escape_offset..].chars().take(6).collect();
        (
            escape_offset,
            format!("invalid escape {escape}: expected \\u and four hex digits"),
        )
    };
    let mut code = 0;
    for _ in 0..4 {
        let (_, digit) = chars.next().ok_or_else(invalid)?;
        code = code * 16 + digit.to_digit(16).ok_or_else(invalid)?;
    }
    Ok(code)
}

/// Writes `text` as a quoted HCL string that the HCL parser reads back as exactly `text`.
fn push_hcl_string(hcl: &mut String, text: &str) {
    use std::fmt::Write as _;
    hcl.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => hcl.push_str("\\\""),
            '\\' => hcl.push_str("\\\\"),
            '\n' => hcl.push_str("\\n"),
            '\r' => hcl.push_str("\\r"),
            '\t' => hcl.push_str("\\t"),
            // An escaped `$` or `%` before `{` is a literal, not the start of a template.
            '$' | '%' if chars.peek() == Some(&'{') => {
                let _ = write!(hcl, "\\u{:04x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(hcl, "\\U{:08x}", u32::from(c));
            }
            c => hcl.push(c),
        }
    }
    hcl.push('"');
}

/// Reads the policy keys of a server `NodeAttestor` block's `plugin_data`, or of one attestor
/// object of a policy document; `None` reads as an empty section.
fn read_policy(data: Option<&Section<'_>>, kind: Kind) -> Result<Policy, ConfigError> {
    let mut policy = Policy::default();
    if let Some(allow) = optional(data, "allow_debug", values::boolean)? {
        policy.allow_debug = allow;
    }
    let measurement_len = match kind {
        Kind::SgxDcap | Kind::SgxIas => 32,
        Kind::Tdx | Kind::Snp | Kind::Nitro | Kind::Tpm => 48,
    };
    policy.allowed_measurements = optional(data, "allowed_measurements", |expr| {
        hex_list(expr, measurement_len)
    })?
    .unwrap_or_default();
    policy.allowed_signers = optional(data, "allowed_signers", |expr| hex_list(expr, 32))?
        .unwrap_or_default()
        .into_iter()
        .map(|signer| to_array(&signer))
        .collect();
    policy.min_isv_svn = optional(data, "min_isv_svn", u16_value)?;
    if let Some(statuses) = optional(data, "allowed_tcb_statuses", tcb_statuses)? {
        policy.allowed_tcb_statuses = statuses;
    }
    policy.max_collateral_age = optional(data, "max_collateral_age", values::positive_duration)?;
    policy.max_evidence_age = optional(data, "max_evidence_age", values::positive_duration)?;
    policy.allowed_chip_ids = optional(data, "allowed_chip_ids", |expr| {
        let ids = hex_list(expr, 64)?;
        // VLEK-signed and masked reports carry an all-zero chip ID, so allowing zero
        // would allow every such report.
        if ids.iter().any(|id| id.iter().all(|byte| *byte == 0)) {
            return Err(
                "an all-zero chip ID would match every VLEK-signed or masked report".to_owned(),
            );
        }
        Ok(ids)
    })?
    .unwrap_or_default();
    policy.allowed_ak_sha256 = optional(data, "allowed_ak_sha256", |expr| hex_list(expr, 32))?
        .unwrap_or_default()
        .into_iter()
        .map(|digest| to_array(&digest))
        .collect();
    if let Some(data) = data {
        policy.min_snp_tcb = min_tcb(data)?;
        policy.pcrs = pcr_values(data, kind)?;
    }
    Ok(policy)
}

const AGENT_CONFIGFS_TSM: Schema = Schema {
    keys: &["collector", "tsm_path"],
    hints: &[],
    nested: None,
};

const AGENT_EXEC: Schema = Schema {
    keys: &["collector", "command"],
    hints: &[],
    nested: None,
};

const AGENT_TPM: Schema = Schema {
    keys: &["collector", "tcti", "ak_handle", "pcr_bank", "pcrs"],
    hints: &[],
    nested: None,
};

/// Reads an agent `NodeAttestor` block of an evidence kind. The collector defaults to
/// `configfs_tsm` for TDX and SEV-SNP, `tpm` for TPM, and `exec` for the other kinds.
pub(crate) fn agent_attestor(
    plugin: &Plugin<'_>,
    kind: Kind,
) -> Result<EvidenceNodeAttestor, ConfigError> {
    let default = match kind {
        Kind::Tdx | Kind::Snp => "configfs_tsm",
        Kind::Tpm => "tpm",
        Kind::SgxDcap | Kind::SgxIas | Kind::Nitro => "exec",
    };
    let allowed: &[&str] = match kind {
        Kind::Tdx | Kind::Snp => &["configfs_tsm", "exec"],
        Kind::Tpm => &["tpm", "exec"],
        Kind::SgxDcap | Kind::SgxIas | Kind::Nitro => &["exec"],
    };
    let name = plugin
        .optional("collector", |expr| {
            let name = values::string(expr)?;
            if allowed.contains(&name.as_str()) {
                Ok(name)
            } else {
                Err(format!(
                    "invalid collector for {} evidence, expected {}",
                    kind,
                    allowed.join(" or ")
                ))
            }
        })?
        .unwrap_or_else(|| default.to_owned());
    let collector = match name.as_str() {
        "configfs_tsm" => {
            plugin.check_data(&AGENT_CONFIGFS_TSM)?;
            CollectorConfig::ConfigfsTsm {
                tsm_path: plugin
                    .optional("tsm_path", values::path)?
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TSM_PATH)),
            }
        }
        "tpm" => {
            plugin.check_data(&AGENT_TPM)?;
            CollectorConfig::Tpm(TpmCollectorConfig {
                tcti: plugin.optional("tcti", values::non_empty_string)?,
                ak_handle: plugin.optional("ak_handle", tpm_handle)?,
                pcr_bank: plugin
                    .optional("pcr_bank", pcr_bank)?
                    .unwrap_or_else(|| DEFAULT_PCR_BANK.to_owned()),
                pcrs: plugin
                    .optional("pcrs", tpm_pcr_list)?
                    .unwrap_or_else(|| DEFAULT_TPM_PCRS.to_vec()),
            })
        }
        _ => {
            plugin.check_data(&AGENT_EXEC)?;
            CollectorConfig::Exec {
                command: plugin.required("command", command)?,
            }
        }
    };
    Ok(EvidenceNodeAttestor {
        name: plugin.name.to_owned(),
        kind,
        collector,
    })
}

/// Reads the base URL of a collateral service: `https://host[:port][/path]`, or plain `http`
/// only to a loopback host (`127.0.0.1`, `[::1]` or `localhost`). The trailing `/` is removed.
fn service_url(expr: &Expression) -> Result<String, String> {
    let text = values::string(expr)?;
    let url = text.trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not a URL; expected https://host/path"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{text:?} has no host or contains user information; expected https://host/path"
        ));
    }
    if url.contains(['?', '#', ' ']) {
        return Err(format!(
            "{text:?} contains a query, fragment or space; expected a base URL such as \
             https://host/path"
        ));
    }
    match scheme {
        "https" => Ok(url.to_owned()),
        "http" if is_loopback_authority(authority) => Ok(url.to_owned()),
        "http" => Err(format!(
            "{text:?} uses plain http to a host other than 127.0.0.1, [::1] or localhost; use \
             https"
        )),
        _ => Err(format!(
            "{text:?} has scheme {scheme:?}; expected https (or http to a loopback host)"
        )),
    }
}

/// Tells whether a URL authority (`host[:port]`) names the loopback host.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Reads a list of hex strings of `len` bytes each.
fn hex_list(expr: &Expression, len: usize) -> Result<Vec<Vec<u8>>, String> {
    values::string_list(expr)?
        .iter()
        .enumerate()
        .map(|(index, text)| {
            hex_bytes(text, Some(len))
                .map_err(|reason| format!("item {index} of the list: {reason}"))
        })
        .collect()
}

/// Decodes hex (either case); with `len`, the value must have exactly that many bytes.
fn hex_bytes(text: &str, len: Option<usize>) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| format!("{text:?} is not hex"))?;
    match len {
        Some(len) if bytes.len() != len => Err(format!(
            "{text:?} is {} bytes, expected {len} bytes ({} hex digits)",
            bytes.len(),
            len * 2
        )),
        None if bytes.is_empty() => Err("expected a non-empty hex value".to_owned()),
        _ => Ok(bytes),
    }
}

fn u16_value(expr: &Expression) -> Result<u16, String> {
    let value = values::integer(expr)?;
    u16::try_from(value).map_err(|_| "expected an integer 0-65535".to_owned())
}

fn u8_value(expr: &Expression) -> Result<u8, String> {
    let value = values::integer(expr)?;
    u8::try_from(value).map_err(|_| "expected an integer 0-255".to_owned())
}

fn tcb_statuses(expr: &Expression) -> Result<Vec<twid_evidence::TcbStatus>, String> {
    let statuses = values::string_list(expr)?
        .iter()
        .map(|name| {
            let status: twid_evidence::TcbStatus = name.parse().map_err(|_: String| {
                format!(
                    "unknown TCB status {name:?}, expected some of UpToDate, SWHardeningNeeded, \
                     ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, \
                     OutOfDateConfigurationNeeded"
                )
            })?;
            // The verifier rejects a revoked TCB whatever the policy allows, so listing it
            // would suggest an acceptance that never happens.
            if status == twid_evidence::TcbStatus::Revoked {
                return Err(
                    "Revoked cannot be allowed: revoked TCBs are always rejected".to_owned(),
                );
            }
            Ok(status)
        })
        .collect::<Result<Vec<_>, String>>()?;
    if statuses.is_empty() {
        return Err(
            "the list is empty, which would reject every quote; remove the key to use the default"
                .to_owned(),
        );
    }
    Ok(statuses)
}

fn path_list(expr: &Expression) -> Result<Vec<PathBuf>, String> {
    let paths = values::string_list(expr)?;
    if paths.iter().any(String::is_empty) {
        return Err("paths must not be empty".to_owned());
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// Reads `min_tcb = { bootloader = 3, tee = 0, snp = 14, microcode = 209 }`. A missing
/// component is 0.
fn min_tcb(data: &Section<'_>) -> Result<Option<SnpTcb>, ConfigError> {
    let Some(section) = data.section("min_tcb")? else {
        return Ok(None);
    };
    section.check_keys(&MIN_TCB)?;
    let component =
        |key| -> Result<u8, ConfigError> { Ok(section.optional(key, u8_value)?.unwrap_or(0)) };
    Ok(Some(SnpTcb {
        bootloader: component("bootloader")?,
        tee: component("tee")?,
        snp: component("snp")?,
        microcode: component("microcode")?,
        fmc: section.optional("fmc", u8_value)?,
    }))
}

/// Reads `pcrs = { "0" = "<hex>", "7" = "<hex>" }`: TPM PCRs 0-23 or Nitro PCRs 0-31.
fn pcr_values(data: &Section<'_>, kind: Kind) -> Result<BTreeMap<u8, Vec<u8>>, ConfigError> {
    let mut pcrs = BTreeMap::new();
    let Some(section) = data.section("pcrs")? else {
        return Ok(pcrs);
    };
    let max_index = if kind == Kind::Nitro { 31 } else { 23 };
    for entry in &section.entries {
        let index = entry
            .key
            .parse::<u8>()
            .ok()
            .filter(|index| *index <= max_index)
            .ok_or_else(|| {
                section.invalid(
                    entry.line,
                    format!(
                        "pcrs key {:?} is not a PCR index; expected \"0\" to \"{max_index}\"",
                        entry.key
                    ),
                )
            })?;
        let Node::Value(_) = entry.node else {
            return Err(section.invalid(entry.line, "pcrs values must be hex strings".to_owned()));
        };
        let value = section.required(entry.key, |expr| {
            let text = values::string(expr)?;
            let bytes = hex_bytes(&text, None)?;
            if matches!(bytes.len(), 20 | 32 | 48 | 64) {
                Ok(bytes)
            } else {
                Err(format!(
                    "PCR value is {} bytes, expected 20, 32, 48 or 64 (SHA-1, SHA-256, SHA-384 \
                     or SHA-512)",
                    bytes.len()
                ))
            }
        })?;
        pcrs.insert(index, value);
    }
    Ok(pcrs)
}

/// Reads a TPM handle as an integer or a `0x`-prefixed hex string.
fn tpm_handle(expr: &Expression) -> Result<u32, String> {
    const EXPECTED: &str = "expected a TPM handle such as \"0x81010002\"";
    if let Expression::String(text) = expr
        && let Some(digits) = text.as_str().strip_prefix("0x")
    {
        return u32::from_str_radix(digits, 16).map_err(|_| EXPECTED.to_owned());
    }
    let value = values::integer(expr).map_err(|_| EXPECTED.to_owned())?;
    u32::try_from(value).map_err(|_| EXPECTED.to_owned())
}

fn pcr_bank(expr: &Expression) -> Result<String, String> {
    let bank = values::string(expr)?;
    if matches!(bank.as_str(), "sha1" | "sha256" | "sha384" | "sha512") {
        Ok(bank)
    } else {
        Err("invalid PCR bank, expected sha1, sha256, sha384 or sha512".to_owned())
    }
}

fn tpm_pcr_list(expr: &Expression) -> Result<Vec<u8>, String> {
    let Expression::Array(array) = expr else {
        return Err("expected a list of PCR indexes, such as [0, 7]".to_owned());
    };
    let mut pcrs = Vec::new();
    for (index, item) in array.iter().enumerate() {
        let pcr = values::integer(item)
            .ok()
            .and_then(|value| u8::try_from(value).ok())
            .filter(|value| *value <= 23)
            .ok_or_else(|| format!("item {index} of the list: expected a PCR index 0-23"))?;
        if !pcrs.contains(&pcr) {
            pcrs.push(pcr);
        }
    }
    if pcrs.is_empty() {
        return Err("expected at least one PCR index".to_owned());
    }
    Ok(pcrs)
}

fn command(expr: &Expression) -> Result<Vec<String>, String> {
    let command = values::string_list(expr)?;
    match command.first() {
        Some(program) if !program.is_empty() => Ok(command),
        _ => Err(
            "expected the program and its arguments as a list, such as [\"/usr/bin/collect\", \
             \"--json\"]"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestor_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(evidence_kind(attestor_name(kind)), Some(kind), "{kind}");
        }
        assert_eq!(evidence_kind("join_token"), None);
        assert_eq!(evidence_kind("sgx-dcap"), None);
    }

    #[test]
    fn service_url_loopback_http_only() {
        let parse = |text: &str| {
            let expr = hcl_edit::parser::parse_expr(&format!("{text:?}")).expect("expression");
            service_url(&expr)
        };
        assert_eq!(
            parse("https://pccs.example/").as_deref(),
            Ok("https://pccs.example")
        );
        assert_eq!(
            parse("http://127.0.0.1:8081/pcs").as_deref(),
            Ok("http://127.0.0.1:8081/pcs")
        );
        assert!(parse("http://[::1]:80").is_ok());
        assert!(parse("http://localhost").is_ok());
        assert!(parse("http://127.0.0.1.example").is_err());
        assert!(parse("http://pccs.example").is_err());
        assert!(parse("ftp://pccs.example").is_err());
        assert!(parse("https://user@pccs.example").is_err());
        assert!(parse("https://pccs.example/?a=b").is_err());
        assert!(parse("pccs.example").is_err());
    }

    #[test]
    fn document_policies_read_plugin_data_keys() {
        let mrtd = "ab".repeat(48);
        let json = format!(
            r#"{{
  "version": 2,
  "attestors": {{
    "tdx": {{"allowed_measurements": ["{mrtd}"], "max_collateral_age": "720h",
             "allowed_tcb_statuses": ["UpToDate"]}},
    "snp": {{"min_tcb": {{"bootloader": 3, "snp": 14}}, "allow_debug": false}},
    "tpm": {{"pcrs": {{"7": "{pcr}"}}, "allowed_ak_sha256": ["{ak}"]}}
  }}
}}"#,
            pcr = "01".repeat(32),
            ak = "02".repeat(32)
        );
        let policies = document_policies("policy version 2", &json).expect("valid document");
        let names: Vec<(&str, Kind)> = policies
            .iter()
            .map(|entry| (entry.attestor.as_str(), entry.kind))
            .collect();
        assert_eq!(
            names,
            [("tdx", Kind::Tdx), ("snp", Kind::Snp), ("tpm", Kind::Tpm)]
        );
        let tdx = &policies[0].policy;
        assert_eq!(tdx.allowed_measurements, vec![vec![0xab; 48]]);
        assert_eq!(
            tdx.max_collateral_age,
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        assert_eq!(
            tdx.allowed_tcb_statuses,
            vec![twid_evidence::TcbStatus::UpToDate]
        );
        let snp = policies[1].policy.min_snp_tcb.as_ref().expect("min_tcb");
        assert_eq!(
            (snp.bootloader, snp.tee, snp.snp, snp.microcode),
            (3, 0, 14, 0)
        );
        assert_eq!(policies[2].policy.pcrs.get(&7), Some(&vec![1u8; 32]));
        assert_eq!(policies[2].policy.allowed_ak_sha256, vec![[2u8; 32]]);
        assert!(
            document_policies("doc", r#"{"version": 1}"#)
                .expect("no attestors")
                .is_empty()
        );
    }

    #[test]
    fn document_policy_errors_name_key_and_value() {
        let error = document_policies(
            "policy version 3",
            "{\"attestors\": {\"tdx\": {\"allowed_measurements\": [\"abcd\"]}}}",
        )
        .expect_err("short measurement")
        .to_string();
        assert!(
            error.starts_with("policy version 3:1: allowed_measurements = [\"abcd\"]"),
            "{error}"
        );
        assert!(error.contains("expected 48 bytes"), "{error}");

        let error = document_policies("doc", r#"{"attestors": {"tdx": {"collateral_dir": "/x"}}}"#)
            .expect_err("config-only key")
            .to_string();
        assert!(error.contains("\"collateral_dir\""), "{error}");
        assert!(
            error.contains("stay in the server configuration"),
            "{error}"
        );

        let error = document_policies("doc", r#"{"attestors": {"tdxx": {}}}"#)
            .expect_err("unknown attestor")
            .to_string();
        assert!(error.contains("\"tdxx\""), "{error}");
        assert!(error.contains("did you mean \"tdx\""), "{error}");

        let error = document_policies(
            "doc",
            r#"{"attestors": {"snp": {"min_tcb": {"tee": 300}}}}"#,
        )
        .expect_err("component out of range")
        .to_string();
        assert!(error.contains("tee = 300"), "{error}");
    }

    #[test]
    fn document_whitespace_as_editors_write_it() {
        let body = "{\"version\": 1,\n\"comment\": \"c\",\n\"attestors\": {\"tdx\": {\n\"allowed_measurements\": [\"abcd\"]}}}";
        let cases = [
            ("trailing newline", format!("{body}\n"), 4),
            ("CRLF", format!("{}\r\n", body.replace('\n', "\r\n")), 4),
            ("leading spaces", format!("  \t{body}"), 4),
            ("leading newlines", format!("\n\n{body}\n\n"), 6),
            (
                "comma first",
                "{\"version\": 1\n, \"attestors\"\n:\n{\"tdx\"\n: {\"allowed_measurements\"\n: [\"abcd\"\n]\n}\n}\n}"
                    .to_owned(),
                5,
            ),
        ];
        for (name, json, line) in cases {
            let error = document_policies("doc", &json).expect_err(name).to_string();
            // The document parses, so the error is the value check, on the line of its key.
            assert!(
                error.starts_with(&format!("doc:{line}: allowed_measurements = [")),
                "{name}: {error}"
            );
            assert!(error.contains("\"abcd\" is 2 bytes"), "{name}: {error}");
            let valid = json.replace("abcd", &"ab".repeat(48));
            let policies = document_policies("doc", &valid).expect(name);
            assert_eq!(policies.len(), 1, "{name}");
            assert_eq!(
                policies[0].policy.allowed_measurements,
                vec![vec![0xab; 48]],
                "{name}"
            );
        }
    }

    #[test]
    fn document_strings_are_json_literals() {
        let comments = [
            r#""keep %{ and ${ as text""#,
            r#""a \\${b} \u0024{c} %%{d} $${e}""#,
            r#""escapes \/ \b \f \t \" \\ \ud83d\ude00 \u00e9""#,
        ];
        for comment in comments {
            let json = format!(
                "{{\"comment\": {comment},\n\"attestors\": {{\"tdx\": \
                 {{\"allowed_tcb_statuses\": [\"Up\\u0054oDate\"]}}}}}}\n"
            );
            let policies = document_policies("doc", &json).expect(comment);
            assert_eq!(
                policies[0].policy.allowed_tcb_statuses,
                vec![twid_evidence::TcbStatus::UpToDate],
                "{comment}"
            );
        }
        // A template in a value is a literal string, so the value check rejects it by name.
        let error = document_policies(
            "doc",
            r#"{"attestors": {"tdx": {"allowed_tcb_statuses": ["${\"UpToDate\"}"]}}}"#,
        )
        .expect_err("template text is not a status")
        .to_string();
        assert!(error.contains("allowed_tcb_statuses"), "{error}");
        assert!(error.contains("UpToDate"), "{error}");
    }

    #[test]
    fn document_duplicate_members_rejected() {
        let cases = [
            r#"{"version": 1, "vers\u0069on": 2}"#,
            r#"{"attestors": {"tdx": {}, "td\u0078": {}}}"#,
            "{\"attestors\": {\"tdx\": {\"allow_debug\": false,\n\"allow_d\\u0065bug\": true}}}\n",
        ];
        for json in cases {
            let error = document_policies("doc", json).expect_err(json).to_string();
            assert!(
                error.contains("found redefined object key"),
                "{json}: {error}"
            );
        }
    }

    #[test]
    fn json_as_hcl_rejects_non_json_text() {
        for (json, expected) in [
            ("{\"a\": \"x", "unterminated"),
            ("{\"a\": \"\\q\"}", "invalid escape \\q"),
            ("{\"a\": \"\\ud800\"}", "unpaired UTF-16 surrogate"),
            ("{\"a\": \"\\u12\"}", "four hex digits"),
            ("{\"a\": \"tab\there\"}", "control character"),
            ("{\"a\": #}", "unexpected character '#'"),
        ] {
            let (_, message) = json_as_hcl(json).expect_err(json);
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    #[test]
    fn hex_bytes_checks_length() {
        assert_eq!(hex_bytes("ABcd", Some(2)).unwrap(), vec![0xab, 0xcd]);
        assert!(hex_bytes("abc", Some(2)).unwrap_err().contains("not hex"));
        assert!(
            hex_bytes("abcd", Some(3))
                .unwrap_err()
                .contains("expected 3 bytes")
        );
    }
}
