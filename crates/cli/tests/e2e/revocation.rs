//! Revocation end to end. A join-token agent (this test, speaking the node API) obtains SVIDs
//! for entries with and without an extra selector. After `twid revoke --selector <extra>`, the
//! agent's `Sync` lists the matching SVIDs and the server rejects signing them again, while the
//! other entries are still signed. `twid revoke list` and `GET /revocations` publish a JWS that
//! the trust domain's JWT bundle verifies. `twid revoke --agent` makes the node API reject the
//! agent's SVID. With test TDX evidence, `twid revoke --tcb-status` rejects the agent until it
//! attests again with fresh evidence.
//!
//! This test does not run an agent process, so it does not check that the Workload API stops
//! serving the revoked SVIDs.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tonic::transport::Channel;
use twid_proto::node::attest_agent_request::Step;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{
    AttestAgentParams, AttestAgentRequest, AttestationData, BatchNewX509SvidRequest,
    NewJwtSvidRequest, NewWitSvidRequest, NewX509SvidParams, RenewAgentRequest, SyncRequest,
    WatchRequest, attest_agent_response,
};
use twid_spiffe::TrustDomain;
use twid_tls::SvidSource;

use crate::common::*;

const ISSUER: &str = "https://revocation-oidc.example.org";
const KEPT_ID: &str = "spiffe://example.org/workload/kept";
const REVOKED_ID: &str = "spiffe://example.org/workload/revoked";
const EXTRA_SELECTOR: &str = "unix:gid:4242";

/// Sends an HTTP/1.1 GET and returns the status code, the headers and the body.
fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("HTTP status line");
    let (headers, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, headers.to_lowercase(), body.to_owned())
}

/// Returns the claims of a compact JWS after checking its ES256 signature with the key of
/// `jwks` (a SPIFFE bundle) that its `kid` names.
fn verify_jws(token: &str, jwks: &Value) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["typ"], "twid-revocation-list+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    let kid = header["kid"].as_str().unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == kid && key["use"] == "jwt-svid")
        .unwrap_or_else(|| panic!("no JWT authority {kid} in the bundle {jwks}"));
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &point,
    )
    .verify(signing_input.as_bytes(), &signature)
    .expect("the revocation list signature verifies with the bundle key");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

/// Connects to the node API, presenting `svid` as client certificate when given.
fn node_client(port: u16, svid: Option<SvidSource>) -> NodeClient<Channel> {
    let server_id = twid_types::server_id(&TrustDomain::new(TRUST_DOMAIN).unwrap());
    let tls =
        twid_tls::insecure_client_config(svid, twid_tls::Authorizer::Exact(server_id)).unwrap();
    let channel = twid_tls::connect_channel_lazy("127.0.0.1", port, tls).unwrap();
    NodeClient::new(channel)
}

/// Attests with a join token and returns the agent's SVID with its key.
async fn attest(port: u16, token: &str) -> SvidSource {
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let csr = twid_ca::build_csr(&key).unwrap();
    let request = AttestAgentRequest {
        step: Some(Step::Params(AttestAgentParams {
            data: Some(AttestationData {
                r#type: "join_token".to_owned(),
                payload: token.as_bytes().to_vec(),
            }),
            csr,
        })),
    };
    let mut responses = node_client(port, None)
        .attest_agent(tokio_stream::iter([request]))
        .await
        .expect("join token attestation")
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(attest_agent_response::Step::Result(svid)) = response.step else {
        panic!("the attestation response has no SVID: {response:?}");
    };
    let chain = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    SvidSource::new(chain, PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())).unwrap()
}

/// Returns the lowercase hex serial number of a DER certificate.
fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    hex::encode(cert.raw_serial())
}

