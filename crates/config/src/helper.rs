//! The `twid helper` configuration file, with spiffe-helper's key names: where to write a
//! workload's SVID, key and bundle, and which process to start or signal after each rewrite.

use std::path::{Path, PathBuf};

use hcl_edit::expr::Expression;

use crate::document::{Schema, Section, Source};
use crate::{ConfigError, read_file, values};

/// File name of the X.509-SVID (leaf first) when `svid_file_name` is unset.
pub(crate) const DEFAULT_SVID_FILE_NAME: &str = "svid.pem";
/// File name of the private key when `svid_key_file_name` is unset.
pub(crate) const DEFAULT_SVID_KEY_FILE_NAME: &str = "svid_key.pem";
/// File name of the trust bundle when `svid_bundle_file_name` is unset.
pub(crate) const DEFAULT_SVID_BUNDLE_FILE_NAME: &str = "svid_bundle.pem";

const DEFAULT_CERT_FILE_MODE: u32 = 0o644;
const DEFAULT_KEY_FILE_MODE: u32 = 0o600;
const DEFAULT_JWT_SVID_FILE_MODE: u32 = 0o600;

const HELPER: Schema = Schema {
    keys: &[
        "agent_address",
        "cmd",
        "cmd_args",
        "cert_dir",
        "daemon_mode",
        "add_intermediates_to_bundle",
        "include_federated_domains",
        "renew_signal",
        "pid_file_name",
        "svid_file_name",
        "svid_key_file_name",
        "svid_bundle_file_name",
        "jwt_svids",
        "cert_file_mode",
        "key_file_mode",
        "jwt_svid_file_mode",
        "hint",
        "file_format",
    ],
    hints: &[
        ("jwt_bundle_file_name", ""),
        ("jwt_bundle_file_mode", ""),
        ("health_checks", ""),
    ],
    nested: None,
};

const JWT_SVID: Schema = Schema {
    keys: &["jwt_audience", "jwt_extra_audiences", "jwt_svid_file_name"],
    hints: &[],
    nested: None,
};

/// Encoding of the SVID, key and bundle files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HelperFileFormat {
    /// PEM blocks: `CERTIFICATE` for certificates, `PRIVATE KEY` (PKCS#8) for the key.
    #[default]
    Pem,
    /// Binary DER: concatenated certificates, and the PKCS#8 key.
    Der,
}

impl std::str::FromStr for HelperFileFormat {
    type Err = crate::ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pem" => Ok(Self::Pem),
            "der" => Ok(Self::Der),
            _ => Err(crate::ParseValueError::new("file format", s, "pem or der")),
        }
    }
}

/// One JWT-SVID that the helper keeps in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtSvidFile {
    /// The first audience of the token (`jwt_audience`).
    pub audience: String,
    /// Further audiences (`jwt_extra_audiences`).
    pub extra_audiences: Vec<String>,
    /// File name inside `cert_dir` (`jwt_svid_file_name`).
    pub file_name: String,
}

/// Everything `twid helper` needs, read from a spiffe-helper style HCL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperConfig {
    /// Workload API socket; `None` means `SPIFFE_ENDPOINT_SOCKET` or the agent's default.
    pub agent_address: Option<PathBuf>,
    /// Program started after the first write, and started again after a later write when it has
    /// exited.
    pub cmd: Option<String>,
    /// Arguments of `cmd`, split at whitespace as spiffe-helper does.
    pub cmd_args: Vec<String>,
    /// Directory that receives every file; it must exist. Required.
    pub cert_dir: PathBuf,
    /// Keep running and rewrite the files on every update. Default true.
    pub daemon_mode: bool,
    /// Write intermediate CAs into the bundle file instead of after the leaf in the SVID file.
    /// Default false.
    pub add_intermediates_to_bundle: bool,
    /// Append the federated trust domains' CAs to the bundle file. Default false.
    pub include_federated_domains: bool,
    /// Signal name (`SIGHUP`, `SIGUSR1`, ...) sent after each rewrite.
    pub renew_signal: Option<String>,
    /// File that contains the pid of a process to signal after each rewrite.
    pub pid_file_name: Option<PathBuf>,
    /// Default `svid.pem`.
    pub svid_file_name: String,
    /// Default `svid_key.pem`.
    pub svid_key_file_name: String,
    /// Default `svid_bundle.pem`.
    pub svid_bundle_file_name: String,
    /// JWT-SVIDs to keep in files.
    pub jwt_svids: Vec<JwtSvidFile>,
    /// Permission bits of the SVID and bundle files. Default 0644.
    pub cert_file_mode: u32,
    /// Permission bits of the key file. Default 0600.
    pub key_file_mode: u32,
    /// Permission bits of the JWT-SVID files. Default 0600.
    pub jwt_svid_file_mode: u32,
    /// Write the SVID with this hint instead of the first one.
    pub hint: Option<String>,
    /// Encoding of the SVID, key and bundle files (twid's key; spiffe-helper writes PEM only).
    /// Default pem.
    pub file_format: HelperFileFormat,
}

