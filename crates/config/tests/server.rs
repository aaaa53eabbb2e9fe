//! Server configuration: defaults, a SPIRE-style file, plugins and the dev preset.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use twid_config::{
    CaSubject, ConfigError, HealthChecks, KeyManager, KeyType, LogFormat, LogLevel, Prometheus,
    ServerConfig,
};
use twid_datastore::{DatabaseType, DatastoreConfig};
use twid_spiffe::TrustDomain;

const MINIMAL: &str = r#"
server {
    trust_domain = "example.org"
    data_dir = "/var/lib/twid"
}
"#;

/// A server.conf as SPIRE's documentation and samples write it.
const SPIRE_STYLE: &str = r#"
server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "example.org"
    data_dir = "./.data"
    log_level = "DEBUG"
    log_format = "json"
    ca_key_type = "rsa-2048"
    jwt_key_type = "ec-p384"
    ca_ttl = "168h"
    default_x509_svid_ttl = "4h"
    default_jwt_svid_ttl = "10m"
    agent_ttl = "72h"

    ca_subject {
        country = ["US", "CA"]
        organization = ["SPIFFE", "Example"]
        common_name = "Example CA"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }

    NodeAttestor "join_token" {
        plugin_data {
        }
    }

    KeyManager "disk" {
        plugin_data {
            keys_path = "./.data/keys"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "localhost"
    bind_port = "8080"
    live_path = "/live"
    ready_path = "/ready"
}

telemetry {
    Prometheus {
        host = "127.0.0.1"
        port = 9988
    }
}
"#;

fn parse(text: &str) -> ServerConfig {
    match ServerConfig::parse(text, "server.conf") {
        Ok(config) => config,
        Err(error) => panic!("parse failed: {error}"),
    }
}

fn parse_error(text: &str) -> String {
    match ServerConfig::parse(text, "server.conf") {
        Ok(config) => panic!("parse succeeded: {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn with_plugins(plugins: &str) -> String {
    format!("{MINIMAL}\nplugins {{\n{plugins}\n}}\n")
}

#[test]
fn minimal_file_gets_every_default() {
    let config = parse(MINIMAL);
    assert_eq!(config.source, None);
    assert_eq!(config.trust_domain.name(), "example.org");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/twid"));
    assert_eq!(config.bind_address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(config.bind_port, 8081);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.ca_key_type, KeyType::EcP256);
    assert_eq!(config.jwt_key_type, KeyType::EcP256);
    assert_eq!(config.ca_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(config.agent_ttl, None);
    assert_eq!(
        config.socket_path,
        PathBuf::from("/tmp/twid-server/private/api.sock")
    );
    assert_eq!(
        config.ca_subject,
        CaSubject {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: None,
        }
    );
    assert_eq!(config.health_checks, HealthChecks::default());
    assert!(!config.health_checks.listener_enabled);
    assert_eq!(config.health_checks.bind_address, "localhost");
    assert_eq!(config.health_checks.bind_port, 80);
    assert_eq!(config.health_checks.live_path, "/live");
    assert_eq!(config.health_checks.ready_path, "/ready");
    assert_eq!(config.telemetry.prometheus, None);
    assert_eq!(
        config.datastore,
        DatastoreConfig {
            ro_connection_string: None,
            database_type: DatabaseType::Sqlite,
            connection_string: "/var/lib/twid/datastore.sqlite3".to_owned(),
        }
    );
    assert_eq!(
        config.key_manager,
        KeyManager::Disk {
            keys_path: PathBuf::from("/var/lib/twid/keys"),
        }
    );
    assert_eq!(
        config.key_manager.keys_path(),
        Some(Path::new("/var/lib/twid/keys"))
    );
}

#[test]
fn spire_style_file_sets_every_key() {
    let config = parse(SPIRE_STYLE);
    assert_eq!(config.trust_domain.name(), "example.org");
    assert_eq!(config.bind_address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(config.bind_port, 8081);
    assert_eq!(
        config.socket_path,
        PathBuf::from("/tmp/spire-server/private/api.sock")
    );
    assert_eq!(config.data_dir, PathBuf::from("./.data"));
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.ca_key_type, KeyType::Rsa2048);
    assert_eq!(config.jwt_key_type, KeyType::EcP384);
    assert_eq!(config.ca_ttl, Duration::from_secs(168 * 3600));
    assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(4 * 3600));
    assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(600));
    assert_eq!(config.agent_ttl, Some(Duration::from_secs(72 * 3600)));
    assert_eq!(config.ca_subject.country, vec!["US", "CA"]);
    assert_eq!(config.ca_subject.organization, vec!["SPIFFE", "Example"]);
    assert_eq!(config.ca_subject.common_name.as_deref(), Some("Example CA"));
    assert_eq!(
        config.datastore,
        DatastoreConfig {
            ro_connection_string: None,
            database_type: DatabaseType::Sqlite,
            connection_string: "./.data/datastore.sqlite3".to_owned(),
        }
    );
    assert_eq!(
        config.key_manager.keys_path(),
        Some(Path::new("./.data/keys"))
    );
    assert!(config.health_checks.listener_enabled);
    assert_eq!(
        config.health_checks.address().unwrap(),
        "127.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(
        config.telemetry.prometheus,
        Some(Prometheus {
            host: "127.0.0.1".to_owned(),
            port: 9988,
        })
    );
}

#[test]
fn ports_accept_numbers_and_strings() {
    for value in ["8443", "\"8443\""] {
        let text = MINIMAL.replace("data_dir", &format!("bind_port = {value}\n    data_dir"));
        assert_eq!(parse(&text).bind_port, 8443, "{value}");
    }
}

#[test]
fn node_api_max_connections_default_and_bounds() {
    assert_eq!(parse(MINIMAL).node_api_max_connections, 16_384);
    let with_max = |value: &str| {
        MINIMAL.replace(
            "data_dir",
            &format!("node_api_max_connections = {value}\n    data_dir"),
        )
    };
    assert_eq!(parse(&with_max("20000")).node_api_max_connections, 20_000);
    for invalid in ["0", "-5", "\"many\""] {
        let error = parse_error(&with_max(invalid));
        assert!(
            error.contains("node_api_max_connections"),
            "{invalid}: {error}"
        );
        assert!(
            error.contains("expected a positive integer"),
            "{invalid}: {error}"
        );
    }
}

#[test]
fn key_types_in_spire_spelling() {
    for (text, key_type) in [
        ("ec-p256", KeyType::EcP256),
        ("ec-p384", KeyType::EcP384),
        ("rsa-2048", KeyType::Rsa2048),
        ("rsa-4096", KeyType::Rsa4096),
    ] {
        assert_eq!(text.parse::<KeyType>(), Ok(key_type));
        assert_eq!(key_type.to_string(), text);
    }
    assert!("ec-p521".parse::<KeyType>().is_err());
    assert!("EC-P256".parse::<KeyType>().is_err());
}

#[test]
fn ca_subject_object_syntax_and_empty_common_name() {
    let text = MINIMAL.replace(
        "data_dir",
        "ca_subject = {\n country = [\"DE\"]\n common_name = \"\"\n }\n data_dir",
    );
    let subject = parse(&text).ca_subject;
    assert_eq!(subject.country, vec!["DE"]);
    assert_eq!(subject.organization, Vec::<String>::new());
    assert_eq!(subject.common_name, None);
}

#[test]
fn trust_domain_accepts_spiffe_id_form() {
    let text = MINIMAL.replace("\"example.org\"", "\"spiffe://example.org\"");
    assert_eq!(parse(&text).trust_domain.name(), "example.org");
}

#[test]
fn datastore_postgres_url() {
    let config = parse(&with_plugins(
        r#"DataStore "sql" {
            plugin_data {
                database_type = "postgres"
                connection_string = "postgres://twid:secret@127.0.0.1:5432/twid"
            }
        }"#,
    ));
    assert_eq!(config.datastore.database_type, DatabaseType::Postgres);
    assert_eq!(
        config.datastore.connection_string,
        "postgres://twid:secret@127.0.0.1:5432/twid"
    );
    assert_eq!(config.datastore.ro_connection_string, None);
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn datastore_key_in_server_block_gets_hint() {
    let text = MINIMAL.replace(
        "trust_domain = \"example.org\"",
        "trust_domain = \"example.org\"\n    ro_connection_string = \"postgres://db/twid\"",
    );
    let error = parse_error(&text);
    assert!(
        error.contains("DataStore \"sql\""),
        "the error must say where the key belongs: {error}"
    );
}

#[test]
fn datastore_postgres_read_only_replica() {
    let config = parse(&with_plugins(
        r#"DataStore "sql" {
            plugin_data {
                database_type = "postgres"
                connection_string = "postgres://twid:secret@db-primary:5432/twid"
                ro_connection_string = "postgres://twid:readsecret@db-replica:5432/twid"
            }
        }"#,
    ));
    assert_eq!(
        config.datastore.ro_connection_string.as_deref(),
        Some("postgres://twid:readsecret@db-replica:5432/twid")
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("readsecret"), "{debug}");
    assert!(!debug.contains("db-replica"), "{debug}");
}

#[test]
fn datastore_relative_sqlite_path_kept_as_written() {
    let config = parse(&with_plugins(
        r#"DataStore "sql" {
            plugin_data {
                database_type = "sqlite3"
                connection_string = "state/db.sqlite3"
            }
        }"#,
    ));
    assert_eq!(config.datastore.connection_string, "state/db.sqlite3");
}

