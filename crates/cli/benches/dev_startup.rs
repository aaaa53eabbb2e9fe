//! Time from starting `twid dev` on a fresh data directory to the first X.509-SVID served.
//!
//! Each round spawns the built binary with a new data directory (so the CA, datastore and
//! agent identity are all created from nothing), then polls the Workload API socket until
//! FetchX509SVID returns an SVID for this process's uid. The clock starts just before the
//! spawn, so process start, key generation, migrations, attestation and the first sync all
//! count.
//!
//! Run with `cargo bench -p twid --bench dev_startup`. Results go to docs/benchmarks.md.

// The shared end-to-end harness panics on set-up failures, which is what a benchmark wants too.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt as _;
use twid_proto::workload::X509svidRequest;

#[allow(dead_code)]
#[path = "../src/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../tests/e2e/common.rs"]
mod common;

const ROUNDS: usize = 15;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let dir = common::TempDir::new();
        let data_dir = dir.path().join("dev");
        let socket = data_dir.join("agent.sock");
        let start = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_twid"))
            .arg("dev")
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut child = KillOnDrop(child);
        let served = runtime.block_on(wait_for_first_svid(&socket));
        let elapsed = start.elapsed();
        let _ = child.0.kill();
        let _ = child.0.wait();
        served?;
        samples.push(elapsed);
    }
    samples.sort();
    let millis = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!(
        "twid dev start to first SVID: n={} min={:.1} ms median={:.1} ms max={:.1} ms",
        samples.len(),
        millis(samples[0]),
        millis(samples[samples.len() / 2]),
        millis(samples[samples.len() - 1])
    );
    Ok(())
}

async fn wait_for_first_svid(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
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
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no SVID within 30 s of starting twid dev"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