impl HelperConfig {
    /// Reads and validates a helper configuration file.
    ///
    /// # Errors
    /// Returns the first problem found, naming the file and line, as described at [`ConfigError`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path, false)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text. `source_name` is the file name used in errors.
    ///
    /// # Errors
    /// Returns the first problem found, naming `source_name` and the line, as described at [`ConfigError`].
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let source = Source::new(source_name, text);
        let body = source.parse()?;
        let root = Section::root(&source, &body);
        root.check_keys(&HELPER)?;

        let renew_signal = root.optional("renew_signal", signal_name)?;
        let pid_file_name = root.optional("pid_file_name", values::path)?;
        if pid_file_name.is_some() && renew_signal.is_none() {
            return Err(root.invalid_value(
                "pid_file_name",
                "renew_signal must be set to signal the process in this pid file".to_owned(),
            ));
        }
        let cmd_args = root
            .optional("cmd_args", values::string)?
            .map(|args| args.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let cmd = root
            .optional("cmd", values::string)?
            .filter(|cmd| !cmd.is_empty());

        Ok(Self {
            agent_address: root.optional("agent_address", values::path)?,
            cmd,
            cmd_args,
            cert_dir: root.required("cert_dir", values::path)?,
            daemon_mode: root
                .optional("daemon_mode", values::boolean)?
                .unwrap_or(true),
            add_intermediates_to_bundle: root
                .optional("add_intermediates_to_bundle", values::boolean)?
                .unwrap_or(false),
            include_federated_domains: root
                .optional("include_federated_domains", values::boolean)?
                .unwrap_or(false),
            renew_signal,
            pid_file_name,
            svid_file_name: file_name(&root, "svid_file_name", DEFAULT_SVID_FILE_NAME)?,
            svid_key_file_name: file_name(&root, "svid_key_file_name", DEFAULT_SVID_KEY_FILE_NAME)?,
            svid_bundle_file_name: file_name(
                &root,
                "svid_bundle_file_name",
                DEFAULT_SVID_BUNDLE_FILE_NAME,
            )?,
            jwt_svids: jwt_svids(&root)?,
            cert_file_mode: root
                .optional("cert_file_mode", file_mode)?
                .unwrap_or(DEFAULT_CERT_FILE_MODE),
            key_file_mode: root
                .optional("key_file_mode", file_mode)?
                .unwrap_or(DEFAULT_KEY_FILE_MODE),
            jwt_svid_file_mode: root
                .optional("jwt_svid_file_mode", file_mode)?
                .unwrap_or(DEFAULT_JWT_SVID_FILE_MODE),
            hint: root.optional("hint", values::non_empty_string)?,
            file_format: root
                .optional("file_format", crate::common::enumerated::<HelperFileFormat>)?
                .unwrap_or_default(),
        })
    }
}

fn file_name(root: &Section<'_>, key: &str, default: &str) -> Result<String, ConfigError> {
    Ok(root
        .optional(key, plain_file_name)?
        .unwrap_or_else(|| default.to_owned()))
}

/// Reads a file name without directory parts, so that every file stays inside `cert_dir`.
fn plain_file_name(expr: &Expression) -> Result<String, String> {
    let name = values::non_empty_string(expr)?;
    if name.contains('/') || name == "." || name == ".." {
        return Err("expected a file name without \"/\"; files are written inside cert_dir".into());
    }
    Ok(name)
}

/// Reads permission bits written as octal digits: `0644`, `644` or `"0644"`. HCL reads the
/// number `0644` as decimal 644, so the decimal digits are taken as octal ones.
fn file_mode(expr: &Expression) -> Result<u32, String> {
    const EXPECTED: &str = "expected octal permission bits such as 0644 or 0600";
    let digits = match expr {
        Expression::Number(number) => number
            .value()
            .as_u64()
            .map(|value| value.to_string())
            .ok_or_else(|| EXPECTED.to_owned())?,
        Expression::String(text) => text.trim().to_owned(),
        _ => return Err(EXPECTED.to_owned()),
    };
    let mode = u32::from_str_radix(&digits, 8).map_err(|_| EXPECTED.to_owned())?;
    if mode > 0o777 {
        return Err(EXPECTED.to_owned());
    }
    Ok(mode)
}

/// Reads a signal name with or without the `SIG` prefix and returns it with the prefix.
fn signal_name(expr: &Expression) -> Result<String, String> {
    const SIGNALS: &[&str] = &[
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGCONT", "SIGWINCH",
    ];
    let text = values::non_empty_string(expr)?.to_ascii_uppercase();
    let name = if text.starts_with("SIG") {
        text
    } else {
        format!("SIG{text}")
    };
    if SIGNALS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!("expected one of {}", SIGNALS.join(", ")))
    }
}

