//! The agent's SDS v3 service seen by a third-party client: the envoy-data-plane Python
//! package (tests/python/sds_check.py), fetching `default`, `ROOTCA`, `ALL` and the resources
//! docs/envoy/envoy.yaml requests, and following an SVID rotation on an open StreamSecrets stream.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::*;

const SPIFFE_ID: &str = "spiffe://example.org/envoy";
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

fn assert_svid(secret: &Value, context: &str) {
    assert_eq!(secret["kind"], "tls_certificate", "{context}: {secret}");
    assert_eq!(
        secret["spiffe_ids"],
        serde_json::json!([SPIFFE_ID]),
        "{context}: {secret}"
    );
    assert_eq!(secret["has_private_key"], true, "{context}: {secret}");
}

fn assert_own_bundle(secret: &Value, context: &str) {
    assert_eq!(secret["kind"], "spiffe_validator", "{context}: {secret}");
    assert_eq!(
        secret["validator_name"], SPIFFE_VALIDATOR,
        "{context}: {secret}"
    );
    let domains = secret["trust_domains"].as_object().unwrap();
    assert_eq!(domains.len(), 1, "{context}: {secret}");
    let authorities = domains[TRUST_DOMAIN].as_u64().unwrap();
    assert!(authorities >= 1, "{context}: {secret}");
}

#[test]
fn envoy_data_plane_fetches_and_streams_secrets() {
    let Some(python) = python() else { return };
    let dir = TempDir::new();
    // An SVID TTL of 20 s makes the agent renew the SVID within the stream's wait below.
    let server = ServerProcess::start(
        dir.path(),
        "  ca_ttl = \"120s\"\n  default_x509_svid_ttl = \"20s\"",
    );
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(SPIFFE_ID, &agent_id(&token), &[&selector]);

    // The script starts first and sends FetchSecrets as soon as the agent binds its socket.
    // The agent binds it before attesting and syncing, so that request waits for the first sync.
    let summary_path = dir.path().join("sds.json");
    let mut script = Command::new(&python)
        .arg(repo_root().join("tests/python/sds_check.py"))
        .arg(dir.path().join("agent.sock"))
        .arg(&summary_path)
        .arg("45")
        .arg(repo_root().join("docs/envoy/envoy.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script prints "ready" once its imports are done and it polls for the socket.
    let mut ready = String::new();
    BufReader::new(script.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "sds_check.py did not start");
    let agent = AgentProcess::start(dir.path(), &server, &token);
    assert_eq!(agent.socket, dir.path().join("agent.sock"));
    let output = script.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sds_check.py failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();

    // The FetchSecrets request went out before the agent finished its first sync and started
    // serving, and still got the SPIFFE validator below.
    let log = agent.log();
    let started_line = log
        .lines()
        .find(|line| line.contains("Workload API listening"))
        .expect("agent start line in the log");
    let started_at = started_line.split_whitespace().next().unwrap();
    let sent_at = summary["fetch_sent_at"].as_str().unwrap();
    assert_eq!(
        sent_at.len(),
        started_at.len(),
        "{sent_at} vs {started_line}"
    );
    assert!(
        sent_at < started_at,
        "FetchSecrets at {sent_at} was not sent before the first sync ({started_line})"
    );

    let fetch = &summary["fetch"];
    assert!(!fetch["version_info"].as_str().unwrap().is_empty());
    let secrets = fetch["secrets"].as_object().unwrap();
    assert_eq!(secrets.len(), 3, "{fetch}");
    assert_svid(&secrets["default"], "fetch default");
    assert_own_bundle(&secrets["ROOTCA"], "fetch ROOTCA");
    // The harness has no federation, so ALL contains the same single trust domain.
    assert_own_bundle(&secrets["ALL"], "fetch ALL");

    // The agent serves every SDS resource that the documented Envoy bootstrap requests.
    let requested = summary["bootstrap_requested"].as_array().unwrap();
    assert!(
        !requested.is_empty(),
        "docs/envoy/envoy.yaml requests no SDS resource"
    );
    let served = summary["bootstrap_fetch"]["secrets"].as_object().unwrap();
    for name in requested {
        let name = name.as_str().unwrap();
        assert!(
            served.contains_key(name),
            "the agent did not return {name} from docs/envoy/envoy.yaml: {served:?}"
        );
    }

    assert_eq!(summary["delta_status"], "UNIMPLEMENTED");

    let stream = summary["stream"].as_array().unwrap();
    assert_eq!(
        stream.len(),
        2,
        "expected the first response and one after a rotation: {stream:?}\nagent log:\n{}",
        agent.log()
    );
    for (index, response) in stream.iter().enumerate() {
        let context = format!("stream response {index}");
        assert!(!response["nonce"].as_str().unwrap().is_empty(), "{context}");
        let secrets = response["secrets"].as_object().unwrap();
        assert_eq!(secrets.len(), 2, "{context}: only the names requested");
        assert_svid(&secrets["default"], &context);
        assert_own_bundle(&secrets["ROOTCA"], &context);
    }
    // The ACK must not get a response, so the second response carries the renewed SVID.
    assert_ne!(
        stream[0]["secrets"]["default"]["serial"],
        stream[1]["secrets"]["default"]["serial"]
    );
    assert_ne!(stream[0]["version_info"], stream[1]["version_info"]);
    assert_ne!(stream[0]["nonce"], stream[1]["nonce"]);

    // A NACK is logged with the client's error message and gets no response.
    assert_eq!(summary["after_nack"], serde_json::json!([]));
    let message = summary["nack_message"].as_str().unwrap();
    let log = agent.log();
    assert_eq!(
        log.matches(message).count(),
        1,
        "the NACK should be logged once:\n{log}"
    );
}
