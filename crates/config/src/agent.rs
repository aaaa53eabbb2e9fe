//! The agent configuration file: an `agent` block plus `plugins`, `health_checks`,
//! `telemetry`, with SPIRE's key names.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use twid_spiffe::TrustDomain;

use crate::common::{self, HealthChecks, LogFormat, LogLevel, ParseValueError, Telemetry};
use crate::document::{Schema, Section, Source};
use crate::evidence::{self, EvidenceNodeAttestor};
use crate::plugins::{self, Plugin};
use crate::server::DEFAULT_SERVER_PORT;
use crate::{ConfigError, read_file, values};

const DEFAULT_SOCKET_PATH: &str = "/tmp/twid-agent/public/api.sock";
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Default maximum of SVIDs signed by a tainted authority that one sync round replaces.
const DEFAULT_TAINT_BATCH_SIZE: usize = 100;
const DEFAULT_TAINT_BATCH_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_X509_SVID_CACHE_MAX_SIZE: usize = 1000;

/// Everything `twid agent run` needs, read from an agent configuration file.
///
/// `Debug` prints `join_token` as `<redacted>`.
#[derive(Clone)]
pub struct AgentConfig {
    /// The file this was loaded from, or `None` for [`AgentConfig::parse`] and
    /// [`AgentConfig::new_dev`].
    pub source: Option<PathBuf>,
    /// The trust domain of the server. Required.
    pub trust_domain: TrustDomain,
    /// Host name or IP address of the server, an IPv6 literal in brackets. Required unless
    /// `experimental { server_addresses }` is set, in which case this is the first address of
    /// that list.
    pub server_address: String,
    /// Port of the server's agent API. Default 8081, or the port of the first address of
    /// `experimental { server_addresses }`.
    pub server_port: u16,
    /// The server replicas the agent connects to, in order: `server_address:server_port`, or
    /// the list of `experimental { server_addresses }`. Never empty.
    pub server_addresses: Vec<ServerAddress>,
    /// Unix socket of the Workload API. Default `/tmp/twid-agent/public/api.sock`.
    pub socket_path: PathBuf,
    /// Directory for agent state (its key, SVID and bundle). Required.
    pub data_dir: PathBuf,
    /// Bundle that authenticates the server on first contact.
    pub trust_bundle_path: Option<PathBuf>,
    /// Format of `trust_bundle_path`. Default pem.
    pub trust_bundle_format: TrustBundleFormat,
    /// Trust the server without a bundle on first contact. Default false.
    pub insecure_bootstrap: bool,
    /// One-time token for node attestation.
    pub join_token: Option<String>,
    /// Default INFO.
    pub log_level: LogLevel,
    /// Default text.
    pub log_format: LogFormat,
    /// The `health_checks` block.
    pub health_checks: HealthChecks,
    /// The `telemetry` block.
    pub telemetry: Telemetry,
    /// The `WorkloadAttestor "unix"` settings.
    pub unix_attestor: UnixAttestorConfig,
    /// How often the agent fetches its entries from the server. Default 5s.
    pub sync_interval: Duration,
    /// Maximum workload SVIDs signed by a tainted authority that one sync round replaces
    /// (`experimental { taint_batch_size }`). Default 100.
    pub taint_batch_size: usize,
    /// Pause between two such rounds (`experimental { taint_batch_interval }`). Default 1s.
    /// Replacing N SVIDs of a tainted authority takes about
    /// `ceil(N / taint_batch_size) - 1` intervals after the first round.
    pub taint_batch_interval: Duration,
    /// How many workload X.509-SVIDs the agent keeps signed while it is authorized for more
    /// entries than that (`x509_svid_cache_max_size`, SPIRE's key). Entries that workloads
    /// requested are kept signed beyond this limit. Default 1000.
    pub x509_svid_cache_max_size: usize,
    /// The `sds` block: resource names and bundle format of the Envoy SDS service.
    pub sds: SdsConfig,
    /// A `NodeAttestor` block of an evidence kind; `None` means join token attestation.
    pub evidence_attestor: Option<EvidenceNodeAttestor>,
}

