//! Agent configuration: defaults, a SPIRE-style file, bootstrap rules, plugins, redaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use twid_config::{
    AgentConfig, HealthChecks, LogFormat, LogLevel, SdsConfig, TrustBundleFormat,
    UnixAttestorConfig,
};
use twid_spiffe::TrustDomain;

const MINIMAL: &str = r#"
agent {
    trust_domain = "example.org"
    server_address = "twid-server.internal"
    data_dir = "/var/lib/twid-agent"
    insecure_bootstrap = true
}
"#;

/// An agent.conf as SPIRE's documentation and samples write it.
const SPIRE_STYLE: &str = r#"
agent {
    data_dir = "./.data"
    log_level = "WARN"
    log_format = "json"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path = "/tmp/spire-agent/public/api.sock"
    trust_bundle_path = "./conf/agent/dummy_root_ca.crt"
    trust_bundle_format = "pem"
    trust_domain = "example.org"
    join_token = "5e9e1a72-2e7e-4b35-a2b1-6c8b2d0c7e61"

    experimental {
        sync_interval = "30s"
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {
        }
    }

    KeyManager "disk" {
        plugin_data {
            directory = "./.data"
        }
    }

    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}

health_checks {
    listener_enabled = true
    bind_port = "8088"
}

telemetry {
    Prometheus {
        port = 9989
    }
}
"#;

fn parse(text: &str) -> AgentConfig {
    match AgentConfig::parse(text, "agent.conf") {
        Ok(config) => config,
        Err(error) => panic!("parse failed: {error}"),
    }
}

fn parse_error(text: &str) -> String {
    match AgentConfig::parse(text, "agent.conf") {
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
    assert_eq!(config.server_address, "twid-server.internal");
    assert_eq!(config.server_port, 8081);
    assert_eq!(
        config.socket_path,
        PathBuf::from("/tmp/twid-agent/public/api.sock")
    );
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/twid-agent"));
    assert_eq!(config.trust_bundle_path, None);
    assert_eq!(config.trust_bundle_format, TrustBundleFormat::Pem);
    assert!(config.insecure_bootstrap);
    assert_eq!(config.join_token, None);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.health_checks, HealthChecks::default());
    assert_eq!(config.telemetry.prometheus, None);
    assert_eq!(
        config.unix_attestor,
        UnixAttestorConfig {
            discover_workload_path: false,
            workload_size_limit: 0,
        }
    );
    assert_eq!(config.sync_interval, Duration::from_secs(5));
}

#[test]
fn spire_style_file_sets_every_key() {
    let config = parse(SPIRE_STYLE);
    assert_eq!(config.data_dir, PathBuf::from("./.data"));
    assert_eq!(config.log_level, LogLevel::Warn);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.server_address, "127.0.0.1");
    assert_eq!(config.server_port, 8081);
    assert_eq!(
        config.socket_path,
        PathBuf::from("/tmp/spire-agent/public/api.sock")
    );
    assert_eq!(
        config.trust_bundle_path.as_deref(),
        Some(Path::new("./conf/agent/dummy_root_ca.crt"))
    );
    assert_eq!(config.trust_bundle_format, TrustBundleFormat::Pem);
    assert!(!config.insecure_bootstrap);
    assert_eq!(
        config.join_token.as_deref(),
        Some("5e9e1a72-2e7e-4b35-a2b1-6c8b2d0c7e61")
    );
    assert_eq!(config.sync_interval, Duration::from_secs(30));
    assert!(config.unix_attestor.discover_workload_path);
    assert_eq!(config.unix_attestor.workload_size_limit, -1);
    assert!(config.health_checks.listener_enabled);
    assert_eq!(config.health_checks.bind_port, 8088);
    assert_eq!(config.health_checks.bind_address, "localhost");
    let prometheus = config.telemetry.prometheus.expect("prometheus block");
    assert_eq!(prometheus.host, "localhost");
    assert_eq!(prometheus.port, 9989);
    assert_eq!(
        prometheus.address().unwrap(),
        "127.0.0.1:9989".parse().unwrap()
    );
}