#[test]
fn datastore_rejections() {
    let cases = [
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "mysql"
                    connection_string = "root@tcp(127.0.0.1)/spire"
                }
            }"#,
            "server.conf:10: database_type = \"mysql\": MySQL is not supported, expected sqlite3 or postgres",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "postgres"
                    connection_string = "dbname=spire user=spire password=hunter2"
                }
            }"#,
            "server.conf:11: connection_string = <redacted>: expected a postgres:// URL for postgres; key=value connection strings are not supported",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "sqlite3"
                    connection_string = "file:/tmp/x.db?mode=rwc"
                }
            }"#,
            "server.conf:11: connection_string = <redacted>: expected a plain file path for sqlite3; \"file:\" URIs and their options are not supported",
        ),
        (
            r#"DataStore "sql" {
            }"#,
            "server.conf:8: missing required key \"database_type\" in block \"plugins.DataStore.sql.plugin_data\"",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "postgres"
                    connection_string = "postgres://twid@db/twid"
                    ro_connection_string = "host=replica password=hunter2"
                }
            }"#,
            "server.conf:12: ro_connection_string = <redacted>: expected a postgres:// URL for postgres; key=value connection strings are not supported",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "postgres"
                    connection_string = "postgres://twid@db/twid"
                    ro_connection_string = "postgres://twid:hunter2@replica:99999/twid"
                }
            }"#,
            "server.conf:12: ro_connection_string = <redacted>: invalid PostgreSQL URL: invalid port number",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "postgres"
                    connection_string = "postgres://twid:hunter2@db/twid?sslmode=bogus"
                }
            }"#,
            "server.conf:11: connection_string = <redacted>: invalid PostgreSQL URL: unknown value \"bogus\" for `ssl_mode`",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "postgres"
                    connection_string = "mysql://root@db/spire"
                }
            }"#,
            "server.conf:11: connection_string = <redacted>: expected a postgres:// or postgresql:// URL for postgres",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "sqlite3"
                    connection_string = "/x.db"
                    ro_connection_string = "postgres://twid@replica/twid"
                }
            }"#,
            "server.conf:12: ro_connection_string = <redacted>: a read-only replica needs database_type \"postgres\"; an embedded sqlite3 file has no replicas",
        ),
        (
            r#"DataStore "cassandra" {
                plugin_data {}
            }"#,
            "server.conf:8: unsupported plugin DataStore \"cassandra\": twid supports DataStore \"sql\" only",
        ),
        (
            r#"DataStore "sql" {
                plugin_data {
                    database_type = "sqlite3"
                    connection_string = "/x.db"
                    max_open_conns = 10
                }
            }"#,
            "server.conf:12: unknown key \"max_open_conns\" in block \"plugins.DataStore.sql.plugin_data\"; this SPIRE setting is not supported by twid",
        ),
    ];
    for (plugins, expected) in cases {
        let message = parse_error(&with_plugins(plugins));
        assert_eq!(message, expected);
        assert!(!message.contains("hunter2"));
    }
}