/// One server replica's node API address: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    /// Host name or IP address, an IPv6 literal in brackets.
    pub host: String,
    /// Port of the node API.
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for ServerAddress {
    type Err = String;

    /// Parses `host:port`, with an IPv6 literal in brackets (`[fd00::1]:8081`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains("://") {
            return Err("expected host:port without a scheme, such as 10.0.0.5:8081".to_owned());
        }
        if text.chars().any(char::is_whitespace) {
            return Err("remove the spaces; expected host:port, such as 10.0.0.5:8081".to_owned());
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err("expected host:port, such as 10.0.0.5:8081".to_owned());
        };
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(
                "an IPv6 address needs brackets around it, such as [fd00::1]:8081".to_owned(),
            );
        }
        let host = check_host(host)?;
        // u16's parser also takes a leading `+`, which is no way to write a port.
        let port = Some(port)
            .filter(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|port| port.parse::<u16>().ok())
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("invalid port {port:?}: expected 1 to 65535"))?;
        Ok(Self { host, port })
    }
}

/// Settings of the Envoy SDS v3 service on the Workload API socket, with the key names and
/// defaults of SPIRE's agent `sds` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsConfig {
    /// Resource name of the caller's first X.509-SVID. Default `default`.
    pub default_svid_name: String,
    /// Resource name of the local trust domain's bundle. Default `ROOTCA`.
    pub default_bundle_name: String,
    /// Resource name of all bundles, federated ones included. Default `ALL`.
    pub default_all_bundles_name: String,
    /// Send bundles as `trusted_ca` instead of Envoy's SPIFFE certificate validator
    /// configuration. Default false.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".to_owned(),
            default_bundle_name: "ROOTCA".to_owned(),
            default_all_bundles_name: "ALL".to_owned(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// Settings of the unix workload attestor, with SPIRE's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnixAttestorConfig {
    /// Add `unix:path` and `unix:sha256` selectors from the workload's executable. Default false.
    pub discover_workload_path: bool,
    /// Largest executable in bytes that is hashed for `unix:sha256`: 0 means no limit, a
    /// negative value means never hash. Default 0.
    pub workload_size_limit: i64,
}

/// Encoding of the file at `trust_bundle_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustBundleFormat {
    /// PEM certificates. This is the default.
    #[default]
    Pem,
    /// A SPIFFE bundle (JWK set) document.
    Spiffe,
}

impl TrustBundleFormat {
    /// Returns the configuration spelling: `"pem"` or `"spiffe"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pem => "pem",
            Self::Spiffe => "spiffe",
        }
    }
}

impl fmt::Display for TrustBundleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrustBundleFormat {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pem" => Ok(Self::Pem),
            "spiffe" => Ok(Self::Spiffe),
            _ => Err(ParseValueError::new(
                "trust bundle format",
                s,
                "pem or spiffe",
            )),
        }
    }
}

const AGENT_KEYS: &[&str] = &[
    "trust_domain",
    "server_address",
    "server_port",
    "socket_path",
    "data_dir",
    "trust_bundle_path",
    "trust_bundle_format",
    "insecure_bootstrap",
    "join_token",
    "log_level",
    "log_format",
    "experimental",
    "sds",
    "x509_svid_cache_max_size",
];

const FILE: Schema = Schema {
    keys: &["agent", "plugins", "health_checks", "telemetry"],
    hints: &[(
        "server",
        "this block belongs in a server configuration; load this file as a server configuration",
    )],
    nested: Some(("agent", AGENT_KEYS)),
};

const AGENT: Schema = Schema {
    keys: AGENT_KEYS,
    hints: &[
        (
            "log_file",
            "twid logs to standard error; redirect it to a file instead",
        ),
        (
            "trust_bundle_url",
            "download the bundle and set trust_bundle_path",
        ),
        ("trust_bundle_unix_socket", ""),
        ("retry_bootstrap", ""),
        ("admin_socket_path", ""),
        ("allow_unauthenticated_verifiers", ""),
        ("allowed_foreign_jwt_claims", ""),
        ("authorized_delegates", ""),
        ("availability_target", ""),
        ("log_source_location", ""),
        ("profiling_enabled", ""),
        ("profiling_port", ""),
        ("profiling_freq", ""),
        ("profiling_names", ""),
        ("workload_x509_svid_key_type", ""),
        ("jwt_svid_cache_max_size", ""),
    ],
    nested: None,
};