#[test]
fn debug_redacts_join_token() {
    let config = parse(SPIRE_STYLE);
    let debug = format!("{config:?}");
    assert!(!debug.contains("5e9e1a72"), "{debug}");
    assert!(
        debug.contains("join_token: Some(\"<redacted>\")"),
        "{debug}"
    );
    let debug = format!("{:?}", parse(MINIMAL));
    assert!(debug.contains("join_token: None"), "{debug}");
}

#[test]
fn join_token_value_never_in_errors() {
    let text = MINIMAL.replace("data_dir", "join_token = 12345678\n    data_dir");
    let message = parse_error(&text);
    assert_eq!(
        message,
        "agent.conf:5: join_token = <redacted>: expected a quoted string"
    );
}

#[test]
fn trust_bundle_format_spiffe() {
    let text = MINIMAL.replace(
        "insecure_bootstrap = true",
        "trust_bundle_path = \"/etc/twid/bundle.json\"\n    trust_bundle_format = \"spiffe\"",
    );
    let config = parse(&text);
    assert_eq!(config.trust_bundle_format, TrustBundleFormat::Spiffe);
    assert!(!config.insecure_bootstrap);
    assert_eq!("spiffe".parse(), Ok(TrustBundleFormat::Spiffe));
    assert_eq!(TrustBundleFormat::Pem.to_string(), "pem");
    assert!("der".parse::<TrustBundleFormat>().is_err());
}

#[test]
fn bootstrap_needs_exactly_one_method() {
    let neither = MINIMAL.replace("    insecure_bootstrap = true\n", "");
    assert_eq!(
        parse_error(&neither),
        "agent.conf:2: block \"agent\" needs trust_bundle_path (a bundle with the server's CA) \
         or insecure_bootstrap = true (trust the first server contacted; for testing only)"
    );

    let disabled = MINIMAL.replace("insecure_bootstrap = true", "insecure_bootstrap = false");
    assert!(parse_error(&disabled).contains("needs trust_bundle_path"));

    let both = MINIMAL.replace(
        "insecure_bootstrap = true",
        "insecure_bootstrap = true\n    trust_bundle_path = \"/b.pem\"",
    );
    assert_eq!(
        parse_error(&both),
        "agent.conf:6: insecure_bootstrap = true: trust_bundle_path is also set; use one or the other"
    );
}

#[test]
fn server_address_forms() {
    let cases = [
        ("\"10.0.0.5\"", Ok("10.0.0.5")),
        ("\"server.example.org\"", Ok("server.example.org")),
        ("\"::1\"", Ok("[::1]")),
        ("\"[fd00::1]\"", Ok("[fd00::1]")),
        ("\"server:8081\"", Err("without scheme or port")),
        ("\"https://server\"", Err("without scheme or port")),
        ("\"\"", Err("must not be empty")),
    ];
    for (value, expected) in cases {
        let text = MINIMAL.replace("\"twid-server.internal\"", value);
        match expected {
            Ok(address) => assert_eq!(parse(&text).server_address, address, "{value}"),
            Err(reason) => {
                let message = parse_error(&text);
                assert!(
                    message.starts_with(&format!("agent.conf:4: server_address = {value}: ")),
                    "{message}"
                );
                assert!(message.contains(reason), "{message}");
            }
        }
    }
}

#[test]
fn key_manager_disk_directory_must_be_data_dir() {
    let same = with_plugins(
        r#"KeyManager "disk" {
            plugin_data {
                directory = "/var/lib/twid-agent/"
            }
        }"#,
    );
    parse(&same);

    let other = with_plugins(
        r#"KeyManager "disk" {
            plugin_data {
                directory = "/var/lib/elsewhere"
            }
        }"#,
    );
    assert_eq!(
        parse_error(&other),
        "agent.conf:12: directory = \"/var/lib/elsewhere\": the twid agent keeps its private key \
         in data_dir (/var/lib/twid-agent); set directory to data_dir or remove it"
    );
}

