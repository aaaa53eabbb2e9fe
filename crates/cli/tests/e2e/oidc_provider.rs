//! `twid oidc-provider`: the standalone discovery endpoint publishes the trust domain's JWT
//! keys, read from a server's admin socket or an agent's Workload API.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Sends `GET path` to 127.0.0.1:`port` and returns the status and body, or `None` when the
/// connection fails.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A running `twid oidc-provider`, killed on drop.
struct Provider {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Provider {
    fn start(dir: &Path, source_args: &[&str], issuer_for_port: impl Fn(u16) -> String) -> Self {
        let port = free_port();
        let log_path = dir.join("oidc-provider.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let issuer = issuer_for_port(port);
        let child = twid()
            .arg("oidc-provider")
            .args(source_args)
            .args(["--issuer", &issuer, "--bind", &format!("127.0.0.1:{port}")])
            .args(["--cors-origin", "*", "--refresh-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("oidc-provider should start");
        let provider = Self {
            child,
            port,
            log: log_path,
        };
        wait_until(Duration::from_secs(30), "oidc-provider /ready", || {
            http_get(port, "/ready").is_some_and(|(status, _)| status == 200)
        });
        provider
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}\nlog:\n{}", self.log());
        serde_json::from_str(&body).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the `kid`s of the JWT authorities in the server's SPIFFE bundle.
fn bundle_jwt_kids(server: &ServerProcess) -> BTreeSet<String> {
    let bundle = run_ok(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--socket-path",
        server.socket_arg(),
    ]);
    let bundle: Value = serde_json::from_str(&bundle).unwrap();
    bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["use"] == "jwt-svid")
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn published_kids(jwks: &Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn oidc_provider_publishes_server_keys() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let provider = Provider::start(
        dir.path(),
        &["--server-socket", server.socket_arg()],
        |port| format!("http://127.0.0.1:{port}"),
    );
    let issuer = format!("http://127.0.0.1:{}", provider.port);

    let document = provider.get_json("/.well-known/openid-configuration");
    assert_eq!(document["issuer"], issuer.as_str());
    assert_eq!(document["jwks_uri"], format!("{issuer}/keys"));
    let jwks = provider.get_json("/keys");
    let expected = bundle_jwt_kids(&server);
    assert!(!expected.is_empty(), "the bundle has no JWT authorities");
    assert_eq!(published_kids(&jwks), expected);
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["alg"].is_string(), "{key}");
    }
    assert!(
        provider.log().contains("plain HTTP"),
        "no plain HTTP notice in the log:\n{}",
        provider.log()
    );
}

#[test]
fn oidc_provider_publishes_agent_keys() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    // The Workload API serves bundles only to registered workloads.
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(
        "spiffe://example.org/oidc-provider",
        &agent_id(&token),
        &[&selector],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let provider = Provider::start(
        dir.path(),
        &["--agent-socket", agent.socket_arg()],
        |port| format!("http://127.0.0.1:{port}"),
    );
    let jwks = provider.get_json("/keys");
    assert_eq!(
        published_kids(&jwks),
        bundle_jwt_kids(&server),
        "provider log:\n{}\nagent log:\n{}",
        provider.log(),
        agent.log()
    );
}

#[test]
fn oidc_provider_requires_a_source() {
    let output = run(&["oidc-provider", "--issuer", "https://oidc.example.org"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--server-socket"), "{stderr}");
}
