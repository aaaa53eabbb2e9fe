//! The Envoy bootstrap in docs/envoy/, checked with the envoy-data-plane messages and against the
//! SDS resource names and socket path of an agent with the default configuration.

use std::path::Path;
use std::process::{Command, Output};

use twid_config::AgentConfig;

use crate::common::*;

/// An agent configuration with no `socket_path` and no `sds` block, so that both take their
/// defaults, which are what docs/envoy/ relies on.
const DEFAULT_AGENT_CONFIG: &str = r#"
agent {
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    data_dir = "/var/lib/twid-agent"
    insecure_bootstrap = true
}
"#;

fn envoy_docs() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("docs/envoy"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs tests/python/envoy_docs_check.py on `files` with the socket path, trust domain and SDS
/// names of `config`.
fn run_check(python: &Path, config: &AgentConfig, files: &[std::path::PathBuf]) -> Output {
    let sds = &config.sds;
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("tests/python/envoy_docs_check.py"))
        .arg("--socket")
        .arg(&config.socket_path)
        .arg("--trust-domain")
        .arg(config.trust_domain.to_string());
    for name in [
        &sds.default_svid_name,
        &sds.default_bundle_name,
        &sds.default_all_bundles_name,
    ] {
        command.arg("--sds-name").arg(name);
    }
    command.args(files).output().unwrap()
}

fn default_agent_config() -> AgentConfig {
    AgentConfig::parse(DEFAULT_AGENT_CONFIG, "agent.conf").unwrap()
}

#[test]
fn envoy_docs_match_agent_defaults() {
    let Some(python) = python() else { return };
    let files = envoy_docs();
    assert!(!files.is_empty(), "docs/envoy/ has no .yaml file");

    let output = run_check(&python, &default_agent_config(), &files);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Envoy docs check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for file in &files {
        assert!(
            stdout.contains(&format!("{}: ok", file.display())),
            "{} was not checked:\n{stdout}",
            file.display()
        );
    }
}

/// Each mutation of the documented bootstrap must make the check fail with the given message,
/// so that the check above cannot pass vacuously.
#[test]
fn envoy_docs_check_rejects_mutations() {
    let Some(python) = python() else { return };
    let original = std::fs::read_to_string(repo_root().join("docs/envoy/envoy.yaml")).unwrap();
    let dir = TempDir::new();
    let cases = [
        (
            "require_client_certificate: true",
            "require_client_certficate: true",
            "Unknown field 'require_client_certficate'",
        ),
        ("san_type: URI", "san_type: URL", "Unknown value URL"),
        (
            "name: ROOTCA",
            "name: ROOT_CA",
            "SDS resource 'ROOT_CA' is not served by the agent",
        ),
        (
            "path: /tmp/twid-agent/public/api.sock",
            "path: /tmp/spire-agent/public/api.sock",
            "is not the agent socket",
        ),
        (
            "http2_protocol_options: {}",
            "http_protocol_options: {}",
            "does not set explicit_http_config.http2_protocol_options",
        ),
        (
            "require_client_certificate: true",
            "require_client_certificate: false",
            "does not require client certificates",
        ),
        (
            "exact: spiffe://example.org/backend",
            "exact: backend.example.org",
            "does not match the server's URI SAN",
        ),
    ];
    for (index, (from, to, message)) in cases.iter().enumerate() {
        assert!(
            original.contains(from),
            "docs/envoy/envoy.yaml lacks {from:?}"
        );
        let file = dir.path().join(format!("mutation-{index}.yaml"));
        std::fs::write(&file, original.replace(from, to)).unwrap();

        let output = run_check(&python, &default_agent_config(), &[file]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "check passed with {from:?} replaced by {to:?}"
        );
        assert!(
            stdout.contains(message),
            "replacing {from:?} by {to:?} did not report {message:?}:\n{stdout}"
        );
    }
}