/// Asks the server to sign one X.509-SVID per entry and returns, per entry, the serial or the
/// error.
async fn sign(client: &mut NodeClient<Channel>, entry_ids: &[&str]) -> Vec<Result<String, String>> {
    let params = entry_ids
        .iter()
        .map(|entry_id| {
            let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
            NewX509SvidParams {
                entry_id: (*entry_id).to_owned(),
                csr: twid_ca::build_csr(&key).unwrap(),
            }
        })
        .collect();
    let response = client
        .batch_new_x509_svid(BatchNewX509SvidRequest { params })
        .await
        .expect("BatchNewX509Svid")
        .into_inner();
    response
        .results
        .into_iter()
        .map(|result| match result.cert_chain.first() {
            Some(cert) => Ok(serial(cert)),
            None => Err(result.error),
        })
        .collect()
}

async fn jwt_id(client: &mut NodeClient<Channel>, entry_id: &str) -> Result<String, tonic::Status> {
    let response = client
        .new_jwt_svid(NewJwtSvidRequest {
            entry_id: entry_id.to_owned(),
            audience: vec!["revocation-test".to_owned()],
        })
        .await?
        .into_inner();
    let payload = response.token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    Ok(claims["jti"].as_str().unwrap().to_owned())
}

/// Runs a blocking twid command off the async runtime and returns its stdout.
async fn twid_ok(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&args)
    })
    .await
    .unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|item| item.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_selector_lists_refuses_and_publishes() {
    let dir = TempDir::new();
    let oidc_port = free_port();
    let blocks = format!(
        "jwt_issuer \"aws\" {{\n  issuer = \"{ISSUER}\"\n  audience = [\"sts.amazonaws.com\"]\n}}\n\
         endpoints {{\n  oidc_discovery {{\n    enabled = true\n    issuer = \"{ISSUER}\"\n    \
         bind_port = {oidc_port}\n  }}\n}}\n"
    );
    let server = ServerProcess::start_with_blocks(dir.path(), "", &blocks);
    let socket = server.socket_arg().to_owned();
    let port = server.port;
    let token = server.generate_token();
    let agent = agent_id(&token);
    let uid_selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    let kept_entry = server.create_entry(KEPT_ID, &agent, &[&uid_selector]);
    let revoked_entry = server.create_entry(REVOKED_ID, &agent, &[&uid_selector, EXTRA_SELECTOR]);

    let svid = attest(port, &token).await;
    let mut client = node_client(port, Some(svid.clone()));
    let signed = sign(&mut client, &[&kept_entry, &revoked_entry]).await;
    let kept_serial = signed[0].clone().expect("the kept entry is signed");
    let revoked_serial = signed[1].clone().expect("the revoked entry is signed");
    let kept_jti = jwt_id(&mut client, &kept_entry).await.unwrap();
    let revoked_jti = jwt_id(&mut client, &revoked_entry).await.unwrap();

    let mut hints = client.watch(WatchRequest {}).await.unwrap().into_inner();
    let first = hints.message().await.unwrap().unwrap();
    assert_eq!(first.reason, "connected");

    // The server caches the signed list; the revocation below must replace the cached one.
    let (status, _, body) =
        tokio::task::spawn_blocking(move || http_get(oidc_port, "/revocations"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.is_empty());

    let revoked: Value = serde_json::from_str(
        &twid_ok(
            [
                "revoke",
                "--selector",
                EXTRA_SELECTOR,
                "--reason",
                "group compromised",
                "--output",
                "json",
                "--socket-path",
                &socket,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    let revocation_id = revoked["revocation"]["id"].as_i64().unwrap();
    assert_eq!(revoked["revocation"]["kind"], "selector");
    assert_eq!(revoked["revocation"]["value"], EXTRA_SELECTOR);
    assert_eq!(revoked["revocation"]["reason"], "group compromised");
    assert_eq!(
        strings(&revoked["revoked_x509_serials"]),
        [revoked_serial.as_str()]
    );
    assert_eq!(strings(&revoked["revoked_jtis"]), [revoked_jti.as_str()]);
    assert_eq!(revoked["revoked_x509_count"], 1);
    assert_eq!(revoked["revoked_jwt_count"], 1);

    // The Watch stream wakes the agent, and Sync lists what it must drop.
    let hint = tokio::time::timeout(Duration::from_secs(10), hints.message())
        .await
        .expect("a hint within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(hint.reason, "revocation");
    assert!(hint.revision > first.revision);
    let sync = twid_proto::collect_sync(
        client
            .sync(SyncRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert_eq!(sync.revoked_x509_serials, [revoked_serial.as_str()]);
    assert_eq!(sync.revoked_jtis, [revoked_jti.as_str()]);
    assert_eq!(sync.entries.len(), 2);

    // Signing again is refused for the revoked basis only; the agent's own SVID still renews.
    let signed = sign(&mut client, &[&kept_entry, &revoked_entry]).await;
    assert!(signed[0].is_ok(), "{:?}", signed[0]);
    let refusal = signed[1]
        .clone()
        .expect_err("the revoked entry was signed again");
    assert!(
        refusal.contains(&format!("revocation {revocation_id}")),
        "{refusal}"
    );
    assert!(refusal.contains("attest again"), "{refusal}");
    let status = jwt_id(&mut client, &revoked_entry)
        .await
        .expect_err("a JWT-SVID was signed on the revoked basis");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(jwt_id(&mut client, &kept_entry).await.is_ok());
    let workload_key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let wit = |entry_id: &str| NewWitSvidRequest {
        entry_id: entry_id.to_owned(),
        public_key: workload_key.public_key_spki_der(),
    };
    let status = client
        .new_wit_svid(wit(&revoked_entry))
        .await
        .expect_err("a WIT was signed on the revoked basis");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("revocation {revocation_id}")),
        "{status:?}"
    );
    client
        .new_wit_svid(wit(&kept_entry))
        .await
        .expect("a WIT for the kept entry");
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    client
        .renew_agent(RenewAgentRequest {
            csr: twid_ca::build_csr(&key).unwrap(),
        })
        .await
        .expect("the agent's SVID renews: its own basis was not revoked");

    // Each refusal is recorded in the issuance log.
    let log: Value = serde_json::from_str(
        &twid_ok(
            ["log", "show", "--output", "json", "--socket-path", &socket]
                .map(str::to_owned)
                .to_vec(),
        )
        .await,
    )
    .unwrap();
    let refusals: Vec<&Value> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| {
            record["kind"] == "refusal" && record["entry_id"] == revoked_entry.as_str()
        })
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");

    // `twid revoke list` and GET /revocations publish the same lists, signed.
    let bundle: Value = serde_json::from_str(
        &twid_ok(
            [
                "bundle",
                "show",
                "--format",
                "spiffe",
                "--socket-path",
                &socket,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    let list: Value = serde_json::from_str(
        &twid_ok(
            [
                "revoke",
                "list",
                "--output",
                "json",
                "--socket-path",
                &socket,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1, "{list}");
    let credentials = list["credentials"].as_array().unwrap();
    let listed: Vec<&str> = credentials
        .iter()
        .filter_map(|credential| credential["serial"].as_str())
        .collect();
    assert_eq!(listed, [revoked_serial.as_str()]);
    // A JWT has no serial and an X.509-SVID no jti: null, as in `twid log show`.
    let listed_jtis: Vec<&str> = credentials
        .iter()
        .filter_map(|credential| credential["jti"].as_str())
        .collect();
    assert_eq!(listed_jtis, [revoked_jti.as_str()]);
    let claims = verify_jws(list["signed_list"].as_str().unwrap(), &bundle);
    assert_eq!(
        strings(&claims["revoked_x509_serials"]),
        [revoked_serial.as_str()]
    );
    assert_eq!(strings(&claims["revoked_jtis"]), [revoked_jti.as_str()]);
    assert_eq!(claims["iss"], "spiffe://example.org/spire/server");
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    let pretty = twid_ok(
        ["revoke", "list", "--socket-path", &socket]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    assert!(pretty.contains(&revoked_serial), "{pretty}");
    assert!(!pretty.contains(&kept_serial), "{pretty}");

    let (status, headers, body) =
        tokio::task::spawn_blocking(move || http_get(oidc_port, "/revocations"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains("content-type: application/jwt"),
        "{headers}"
    );
    let claims = verify_jws(body.trim(), &bundle);
    assert_eq!(
        strings(&claims["revoked_x509_serials"]),
        [revoked_serial.as_str()]
    );
    assert_eq!(strings(&claims["revoked_jtis"]), [revoked_jti.as_str()]);
    assert!(!body.contains(&kept_jti));
    assert_eq!(
        body.trim(),
        list["signed_list"].as_str().unwrap(),
        "GET /revocations and `twid revoke list` serve the same cached list"
    );

    // On PostgreSQL the server also turns its own change notifications into hints, so the
    // selector revocation may have sent a second hint by now. Reading it here leaves the check
    // below only what the agent revocation causes.
    while let Ok(hint) = tokio::time::timeout(Duration::from_millis(500), hints.message()).await {
        let hint = hint
            .unwrap()
            .expect("the Watch stream ended before the agent was revoked");
        assert!(
            server.database.is_some(),
            "the selector revocation sent a second hint on SQLite: {hint:?}"
        );
        assert_eq!(hint.reason, "revocation", "{hint:?}");
    }

    // Revoking the agent revokes its own SVIDs, so the node API rejects it.
    let revoked: Value = serde_json::from_str(
        &twid_ok(
            [
                "revoke",
                "--agent",
                &agent,
                "--output",
                "json",
                "--socket-path",
                &socket,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    let agent_revocation = revoked["revocation"]["id"].as_i64().unwrap();
    assert!(
        strings(&revoked["revoked_x509_serials"]).contains(&kept_serial),
        "{revoked}"
    );
    // The selector's rule revoked two of the agent's credentials already, and they are
    // counted apart.
    assert!(
        !strings(&revoked["revoked_x509_serials"]).contains(&revoked_serial),
        "{revoked}"
    );
    assert!(
        !strings(&revoked["revoked_jtis"]).contains(&revoked_jti),
        "{revoked}"
    );
    assert_eq!(revoked["already_revoked_count"], 2, "{revoked}");
    let status = node_client(port, Some(svid))
        .sync(SyncRequest::default())
        .await
        .expect_err("a revoked agent SVID was accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("revoked by revocation {agent_revocation}")),
        "{status:?}"
    );
    assert!(status.message().contains("attest again"), "{status:?}");

    // The Watch stream opened with the revoked SVID ends at the revocation's hint.
    let status = tokio::time::timeout(Duration::from_secs(10), hints.message())
        .await
        .expect("the Watch stream ends within 10 s")
        .expect_err("the Watch stream of a revoked agent SVID sent another hint");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("revoked by revocation {agent_revocation}")),
        "{status:?}"
    );

    // The cached list is replaced at once, so it lists the agent's own SVID.
    let (status, _, body) =
        tokio::task::spawn_blocking(move || http_get(oidc_port, "/revocations"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let claims = verify_jws(body.trim(), &bundle);
    assert!(
        strings(&claims["revoked_x509_serials"]).contains(&kept_serial),
        "{claims}"
    );
}

/// Opens a Watch stream on a new connection and returns it after its first hint.
async fn open_watch(
    port: u16,
    svid: &SvidSource,
) -> Result<tonic::Streaming<twid_proto::node::SyncHint>, tonic::Status> {
    let mut stream = node_client(port, Some(svid.clone()))
        .watch(WatchRequest {})
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a first hint");
    assert_eq!(first.reason, "connected");
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_capped_and_ended_by_ban() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let socket = server.socket_arg().to_owned();
    let port = server.port;
    let token = server.generate_token();
    let agent = agent_id(&token);
    let svid = attest(port, &token).await;

    // Two streams on one connection and the rest on others: the limit is per agent.
    let client = node_client(port, Some(svid.clone()));
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = client
            .clone()
            .watch(WatchRequest {})
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("a first hint");
        streams.push(stream);
    }
    for _ in 0..2 {
        streams.push(open_watch(port, &svid).await.expect("a Watch stream"));
    }
    let status = open_watch(port, &svid)
        .await
        .expect_err("a fifth Watch stream was opened");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&agent), "{}", status.message());
    assert!(
        status.message().contains("4 Watch streams open"),
        "{}",
        status.message()
    );

    // Closing a stream frees its slot once the server receives the reset.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match open_watch(port, &svid).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed stream's slot was not freed within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("reopening the Watch stream failed: {status:?}"),
        }
    };
    streams.push(reopened);

    // A ban sends a hint, and every stream of the banned agent ends.
    twid_ok(
        [
            "agent",
            "ban",
            "--spiffe-id",
            &agent,
            "--socket-path",
            &socket,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    for mut stream in streams {
        let status = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the Watch stream ends within 10 s")
            .expect_err("the Watch stream of a banned agent sent another hint");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("banned"), "{status:?}");
    }
}

#[test]
fn revoke_rejects_invalid_values() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let socket = server.socket_arg();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("--selector", "unix", &["\"unix\"", "<type>:<value>"]),
        ("--tcb-status", "Outdated", &["\"Outdated\"", "OutOfDate"]),
        (
            "--agent",
            "not a SPIFFE ID",
            &["\"not a SPIFFE ID\"", "spiffe://"],
        ),
        (
            "--agent",
            "spiffe://example.org/workload",
            &["spiffe://example.org/workload", "/spire/agent/"],
        ),
        (
            "--agent",
            "spiffe://other.org/spire/agent/join_token/x",
            &[
                "spiffe://other.org/spire/agent/join_token/x",
                "trust domain example.org",
            ],
        ),
    ];
    for (flag, value, expected) in cases {
        let output = run(&["revoke", flag, value, "--socket-path", socket]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        for text in expected {
            assert!(stderr.contains(text), "{flag} {value}: {stderr}");
        }
    }
    let output = run(&["revoke", "--socket-path", socket]);
    assert!(
        !output.status.success(),
        "a revocation without basis was accepted"
    );
    let list = run_ok(&["revoke", "list", "--socket-path", socket]);
    assert!(list.starts_with("Found 0 revocations"), "{list}");
}

/// Runs an evidence AttestAgent exchange with TDX evidence from `platform` that binds the
/// server's nonce and `key`, presenting `client_svid` when given, and returns the agent SVID.
async fn attest_tdx(
    port: u16,
    platform: &twid_evidence_testkit::dcap::TestPlatform,
    key: &twid_ca::PrivateKey,
    client_svid: Option<SvidSource>,
) -> Result<SvidSource, tonic::Status> {
    use twid_evidence_testkit::dcap::TdReportSpec;

    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let params = AttestAgentParams {
        data: Some(AttestationData {
            r#type: "tdx".to_owned(),
            payload: Vec::new(),
        }),
        csr: twid_ca::build_csr(key).unwrap(),
    };
    sender
        .send(AttestAgentRequest {
            step: Some(Step::Params(params)),
        })
        .await
        .unwrap();
    let mut responses = node_client(port, client_svid)
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let challenge = responses.message().await?.unwrap();
    let Some(attest_agent_response::Step::Challenge(nonce)) = challenge.step else {
        panic!("expected a challenge, got {challenge:?}");
    };

    let report = TdReportSpec {
        mr_td: [0x7d; 48],
        report_data: twid_evidence::binding::report_data(&nonce, &key.public_key_spki_der()),
        ..TdReportSpec::default()
    };
    let mut envelope =
        twid_evidence::Envelope::new(twid_evidence::Kind::Tdx, platform.tdx_quote(&report, 4));
    envelope.collateral = Some(platform.collateral_tdx().to_dcap_qvl_json().into_bytes());
    sender
        .send(AttestAgentRequest {
            step: Some(Step::ChallengeResponse(envelope.to_json())),
        })
        .await
        .unwrap();
    let response = responses.message().await?.unwrap();
    let Some(attest_agent_response::Step::Result(svid)) = response.step else {
        panic!("expected an SVID, got {response:?}");
    };
    let chain = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Ok(SvidSource::new(chain, PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_tcb_status_until_fresh_evidence() {
    use twid_evidence_testkit::dcap::{PlatformSpec, TestPlatform, Validity};

    let dir = TempDir::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let platform = TestPlatform::new(&PlatformSpec::default().with_collateral_validity(Validity {
        not_before: now - 3600,
        not_after: now + 86_400,
    }));
    let root = dir.path().join("tdx-root.pem");
    let root_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(platform.root_der())
    );
    std::fs::write(&root, root_pem).unwrap();
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut config = dir.dev_server_config(trust_domain);
    config
        .evidence_attestors
        .push(twid_config::EvidenceAttestorConfig {
            name: "tdx".to_owned(),
            kind: twid_evidence::Kind::Tdx,
            trusted_roots: vec![root],
            collateral_dir: None,
            vek_chain_path: None,
            pcs_url: None,
            kds_url: None,
            policy: twid_evidence::policy::Policy {
                allowed_measurements: vec![vec![0x7d; 48]],
                ..twid_evidence::policy::Policy::default()
            },
        });
    let server = twid_server::Server::start(config).await.unwrap();
    let port = server.node_api_address().port();
    let socket = server.admin_socket().to_str().unwrap().to_owned();

    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let svid = attest_tdx(port, &platform, &key, None).await.unwrap();
    let agent = svid.spiffe_id().unwrap().to_string();
    let uid_selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    let entry_output = twid_ok(
        [
            "entry",
            "create",
            "--spiffe-id",
            KEPT_ID,
            "--parent-id",
            &agent,
            "--selector",
            &uid_selector,
            "--output",
            "json",
            "--socket-path",
            &socket,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    let entry: Value = serde_json::from_str(&entry_output).unwrap();
    let entry_id = entry["id"].as_str().unwrap().to_owned();
    let mut client = node_client(port, Some(svid.clone()));
    let old_serial = sign(&mut client, &[&entry_id]).await[0]
        .clone()
        .expect("the entry is signed");

    let revoked: Value = serde_json::from_str(
        &twid_ok(
            [
                "revoke",
                "--tcb-status",
                "UpToDate",
                "--output",
                "json",
                "--socket-path",
                &socket,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    let revocation_id = revoked["revocation"]["id"].as_i64().unwrap();
    let created_at = revoked["revocation"]["created_at"].as_i64().unwrap();
    let serials = strings(&revoked["revoked_x509_serials"]);
    assert_eq!(
        serials.len(),
        2,
        "the agent SVID and the workload SVID: {revoked}"
    );
    assert!(serials.contains(&old_serial), "{revoked}");
    let status = client
        .sync(SyncRequest::default())
        .await
        .expect_err("the agent's revoked SVID was accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("revoked by revocation {revocation_id}")),
        "{status:?}"
    );

    // Attestation times are whole seconds, and one in the rule's second counts as not newer.
    wait_until(
        Duration::from_secs(3),
        "the second after the revocation",
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                > created_at
        },
    );
    // Fresh evidence that passes the policy admits the agent again under the same ID. The
    // agent presents its revoked SVID to prove that the ID is its own.
    let new_key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
    let new_svid = attest_tdx(port, &platform, &new_key, Some(svid))
        .await
        .expect("fresh evidence after the revocation is accepted");
    assert_eq!(new_svid.spiffe_id().unwrap().to_string(), agent);
    let mut client = node_client(port, Some(new_svid));
    let new_serial = sign(&mut client, &[&entry_id]).await[0]
        .clone()
        .expect("signing after fresh attestation");
    assert!(!serials.contains(&new_serial));
    let sync = twid_proto::collect_sync(
        client
            .sync(SyncRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let mut listed = sync.revoked_x509_serials.clone();
    listed.sort();
    assert_eq!(listed, serials, "Sync lists the agent's revoked SVIDs");
    server.shutdown().await;
}