#[test]
fn key_manager_memory_and_disk_defaults() {
    let config = parse(&with_plugins(r#"KeyManager "memory" { plugin_data = {} }"#));
    assert_eq!(config.key_manager, KeyManager::Memory);
    assert_eq!(config.key_manager.keys_path(), None);

    let config = parse(&with_plugins(r#"KeyManager "disk" {}"#));
    assert_eq!(
        config.key_manager.keys_path(),
        Some(Path::new("/var/lib/twid/keys"))
    );

    let message = parse_error(&with_plugins(r#"KeyManager "aws_kms" {}"#));
    assert_eq!(
        message,
        "server.conf:8: unsupported plugin KeyManager \"aws_kms\": twid supports KeyManager \"disk\" and \"memory\" only"
    );
}

#[test]
fn plugin_disabled_is_skipped() {
    let config = parse(&with_plugins(
        r#"KeyManager "memory" {
            enabled = false
        }
        NodeAttestor "k8s_psat" {
            enabled = false
            plugin_data { cluster = "x" }
        }"#,
    ));
    assert_eq!(
        config.key_manager.keys_path(),
        Some(Path::new("/var/lib/twid/keys"))
    );
}

#[test]
fn plugin_rejections() {
    let cases = [
        (
            r#"NodeAttestor "k8s_psat" {
                plugin_data {
                    clusters = {}
                }
            }"#,
            "server.conf:8: unsupported plugin NodeAttestor \"k8s_psat\": twid supports NodeAttestor \"join_token\", \"sgx_dcap\", \"tdx\", \"sgx_ias\", \"snp\", \"nitro\" and \"tpm\"",
        ),
        (
            r#"UpstreamAuthority "aws_pca" {
                plugin_data {}
            }"#,
            "server.conf:8: unsupported plugin UpstreamAuthority \"aws_pca\": twid supports UpstreamAuthority \"disk\" only",
        ),
        (
            r#"NodeAttestor "join_token" {
                plugin_cmd = "/usr/bin/attestor"
            }"#,
            "server.conf:8: unsupported plugin NodeAttestor \"join_token\": external plugin binaries (plugin_cmd, plugin_checksum) are not supported; twid runs built-in plugins only",
        ),
        (
            r#"NodeAttestor "join_token" {
                plugin_data {
                    ttl = "1h"
                }
            }"#,
            "server.conf:10: unknown key \"ttl\" in block \"plugins.NodeAttestor.join_token.plugin_data\"",
        ),
        (
            r#"KeyManager "disk" {}
            KeyManager "memory" {}"#,
            "server.conf:9: only one KeyManager plugin may be configured, but KeyManager \"disk\" (line 8) and KeyManager \"memory\" are both enabled",
        ),
        (
            r#"KeyManager "disk" {}
            KeyManager "disk" {}"#,
            "server.conf:9: duplicate key KeyManager \"disk\" in block \"plugins\" (first set on line 8)",
        ),
        (
            r#"KeyManager {}"#,
            "server.conf:8: plugin KeyManager needs exactly one label, the plugin name, as in KeyManager \"name\" { ... }",
        ),
        (
            r#"WorkloadAttestor "unix" {}"#,
            "server.conf:8: unknown key \"WorkloadAttestor\" in block \"plugins\"; workload attestors are agent plugins; move this block to the agent configuration",
        ),
        (
            r#"Datastore "sql" {}"#,
            "server.conf:8: unknown key \"Datastore\" in block \"plugins\"; did you mean \"DataStore\"?",
        ),
    ];
    for (plugins, expected) in cases {
        assert_eq!(parse_error(&with_plugins(plugins)), expected);
    }
}

#[test]
fn upstream_authority_disk_parsed() {
    let config = parse(&with_plugins(
        r#"UpstreamAuthority "disk" {
            plugin_data {
                key_file_path = "/opt/twid/upstream/ca.key.pem"
                cert_file_path = "/opt/twid/upstream/ca.crt.pem"
                bundle_file_path = "/opt/twid/upstream/root.pem"
            }
        }"#,
    ));
    let upstream = config.upstream_authority.expect("upstream authority");
    assert_eq!(
        upstream.key_file_path,
        PathBuf::from("/opt/twid/upstream/ca.key.pem")
    );
    assert_eq!(
        upstream.cert_file_path,
        PathBuf::from("/opt/twid/upstream/ca.crt.pem")
    );
    assert_eq!(
        upstream.bundle_file_path,
        Some(PathBuf::from("/opt/twid/upstream/root.pem"))
    );

    let self_signed = parse(&with_plugins(
        r#"UpstreamAuthority "disk" {
            plugin_data {
                key_file_path = "ca.key"
                cert_file_path = "ca.crt"
            }
        }"#,
    ));
    assert_eq!(
        self_signed.upstream_authority.unwrap().bundle_file_path,
        None
    );
    assert_eq!(parse(MINIMAL).upstream_authority, None);
}

