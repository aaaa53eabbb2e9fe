//! The server configuration file: a `server` block plus `plugins`, `health_checks` and
//! `telemetry`, with SPIRE's key names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use twid_datastore::{DatabaseType, DatastoreConfig};
use twid_spiffe::TrustDomain;

use crate::common::{self, HealthChecks, LogFormat, LogLevel, ParseValueError, Telemetry};
use crate::document::{Schema, Section, Source};
use crate::evidence::{self, EvidenceAttestorConfig};
use crate::federation::{self, FederationConfig};
use crate::issuers::{self, JwtIssuerConfig, OidcDiscoveryConfig};
use crate::plugins::{self, Plugin};
use crate::{ConfigError, read_file, values};

/// Default `bind_port` of the server, and default `server_port` of the agent.
pub(crate) const DEFAULT_SERVER_PORT: u16 = 8081;
const DEFAULT_SOCKET_PATH: &str = "/tmp/twid-server/private/api.sock";
const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_NODE_API_MAX_CONNECTIONS: usize = 16_384;
const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);
const SQLITE_FILE_NAME: &str = "datastore.sqlite3";
const KEYS_DIR_NAME: &str = "keys";

/// Everything `twid server run` needs, read from a server configuration file.
#[derive(Clone)]
pub struct ServerConfig {
    /// The file this was loaded from, or `None` for [`ServerConfig::parse`] and
    /// [`ServerConfig::new_dev`].
    pub source: Option<PathBuf>,
    /// The trust domain the server issues identities in. Required.
    pub trust_domain: TrustDomain,
    /// Listen address of the agent-facing gRPC API. Default 0.0.0.0.
    pub bind_address: IpAddr,
    /// Listen port of the agent-facing gRPC API. Default 8081.
    pub bind_port: u16,
    /// Directory for server state. Required.
    pub data_dir: PathBuf,
    /// Default INFO.
    pub log_level: LogLevel,
    /// Default text.
    pub log_format: LogFormat,
    /// Key type of the X.509 CA. Default ec-p256.
    pub ca_key_type: KeyType,
    /// Key type of the JWT signing key. Default ec-p256.
    pub jwt_key_type: KeyType,
    /// Lifetime of each CA certificate and JWT signing key. Default 24h.
    pub ca_ttl: Duration,
    /// X.509-SVID lifetime when an entry sets none. Default 1h.
    pub default_x509_svid_ttl: Duration,
    /// JWT-SVID lifetime when an entry sets none. Default 5m.
    pub default_jwt_svid_ttl: Duration,
    /// Maximum connections, handshaking or established, on the node API port at once
    /// (`node_api_max_connections`). Each agent holds one. Default 16384.
    pub node_api_max_connections: usize,
    /// Lifetime of agent SVIDs. `None` means `default_x509_svid_ttl`.
    pub agent_ttl: Option<Duration>,
    /// Unix socket of the admin API. Default `/tmp/twid-server/private/api.sock`.
    pub socket_path: PathBuf,
    /// Subject of CA certificates. Default C=US, O=SPIFFE.
    pub ca_subject: CaSubject,
    /// The `health_checks` block.
    pub health_checks: HealthChecks,
    /// The `telemetry` block.
    pub telemetry: Telemetry,
    /// The `DataStore "sql"` plugin. Default SQLite at `<data_dir>/datastore.sqlite3`.
    pub datastore: DatastoreConfig,
    /// The `KeyManager` plugin. Default `disk` at `<data_dir>/keys`.
    pub key_manager: KeyManager,
    /// The `UpstreamAuthority "disk"` plugin, `None` when absent: then the X.509 authorities
    /// are self-signed.
    pub upstream_authority: Option<UpstreamAuthorityDisk>,
    /// The server's public base URL, the default `endpoints.oidc_discovery.issuer`.
    pub public_url: Option<String>,
    /// The `jwt_issuer "<name>"` blocks in file order.
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    /// The `endpoints.oidc_discovery` block, `None` when absent.
    pub oidc_discovery: Option<OidcDiscoveryConfig>,
    /// The `federation` block: the bundle endpoint and the federation relationships.
    pub federation: FederationConfig,
    /// The `NodeAttestor` blocks of evidence kinds (`sgx_dcap`, `tdx`, `sgx_ias`, `snp`,
    /// `nitro`, `tpm`) in file order. Join tokens are always accepted beside them.
    pub evidence_attestors: Vec<EvidenceAttestorConfig>,
    /// PEM SubjectPublicKeyInfo files of the P-256 keys that may sign version 1 of the
    /// appraisal policy document. Empty means version 1 names its own owners.
    pub policy_owner_keys: Vec<PathBuf>,
}

