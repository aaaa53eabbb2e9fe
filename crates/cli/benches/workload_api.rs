//! Workload API latency and memory on a warm agent with 1,000 registered workloads.
//!
//! Starts a real `twid server run` and `twid agent run` (separate processes, so the agent's
//! resident memory is its own), registers 1,000 entries under the agent (one for this process's
//! uid, the rest for other uids), and measures:
//! - the time from opening a FetchX509SVID stream to its first response, p50 and p99, both on a
//!   fresh connection per call (as a short-lived workload does) and on one reused connection;
//! - the agent's resident set size while 1,000 FetchX509SVID streams, each on its own
//!   connection, stay open.
//!
//! Run with `cargo bench -p twid --bench workload_api`. Results go to docs/benchmarks.md.

// The shared end-to-end harness panics on set-up failures, which is what a benchmark wants too.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt as _;
use twid_proto::admin::CreateEntryRequest;
use twid_proto::types::{Entry, Selector};
use twid_proto::workload::X509svidRequest;

#[allow(dead_code)]
#[path = "../src/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../tests/e2e/common.rs"]
mod common;

use common::{AgentProcess, ServerProcess, TRUST_DOMAIN, TempDir, agent_id};

const WORKLOADS: u32 = 1_000;
const LATENCY_SAMPLES: usize = 2_000;
const STREAMS: usize = 1_000;

fn main() -> anyhow::Result<()> {
    raise_open_file_limit()?;
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(register_workloads(&server.socket, &agent_id(&token)))?;
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let agent_pid = agent
        .child
        .as_ref()
        .map(std::process::Child::id)
        .unwrap_or_default();

    runtime.block_on(async {
        wait_for_svid(&agent.socket).await?;
        // Let the agent finish signing the SVIDs of all entries before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let fresh = first_response_latencies(&agent.socket, true).await?;
        let reused = first_response_latencies(&agent.socket, false).await?;
        println!("workloads registered: {WORKLOADS}");
        report(
            "FetchX509SVID first response, new connection per call",
            fresh,
        );
        report(
            "FetchX509SVID first response, one reused connection",
            reused,
        );

        let baseline = rss_kib(agent_pid)?;
        let streams = open_streams(&agent.socket).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = rss_kib(agent_pid)?;
        println!(
            "agent RSS: {:.1} MiB idle, {:.1} MiB with {} open FetchX509SVID streams",
            f64::from(baseline) / 1024.0,
            f64::from(held) / 1024.0,
            streams.len()
        );
        drop(streams);
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Creates one entry for this process's uid and `WORKLOADS - 1` for unused uids.
async fn register_workloads(admin_socket: &Path, parent_id: &str) -> anyhow::Result<()> {
    let mut admin = client::admin(admin_socket).await?;
    let own_uid = nix::unistd::getuid().as_raw();
    for index in 0..WORKLOADS {
        let uid = if index == 0 { own_uid } else { 200_000 + index };
        let entry = Entry {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/workload/{index}"),
            parent_id: parent_id.to_owned(),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            ..Entry::default()
        };
        admin
            .create_entry(CreateEntryRequest { entry: Some(entry) })
            .await?;
    }
    Ok(())
}

async fn wait_for_svid(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut client = client::workload(socket).await?;
            let mut stream = client
                .fetch_x509svid(X509svidRequest {})
                .await?
                .into_inner();
            let first = stream.next().await.transpose()?;
            anyhow::Ok(first.is_some_and(|response| !response.svids.is_empty()))
        };
        if attempt.await.unwrap_or(false) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent served no SVID within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn first_response_latencies(socket: &Path, fresh: bool) -> anyhow::Result<Vec<Duration>> {
    let reused = client::workload(socket).await?;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for round in 0..LATENCY_SAMPLES + 100 {
        let start = Instant::now();
        let mut client = if fresh {
            client::workload(socket).await?
        } else {
            reused.clone()
        };
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await?
            .into_inner();
        let response = stream.next().await.transpose()?;
        let elapsed = start.elapsed();
        anyhow::ensure!(
            response.is_some_and(|response| response.svids.len() == 1),
            "expected exactly one SVID for this uid"
        );
        // The first 100 rounds warm up connections and caches.
        if round >= 100 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Opens `STREAMS` FetchX509SVID streams, each on its own connection, and reads their first
/// response.
async fn open_streams(
    socket: &Path,
) -> anyhow::Result<Vec<tonic::Streaming<twid_proto::workload::X509svidResponse>>> {
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut client = client::workload(socket).await?;
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await?
            .into_inner();
        stream.next().await.transpose()?;
        streams.push(stream);
    }
    Ok(streams)
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let percentile = |p: f64| {
        let index = ((samples.len() as f64 * p).ceil() as usize).saturating_sub(1);
        samples[index.min(samples.len() - 1)].as_secs_f64() * 1_000.0
    };
    println!(
        "{label}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        percentile(0.50),
        percentile(0.99),
        percentile(1.0)
    );
}

/// Returns the resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> anyhow::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS line for pid {pid}"))?;
    let kib = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(kib)
}

/// Raises the open-file limit to the hard limit, because each open stream keeps a socket open
/// in this process and 1,000 streams need more than the usual soft limit of 1,024.
fn raise_open_file_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}