#[test]
fn plugin_rejections() {
    let cases = [
        (
            r#"KeyManager "memory" {
                plugin_data {}
            }"#,
            "agent.conf:10: unsupported plugin KeyManager \"memory\": the twid agent always keeps \
             its private key in data_dir; use KeyManager \"disk\" or remove the block",
        ),
        (
            r#"NodeAttestor "k8s_psat" {
                plugin_data {
                    cluster = "prod"
                }
            }"#,
            "agent.conf:10: unsupported plugin NodeAttestor \"k8s_psat\": twid supports \
             NodeAttestor \"join_token\", \"sgx_dcap\", \"tdx\", \"sgx_ias\", \"snp\", \"nitro\" and \
             \"tpm\"",
        ),
        (
            r#"WorkloadAttestor "docker" {
                plugin_data {}
            }"#,
            "agent.conf:10: unsupported plugin WorkloadAttestor \"docker\": twid supports \
             WorkloadAttestor \"unix\" only",
        ),
        (
            r#"SVIDStore "aws_secretsmanager" {}"#,
            "agent.conf:10: unsupported plugin SVIDStore \"aws_secretsmanager\": twid has no \
             SVIDStore plugins",
        ),
        (
            r#"WorkloadAttestor "unix" {
                plugin_data {
                    workload_size_limit = "big"
                }
            }"#,
            "agent.conf:12: workload_size_limit = \"big\": expected an integer",
        ),
        (
            r#"WorkloadAttestor "unix" {
                plugin_data {
                    discover_workload_paths = true
                }
            }"#,
            "agent.conf:12: unknown key \"discover_workload_paths\" in block \
             \"plugins.WorkloadAttestor.unix.plugin_data\"; did you mean \"discover_workload_path\"?",
        ),
        (
            r#"DataStore "sql" {}"#,
            "agent.conf:10: unknown key \"DataStore\" in block \"plugins\"; the datastore is a \
             server plugin; move this block to the server configuration",
        ),
    ];
    for (plugins, expected) in cases {
        assert_eq!(parse_error(&with_plugins(plugins)), expected);
    }
}

#[test]
fn workload_size_limit_as_string() {
    let text = with_plugins(
        r#"WorkloadAttestor "unix" {
            plugin_data {
                workload_size_limit = "1048576"
            }
        }"#,
    );
    assert_eq!(parse(&text).unix_attestor.workload_size_limit, 1_048_576);
}

#[test]
fn experimental_block_rules() {
    let zero = MINIMAL.replace(
        "insecure_bootstrap = true",
        "insecure_bootstrap = true\n    experimental {\n        sync_interval = \"0s\"\n    }",
    );
    assert_eq!(
        parse_error(&zero),
        "agent.conf:8: sync_interval = \"0s\": invalid duration: must be greater than zero"
    );
    let unknown = MINIMAL.replace(
        "insecure_bootstrap = true",
        "insecure_bootstrap = true\n    experimental {\n        named_pipe_name = \"x\"\n    }",
    );
    assert_eq!(
        parse_error(&unknown),
        "agent.conf:8: unknown key \"named_pipe_name\" in block \"agent.experimental\"; \
         this SPIRE setting is not supported by twid"
    );
}