/// Key algorithm of a CA or JWT signing key, spelled as in SPIRE (`ec-p256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA on NIST P-256. This is the default.
    #[default]
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
}

impl KeyType {
    /// Returns the SPIRE spelling, such as `"ec-p256"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-4096" => Ok(Self::Rsa4096),
            _ => Err(ParseValueError::new(
                "key type",
                s,
                "ec-p256, ec-p384, rsa-2048 or rsa-4096",
            )),
        }
    }
}

/// Subject of the CA certificates, the `ca_subject` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    /// Country (C) values.
    pub country: Vec<String>,
    /// Organization (O) values.
    pub organization: Vec<String>,
    /// Common name (CN), or `None` when unset or empty.
    pub common_name: Option<String>,
}

impl Default for CaSubject {
    /// Returns SPIRE's default subject, C=US, O=SPIFFE.
    fn default() -> Self {
        Self {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: None,
        }
    }
}

/// Storage for the server's CA and JWT signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManager {
    /// Private key files in `keys_path`, which survive restarts.
    Disk {
        /// Directory of the key files.
        keys_path: PathBuf,
    },
    /// Keys in memory only: every restart creates a new CA.
    Memory,
}

impl KeyManager {
    /// Returns the key directory, `None` for [`KeyManager::Memory`].
    pub fn keys_path(&self) -> Option<&Path> {
        match self {
            Self::Disk { keys_path } => Some(keys_path),
            Self::Memory => None,
        }
    }
}

/// The files of `UpstreamAuthority "disk"`. The server reads and checks them at start, so
/// parsing the configuration only checks that the paths are present and not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuthorityDisk {
    /// PEM private key of the upstream CA: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
    pub key_file_path: PathBuf,
    /// PEM certificates: first the upstream CA certificate that matches the key, then any
    /// intermediates between it and a root of `bundle_file_path`.
    pub cert_file_path: PathBuf,
    /// PEM root certificates that the bundle publishes. Required unless the first
    /// certificate of `cert_file_path` is self-signed, which is then the only root.
    pub bundle_file_path: Option<PathBuf>,
}

const SERVER_KEYS: &[&str] = &[
    "trust_domain",
    "bind_address",
    "bind_port",
    "data_dir",
    "log_level",
    "log_format",
    "ca_key_type",
    "jwt_key_type",
    "ca_ttl",
    "default_x509_svid_ttl",
    "default_jwt_svid_ttl",
    "node_api_max_connections",
    "agent_ttl",
    "socket_path",
    "ca_subject",
    "public_url",
    "policy_owner_keys",
    "federation",
];

const FILE: Schema = Schema {
    keys: &[
        "server",
        "plugins",
        "health_checks",
        "telemetry",
        "jwt_issuer",
        "endpoints",
    ],
    hints: &[(
        "agent",
        "this block belongs in an agent configuration; load this file as an agent configuration",
    )],
    nested: Some(("server", SERVER_KEYS)),
};