const EXPERIMENTAL: Schema = Schema {
    keys: &[
        "sync_interval",
        "taint_batch_size",
        "taint_batch_interval",
        "server_addresses",
    ],
    hints: &[
        ("named_pipe_name", ""),
        ("use_sync_authorized_entries", ""),
        ("require_pq_kem", ""),
    ],
    nested: None,
};

/// Every SPIRE agent plugin type, so that each gets a clear "unsupported" error.
const PLUGIN_TYPES: Schema = Schema {
    keys: &[
        "KeyManager",
        "NodeAttestor",
        "WorkloadAttestor",
        "SVIDStore",
    ],
    hints: &[(
        "DataStore",
        "the datastore is a server plugin; move this block to the server configuration",
    )],
    nested: None,
};

const SDS: Schema = Schema {
    keys: &[
        "default_svid_name",
        "default_bundle_name",
        "default_all_bundles_name",
        "disable_spiffe_cert_validation",
    ],
    hints: &[],
    nested: None,
};

const UNIX_ATTESTOR: Schema = Schema {
    keys: &["discover_workload_path", "workload_size_limit"],
    hints: &[],
    nested: None,
};

const KEY_MANAGER_DISK: Schema = Schema {
    keys: &["directory"],
    hints: &[],
    nested: None,
};

impl AgentConfig {
    /// Reads and validates an agent configuration file.
    ///
    /// # Errors
    /// Returns the first problem found, naming the file and line, as described at [`ConfigError`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_options(path, false)
    }

    /// Like [`AgentConfig::load`], but with `expand_env` it first replaces `$VAR` and `${VAR}` in the
    /// file text by environment variables, and an unset variable is an error.
    ///
    /// # Errors
    /// Returns the first problem found, naming the file and line, as described at [`ConfigError`].
    pub fn load_with_options(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        let text = read_file(path, expand_env)?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses configuration text. `source_name` is the file name used in errors.
    ///
    /// # Errors
    /// Returns the first problem found, naming `source_name` and the line, as described at [`ConfigError`].
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let source = Source::new(source_name, text);
        let body = source.parse()?;
        let root = Section::root(&source, &body);
        root.check_keys(&FILE)?;
        let Some(agent) = root.section("agent")? else {
            let hint = root
                .entry("server")
                .map(|_| "this file has a server block; it is a server configuration".to_owned());
            return Err(ConfigError::MissingBlock {
                file: source_name.to_owned(),
                block: "agent".to_owned(),
                hint,
            });
        };
        agent.check_keys(&AGENT)?;

        let trust_domain = common::trust_domain(&agent)?;
        let server_addresses = server_addresses(&agent)?;
        let data_dir = agent.required("data_dir", values::path)?;
        let (log_level, log_format) = common::logging(&agent)?;
        let trust_bundle_path = agent.optional("trust_bundle_path", values::path)?;
        let insecure_bootstrap = agent
            .optional("insecure_bootstrap", values::boolean)?
            .unwrap_or(false);
        check_bootstrap(&agent, trust_bundle_path.is_some(), insecure_bootstrap)?;

        let plugins = plugins::collect(&root, &PLUGIN_TYPES)?;
        let (unix_attestor, evidence_attestor) = check_plugins(&plugins, &data_dir)?;
        if evidence_attestor.is_some() && agent.entry("join_token").is_some() {
            return Err(agent.invalid_value(
                "join_token",
                "a NodeAttestor block of an evidence kind is configured too; remove join_token \
                 or the NodeAttestor block"
                    .to_owned(),
            ));
        }
        let first = server_addresses[0].clone();
        Ok(Self {
            source: None,
            trust_domain,
            server_address: first.host,
            server_port: first.port,
            server_addresses,
            socket_path: agent
                .optional("socket_path", values::path)?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            data_dir,
            trust_bundle_path,
            trust_bundle_format: agent
                .optional(
                    "trust_bundle_format",
                    common::enumerated::<TrustBundleFormat>,
                )?
                .unwrap_or_default(),
            insecure_bootstrap,
            join_token: agent.optional("join_token", values::non_empty_string)?,
            log_level,
            log_format,
            health_checks: common::health_checks(&root)?,
            telemetry: common::telemetry(&root)?,
            unix_attestor,
            sync_interval: sync_interval(&agent)?,
            taint_batch_size: taint_batch_size(&agent)?,
            taint_batch_interval: taint_batch_interval(&agent)?,
            x509_svid_cache_max_size: agent
                .optional("x509_svid_cache_max_size", |expr| {
                    values::integer(expr)
                        .ok()
                        .and_then(|value| usize::try_from(value).ok())
                        .filter(|size| *size > 0)
                        .ok_or_else(|| "expected a positive integer, such as 1000".to_owned())
                })?
                .unwrap_or(DEFAULT_X509_SVID_CACHE_MAX_SIZE),
            sds: sds(&agent)?,
            evidence_attestor,
        })
    }

    /// Returns a configuration for a development agent that talks to a local server. The
    /// caller sets `trust_bundle_path` or `insecure_bootstrap`, and `join_token`.
    pub fn new_dev(
        trust_domain: TrustDomain,
        server_address: String,
        server_port: u16,
        data_dir: &Path,
        socket_path: PathBuf,
    ) -> Self {
        Self {
            source: None,
            trust_domain,
            server_addresses: vec![ServerAddress {
                host: server_address.clone(),
                port: server_port,
            }],
            server_address,
            server_port,
            socket_path,
            data_dir: data_dir.to_owned(),
            trust_bundle_path: None,
            trust_bundle_format: TrustBundleFormat::default(),
            insecure_bootstrap: false,
            join_token: None,
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            health_checks: HealthChecks::default(),
            telemetry: Telemetry::default(),
            unix_attestor: UnixAttestorConfig::default(),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            taint_batch_size: DEFAULT_TAINT_BATCH_SIZE,
            taint_batch_interval: DEFAULT_TAINT_BATCH_INTERVAL,
            x509_svid_cache_max_size: DEFAULT_X509_SVID_CACHE_MAX_SIZE,
            sds: SdsConfig::default(),
            evidence_attestor: None,
        }
    }
}