#[test]
fn upstream_authority_disk_errors() {
    let cases = [
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    cert_file_path = "ca.crt"
                }
            }"#,
            "server.conf:9: missing required key \"key_file_path\"",
        ),
        (r#"UpstreamAuthority "disk" {}"#, "key_file_path"),
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    key_file_path = "ca.key"
                }
            }"#,
            "cert_file_path",
        ),
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    key_file_path = ""
                    cert_file_path = "ca.crt"
                }
            }"#,
            "server.conf:10: key_file_path = \"\": must not be empty",
        ),
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    key_file_path = "ca.key"
                    cert_file_path = "ca.crt"
                    bundle_file_path = 3
                }
            }"#,
            "bundle_file_path",
        ),
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    key_file_path = "ca.key"
                    cert_file_path = "ca.crt"
                    ca_file_path = "root.pem"
                }
            }"#,
            "server.conf:12: unknown key \"ca_file_path\" in block \"plugins.UpstreamAuthority.disk.plugin_data\"",
        ),
        (
            r#"UpstreamAuthority "disk" {
                plugin_data {
                    key_file_path = "a.key"
                    cert_file_path = "a.crt"
                }
            }
            UpstreamAuthority "vault" {}"#,
            "only one UpstreamAuthority plugin may be configured",
        ),
    ];
    for (plugins, expected) in cases {
        let error = parse_error(&with_plugins(plugins));
        assert!(
            error.contains(expected),
            "expected {expected:?} in the error for {plugins}, got {error:?}"
        );
    }
}