const SERVER: Schema = Schema {
    keys: SERVER_KEYS,
    hints: &[
        (
            "default_svid_ttl",
            "SPIRE's deprecated name; use default_x509_svid_ttl",
        ),
        ("registration_uds_path", "SPIRE's old name; use socket_path"),
        (
            "connection_string",
            "datastore keys belong in plugins { DataStore \"sql\" { plugin_data { ... } } }",
        ),
        (
            "ro_connection_string",
            "datastore keys belong in plugins { DataStore \"sql\" { plugin_data { ... } } }",
        ),
        (
            "log_file",
            "twid logs to standard error; redirect it to a file instead",
        ),
        ("admin_ids", ""),
        ("audit_log_enabled", ""),
        ("experimental", ""),
        (
            "jwt_issuer",
            "write a top-level jwt_issuer \"<name>\" { issuer = ... } block instead",
        ),
        ("log_source_location", ""),
        ("ratelimit", ""),
        ("profiling_enabled", ""),
        ("profiling_port", ""),
        ("profiling_freq", ""),
        ("profiling_names", ""),
        ("exclude_sn_from_ca_subject", ""),
        ("use_legacy_downstream_x509_ca_ttl", ""),
        ("prune_attested_nodes_expired_for", ""),
        ("max_attested_node_info_staleness", ""),
    ],
    nested: None,
};

const CA_SUBJECT: Schema = Schema {
    keys: &["country", "organization", "common_name"],
    hints: &[],
    nested: None,
};

/// Every SPIRE server plugin type, so that each gets a clear "unsupported" error.
const PLUGIN_TYPES: Schema = Schema {
    keys: &[
        "DataStore",
        "KeyManager",
        "NodeAttestor",
        "UpstreamAuthority",
        "Notifier",
        "BundlePublisher",
        "CredentialComposer",
        "NodeResolver",
    ],
    hints: &[(
        "WorkloadAttestor",
        "workload attestors are agent plugins; move this block to the agent configuration",
    )],
    nested: None,
};

const DATASTORE_SQL: Schema = Schema {
    keys: &["database_type", "connection_string", "ro_connection_string"],
    hints: &[
        ("max_open_conns", ""),
        ("max_idle_conns", ""),
        ("conn_max_lifetime", ""),
        ("disable_migration", ""),
        ("log_sql", ""),
    ],
    nested: None,
};

const UPSTREAM_AUTHORITY_DISK: Schema = Schema {
    keys: &["key_file_path", "cert_file_path", "bundle_file_path"],
    hints: &[],
    nested: None,
};

const KEY_MANAGER_DISK: Schema = Schema {
    keys: &["keys_path"],
    hints: &[],
    nested: None,
};

