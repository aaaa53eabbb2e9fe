//! Agent failover between two `twid server run` replicas on one PostgreSQL database. The agent
//! lists both replicas in `experimental { server_addresses }`, attests to A (the first), and
//! serves a workload that streams FetchX509SVID. A dies with SIGKILL. The workload's SVID must
//! stay valid at every 100 ms sample while the agent moves to B. Then an entry created through
//! B must reach the workload, and the agent must renew its own SVID through B.
//!
//! Both replicas share the CA key directory, as in `replicas.rs`, so that B accepts the agent
//! SVID that A signed. SVIDs live 20 s, so within the test the agent must renew both the
//! workload's SVID and its own through B.
//!
//! The PostgreSQL requirements and the skip rule are those of `issuance_log_postgres.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_stream::StreamExt as _;
use twid_proto::workload::X509svidRequest;
use twid_proto::workload::X509svidResponse;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_spiffe::x509::split_der_certificates;

use crate::common::*;
use crate::replicas::uid_selector;

/// Lifetime of workload and agent SVIDs. The agent renews both at half-life, so a failover
/// that stalls for longer than that lets the workload's SVID expire.
const SVID_TTL: &str = "20s";

/// How long the test samples the workload's SVID after killing A: longer than one SVID
/// lifetime, so that every SVID that A signed has expired by the end.
const SAMPLE_AFTER_KILL: Duration = Duration::from_secs(30);

/// Functional bound for the entry created through B to reach the workload.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(20);

const FIRST_ID: &str = "spiffe://example.org/failover/first";
const SECOND_ID: &str = "spiffe://example.org/failover/created-on-b";

/// The SVIDs of the latest FetchX509SVID message: SPIFFE IDs and the earliest `not_after`.
#[derive(Debug, Clone, Default)]
struct Latest {
    spiffe_ids: Vec<String>,
    /// The earliest leaf expiry of the message, in Unix seconds.
    not_after: i64,
    serials: Vec<String>,
}

fn unix_now() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(elapsed.as_secs()).unwrap()
}

fn start_server(dir: &Path, database_url: &str, keys: &Path) -> ServerProcess {
    // The server renews its own SVID, whose lifetime is default_x509_svid_ttl, only on a tick of
    // ca_ttl / 120 (at most 30 s). With a 20 s TTL, ca_ttl = 10m makes that tick 5 s.
    let extra = format!(
        "  ca_ttl = \"10m\"\n  default_x509_svid_ttl = \"{SVID_TTL}\"\n  \
         agent_ttl = \"{SVID_TTL}\""
    );
    let blocks = format!(
        "plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
         database_type = \"postgres\"\n      connection_string = \"{database_url}\"\n    }}\n  \
         }}\n  KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{keys}\"\n    \
         }}\n  }}\n}}\n",
        keys = keys.display(),
    );
    ServerProcess::start_with_blocks(dir, &extra, &blocks)
}

/// Starts an agent that lists `servers` as its server addresses and attests with a join token
/// from `first`, whose bundle it trusts on first contact. Returns it with its SPIFFE ID.
fn start_agent(
    dir: &Path,
    first: &ServerProcess,
    servers: &[&ServerProcess],
) -> (AgentProcess, String) {
    let token = first.generate_token();
    let socket = dir.join("agent.sock");
    let bundle = dir.join("bootstrap.pem");
    first.write_bundle(&bundle);

    let addresses: Vec<String> = servers
        .iter()
        .map(|server| format!("\"127.0.0.1:{}\"", server.port))
        .collect();
    let config = dir.join("agent.conf");
    let text = format!(
        "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  socket_path = \"{socket}\"\n  \
         data_dir = \"{data}\"\n  trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  \
         log_level = \"DEBUG\"\n  experimental {{\n    sync_interval = \"2s\"\n    \
         server_addresses = [{addresses}]\n  }}\n}}\n\
         plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{}}\n  }}\n}}\n",
        socket = socket.display(),
        data = dir.join("agent-data").display(),
        bundle = bundle.display(),
        addresses = addresses.join(", "),
    );
    std::fs::write(&config, text).unwrap();

    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = twid()
        .args(["agent", "run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent should start");
    let mut agent = AgentProcess {
        child: Some(child),
        socket: socket.clone(),
        dir: dir.to_path_buf(),
    };
    wait_until(Duration::from_secs(30), "the agent's socket", || {
        let exited = agent
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "the agent exited ({exited:?}); log:\n{}",
            agent.log()
        );
        socket.exists()
    });
    (agent, agent_id(&token))
}

/// Reads the SPIFFE IDs, serials and earliest expiry of one FetchX509SVID message.
fn latest_of(response: &X509svidResponse) -> Latest {
    let mut latest = Latest {
        not_after: i64::MAX,
        ..Latest::default()
    };
    for svid in &response.svids {
        let chain = split_der_certificates(&svid.x509_svid).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        latest.not_after = latest.not_after.min(leaf.validity().not_after.timestamp());
        latest.serials.push(leaf.raw_serial_as_string());
        latest.spiffe_ids.push(svid.spiffe_id.clone());
    }
    latest
}

