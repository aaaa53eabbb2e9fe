//! Keeps docs/configuration.md loadable: every ```hcl block in it must parse as the server or
//! agent configuration that its top-level block names, and the key tables must cover every key.

use std::path::PathBuf;

use twid_config::{AgentConfig, ServerConfig};

fn doc_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Returns each ```hcl block with the line number of its opening fence.
fn hcl_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match current.as_mut() {
            None if fence == "```hcl" => current = Some((index + 1, String::new())),
            None => {}
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unterminated ```hcl block");
    blocks
}

/// Returns the names of the top-level blocks of an HCL text.
fn top_level_blocks(text: &str) -> Vec<String> {
    let body = hcl_edit::parser::parse_body(text).expect("valid HCL");
    body.blocks().map(|block| block.ident.to_string()).collect()
}

#[test]
fn every_hcl_example_loads() {
    let text = doc_text();
    let blocks = hcl_blocks(&text);
    let mut servers = 0;
    let mut agents = 0;
    for (line, body) in &blocks {
        let name = format!("docs/configuration.md:{line}");
        let top = top_level_blocks(body);
        if top.iter().any(|block| block == "server") {
            if let Err(error) = ServerConfig::parse(body, &name) {
                panic!("server example at {name} does not load: {error}");
            }
            servers += 1;
        } else if top.iter().any(|block| block == "agent") {
            if let Err(error) = AgentConfig::parse(body, &name) {
                panic!("agent example at {name} does not load: {error}");
            }
            agents += 1;
        } else {
            panic!("example at {name} has neither a server nor an agent block");
        }
    }
    assert!(
        servers >= 2,
        "expected at least 2 server examples, found {servers}"
    );
    assert!(
        agents >= 2,
        "expected at least 2 agent examples, found {agents}"
    );
}

#[test]
fn complete_examples_differ_from_defaults() {
    let text = doc_text();
    let blocks = hcl_blocks(&text);
    let server = blocks
        .iter()
        .find(|(_, body)| body.starts_with("# /etc/twid/server.conf"))
        .expect("complete server example");
    let config = ServerConfig::parse(&server.1, "server example").unwrap();
    assert!(config.health_checks.listener_enabled);
    assert!(config.telemetry.prometheus.is_some());
    assert!(config.agent_ttl.is_some());
    assert!(config.ca_subject.common_name.is_some());

    let agent = blocks
        .iter()
        .find(|(_, body)| body.starts_with("# /etc/twid/agent.conf"))
        .expect("complete agent example");
    let config = AgentConfig::parse(&agent.1, "agent example").unwrap();
    assert!(config.join_token.is_some());
    assert!(config.trust_bundle_path.is_some());
    assert!(config.unix_attestor.discover_workload_path);
    assert!(config.health_checks.listener_enabled);
}

#[test]
fn key_tables_cover_every_key() {
    let text = doc_text();
    let keys = [
        // server
        "trust_domain",
        "data_dir",
        "bind_address",
        "bind_port",
        "socket_path",
        "log_level",
        "log_format",
        "ca_key_type",
        "jwt_key_type",
        "ca_ttl",
        "default_x509_svid_ttl",
        "default_jwt_svid_ttl",
        "agent_ttl",
        "ca_subject",
        "country",
        "organization",
        "common_name",
        "database_type",
        "connection_string",
        "keys_path",
        "public_url",
        "issuer",
        "key_file",
        "audience",
        "ttl",
        "enabled",
        "tls_cert_file",
        "tls_key_file",
        "cors_origins",
        "trusted_roots",
        "collateral_dir",
        "vek_chain_path",
        "allow_debug",
        "allowed_measurements",
        "allowed_signers",
        "min_isv_svn",
        "allowed_tcb_statuses",
        "max_collateral_age",
        "min_tcb",
        "allowed_chip_ids",
        "pcrs",
        "allowed_ak_sha256",
        "max_evidence_age",
        "pcs_url",
        "kds_url",
        // agent
        "server_address",
        "server_port",
        "trust_bundle_path",
        "trust_bundle_format",
        "insecure_bootstrap",
        "join_token",
        "experimental",
        "sync_interval",
        "server_addresses",
        "discover_workload_path",
        "workload_size_limit",
        "directory",
        "sds",
        "default_svid_name",
        "default_bundle_name",
        "default_all_bundles_name",
        "disable_spiffe_cert_validation",
        "collector",
        "tsm_path",
        "command",
        "tcti",
        "ak_handle",
        "pcr_bank",
        // shared
        "listener_enabled",
        "live_path",
        "ready_path",
        "host",
        "port",
    ];
    for key in keys {
        let row = format!("| `{key}` |");
        assert!(
            text.contains(&row),
            "docs/configuration.md has no table row for `{key}`"
        );
    }
}
