//! The error contract: every message names the file and line, and the key and value where
//! there is one.

use twid_config::{AgentConfig, ConfigError, ServerConfig};

fn server_error(text: &str, file: &str) -> ConfigError {
    match ServerConfig::parse(text, file) {
        Ok(config) => panic!("parse succeeded: {config:?}"),
        Err(error) => error,
    }
}

/// Builds a server file whose `server` block holds `extra` on line 4 onwards.
fn server_with(extra: &str) -> String {
    format!("server {{\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n  {extra}\n}}\n")
}

#[test]
fn invalid_port_names_file_line_key_value() {
    let text = "server {\n  trust_domain = \"example.org\"\n  bind_port = \"abc\"\n  data_dir = \"/d\"\n}\n";
    let error = server_error(text, "server.conf");
    assert_eq!(
        error.to_string(),
        "server.conf:3: bind_port = \"abc\": invalid port, expected an integer 1-65535"
    );
    match error {
        ConfigError::InvalidValue {
            file,
            line,
            key,
            value,
            ..
        } => {
            assert_eq!(file, "server.conf");
            assert_eq!(line, 3);
            assert_eq!(key, "bind_port");
            assert_eq!(value, "\"abc\"");
        }
        other => panic!("unexpected variant {other:?}"),
    }
}

#[test]
fn unknown_key_suggests_closest() {
    let text = "server {\n  trust_domian = \"example.org\"\n  data_dir = \"/d\"\n}\n";
    let error = server_error(text, "typo.conf");
    assert_eq!(
        error.to_string(),
        "typo.conf:2: unknown key \"trust_domian\" in block \"server\"; did you mean \"trust_domain\"?"
    );
    assert!(matches!(error, ConfigError::UnknownKey { line: 2, .. }));
}

#[test]
fn unknown_key_without_near_match() {
    let error = server_error(&server_with("colour = \"blue\""), "server.conf");
    assert_eq!(
        error.to_string(),
        "server.conf:4: unknown key \"colour\" in block \"server\""
    );
}