/// Streams FetchX509SVID from the agent at `socket` and stores every message in `latest`,
/// until the stream fails, which fails the test at its next sample.
async fn stream_svids(socket: std::path::PathBuf, latest: Arc<Mutex<Option<Latest>>>) {
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut client =
        SpiffeWorkloadApiClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            Ok(request)
        });
    // The entry was created a moment ago, so the agent may not have it yet: until it does,
    // the open fails with PermissionDenied.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match client.fetch_x509svid(X509svidRequest {}).await {
            Ok(response) => break response.into_inner(),
            Err(status)
                if status.code() == tonic::Code::PermissionDenied && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("FetchX509SVID should open: {status:?}"),
        }
    };
    while let Some(message) = stream.next().await {
        match message {
            Ok(response) => *latest.lock().unwrap() = Some(latest_of(&response)),
            Err(status) => {
                eprintln!("the FetchX509SVID stream failed: {status:?}");
                *latest.lock().unwrap() = None;
                return;
            }
        }
    }
    eprintln!("the agent ended the FetchX509SVID stream");
    *latest.lock().unwrap() = None;
}

/// Checks every 100 ms, for `duration` or until `done` returns true, that the workload has an
/// SVID that has not expired. Returns whether `done` turned true.
fn sample_until(
    latest: &Mutex<Option<Latest>>,
    duration: Duration,
    agent: &AgentProcess,
    mut done: impl FnMut(&Latest) -> bool,
) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let current = latest.lock().unwrap().clone();
        let Some(current) = current else {
            panic!(
                "the workload has no SVID (stream failed or ended); agent log:\n{}",
                agent.log()
            );
        };
        let now = unix_now();
        assert!(
            current.not_after > now,
            "the workload's SVID expired at {} (now {now}): {current:?}; agent log:\n{}",
            current.not_after,
            agent.log()
        );
        if done(&current) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn agent_fails_over_without_svid_gap() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let dir_a = TempDir::new();
    let dir_b = TempDir::new();
    let dir_agent = TempDir::new();
    let keys = dir_a.path().join("shared-keys");
    let mut a = start_server(dir_a.path(), &database.url(), &keys);
    let b = start_server(dir_b.path(), &database.url(), &keys);

    let (agent, agent_id) = start_agent(dir_agent.path(), &a, &[&a, &b]);
    let selector = uid_selector();
    a.create_entry(FIRST_ID, &agent_id, &[&selector]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let latest = Arc::new(Mutex::new(None));
    let _stream = runtime.spawn(stream_svids(agent.socket.clone(), Arc::clone(&latest)));
    wait_until(
        Duration::from_secs(30),
        "the workload's first X.509-SVID",
        || latest.lock().unwrap().is_some(),
    );
    let before_kill = latest.lock().unwrap().clone().unwrap();
    assert_eq!(before_kill.spiffe_ids, [FIRST_ID]);
    let log = agent.log();
    assert!(
        !log.contains("switching to the next server address"),
        "the agent switched servers before A was killed; log:\n{log}"
    );

    a.kill9();
    let killed_at = Instant::now();
    sample_until(&latest, Duration::from_secs(5), &agent, |_| false);
    b.create_entry(SECOND_ID, &agent_id, &[&selector]);
    let arrived = sample_until(&latest, ENTRY_TIMEOUT, &agent, |current| {
        current.spiffe_ids.iter().any(|id| id == SECOND_ID)
    });
    assert!(
        arrived,
        "the entry created through B did not reach the workload within {ENTRY_TIMEOUT:?}; \
         agent log:\n{}",
        agent.log()
    );
    let remaining = SAMPLE_AFTER_KILL.saturating_sub(killed_at.elapsed());
    sample_until(&latest, remaining, &agent, |_| false);

    let after = latest.lock().unwrap().clone().unwrap();
    assert!(
        !after.serials.contains(&before_kill.serials[0]),
        "the workload still holds the SVID that A signed: {after:?}"
    );
    let log = agent.log();
    let switched = log
        .find("switching to the next server address")
        .unwrap_or_else(|| panic!("the agent logged no switch of servers; log:\n{log}"));
    let switch_line = log[switched..].lines().next().unwrap();
    println!("{switch_line}");
    assert!(
        switch_line.contains(&format!("server=127.0.0.1:{}", b.port)),
        "the agent did not switch to B: {switch_line}"
    );
    assert!(
        log[switched..].contains("agent SVID renewed"),
        "the agent did not renew its own SVID through B; log:\n{log}"
    );
    let server_log = b.log();
    assert!(
        server_log.contains("agent SVID renewed"),
        "replica B logged no agent SVID renewal; log:\n{server_log}"
    );
}
