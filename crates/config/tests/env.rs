//! Environment variable expansion through `load_with_options`.
//!
//! Setting variables in this process needs `unsafe` in edition 2024, which the workspace
//! forbids, so the test that needs variables re-runs itself in a child process with them set.

use std::path::Path;
use std::process::Command;

use twid_config::{AgentConfig, ConfigError, ServerConfig};

const CHILD_MARKER: &str = "TWID_CONFIG_ENV_TEST_CHILD";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config file");
    path
}

#[test]
fn expand_env_reads_process_environment() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "expand_env_reads_process_environment",
                "--test-threads=1",
            ])
            .env(CHILD_MARKER, "1")
            .env("TWID_TEST_TRUST_DOMAIN", "env.example.org")
            .env("TWID_TEST_PORT", "9443")
            .env("TWID_TEST_DIR", "/srv/twid")
            .env("TWID_TEST_TOKEN", "token-from-env")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let server = write(
        dir.path(),
        "server.conf",
        "server {\n  trust_domain = \"${TWID_TEST_TRUST_DOMAIN}\"\n  bind_port = $TWID_TEST_PORT\n  data_dir = \"$TWID_TEST_DIR/data\"\n}\n",
    );
    let config = ServerConfig::load_with_options(&server, true).unwrap();
    assert_eq!(config.trust_domain.name(), "env.example.org");
    assert_eq!(config.bind_port, 9443);
    assert_eq!(config.data_dir, Path::new("/srv/twid/data"));
    assert_eq!(config.source.as_deref(), Some(server.as_path()));

    let agent = write(
        dir.path(),
        "agent.conf",
        "agent {\n  trust_domain = \"$TWID_TEST_TRUST_DOMAIN\"\n  server_address = \"127.0.0.1\"\n  data_dir = \"${TWID_TEST_DIR}\"\n  join_token = \"$TWID_TEST_TOKEN\"\n  insecure_bootstrap = true\n}\n",
    );
    let config = AgentConfig::load_with_options(&agent, true).unwrap();
    assert_eq!(config.trust_domain.name(), "env.example.org");
    assert_eq!(config.join_token.as_deref(), Some("token-from-env"));
    assert_eq!(config.data_dir, Path::new("/srv/twid"));
}

#[test]
fn expand_env_unset_variable_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "server.conf",
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"$TWID_TEST_SURELY_UNSET_VARIABLE\"\n}\n",
    );
    let error = ServerConfig::load_with_options(&path, true).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:3: environment variable TWID_TEST_SURELY_UNSET_VARIABLE is not set \
             (referenced as $TWID_TEST_SURELY_UNSET_VARIABLE)",
            path.display()
        )
    );
    assert!(matches!(error, ConfigError::UnsetEnvVar { line: 3, .. }));
}

#[test]
fn without_expand_env_text_is_literal() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "server.conf",
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"$TWID_TEST_SURELY_UNSET_VARIABLE/x\"\n}\n",
    );
    let config = ServerConfig::load(&path).unwrap();
    assert_eq!(
        config.data_dir,
        Path::new("$TWID_TEST_SURELY_UNSET_VARIABLE/x")
    );
    let config = ServerConfig::load_with_options(&path, false).unwrap();
    assert_eq!(
        config.data_dir,
        Path::new("$TWID_TEST_SURELY_UNSET_VARIABLE/x")
    );
}

#[test]
fn expand_env_dollar_escape() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "server.conf",
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/srv/$$literal\"\n}\n",
    );
    let config = ServerConfig::load_with_options(&path, true).unwrap();
    assert_eq!(config.data_dir, Path::new("/srv/$literal"));
}
