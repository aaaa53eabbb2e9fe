//! The issuance log through the CLI: SVIDs fetched from an agent have records that
//! `twid log show` finds, `twid log verify` passes, and after a row is edited in the datastore
//! (with sqlite3 or psql) while the server is stopped, `twid log verify` names the edited
//! position.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use twid_proto::node::attest_agent_request::Step;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{
    AttestAgentParams, AttestAgentRequest, AttestationData, NewJwtSvidRequest,
    attest_agent_response,
};
use twid_spiffe::TrustDomain;
use twid_tls::SvidSource;

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/workload/logged";

/// Returns the serial number (lowercase hex) of the first certificate in a PEM chain.
fn first_serial(pem: &str) -> String {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let cert = rustls_pemfile::certs(&mut reader)
        .next()
        .expect("a certificate in the chain")
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    hex::encode(parsed.raw_serial())
}

/// Returns the `jti` claim of a compact JWT.
fn jwt_id(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["jti"]
        .as_str()
        .expect("the JWT-SVID has a jti")
        .to_owned()
}

fn sqlite(database: &std::path::Path, sql: &str) -> String {
    let output = Command::new("sqlite3")
        .arg(database)
        .arg(sql)
        .output()
        .expect("sqlite3 should run");
    assert!(
        output.status.success(),
        "sqlite3 {sql:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn sqlite3_installed() -> bool {
    Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn issuance_log_records_and_detects_edits() {
    let dir = TempDir::new();
    let mut server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let uid = nix::unistd::geteuid().as_raw();
    let entry_id = server.create_entry(
        WORKLOAD_ID,
        &agent_id(&token),
        &[&format!("unix:uid:{uid}")],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let socket = server.socket_arg().to_owned();

    let mut fetched = None;
    wait_until(
        Duration::from_secs(30),
        "an X.509-SVID from the agent",
        || {
            let output = run(&[
                "api",
                "fetch",
                "x509",
                "--output",
                "json",
                "--socket-path",
                agent.socket_arg(),
            ]);
            fetched = output.status.success().then_some(output.stdout);
            fetched.is_some()
        },
    );
    let x509: serde_json::Value = serde_json::from_slice(&fetched.unwrap()).unwrap();
    let serial = first_serial(x509["svids"][0]["x509_svid_pem"].as_str().unwrap());
    // The fetch prints the serial in the form that log lookups take.
    assert_eq!(x509["svids"][0]["serial"], serial.as_str());

    // The record of the fetched SVID, in both output formats.
    let pretty = run_ok(&["log", "show", "--serial", &serial, "--socket-path", &socket]);
    assert!(pretty.contains(WORKLOAD_ID), "{pretty}");
    assert!(pretty.contains(&serial), "{pretty}");
    let json: serde_json::Value = serde_json::from_str(&run_ok(&[
        "log",
        "show",
        "--serial",
        &serial.to_uppercase(),
        "--output",
        "json",
        "--socket-path",
        &socket,
    ]))
    .unwrap();
    assert_eq!(json["kind"], "x509");
    assert_eq!(json["spiffe_id"], WORKLOAD_ID);
    assert_eq!(json["entry_id"], entry_id.as_str());
    assert_eq!(json["agent_id"], agent_id(&token).as_str());
    assert_eq!(json["selectors"][0]["value"], format!("uid:{uid}"));
    assert_eq!(json["key_fingerprint"].as_str().map(str::len), Some(64));
    let x509_seq = json["seq"].as_u64().unwrap();

    // A JWT-SVID is found by its jti.
    let jwt: serde_json::Value = serde_json::from_str(&run_ok(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "logged-audience",
        "--output",
        "json",
        "--socket-path",
        agent.socket_arg(),
    ]))
    .unwrap();
    let jti = jwt_id(jwt["svids"][0]["svid"].as_str().unwrap());
    assert_eq!(jwt["svids"][0]["jti"], jti.as_str());
    let json: serde_json::Value = serde_json::from_str(&run_ok(&[
        "log",
        "show",
        "--jti",
        &jti,
        "--output",
        "json",
        "--socket-path",
        &socket,
    ]))
    .unwrap();
    assert_eq!(json["kind"], "jwt");
    assert_eq!(json["spiffe_id"], WORKLOAD_ID);

    // The agent's own SVID from its attestation is the first record.
    let list: serde_json::Value = serde_json::from_str(&run_ok(&[
        "log",
        "show",
        "--from",
        "0",
        "--limit",
        "1",
        "--output",
        "json",
        "--socket-path",
        &socket,
    ]))
    .unwrap();
    let records = list["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["seq"], 0);
    assert_eq!(records[0]["spiffe_id"], agent_id(&token).as_str());
    assert_eq!(records[0]["agent_id"], agent_id(&token).as_str());

    // A full page in the pretty layout names its positions and the next page's --from.
    let page = run_ok(&["log", "show", "--limit", "1", "--socket-path", &socket]);
    assert!(
        page.starts_with("Showing 1 record, positions 0 to 0"),
        "{page}"
    );
    assert!(page.contains("pass --from 1 for the next page"), "{page}");
    let past = run_ok(&["log", "show", "--from", "100000", "--socket-path", &socket]);
    assert!(
        past.contains("No records at position 100000 or later"),
        "{past}"
    );

    let unknown = run(&[
        "log",
        "show",
        "--serial",
        "0badc0de",
        "--socket-path",
        &socket,
    ]);
    assert!(!unknown.status.success(), "an unknown serial was found");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no issuance log record"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    let intact = run_ok(&["log", "verify", "--socket-path", &socket]);
    assert!(intact.contains("intact"), "{intact}");

    let edit = format!(
        "UPDATE issuance_log SET spiffe_id = 'spiffe://example.org/workload/other' \
         WHERE seq = {x509_seq}"
    );
    if server.database.is_none() && !sqlite3_installed() {
        println!("sqlite3 not installed, skipping the tampering check");
        return;
    }
    drop(agent);
    server.stop();
    match &server.database {
        Some(database) => {
            psql_ok(database.name(), &edit);
        }
        None => {
            sqlite(&dir.path().join("server-data/datastore.sqlite3"), &edit);
        }
    }
    server.spawn();

    let altered = run(&["log", "verify", "--socket-path", &socket]);
    let stderr = String::from_utf8_lossy(&altered.stderr);
    assert_eq!(altered.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("altered at position {x509_seq}: edited")),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &run(&[
            "log",
            "verify",
            "--output",
            "json",
            "--socket-path",
            &socket,
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(json["intact"], false);
    assert_eq!(json["alteration"]["seq"], x509_seq);
    assert_eq!(json["alteration"]["kind"], "edited");
}

/// Runs an agent that must fail to attest with `token`.
fn run_rejected_agent(dir: &std::path::Path, server: &ServerProcess, token: &str) {
    std::fs::create_dir(dir).unwrap();
    let bundle = dir.join("bootstrap.pem");
    server.write_bundle(&bundle);
    let config = format!(
        "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  server_address = \"127.0.0.1\"\n  \
         server_port = \"{}\"\n  socket_path = \"{}\"\n  data_dir = \"{}\"\n  \
         trust_bundle_path = \"{}\"\n  join_token = \"{token}\"\n}}\n",
        server.port,
        dir.join("agent.sock").display(),
        dir.join("data").display(),
        bundle.display(),
    );
    let path = write_file(dir, "agent.conf", &config);
    let output = twid()
        .args(["agent", "run", "--config", &path])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "the agent attested with a used token"
    );
}

#[test]
fn issuance_log_records_rejected_token() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let _agent = AgentProcess::start(dir.path(), &server, &token);
    run_rejected_agent(&dir.path().join("second"), &server, &token);

    let output = run_ok(&[
        "log",
        "show",
        "--output",
        "json",
        "--socket-path",
        server.socket_arg(),
    ]);
    let list: serde_json::Value = serde_json::from_str(&output).unwrap();
    let records = list["records"].as_array().unwrap();
    let refusal = records
        .iter()
        .find(|record| record["kind"] == "refusal")
        .unwrap_or_else(|| panic!("no refusal record in {output}"));
    let reason = refusal["refusal_reason"].as_str().unwrap();
    assert!(reason.contains("already been used"), "{reason}");
    assert!(refusal["agent_id"].is_null(), "{refusal}");
    assert!(
        !refusal.to_string().contains(&token),
        "the rejection record contains the token: {refusal}"
    );
}

/// Returns the refusal records of the server's issuance log, read with `twid log show`.
fn refusal_records(socket: &str) -> Vec<serde_json::Value> {
    let output = run_ok(&[
        "log",
        "show",
        "--limit",
        "1000",
        "--output",
        "json",
        "--socket-path",
        socket,
    ]);
    let list: serde_json::Value = serde_json::from_str(&output).unwrap();
    list["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["kind"] == "refusal")
        .cloned()
        .collect()
}

/// Starts a server in this process with a development configuration under `dir`.
async fn start_server(dir: &TempDir) -> twid_server::ServerHandle {
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let config = dir.dev_server_config(trust_domain);
    twid_server::Server::start(config)
        .await
        .expect("server should start")
}

/// Connects to the node API of `server`, presenting `svid` as client certificate when given.
fn node_client(
    server: &twid_server::ServerHandle,
    svid: Option<SvidSource>,
) -> NodeClient<Channel> {
    let address = server.node_api_address();
    let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
    let tls =
        twid_tls::insecure_client_config(svid, twid_tls::Authorizer::Exact(server_id)).unwrap();
    let channel =
        twid_tls::connect_channel_lazy(&address.ip().to_string(), address.port(), tls).unwrap();
    NodeClient::new(channel)
}

/// Builds a join token attestation request.
fn join_token_request(token: &str, csr: &[u8]) -> AttestAgentRequest {
    AttestAgentRequest {
        step: Some(Step::Params(AttestAgentParams {
            data: Some(AttestationData {
                r#type: "join_token".to_owned(),
                payload: token.as_bytes().to_vec(),
            }),
            csr: csr.to_vec(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_flood_is_rate_limited() {
    const ATTEMPTS: usize = 1000;
    // The server's limit for unauthenticated callers: a burst of 500, then 50 per second.
    const BURST: usize = 500;
    const PER_SECOND: f64 = 50.0;

    let dir = TempDir::new();
    let server = start_server(&dir).await;
    let socket = server.admin_socket().display().to_string();
    let mut client = node_client(&server, None);
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let csr = twid_ca::build_csr(&key).unwrap();

    let started = std::time::Instant::now();
    for attempt in 0..ATTEMPTS {
        let request = join_token_request(&format!("no-such-token-{attempt}"), &csr);
        let status = client
            .attest_agent(tokio_stream::iter([request]))
            .await
            .expect_err("an unknown join token was accepted");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }
    let elapsed = started.elapsed().as_secs_f64();

    let socket_arg = socket.clone();
    let records = tokio::task::spawn_blocking(move || refusal_records(&socket_arg))
        .await
        .unwrap();
    // The bucket refills while the attempts run, so the bound grows with the elapsed time.
    let allowed = BURST + (elapsed * PER_SECOND).ceil() as usize + 1;
    assert!(
        records.len() <= allowed,
        "{} refusal records after {elapsed:.1} s, expected at most {allowed}",
        records.len()
    );
    assert!(records.len() >= BURST, "{} refusal records", records.len());
    for record in &records {
        assert!(record["agent_id"].is_null(), "{record}");
    }

    // One summary record counts the skipped rejections after the summary interval of 10 s.
    let mut summaries = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while summaries.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let socket_arg = socket.clone();
        summaries = tokio::task::spawn_blocking(move || refusal_records(&socket_arg))
            .await
            .unwrap()
            .into_iter()
            .filter(|record| {
                record["refusal_reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("not recorded"))
            })
            .collect();
    }
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let summary = summaries[0]["refusal_reason"].as_str().unwrap();
    let skipped = ATTEMPTS - records.len();
    assert!(
        summary.starts_with(&format!("{skipped} refusals not recorded in the last 10 s")),
        "{summary}"
    );
    assert!(summary.contains("unauthenticated"), "{summary}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_entry_id_is_escaped() {
    const ENTRY_ID: &str = "evil\u{1b}[2J\r\nentry";
    const ESCAPED: &str = "evil\\u{1b}[2J\\u{d}\\u{a}entry";

    let dir = TempDir::new();
    let server = start_server(&dir).await;
    let socket = server.admin_socket().display().to_string();

    // Attest as an agent with a join token, so the agent can call NewJwtSvid.
    let socket_arg = socket.clone();
    let token = tokio::task::spawn_blocking(move || {
        run_ok(&["token", "generate", "--socket-path", &socket_arg])
    })
    .await
    .unwrap();
    let token = token.trim().strip_prefix("Token: ").expect("a token line");
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let csr = twid_ca::build_csr(&key).unwrap();
    let mut responses = node_client(&server, None)
        .attest_agent(tokio_stream::iter([join_token_request(token, &csr)]))
        .await
        .expect("join token attestation")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("an attestation response")
        .expect("a message before the stream ends");
    let Some(attest_agent_response::Step::Result(svid)) = response.step else {
        panic!("the attestation response has no SVID: {response:?}");
    };
    let chain = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let source = SvidSource::new(chain, PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()))
        .expect("the agent SVID loads");

    let status = node_client(&server, Some(source))
        .new_jwt_svid(NewJwtSvidRequest {
            entry_id: ENTRY_ID.to_owned(),
            audience: vec!["escape-test".to_owned()],
        })
        .await
        .expect_err("an unknown entry was authorized");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let socket_arg = socket.clone();
    let (pretty, records) = tokio::task::spawn_blocking(move || {
        let pretty = run_ok(&["log", "show", "--socket-path", &socket_arg]);
        (pretty, refusal_records(&socket_arg))
    })
    .await
    .unwrap();
    assert!(!pretty.contains('\u{1b}'), "{pretty:?}");
    assert!(!pretty.contains('\r'), "{pretty:?}");
    assert!(
        pretty.contains(&format!("Entry ID           : {ESCAPED}")),
        "{pretty}"
    );
    assert!(
        pretty.contains(&format!("entry {ESCAPED} does not exist")),
        "{pretty}"
    );
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["entry_id"], ESCAPED);
    let reason = records[0]["refusal_reason"].as_str().unwrap();
    assert!(reason.contains(ESCAPED), "{reason}");
    server.shutdown().await;
}
