//! Manual CA rotation end to end with `twid localauthority`: a real server and agent, and a
//! workload (this test) on the Workload API. After prepare, activate and taint, the workload's
//! X.509-SVID is replaced by one from the new authority and its JWT-SVID by one signed with the
//! new key. After revoke, the old authority and key are gone from the bundles the Workload API
//! serves. A server restart in between keeps every state.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_proto::workload::{JwtBundlesRequest, JwtsvidRequest, X509svidRequest};
use twid_spiffe::x509::split_der_certificates;
use x509_parser::extensions::ParsedExtension;

use crate::common::*;

const WORKLOAD_ID: &str = "spiffe://example.org/localauthority/workload";
const AUDIENCE: &str = "localauthority-test";
const TIMEOUT: Duration = Duration::from_secs(30);

type WorkloadClient = SpiffeWorkloadApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn security_header(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    Ok(request)
}

async fn workload_client(agent: &AgentProcess) -> WorkloadClient {
    let path = agent.socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::with_interceptor(channel, security_header as _)
}

/// The workload's current X.509-SVID leaf and bundle, from the first message of a stream.
struct X509View {
    leaf_issuer: String,
    bundle_ids: Vec<String>,
}

async fn fetch_x509(client: &mut WorkloadClient) -> Option<X509View> {
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .ok()?
        .into_inner();
    let response = stream.message().await.ok()??;
    let svid = response.svids.first()?;
    let chain = split_der_certificates(&svid.x509_svid).ok()?;
    let bundle = split_der_certificates(&svid.bundle).ok()?;
    Some(X509View {
        leaf_issuer: authority_key_id(&chain[0]),
        bundle_ids: bundle.iter().map(|cert| subject_key_id(cert)).collect(),
    })
}

async fn fetch_jwt_kid(client: &mut WorkloadClient) -> Option<String> {
    let response = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![AUDIENCE.to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .ok()?
        .into_inner();
    let token = &response.svids.first()?.svid;
    let header = token.split('.').next()?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header["kid"].as_str().map(str::to_owned)
}

async fn fetch_jwt_bundle_kids(client: &mut WorkloadClient) -> Option<Vec<String>> {
    let mut stream = client
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .ok()?
        .into_inner();
    let response = stream.message().await.ok()??;
    let trust_domain_id = format!("spiffe://{TRUST_DOMAIN}");
    let jwks: Value = serde_json::from_slice(response.bundles.get(&trust_domain_id)?).ok()?;
    Some(
        jwks["keys"]
            .as_array()?
            .iter()
            .filter_map(|key| key["kid"].as_str().map(str::to_owned))
            .collect(),
    )
}

fn authority_key_id(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|id| hex::encode(id.0))
        .expect("the SVID has an authority key identifier")
}

fn subject_key_id(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(hex::encode(ski.0)),
            _ => None,
        })
        .expect("the CA certificate has a subject key identifier")
}