/// Reads a host name or IP address without a port or scheme. Name resolution happens when
/// the agent connects. An IPv6 literal is returned in brackets, so that
/// `format!("{address}:{port}")` is a valid authority.
fn server_address(expr: &hcl_edit::expr::Expression) -> Result<String, String> {
    check_host(&values::non_empty_string(expr)?)
}

/// Checks a host name or IP address like [`server_address`] does and returns it with an IPv6
/// literal in brackets.
fn check_host(address: &str) -> Result<String, String> {
    if address.is_empty() {
        return Err("the host must not be empty".to_owned());
    }
    let unbracketed = address
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(address);
    let is_ipv6 = unbracketed.parse::<Ipv6Addr>().is_ok();
    if address.contains("://") || (address.contains(':') && !is_ipv6) {
        return Err(
            "expected a host name or IP address without scheme or port; set the port with \
             server_port"
                .to_owned(),
        );
    }
    if is_ipv6 {
        return Ok(format!("[{unbracketed}]"));
    }
    Ok(address.to_owned())
}

/// Reads the server's addresses: `experimental { server_addresses }` when set, else
/// `server_address` with `server_port`. Setting both is an error, because the agent would
/// have to ignore one of them.
fn server_addresses(agent: &Section<'_>) -> Result<Vec<ServerAddress>, ConfigError> {
    let listed = match agent.section("experimental")? {
        Some(experimental) => {
            experimental.check_keys(&EXPERIMENTAL)?;
            experimental.optional("server_addresses", server_address_list)?
        }
        None => None,
    };
    let Some(listed) = listed else {
        let host = agent.required("server_address", server_address)?;
        let port = agent
            .optional("server_port", values::port)?
            .unwrap_or(DEFAULT_SERVER_PORT);
        return Ok(vec![ServerAddress { host, port }]);
    };
    for key in ["server_address", "server_port"] {
        if agent.entry(key).is_some() {
            return Err(agent.invalid_value(
                key,
                "experimental { server_addresses } is also set; list every server there as \
                 host:port and remove this key"
                    .to_owned(),
            ));
        }
    }
    Ok(listed)
}

