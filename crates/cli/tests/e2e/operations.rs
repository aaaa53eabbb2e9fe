//! Operations: the health listener, Prometheus metrics and JSON logs of a real server.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{
    AgentProcess, ServerProcess, TempDir, agent_id, free_port, run_ok, wait_until,
};

/// Sends a plain HTTP/1.0 GET to 127.0.0.1 and returns the status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

#[test]
fn health_metrics_and_json_logs() {
    let dir = TempDir::new();
    let health_port = free_port();
    let metrics_port = free_port();
    let blocks = format!(
        "health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  \
         bind_port = \"{health_port}\"\n}}\n\
         telemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {metrics_port}\n  }}\n}}\n"
    );
    let server = ServerProcess::start_with_blocks(dir.path(), "  log_format = \"json\"", &blocks);

    let live = http_get(health_port, "/live").expect("the health listener should answer");
    assert_eq!(live.0, 200, "/live body: {}", live.1);
    let ready = http_get(health_port, "/ready").expect("the health listener should answer");
    assert_eq!(ready.0, 200, "/ready body: {}", ready.1);

    // An agent that gets an SVID makes the server count an attestation and a signature.
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(
        "spiffe://example.org/metrics",
        &agent_id(&token),
        &[&selector],
    );
    // Until an agent uses it, the token is a credential, so nothing may log it. Once used, it
    // is part of the agent's SPIFFE ID, which SPIRE and twid log like any other ID.
    assert!(
        !server.log().contains(&token),
        "the server logged an unused join token"
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);
    wait_until(Duration::from_secs(20), "an SVID from the agent", || {
        crate::common::run(&["api", "fetch", "x509", "--socket-path", agent.socket_arg()])
            .status
            .success()
    });
    let (status, metrics) = http_get(metrics_port, "/metrics").expect("metrics should answer");
    assert_eq!(status, 200);
    for name in [
        "twid_node_attestations_total",
        "twid_x509_svids_signed_total",
        "twid_ca_authority_expires_at_seconds",
    ] {
        assert!(
            metrics.contains(name),
            "metric {name} missing from:\n{metrics}"
        );
    }

    let log = server.log();
    let first = log.lines().next().expect("the server should log");
    let parsed: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("log line {first:?} is not JSON: {e}"));
    assert!(
        parsed.get("level").is_some(),
        "JSON log line lacks a level: {first}"
    );
    run_ok(&["healthcheck", "--socket-path", server.socket_arg()]);
}