/// Calls `fetch` every 200 ms until it returns a value that `check` accepts, and returns it.
async fn poll<T>(
    client: &mut WorkloadClient,
    what: &str,
    mut fetch: impl AsyncFnMut(&mut WorkloadClient) -> Option<T>,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(value) = fetch(client).await
            && check(&value)
        {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {TIMEOUT:?} waiting for {what}");
}

/// Runs `twid localauthority <kind> show --output json`.
fn show(server: &ServerProcess, kind: &str) -> Value {
    let out = run_ok(&[
        "localauthority",
        kind,
        "show",
        "--socket-path",
        server.socket_arg(),
        "--output",
        "json",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// Returns the IDs of the authorities listed under `state` in `show` output.
fn ids(shown: &Value, state: &str) -> Vec<String> {
    shown[state]
        .as_array()
        .unwrap()
        .iter()
        .map(|authority| authority["authority_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs a step that must succeed and returns the authority ID it printed.
fn step(server: &ServerProcess, kind: &str, verb: &str, authority_id: Option<&str>) -> String {
    let mut args = vec!["localauthority", kind, verb];
    if let Some(id) = authority_id {
        args.extend(["--authority-id", id]);
    }
    args.extend(["--socket-path", server.socket_arg(), "--output", "json"]);
    let out = run_ok(&args);
    let json: Value = serde_json::from_str(&out).unwrap();
    json["authority_id"].as_str().unwrap().to_owned()
}

/// Runs a step that must fail and returns its standard error.
fn step_fails(server: &ServerProcess, kind: &str, verb: &str, authority_id: &str) -> String {
    let output = run(&[
        "localauthority",
        kind,
        verb,
        "--authority-id",
        authority_id,
        "--socket-path",
        server.socket_arg(),
    ]);
    assert!(
        !output.status.success(),
        "localauthority {kind} {verb} {authority_id} succeeded"
    );
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn taint_and_revoke_replace_svids() {
    let dir = TempDir::new();
    let mut server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(WORKLOAD_ID, &agent_id(&token), &[&selector]);
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(workload_client(&agent));

    // The first SVID and JWT-SVID come from the only authorities.
    let first = runtime.block_on(poll(
        &mut client,
        "the first X.509-SVID",
        async |client| fetch_x509(client).await,
        |_| true,
    ));
    let old_x509 = first.leaf_issuer.clone();
    assert_eq!(ids(&show(&server, "x509"), "active"), [old_x509.as_str()]);
    let old_jwt = runtime.block_on(poll(
        &mut client,
        "the first JWT-SVID",
        async |client| fetch_jwt_kid(client).await,
        |_| true,
    ));
    assert_eq!(ids(&show(&server, "jwt"), "active"), [old_jwt.as_str()]);

    // Prepare: published, not signing.
    let new_x509 = step(&server, "x509", "prepare", None);
    let new_jwt = step(&server, "jwt", "prepare", None);
    assert_eq!(ids(&show(&server, "x509"), "prepared"), [new_x509.as_str()]);
    let published = runtime.block_on(poll(
        &mut client,
        "the prepared X.509 authority in the workload's bundle",
        async |client| fetch_x509(client).await,
        |view| view.bundle_ids.contains(&new_x509),
    ));
    assert_eq!(published.leaf_issuer, old_x509);

    // Steps out of order are rejected, and the message names the next step.
    let error = step_fails(&server, "x509", "taint", &old_x509);
    assert!(
        error.contains("activate the prepared authority first, then taint the old one"),
        "{error}"
    );
    let error = step_fails(&server, "x509", "revoke", &old_x509);
    assert!(error.contains("is not tainted; taint it first"), "{error}");
    let error = step_fails(&server, "jwt", "activate", "no-such-key");
    assert!(error.contains("not found"), "{error}");

    // Activate, then taint the old authorities.
    assert_eq!(step(&server, "x509", "activate", Some(&new_x509)), new_x509);
    assert_eq!(step(&server, "jwt", "activate", Some(&new_jwt)), new_jwt);
    step(&server, "x509", "taint", Some(&old_x509));
    step(&server, "jwt", "taint", Some(&old_jwt));
    let shown = show(&server, "x509");
    assert_eq!(ids(&shown, "active"), [new_x509.as_str()]);
    assert_eq!(ids(&shown, "old"), [old_x509.as_str()]);
    assert_eq!(shown["old"][0]["tainted"], true);

    let replaced = runtime.block_on(poll(
        &mut client,
        "an X.509-SVID from the new authority",
        async |client| fetch_x509(client).await,
        |view| view.leaf_issuer == new_x509,
    ));
    assert!(
        replaced.bundle_ids.contains(&old_x509),
        "a tainted authority stays in the bundle until revoked"
    );
    runtime.block_on(poll(
        &mut client,
        "a JWT-SVID signed by the new key",
        async |client| fetch_jwt_kid(client).await,
        |kid| *kid == new_jwt,
    ));

    // A restart keeps the states and taint marks.
    server.stop();
    server.spawn();
    let shown = show(&server, "x509");
    assert_eq!(ids(&shown, "active"), [new_x509.as_str()]);
    assert_eq!(ids(&shown, "old"), [old_x509.as_str()]);
    assert_eq!(shown["old"][0]["tainted"], true);
    let shown = show(&server, "jwt");
    assert_eq!(ids(&shown, "active"), [new_jwt.as_str()]);
    assert_eq!(ids(&shown, "old"), [old_jwt.as_str()]);
    assert_eq!(shown["old"][0]["tainted"], true);

    // Revoke: the old authority and key leave every bundle.
    step(&server, "x509", "revoke", Some(&old_x509));
    step(&server, "jwt", "revoke", Some(&old_jwt));
    assert!(ids(&show(&server, "x509"), "old").is_empty());
    assert!(ids(&show(&server, "jwt"), "old").is_empty());
    let after = runtime.block_on(poll(
        &mut client,
        "a workload bundle without the revoked X.509 authority",
        async |client| fetch_x509(client).await,
        |view| !view.bundle_ids.contains(&old_x509),
    ));
    assert_eq!(after.leaf_issuer, new_x509);
    assert_eq!(after.bundle_ids, [new_x509.as_str()]);
    let kids = runtime.block_on(poll(
        &mut client,
        "a JWT bundle without the revoked key",
        async |client| fetch_jwt_bundle_kids(client).await,
        |kids| !kids.contains(&old_jwt),
    ));
    assert!(kids.contains(&new_jwt), "{kids:?}");

    // The agent renewed its own SVID from the new authority, so it still syncs: a new entry
    // reaches the workload after the revocation.
    server.create_entry(
        "spiffe://example.org/localauthority/second",
        &agent_id(&token),
        &[&selector],
    );
    runtime.block_on(poll(
        &mut client,
        "the second entry's SVID after the revocation",
        async |client: &mut WorkloadClient| {
            let mut stream = client
                .fetch_x509svid(X509svidRequest {})
                .await
                .ok()?
                .into_inner();
            Some(stream.message().await.ok()??.svids.len())
        },
        |count| *count == 2,
    ));
    assert!(
        agent
            .log()
            .contains("renewing the agent SVID because a tainted authority signed it"),
        "agent log:\n{}",
        agent.log()
    );
}

/// Returns the authority key identifier of every X.509-SVID the workload receives.
async fn fetch_all_issuers(client: &mut WorkloadClient) -> Option<Vec<String>> {
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .ok()?
        .into_inner();
    let response = stream.message().await.ok()??;
    response
        .svids
        .iter()
        .map(|svid| {
            let chain = split_der_certificates(&svid.x509_svid).ok()?;
            Some(authority_key_id(chain.first()?))
        })
        .collect()
}

#[test]
fn taint_replaces_every_svid_in_timed_batches() {
    const ENTRIES: usize = 25;
    const BATCH: usize = 10;
    const INTERVAL: Duration = Duration::from_secs(2);
    // The rounds after the first: ceil(25 / 10) - 1 = 2 pauses of INTERVAL.
    let batch_time = INTERVAL * u32::try_from(ENTRIES.div_ceil(BATCH) - 1).unwrap();
    // Allowance for the taint to reach the agent and for each round's signing call.
    let allowance = Duration::from_secs(3);

    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    for index in 0..ENTRIES {
        server.create_entry(
            &format!("spiffe://example.org/localauthority/batch/{index}"),
            &agent_id(&token),
            &[&selector],
        );
    }
    let agent = AgentProcess::start_with(
        dir.path(),
        &server,
        &token,
        &format!(
            "  experimental {{\n    taint_batch_size = {BATCH}\n    \
             taint_batch_interval = \"{}s\"\n  }}",
            INTERVAL.as_secs()
        ),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(workload_client(&agent));
    let first = runtime.block_on(poll(
        &mut client,
        "an X.509-SVID for every entry",
        async |client| fetch_all_issuers(client).await,
        |issuers| issuers.len() == ENTRIES,
    ));
    let old_x509 = first[0].clone();
    assert!(first.iter().all(|issuer| *issuer == old_x509));

    let new_x509 = step(&server, "x509", "prepare", None);
    step(&server, "x509", "activate", Some(&new_x509));
    let tainted_at = Instant::now();
    step(&server, "x509", "taint", Some(&old_x509));

    // Counts of replaced SVIDs in the workload's responses, sampled every 100 ms.
    let mut seen = Vec::new();
    let deadline = tainted_at + batch_time + allowance + Duration::from_secs(10);
    let replaced_all = loop {
        if let Some(issuers) = runtime.block_on(fetch_all_issuers(&mut client)) {
            let replaced = issuers.iter().filter(|issuer| **issuer == new_x509).count();
            if seen.last() != Some(&replaced) {
                seen.push(replaced);
            }
            if replaced == ENTRIES {
                break tainted_at.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every SVID was replaced; replaced counts seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        replaced_all <= batch_time + allowance,
        "replacing {ENTRIES} SVIDs took {replaced_all:?}, more than the batch time \
         {batch_time:?} plus {allowance:?}; replaced counts seen: {seen:?}"
    );
    // The agent replaced them in batches, not all at once.
    assert!(
        seen.iter().any(|count| (1..=BATCH).contains(count)),
        "no sample showed only the first batch replaced: {seen:?}"
    );
    assert!(
        replaced_all >= batch_time - Duration::from_millis(500),
        "all {ENTRIES} SVIDs were replaced after {replaced_all:?}, before the pauses between \
         batches could pass: {seen:?}"
    );
}