#[test]
fn unknown_spire_keys_get_hints() {
    let cases = [
        (
            "default_svid_ttl = \"1h\"",
            "server.conf:4: unknown key \"default_svid_ttl\" in block \"server\"; SPIRE's deprecated name; use default_x509_svid_ttl",
        ),
        (
            "ratelimit {\n  }",
            "server.conf:4: unknown key \"ratelimit\" in block \"server\"; this SPIRE setting is not supported by twid",
        ),
        (
            "log_file = \"/var/log/twid.log\"",
            "server.conf:4: unknown key \"log_file\" in block \"server\"; twid logs to standard error; redirect it to a file instead",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(
            server_error(&server_with(extra), "server.conf").to_string(),
            expected
        );
    }
}

#[test]
fn unknown_key_in_nested_and_top_level_blocks() {
    let cases = [
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\nhealth_checks {\n  listener_enable = true\n}\n",
            "server.conf:6: unknown key \"listener_enable\" in block \"health_checks\"; did you mean \"listener_enabled\"?",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\ntelemetry {\n  Statsd = []\n}\n",
            "server.conf:6: unknown key \"Statsd\" in block \"telemetry\"; twid exports metrics only through the Prometheus block",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\ntelemetry {\n  Prometheus {\n    port = 9988\n    tls {}\n  }\n}\n",
            "server.conf:8: unknown key \"tls\" in block \"telemetry.Prometheus\"; this SPIRE setting is not supported by twid",
        ),
        (
            "bind_port = 8081\nserver {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\n",
            "server.conf:1: unknown key \"bind_port\" at top level; it belongs inside the server { ... } block",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\nplugin {\n}\n",
            "server.conf:5: unknown key \"plugin\" at top level; did you mean \"plugins\"?",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(server_error(text, "server.conf").to_string(), expected);
    }
}

#[test]
fn missing_required_keys() {
    let cases = [
        (
            "server {\n  data_dir = \"/d\"\n}\n",
            "server.conf:1: missing required key \"trust_domain\" in block \"server\"",
        ),
        (
            "\n\nserver {\n  trust_domain = \"example.org\"\n}\n",
            "server.conf:3: missing required key \"data_dir\" in block \"server\"",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\ntelemetry {\n  Prometheus {\n  }\n}\n",
            "server.conf:6: missing required key \"port\" in block \"telemetry.Prometheus\"",
        ),
    ];
    for (text, expected) in cases {
        let error = server_error(text, "server.conf");
        assert!(matches!(error, ConfigError::MissingKey { .. }), "{error:?}");
        assert_eq!(error.to_string(), expected);
    }
}

#[test]
fn missing_agent_keys() {
    let text = "agent {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n  insecure_bootstrap = true\n}\n";
    let error = AgentConfig::parse(text, "agent.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "agent.conf:1: missing required key \"server_address\" in block \"agent\""
    );
}

#[test]
fn missing_block_detects_other_kind() {
    let agent_file = "agent {\n  trust_domain = \"example.org\"\n}\n";
    let error = ServerConfig::parse("", "empty.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "empty.conf: missing required block \"server\""
    );

    let error = AgentConfig::parse("health_checks {\n}\n", "a.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "a.conf: missing required block \"agent\""
    );

    let error = ServerConfig::parse(agent_file, "agent.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "agent.conf:1: unknown key \"agent\" at top level; this block belongs in an agent \
         configuration; load this file as an agent configuration"
    );
}

#[test]
fn malformed_hcl_reports_parser_message() {
    let cases = [
        ("server {\n  trust_domain = \"example.org\"\n", 2),
        ("server {\n  trust_domain = \n}\n", 2),
        ("server {\n  trust_domain \"example.org\"\n}\n", 2),
        ("server {\n  data_dir = \"/d\n}\n", 2),
    ];
    for (text, line) in cases {
        let error = server_error(text, "bad.conf");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("bad.conf:{line}: invalid HCL at column ")),
            "{text:?}: {message}"
        );
        match error {
            ConfigError::Syntax { message, .. } => assert!(!message.is_empty()),
            other => panic!("unexpected variant {other:?}"),
        }
    }
}

#[test]
fn repeated_attribute_names_key() {
    let error = server_error(&server_with("bind_port = 1\n  bind_port = 2"), "d.conf");
    assert_eq!(
        error.to_string(),
        "d.conf:5: invalid HCL at column 3: duplicate key \"bind_port\"; each key may appear once per block"
    );
}

#[test]
fn repeated_block_names_both_lines() {
    let text = "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\nhealth_checks {\n}\nhealth_checks {\n}\n";
    let error = server_error(text, "d.conf");
    assert_eq!(
        error.to_string(),
        "d.conf:7: duplicate key \"health_checks\" at top level (first set on line 5)"
    );
}