#[test]
fn new_dev_fields() {
    let trust_domain = TrustDomain::new("dev.test").unwrap();
    let config = AgentConfig::new_dev(
        trust_domain.clone(),
        "127.0.0.1".to_owned(),
        40123,
        Path::new("/tmp/agent-data"),
        PathBuf::from("/tmp/agent-data/workload.sock"),
    );
    assert_eq!(config.source, None);
    assert_eq!(config.trust_domain, trust_domain);
    assert_eq!(config.server_address, "127.0.0.1");
    assert_eq!(config.server_port, 40123);
    assert_eq!(config.data_dir, PathBuf::from("/tmp/agent-data"));
    assert_eq!(
        config.socket_path,
        PathBuf::from("/tmp/agent-data/workload.sock")
    );
    assert_eq!(config.trust_bundle_path, None);
    assert!(!config.insecure_bootstrap);
    assert_eq!(config.join_token, None);
    assert_eq!(config.sync_interval, Duration::from_secs(5));
    assert_eq!(config.unix_attestor, UnixAttestorConfig::default());
}

#[test]
fn load_sets_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.conf");
    std::fs::write(&path, SPIRE_STYLE).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    assert_eq!(config.server_port, 8081);
}

fn with_sds(block: &str) -> String {
    MINIMAL.replace(
        "    insecure_bootstrap = true\n",
        &format!("    insecure_bootstrap = true\n    sds {{\n{block}\n    }}\n"),
    )
}

#[test]
fn sds_block_defaults_match_spire() {
    let config = parse(MINIMAL);
    assert_eq!(config.sds, SdsConfig::default());
    assert_eq!(config.sds.default_svid_name, "default");
    assert_eq!(config.sds.default_bundle_name, "ROOTCA");
    assert_eq!(config.sds.default_all_bundles_name, "ALL");
    assert!(!config.sds.disable_spiffe_cert_validation);
}

#[test]
fn sds_block_sets_every_key() {
    let config = parse(&with_sds(
        r#"        default_svid_name = "svid"
        default_bundle_name = "bundle"
        default_all_bundles_name = "bundles"
        disable_spiffe_cert_validation = true"#,
    ));
    assert_eq!(config.sds.default_svid_name, "svid");
    assert_eq!(config.sds.default_bundle_name, "bundle");
    assert_eq!(config.sds.default_all_bundles_name, "bundles");
    assert!(config.sds.disable_spiffe_cert_validation);
}