fn jwt_svids(root: &Section<'_>) -> Result<Vec<JwtSvidFile>, ConfigError> {
    let Some(entry) = root.entry("jwt_svids") else {
        return Ok(Vec::new());
    };
    let crate::document::Node::Value(Expression::Array(array)) = entry.node else {
        return Err(root.invalid_value(
            "jwt_svids",
            "expected a list of objects such as [{jwt_audience = \"a\", jwt_svid_file_name = \
             \"a.token\"}]"
                .to_owned(),
        ));
    };
    let mut files = Vec::with_capacity(array.len());
    for (index, item) in array.iter().enumerate() {
        let item_entry = crate::document::Entry {
            key: "jwt_svids",
            line: entry.line,
            node: crate::document::Node::Value(item),
        };
        let section = root.child(&item_entry).map_err(|_| {
            root.invalid_value(
                "jwt_svids",
                format!("item {index} of the list is not an object"),
            )
        })?;
        section.check_keys(&JWT_SVID)?;
        files.push(JwtSvidFile {
            audience: section.required("jwt_audience", values::non_empty_string)?,
            extra_audiences: section
                .optional("jwt_extra_audiences", values::string_list)?
                .unwrap_or_default(),
            file_name: section.required("jwt_svid_file_name", plain_file_name)?,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_full_file() {
        let text = r#"
agent_address = "/tmp/agent.sock"
cmd = "nginx"
cmd_args = "-g  'daemon off;'"
cert_dir = "certs"
daemon_mode = false
add_intermediates_to_bundle = true
renew_signal = "SIGHUP"
pid_file_name = "/run/nginx.pid"
svid_file_name = "a.pem"
svid_key_file_name = "a.key"
svid_bundle_file_name = "ca.pem"
jwt_svids = [{jwt_audience = "aud", jwt_extra_audiences = ["x"], jwt_svid_file_name = "jwt.token"}]
cert_file_mode = 0444
key_file_mode = "0640"
file_format = "der"
"#;
        let config = HelperConfig::parse(text, "helper.conf").unwrap();
        assert_eq!(config.agent_address, Some(PathBuf::from("/tmp/agent.sock")));
        assert_eq!(config.cmd.as_deref(), Some("nginx"));
        assert_eq!(config.cmd_args, ["-g", "'daemon", "off;'"]);
        assert!(!config.daemon_mode);
        assert!(config.add_intermediates_to_bundle);
        assert_eq!(config.renew_signal.as_deref(), Some("SIGHUP"));
        assert_eq!(config.svid_key_file_name, "a.key");
        assert_eq!(config.cert_file_mode, 0o444);
        assert_eq!(config.key_file_mode, 0o640);
        assert_eq!(config.jwt_svid_file_mode, 0o600);
        assert_eq!(config.file_format, HelperFileFormat::Der);
        assert_eq!(
            config.jwt_svids,
            [JwtSvidFile {
                audience: "aud".to_owned(),
                extra_audiences: vec!["x".to_owned()],
                file_name: "jwt.token".to_owned(),
            }]
        );
    }

    #[test]
    fn helper_defaults() {
        let config = HelperConfig::parse("cert_dir = \"/c\"\n", "helper.conf").unwrap();
        assert!(config.daemon_mode);
        assert_eq!(config.svid_file_name, DEFAULT_SVID_FILE_NAME);
        assert_eq!(config.svid_bundle_file_name, DEFAULT_SVID_BUNDLE_FILE_NAME);
        assert_eq!(config.cert_file_mode, 0o644);
        assert_eq!(config.key_file_mode, 0o600);
        assert!(config.cmd.is_none());
        assert!(config.jwt_svids.is_empty());
        assert_eq!(config.file_format, HelperFileFormat::Pem);
    }

    #[test]
    fn helper_rejects_bad_values() {
        let cases = [
            ("", "cert_dir"),
            ("cert_dir = \"c\"\nkey_file_mode = 0988\n", "octal"),
            (
                "cert_dir = \"c\"\nrenew_signal = \"SIGKILLX\"\n",
                "expected one of",
            ),
            ("cert_dir = \"c\"\nsvid_file_name = \"../x\"\n", "without"),
            ("cert_dir = \"c\"\npid_file_name = \"/p\"\n", "renew_signal"),
            (
                "cert_dir = \"c\"\njwt_svids = [{jwt_audience = \"a\"}]\n",
                "jwt_svid_file_name",
            ),
            (
                "cert_dir = \"c\"\njwt_bundle_file_name = \"b\"\n",
                "not supported",
            ),
            (
                "cert_dir = \"c\"\nsvid_filename = \"b\"\n",
                "svid_file_name",
            ),
            ("cert_dir = \"c\"\nfile_format = \"p12\"\n", "pem or der"),
        ];
        for (text, expected) in cases {
            let error = HelperConfig::parse(text, "helper.conf")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn helper_signal_without_prefix() {
        let text = "cert_dir = \"c\"\nrenew_signal = \"usr1\"\n";
        let config = HelperConfig::parse(text, "helper.conf").unwrap();
        assert_eq!(config.renew_signal.as_deref(), Some("SIGUSR1"));
    }
}