#[test]
fn invalid_value_table() {
    let cases = [
        (
            "bind_port = 70000",
            "bind_port = 70000: invalid port, expected an integer 1-65535",
        ),
        (
            "bind_port = 80.5",
            "bind_port = 80.5: invalid port, expected an integer 1-65535",
        ),
        (
            "bind_address = \"server.example.org\"",
            "bind_address = \"server.example.org\": expected an IP address or \"localhost\" (host names are not resolved)",
        ),
        (
            "log_level = \"TRACE\"",
            "log_level = \"TRACE\": invalid log level, expected DEBUG, INFO, WARN or ERROR",
        ),
        (
            "log_format = \"xml\"",
            "log_format = \"xml\": invalid log format, expected text or json",
        ),
        (
            "ca_key_type = \"ec-p521\"",
            "ca_key_type = \"ec-p521\": invalid key type, expected ec-p256, ec-p384, rsa-2048 or rsa-4096",
        ),
        (
            "ca_ttl = \"1d\"",
            "ca_ttl = \"1d\": invalid duration: unknown unit \"d\"; expected a number and a unit (ns, us, ms, s, m, h), such as \"90s\" or \"1h30m\"",
        ),
        (
            "ca_ttl = 86400",
            "ca_ttl = 86400: expected a duration string such as \"1h\", \"5m\" or \"90s\"",
        ),
        (
            "agent_ttl = \"-1h\"",
            "agent_ttl = \"-1h\": invalid duration: negative durations are not allowed",
        ),
        (
            "default_jwt_svid_ttl = \"0\"",
            "default_jwt_svid_ttl = \"0\": invalid duration: must be greater than zero",
        ),
        (
            "socket_path = \"\"",
            "socket_path = \"\": must not be empty",
        ),
        (
            "socket_path = 5",
            "socket_path = 5: expected a quoted string",
        ),
        (
            "socket_path = \"${HOME}/api.sock\"",
            "socket_path = \"${HOME}/api.sock\": expected a plain quoted string; ${...} interpolation and heredocs are not evaluated (load with expand_env, the --expand-env flag, to substitute environment variables)",
        ),
        (
            "ca_subject = \"C=US\"",
            "ca_subject = \"C=US\": expected a block, such as ca_subject { ... }",
        ),
        (
            "ca_subject {\n    organization = \"SPIFFE\"\n  }",
            "organization = \"SPIFFE\": expected a list of strings, such as [\"a\", \"b\"]",
        ),
    ];
    for (extra, expected_tail) in cases {
        let message = server_error(&server_with(extra), "v.conf").to_string();
        let line = if extra.starts_with("ca_subject {") {
            5
        } else {
            4
        };
        assert_eq!(
            message,
            format!("v.conf:{line}: {expected_tail}"),
            "{extra}"
        );
    }
}

#[test]
fn invalid_trust_domain() {
    let text = "server {\n  trust_domain = \"Example.ORG\"\n  data_dir = \"/d\"\n}\n";
    let message = server_error(text, "t.conf").to_string();
    assert!(
        message.starts_with("t.conf:2: trust_domain = \"Example.ORG\": invalid trust domain: "),
        "{message}"
    );
}

#[test]
fn block_where_value_expected() {
    let message = server_error(&server_with("bind_port {\n  }"), "b.conf").to_string();
    assert_eq!(
        message,
        "b.conf:4: bind_port in block \"server\" is a block, expected `bind_port = value`"
    );
}

#[test]
fn health_check_values_validated() {
    let base =
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\nhealth_checks {\n";
    let cases = [
        (
            "  bind_address = \"health.internal\"\n",
            "h.conf:6: bind_address = \"health.internal\": expected an IP address or \"localhost\" (host names are not resolved)",
        ),
        (
            "  live_path = \"live\"\n",
            "h.conf:6: live_path = \"live\": expected a path starting with \"/\"",
        ),
        (
            "  listener_enabled = \"yes\"\n",
            "h.conf:6: listener_enabled = \"yes\": expected true or false",
        ),
    ];
    for (body, expected) in cases {
        let text = format!("{base}{body}}}\n");
        assert_eq!(server_error(&text, "h.conf").to_string(), expected);
    }
}

#[test]
fn unsupported_plugin_names_plugin() {
    let text = "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\nplugins {\n  NodeAttestor \"k8s_psat\" {\n    plugin_data {\n      clusters = {}\n    }\n  }\n}\n";
    let error = server_error(text, "p.conf");
    assert_eq!(
        error.to_string(),
        "p.conf:6: unsupported plugin NodeAttestor \"k8s_psat\": twid supports NodeAttestor \"join_token\", \"sgx_dcap\", \"tdx\", \"sgx_ias\", \"snp\", \"nitro\" and \"tpm\""
    );
    match error {
        ConfigError::UnsupportedPlugin {
            plugin_type, name, ..
        } => {
            assert_eq!(plugin_type, "NodeAttestor");
            assert_eq!(name, "k8s_psat");
        }
        other => panic!("unexpected variant {other:?}"),
    }
}