#[test]
fn sds_block_rejects_bad_values() {
    let duplicate = parse_error(&with_sds(r#"        default_all_bundles_name = "ROOTCA""#));
    assert!(
        duplicate.contains("default_all_bundles_name"),
        "{duplicate}"
    );
    assert!(duplicate.contains("default_bundle_name"), "{duplicate}");
    let empty = parse_error(&with_sds(r#"        default_svid_name = """#));
    assert!(empty.contains("default_svid_name"), "{empty}");
    let unknown = parse_error(&with_sds(r#"        svid_name = "x""#));
    assert!(unknown.contains("svid_name"), "{unknown}");
}

#[test]
fn x509_svid_cache_max_size_default_and_bounds() {
    assert_eq!(parse(MINIMAL).x509_svid_cache_max_size, 1000);
    let with_size = |value: &str| {
        MINIMAL.replace(
            "    insecure_bootstrap = true\n",
            &format!("    insecure_bootstrap = true\n    x509_svid_cache_max_size = {value}\n"),
        )
    };
    assert_eq!(parse(&with_size("5000")).x509_svid_cache_max_size, 5000);
    for invalid in ["0", "-1", "\"lots\""] {
        let error = parse_error(&with_size(invalid));
        assert!(
            error.contains("x509_svid_cache_max_size"),
            "{invalid}: {error}"
        );
        assert!(
            error.contains("expected a positive integer"),
            "{invalid}: {error}"
        );
    }
}

#[test]
fn taint_batch_interval_default_and_bounds() {
    assert_eq!(parse(MINIMAL).taint_batch_interval, Duration::from_secs(1));
    let with_interval = |value: &str| {
        MINIMAL.replace(
            "    insecure_bootstrap = true\n",
            &format!(
                "    insecure_bootstrap = true\n    experimental {{\n        \
                 taint_batch_interval = {value}\n    }}\n"
            ),
        )
    };
    assert_eq!(
        parse(&with_interval("\"250ms\"")).taint_batch_interval,
        Duration::from_millis(250)
    );
    for invalid in ["\"0s\"", "\"soon\"", "5"] {
        let error = parse_error(&with_interval(invalid));
        assert!(error.contains("taint_batch_interval"), "{invalid}: {error}");
    }
}

#[test]
fn taint_batch_size_default_and_bounds() {
    assert_eq!(parse(MINIMAL).taint_batch_size, 100);
    let with_size = |value: &str| {
        MINIMAL.replace(
            "    insecure_bootstrap = true\n",
            &format!(
                "    insecure_bootstrap = true\n    experimental {{\n        \
                 taint_batch_size = {value}\n    }}\n"
            ),
        )
    };
    assert_eq!(parse(&with_size("25")).taint_batch_size, 25);
    for invalid in ["0", "-3", "\"many\""] {
        let error = parse_error(&with_size(invalid));
        assert!(error.contains("taint_batch_size"), "{invalid}: {error}");
        assert!(
            error.contains("expected a positive integer"),
            "{invalid}: {error}"
        );
    }
}

#[test]
fn server_addresses_list_replaces_server_address() {
    let text = MINIMAL.replace(
        "server_address = \"twid-server.internal\"",
        "experimental {\n        server_addresses = [\"10.0.0.5:8081\", \"replica-b.internal:9081\", \
         \"[fd00::1]:8081\"]\n    }",
    );
    let config = parse(&text);
    let listed: Vec<String> = config
        .server_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        listed,
        ["10.0.0.5:8081", "replica-b.internal:9081", "[fd00::1]:8081"]
    );
    assert_eq!(config.server_address, "10.0.0.5");
    assert_eq!(config.server_port, 8081);
}

#[test]
fn server_address_alone_is_one_address() {
    let config = parse(MINIMAL);
    let listed: Vec<String> = config
        .server_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listed, ["twid-server.internal:8081"]);
}

#[test]
fn server_addresses_invalid_items() {
    let cases = [
        ("[]", "expected at least one address"),
        ("\"10.0.0.5:8081\"", "expected a list of strings"),
        (
            "[\"10.0.0.5\"]",
            "item 0 (\"10.0.0.5\"): expected host:port",
        ),
        ("[\"10.0.0.5:0\"]", "invalid port \"0\""),
        ("[\"10.0.0.5:http\"]", "invalid port \"http\""),
        ("[\"10.0.0.5:70000\"]", "invalid port \"70000\""),
        ("[\"10.0.0.5:+8081\"]", "invalid port \"+8081\""),
        ("[\" 10.0.0.5:8081\"]", "remove the spaces"),
        ("[\"10.0.0.5 :8081\"]", "remove the spaces"),
        ("[\":8081\"]", "the host must not be empty"),
        ("[\"fd00::1:8081\"]", "needs brackets"),
        ("[\"https://a:8081\"]", "without a scheme"),
        (
            "[\"a:8081\", \"b:8081\", \"a:8081\"]",
            "item 2 (\"a:8081\") is listed twice",
        ),
    ];
    for (value, reason) in cases {
        let text = MINIMAL.replace(
            "server_address = \"twid-server.internal\"",
            &format!("experimental {{\n        server_addresses = {value}\n    }}"),
        );
        let message = parse_error(&text);
        assert!(
            message.starts_with(&format!("agent.conf:5: server_addresses = {value}: ")),
            "{message}"
        );
        assert!(message.contains(reason), "{value}: {message}");
    }
}

#[test]
fn server_addresses_conflict_with_server_address() {
    let text = MINIMAL.replace(
        "insecure_bootstrap = true",
        "insecure_bootstrap = true\n    experimental {\n        server_addresses = [\"a:8081\"]\n    }",
    );
    assert_eq!(
        parse_error(&text),
        "agent.conf:4: server_address = \"twid-server.internal\": experimental { \
         server_addresses } is also set; list every server there as host:port and remove this key"
    );
}