impl ServerConfig {
    /// Reads and validates a server configuration file.
    ///
    /// # Errors
    /// Returns the first problem found, naming the file and line, as described at [`ConfigError`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_options(path, false)
    }

    /// Like [`ServerConfig::load`], but with `expand_env` it first replaces `$VAR` and `${VAR}` in the
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
        let Some(server) = root.section("server")? else {
            let hint = root
                .entry("agent")
                .map(|_| "this file has an agent block; it is an agent configuration".to_owned());
            return Err(ConfigError::MissingBlock {
                file: source_name.to_owned(),
                block: "server".to_owned(),
                hint,
            });
        };
        server.check_keys(&SERVER)?;

        let trust_domain = common::trust_domain(&server)?;
        let data_dir = server.required("data_dir", values::path)?;
        let (log_level, log_format) = common::logging(&server)?;
        let key_type = |key| server.optional(key, common::enumerated::<KeyType>);
        let duration = |key| server.optional(key, values::positive_duration);
        let plugins = plugins::collect(&root, &PLUGIN_TYPES)?;
        let evidence_attestors = check_plugins(&plugins)?;
        let public_url = server.optional("public_url", issuers::issuer_url)?;
        let jwt_issuers = issuers::jwt_issuers(&root)?;
        let oidc_discovery = issuers::oidc_discovery(&root, public_url.as_deref(), &jwt_issuers)?;
        Ok(Self {
            source: None,
            bind_address: server
                .optional("bind_address", values::ip_address)?
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            bind_port: server
                .optional("bind_port", values::port)?
                .unwrap_or(DEFAULT_SERVER_PORT),
            log_level,
            log_format,
            ca_key_type: key_type("ca_key_type")?.unwrap_or_default(),
            jwt_key_type: key_type("jwt_key_type")?.unwrap_or_default(),
            ca_ttl: duration("ca_ttl")?.unwrap_or(DEFAULT_CA_TTL),
            default_x509_svid_ttl: duration("default_x509_svid_ttl")?
                .unwrap_or(DEFAULT_X509_SVID_TTL),
            default_jwt_svid_ttl: duration("default_jwt_svid_ttl")?.unwrap_or(DEFAULT_JWT_SVID_TTL),
            node_api_max_connections: server
                .optional("node_api_max_connections", |expr| {
                    values::integer(expr)
                        .ok()
                        .and_then(|value| usize::try_from(value).ok())
                        .filter(|max| *max > 0)
                        .ok_or_else(|| "expected a positive integer, such as 16384".to_owned())
                })?
                .unwrap_or(DEFAULT_NODE_API_MAX_CONNECTIONS),
            agent_ttl: duration("agent_ttl")?,
            socket_path: server
                .optional("socket_path", values::path)?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            ca_subject: ca_subject(&server)?,
            health_checks: common::health_checks(&root)?,
            telemetry: common::telemetry(&root)?,
            datastore: datastore(&plugins, &data_dir)?,
            key_manager: key_manager(&plugins, &data_dir)?,
            upstream_authority: upstream_authority(&plugins)?,
            public_url,
            jwt_issuers,
            oidc_discovery,
            evidence_attestors,
            federation: federation::federation(&server, &trust_domain)?,
            policy_owner_keys: server
                .optional("policy_owner_keys", owner_key_paths)?
                .unwrap_or_default(),
            trust_domain,
            data_dir,
        })
    }

    /// Returns a configuration for a single-machine development server: the gRPC API on
    /// 127.0.0.1 with an ephemeral port, the admin socket at `<data_dir>/server.sock`, SQLite
    /// and keys inside `data_dir`, and the defaults for everything else.
    pub fn new_dev(trust_domain: TrustDomain, data_dir: &Path) -> Self {
        Self {
            source: None,
            trust_domain,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bind_port: 0,
            data_dir: data_dir.to_owned(),
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            ca_key_type: KeyType::default(),
            jwt_key_type: KeyType::default(),
            ca_ttl: DEFAULT_CA_TTL,
            default_x509_svid_ttl: DEFAULT_X509_SVID_TTL,
            default_jwt_svid_ttl: DEFAULT_JWT_SVID_TTL,
            node_api_max_connections: DEFAULT_NODE_API_MAX_CONNECTIONS,
            agent_ttl: None,
            socket_path: data_dir.join("server.sock"),
            ca_subject: CaSubject::default(),
            health_checks: HealthChecks::default(),
            telemetry: Telemetry::default(),
            datastore: default_datastore(data_dir),
            key_manager: default_key_manager(data_dir),
            upstream_authority: None,
            public_url: None,
            jwt_issuers: Vec::new(),
            oidc_discovery: None,
            evidence_attestors: Vec::new(),
            federation: FederationConfig::default(),
            policy_owner_keys: Vec::new(),
        }
    }
}