/// Reads `["host:port", ...]`: at least one address, each unique.
fn server_address_list(expr: &hcl_edit::expr::Expression) -> Result<Vec<ServerAddress>, String> {
    let items = values::string_list(expr)?;
    if items.is_empty() {
        return Err(
            "expected at least one address, such as [\"10.0.0.5:8081\", \"10.0.0.6:8081\"]"
                .to_owned(),
        );
    }
    let mut addresses: Vec<ServerAddress> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let address = item
            .parse::<ServerAddress>()
            .map_err(|reason| format!("item {index} ({item:?}): {reason}"))?;
        if addresses.contains(&address) {
            return Err(format!(
                "item {index} ({item:?}) is listed twice; remove one"
            ));
        }
        addresses.push(address);
    }
    Ok(addresses)
}

/// Requires exactly one way to authenticate the server on first contact, as SPIRE does.
fn check_bootstrap(
    agent: &Section<'_>,
    has_bundle: bool,
    insecure_bootstrap: bool,
) -> Result<(), ConfigError> {
    match (has_bundle, insecure_bootstrap) {
        (true, false) | (false, true) => Ok(()),
        (true, true) => Err(agent.invalid_value(
            "insecure_bootstrap",
            "trust_bundle_path is also set; use one or the other".to_owned(),
        )),
        (false, false) => Err(agent.invalid(
            agent.line,
            "block \"agent\" needs trust_bundle_path (a bundle with the server's CA) or \
             insecure_bootstrap = true (trust the first server contacted; for testing only)"
                .to_owned(),
        )),
    }
}

fn sync_interval(agent: &Section<'_>) -> Result<Duration, ConfigError> {
    let Some(experimental) = agent.section("experimental")? else {
        return Ok(DEFAULT_SYNC_INTERVAL);
    };
    experimental.check_keys(&EXPERIMENTAL)?;
    Ok(experimental
        .optional("sync_interval", values::positive_duration)?
        .unwrap_or(DEFAULT_SYNC_INTERVAL))
}

fn taint_batch_size(agent: &Section<'_>) -> Result<usize, ConfigError> {
    let Some(experimental) = agent.section("experimental")? else {
        return Ok(DEFAULT_TAINT_BATCH_SIZE);
    };
    let size = experimental.optional("taint_batch_size", |expr| {
        values::integer(expr)
            .ok()
            .and_then(|value| usize::try_from(value).ok())
            .filter(|size| *size > 0)
            .ok_or_else(|| "expected a positive integer, such as 100".to_owned())
    })?;
    Ok(size.unwrap_or(DEFAULT_TAINT_BATCH_SIZE))
}

fn taint_batch_interval(agent: &Section<'_>) -> Result<Duration, ConfigError> {
    let Some(experimental) = agent.section("experimental")? else {
        return Ok(DEFAULT_TAINT_BATCH_INTERVAL);
    };
    Ok(experimental
        .optional("taint_batch_interval", values::positive_duration)?
        .unwrap_or(DEFAULT_TAINT_BATCH_INTERVAL))
}

/// Reads the optional `sds` block. The three names must differ, because each selects a
/// different kind of resource.
fn sds(agent: &Section<'_>) -> Result<SdsConfig, ConfigError> {
    let mut config = SdsConfig::default();
    let Some(block) = agent.section("sds")? else {
        return Ok(config);
    };
    block.check_keys(&SDS)?;
    if let Some(name) = block.optional("default_svid_name", values::non_empty_string)? {
        config.default_svid_name = name;
    }
    if let Some(name) = block.optional("default_bundle_name", values::non_empty_string)? {
        config.default_bundle_name = name;
    }
    if let Some(name) = block.optional("default_all_bundles_name", values::non_empty_string)? {
        config.default_all_bundles_name = name;
    }
    if let Some(disable) = block.optional("disable_spiffe_cert_validation", values::boolean)? {
        config.disable_spiffe_cert_validation = disable;
    }
    let names = [
        ("default_svid_name", &config.default_svid_name),
        ("default_bundle_name", &config.default_bundle_name),
        ("default_all_bundles_name", &config.default_all_bundles_name),
    ];
    for (index, (key, name)) in names.iter().enumerate() {
        if let Some((other, _)) = names[..index].iter().find(|(_, earlier)| earlier == name) {
            return Err(block.invalid_value(
                key,
                format!("{name:?} is also the value of {other}; give each SDS name its own value"),
            ));
        }
    }
    Ok(config)
}

