//! Envoy SDS push fan-out and agent memory with 1,000 open StreamSecrets streams.
//!
//! Starts a real `twid server run` and `twid agent run` with a 40 s X.509-SVID lifetime, so the
//! agent renews the SVID about every 20 s. Opens 1,000 StreamSecrets streams, each on its own
//! connection and each requesting `default` and `ROOTCA`, ACKs every response, and measures:
//! - for each of two SVID rotations, the delay of every stream's push after the first stream
//!   received it (the rotation moment itself is not observable from outside the agent, so the
//!   first delivery is the reference), p50, p99 and max;
//! - the agent's resident set size before and while the streams are open.
//!
//! Run with `cargo bench -p twid --bench sds`. Results go to docs/benchmarks.md.

// The shared end-to-end harness panics on set-up failures, which is what a benchmark wants too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[allow(dead_code)]
#[path = "../tests/e2e/common.rs"]
mod common;

use common::{AgentProcess, ServerProcess, TempDir, agent_id};

const STREAMS: usize = 1_000;
const ROTATIONS: usize = 2;
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const NAMES: [&str; 2] = ["default", "ROOTCA"];

fn main() -> anyhow::Result<()> {
    raise_open_file_limit()?;
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "  default_x509_svid_ttl = \"40s\"");
    let token = server.generate_token();
    let selector = format!("unix:uid:{}", nix::unistd::geteuid().as_raw());
    server.create_entry(
        "spiffe://example.org/bench-sds",
        &agent_id(&token),
        &[&selector],
    );
    let agent = AgentProcess::start(dir.path(), &server, &token);
    let agent_pid = agent
        .child
        .as_ref()
        .map(std::process::Child::id)
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut probe = client(agent.socket.clone()).await?;
        probe.fetch_secrets(request()).await?;
        let baseline = rss_kib(agent_pid)?;

        let (arrivals, mut arrived) = mpsc::unbounded_channel();
        let (opened_tx, mut opened) = mpsc::channel(STREAMS);
        for _ in 0..STREAMS {
            let client = client(agent.socket.clone()).await?;
            let arrivals = arrivals.clone();
            let opened = opened_tx.clone();
            tokio::spawn(follow(client, opened, arrivals));
        }
        for _ in 0..STREAMS {
            opened.recv().await;
        }
        let held = rss_kib(agent_pid)?;
        println!("streams open: {STREAMS}");
        println!(
            "agent RSS: {} KiB before, {} KiB with the streams open ({:.1} KiB per stream)",
            baseline,
            held,
            f64::from(held.saturating_sub(baseline)) / STREAMS as f64
        );

        for rotation in 1..=ROTATIONS {
            let mut times = Vec::with_capacity(STREAMS);
            while times.len() < STREAMS {
                let Some((round, at)) = arrived.recv().await else {
                    anyhow::bail!("every stream ended");
                };
                if round == rotation {
                    times.push(at);
                }
            }
            let first = times.iter().min().copied().unwrap();
            let delays = times.iter().map(|at| *at - first).collect();
            report(&format!("push {rotation} to {STREAMS} streams"), delays);
        }
        Ok(())
    })
}

async fn client(path: PathBuf) -> anyhow::Result<SecretDiscoveryServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(SecretDiscoveryServiceClient::new(channel))
}

fn request() -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "bench".to_owned(),
            ..Node::default()
        }),
        resource_names: NAMES.iter().map(|name| (*name).to_owned()).collect(),
        type_url: SECRET_TYPE.to_owned(),
        ..DiscoveryRequest::default()
    }
}

fn ack(response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..request()
    }
}

/// Opens one stream, reports its first response on `opened`, then sends the arrival time of
/// every later push on `arrivals`, numbered from 1.
async fn follow(
    mut client: SecretDiscoveryServiceClient<Channel>,
    opened: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<(usize, Instant)>,
) {
    let (requests, receiver) = mpsc::channel(4);
    requests.send(request()).await.unwrap();
    let mut responses = client
        .stream_secrets(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let first = responses.next().await.unwrap().unwrap();
    requests.send(ack(&first)).await.unwrap();
    opened.send(()).await.unwrap();
    let mut round = 0;
    while let Some(Ok(response)) = responses.next().await {
        let at = Instant::now();
        round += 1;
        let _ = arrivals.send((round, at));
        if requests.send(ack(&response)).await.is_err() {
            break;
        }
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let percentile = |p: f64| {
        let index = ((samples.len() as f64 * p).ceil() as usize).saturating_sub(1);
        samples[index.min(samples.len() - 1)].as_secs_f64() * 1_000.0
    };
    println!(
        "{label}: n={} delay after first delivery p50={:.3} ms p99={:.3} ms max={:.3} ms",
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