/// Reads `policy_owner_keys`: a non-empty list of non-empty paths.
fn owner_key_paths(expr: &hcl_edit::expr::Expression) -> Result<Vec<PathBuf>, String> {
    let paths = values::string_list(expr)?;
    if paths.is_empty() {
        return Err(
            "the list is empty; remove the key to let version 1 of the policy name its owners"
                .to_owned(),
        );
    }
    if paths.iter().any(String::is_empty) {
        return Err("paths must not be empty".to_owned());
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// Rejects plugin types and names that twid does not implement, and returns the evidence
/// node attestors. DataStore, KeyManager and UpstreamAuthority are read separately.
fn check_plugins(plugins: &[Plugin<'_>]) -> Result<Vec<EvidenceAttestorConfig>, ConfigError> {
    let mut attestors = Vec::new();
    for plugin in plugins {
        match plugin.plugin_type {
            "DataStore" | "KeyManager" | "UpstreamAuthority" => {}
            "NodeAttestor" if plugin.name == "join_token" => {
                plugin.check_data(&plugins::NO_SETTINGS)?;
            }
            "NodeAttestor" => {
                let Some(kind) = evidence::evidence_kind(plugin.name) else {
                    return Err(plugin.unsupported(NODE_ATTESTORS));
                };
                attestors.push(evidence::server_attestor(plugin, kind)?);
            }
            other => {
                return Err(plugin.unsupported(&format!("twid has no {other} plugins")));
            }
        }
    }
    Ok(attestors)
}

/// The node attestors twid implements, for errors.
pub(crate) const NODE_ATTESTORS: &str = "twid supports NodeAttestor \"join_token\", \"sgx_dcap\", \
     \"tdx\", \"sgx_ias\", \"snp\", \"nitro\" and \"tpm\"";

fn ca_subject(server: &Section<'_>) -> Result<CaSubject, ConfigError> {
    let Some(section) = server.section("ca_subject")? else {
        return Ok(CaSubject::default());
    };
    section.check_keys(&CA_SUBJECT)?;
    Ok(CaSubject {
        country: section
            .optional("country", values::string_list)?
            .unwrap_or_default(),
        organization: section
            .optional("organization", values::string_list)?
            .unwrap_or_default(),
        common_name: section
            .optional("common_name", values::string)?
            .filter(|name| !name.is_empty()),
    })
}

fn default_datastore(data_dir: &Path) -> DatastoreConfig {
    DatastoreConfig {
        database_type: DatabaseType::Sqlite,
        connection_string: data_dir.join(SQLITE_FILE_NAME).display().to_string(),
        ro_connection_string: None,
    }
}

fn default_key_manager(data_dir: &Path) -> KeyManager {
    KeyManager::Disk {
        keys_path: data_dir.join(KEYS_DIR_NAME),
    }
}

/// Reads `DataStore "sql"`. Paths are used as written, so a relative SQLite path is relative
/// to the working directory, as in SPIRE.
fn datastore(plugins: &[Plugin<'_>], data_dir: &Path) -> Result<DatastoreConfig, ConfigError> {
    let Some(plugin) = plugins::single(plugins, "DataStore")? else {
        return Ok(default_datastore(data_dir));
    };
    if plugin.name != "sql" {
        return Err(plugin.unsupported("twid supports DataStore \"sql\" only"));
    }
    plugin.check_data(&DATASTORE_SQL)?;
    let database_type = plugin.required("database_type", database_type)?;
    let connection_string = plugin.required("connection_string", values::non_empty_string)?;
    let check = match database_type {
        DatabaseType::Sqlite => sqlite_path(&connection_string),
        DatabaseType::Postgres => postgres_url(&connection_string),
    };
    if let (Err(reason), Some(data)) = (check, &plugin.data) {
        return Err(data.invalid_value("connection_string", reason));
    }
    let ro_connection_string = plugin.optional("ro_connection_string", values::non_empty_string)?;
    if let (Some(ro), Some(data)) = (&ro_connection_string, &plugin.data) {
        let check = match database_type {
            DatabaseType::Sqlite => Err(
                "a read-only replica needs database_type \"postgres\"; an embedded sqlite3 file \
                 has no replicas"
                    .to_owned(),
            ),
            DatabaseType::Postgres => postgres_url(ro),
        };
        if let Err(reason) = check {
            return Err(data.invalid_value("ro_connection_string", reason));
        }
    }
    Ok(DatastoreConfig {
        database_type,
        connection_string,
        ro_connection_string,
    })
}

fn database_type(expr: &hcl_edit::expr::Expression) -> Result<DatabaseType, String> {
    match values::string(expr)?.as_str() {
        "sqlite3" => Ok(DatabaseType::Sqlite),
        "postgres" => Ok(DatabaseType::Postgres),
        "mysql" => Err("MySQL is not supported, expected sqlite3 or postgres".to_owned()),
        _ => Err("invalid database type, expected sqlite3 or postgres".to_owned()),
    }
}

fn sqlite_path(connection_string: &str) -> Result<(), String> {
    if connection_string.starts_with("file:") {
        return Err(
            "expected a plain file path for sqlite3; \"file:\" URIs and their options are not \
             supported"
                .to_owned(),
        );
    }
    Ok(())
}

fn postgres_url(connection_string: &str) -> Result<(), String> {
    if connection_string.starts_with("postgres://")
        || connection_string.starts_with("postgresql://")
    {
        return twid_datastore::check_postgres_url(connection_string)
            .map_err(|reason| format!("invalid PostgreSQL URL: {reason}"));
    }
    if connection_string.contains("://") {
        return Err("expected a postgres:// or postgresql:// URL for postgres".to_owned());
    }
    Err(
        "expected a postgres:// URL for postgres; key=value connection strings are not supported"
            .to_owned(),
    )
}

/// Reads `KeyManager "disk"` or `KeyManager "memory"`.
fn key_manager(plugins: &[Plugin<'_>], data_dir: &Path) -> Result<KeyManager, ConfigError> {
    let Some(plugin) = plugins::single(plugins, "KeyManager")? else {
        return Ok(default_key_manager(data_dir));
    };
    match plugin.name {
        "disk" => {
            plugin.check_data(&KEY_MANAGER_DISK)?;
            let keys_path = plugin
                .optional("keys_path", values::path)?
                .unwrap_or_else(|| data_dir.join(KEYS_DIR_NAME));
            Ok(KeyManager::Disk { keys_path })
        }
        "memory" => {
            plugin.check_data(&plugins::NO_SETTINGS)?;
            Ok(KeyManager::Memory)
        }
        _ => Err(plugin.unsupported("twid supports KeyManager \"disk\" and \"memory\" only")),
    }
}

/// Reads `UpstreamAuthority "disk"`.
fn upstream_authority(
    plugins: &[Plugin<'_>],
) -> Result<Option<UpstreamAuthorityDisk>, ConfigError> {
    let Some(plugin) = plugins::single(plugins, "UpstreamAuthority")? else {
        return Ok(None);
    };
    if plugin.name != "disk" {
        return Err(plugin.unsupported("twid supports UpstreamAuthority \"disk\" only"));
    }
    plugin.check_data(&UPSTREAM_AUTHORITY_DISK)?;
    Ok(Some(UpstreamAuthorityDisk {
        key_file_path: plugin.required("key_file_path", values::path)?,
        cert_file_path: plugin.required("cert_file_path", values::path)?,
        bundle_file_path: plugin.optional("bundle_file_path", values::path)?,
    }))
}

impl fmt::Debug for ServerConfig {
    /// Formats every field but a PostgreSQL connection string, which may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection_string = match self.datastore.database_type {
            DatabaseType::Sqlite => self.datastore.connection_string.as_str(),
            DatabaseType::Postgres => "<redacted>",
        };
        f.debug_struct("ServerConfig")
            .field("source", &self.source)
            .field("trust_domain", &self.trust_domain)
            .field("bind_address", &self.bind_address)
            .field("bind_port", &self.bind_port)
            .field("data_dir", &self.data_dir)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("ca_key_type", &self.ca_key_type)
            .field("jwt_key_type", &self.jwt_key_type)
            .field("ca_ttl", &self.ca_ttl)
            .field("default_x509_svid_ttl", &self.default_x509_svid_ttl)
            .field("node_api_max_connections", &self.node_api_max_connections)
            .field("default_jwt_svid_ttl", &self.default_jwt_svid_ttl)
            .field("agent_ttl", &self.agent_ttl)
            .field("socket_path", &self.socket_path)
            .field("ca_subject", &self.ca_subject)
            .field("health_checks", &self.health_checks)
            .field("telemetry", &self.telemetry)
            .field("database_type", &self.datastore.database_type)
            .field("connection_string", &connection_string)
            .field(
                "ro_connection_string",
                &self
                    .datastore
                    .ro_connection_string
                    .as_ref()
                    .map(|_| "<redacted>"),
            )
            .field("key_manager", &self.key_manager)
            .field("upstream_authority", &self.upstream_authority)
            .field("public_url", &self.public_url)
            .field("jwt_issuers", &self.jwt_issuers)
            .field("oidc_discovery", &self.oidc_discovery)
            .field("federation", &self.federation)
            .field("evidence_attestors", &self.evidence_attestors)
            .field("policy_owner_keys", &self.policy_owner_keys)
            .finish()
    }
}