/// Validates the agent's plugin blocks and returns the unix attestor settings and the
/// evidence node attestor, if one is configured.
fn check_plugins(
    plugins: &[Plugin<'_>],
    data_dir: &Path,
) -> Result<(UnixAttestorConfig, Option<EvidenceNodeAttestor>), ConfigError> {
    let mut unix = UnixAttestorConfig::default();
    let mut evidence_attestor = None;
    plugins::single(plugins, "KeyManager")?;
    plugins::single(plugins, "NodeAttestor")?;
    for plugin in plugins {
        match (plugin.plugin_type, plugin.name) {
            ("NodeAttestor", "join_token") => plugin.check_data(&plugins::NO_SETTINGS)?,
            ("NodeAttestor", name) => {
                let Some(kind) = evidence::evidence_kind(name) else {
                    return Err(plugin.unsupported(crate::server::NODE_ATTESTORS));
                };
                evidence_attestor = Some(evidence::agent_attestor(plugin, kind)?);
            }
            ("WorkloadAttestor", "unix") => {
                plugin.check_data(&UNIX_ATTESTOR)?;
                if let Some(discover) =
                    plugin.optional("discover_workload_path", values::boolean)?
                {
                    unix.discover_workload_path = discover;
                }
                if let Some(limit) = plugin.optional("workload_size_limit", values::integer)? {
                    unix.workload_size_limit = limit;
                }
            }
            ("WorkloadAttestor", _) => {
                return Err(plugin.unsupported("twid supports WorkloadAttestor \"unix\" only"));
            }
            ("KeyManager", "disk") => check_key_manager_disk(plugin, data_dir)?,
            ("KeyManager", _) => {
                return Err(plugin.unsupported(
                    "the twid agent always keeps its private key in data_dir; use \
                     KeyManager \"disk\" or remove the block",
                ));
            }
            (other, _) => {
                return Err(plugin.unsupported(&format!("twid has no {other} plugins")));
            }
        }
    }
    Ok((unix, evidence_attestor))
}

/// Accepts `KeyManager "disk"` when its `directory` is `data_dir` (or unset), because the
/// agent stores its key there and nowhere else.
fn check_key_manager_disk(plugin: &Plugin<'_>, data_dir: &Path) -> Result<(), ConfigError> {
    plugin.check_data(&KEY_MANAGER_DISK)?;
    let Some(directory) = plugin.optional("directory", values::path)? else {
        return Ok(());
    };
    if normalized(&directory) == normalized(data_dir) {
        return Ok(());
    }
    let reason = format!(
        "the twid agent keeps its private key in data_dir ({}); set directory to data_dir or \
         remove it",
        data_dir.display()
    );
    Err(match &plugin.data {
        Some(data) => data.invalid_value("directory", reason),
        None => plugin.unsupported(&reason),
    })
}

/// Drops `.` components so that `./.data` and `.data/` compare equal.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect()
}

impl fmt::Debug for AgentConfig {
    /// Formats every field but the join token, which is a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join_token = self.join_token.as_ref().map(|_| "<redacted>");
        f.debug_struct("AgentConfig")
            .field("source", &self.source)
            .field("trust_domain", &self.trust_domain)
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field("server_addresses", &self.server_addresses)
            .field("socket_path", &self.socket_path)
            .field("data_dir", &self.data_dir)
            .field("trust_bundle_path", &self.trust_bundle_path)
            .field("trust_bundle_format", &self.trust_bundle_format)
            .field("insecure_bootstrap", &self.insecure_bootstrap)
            .field("join_token", &join_token)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("health_checks", &self.health_checks)
            .field("telemetry", &self.telemetry)
            .field("unix_attestor", &self.unix_attestor)
            .field("sync_interval", &self.sync_interval)
            .field("taint_batch_size", &self.taint_batch_size)
            .field("taint_batch_interval", &self.taint_batch_interval)
            .field("x509_svid_cache_max_size", &self.x509_svid_cache_max_size)
            .field("sds", &self.sds)
            .field("evidence_attestor", &self.evidence_attestor)
            .finish()
    }
}