#[test]
fn join_token_attestor_accepted() {
    let config = parse(&with_plugins(
        r#"NodeAttestor "join_token" {
            plugin_data {}
        }"#,
    ));
    assert_eq!(config.trust_domain.name(), "example.org");
}

#[test]
fn new_dev_uses_data_dir() {
    let trust_domain = TrustDomain::new("dev.test").unwrap();
    let dir = Path::new("/tmp/twid-dev");
    let config = ServerConfig::new_dev(trust_domain.clone(), dir);
    assert_eq!(config.source, None);
    assert_eq!(config.trust_domain, trust_domain);
    assert_eq!(config.bind_address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(config.bind_port, 0);
    assert_eq!(config.data_dir, dir);
    assert_eq!(config.socket_path, dir.join("server.sock"));
    assert_eq!(config.datastore.database_type, DatabaseType::Sqlite);
    assert_eq!(
        config.datastore.connection_string,
        dir.join("datastore.sqlite3").display().to_string()
    );
    assert_eq!(
        config.key_manager.keys_path(),
        Some(dir.join("keys").as_path())
    );
    assert_eq!(config.ca_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(300));
    assert!(!config.health_checks.listener_enabled);
    assert_eq!(config.telemetry.prometheus, None);
}

#[test]
fn load_sets_source_and_reports_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(&path, MINIMAL).unwrap();
    let config = ServerConfig::load(&path).unwrap();
    assert_eq!(config.source.as_deref(), Some(path.as_path()));

    let invalid = MINIMAL.replace("data_dir", "bind_port = 0\n    data_dir");
    std::fs::write(&path, invalid).unwrap();
    let message = ServerConfig::load(&path).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}:4: bind_port = 0: invalid port, expected an integer 1-65535",
            path.display()
        )
    );
}

#[test]
fn load_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.conf");
    let error = ServerConfig::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}: failed to read config file: ", path.display())),
        "{message}"
    );
}
