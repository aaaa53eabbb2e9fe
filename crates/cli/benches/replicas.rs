//! Propagation latency between server replicas as a workload observes it: the time from
//! starting `twid entry create` against replica A to the `twid api watch x509` client of an
//! agent attached to replica B printing an update with the new entry's SVID.
//!
//! Two `twid server run` processes share a fresh PostgreSQL database, each with its own CA
//! key directory (see `tests/e2e/replicas.rs`). One agent attests to B with a 10-minute sync
//! interval, so every new SVID reaches it through B's Watch hint, which B sends on A's
//! PostgreSQL notification. A warm-up entry gives the client its first SVID, and each trial
//! creates one more entry that selects this process's uid, so after trial `n` the client has
//! `n + 1` SVIDs. The time includes starting the `twid` command line, the admin API call, the
//! notification, the agent's sync and signing, and the Workload API update. Both clocks are the system clock of this machine. The agent logs at debug level.
//!
//! Run with `cargo bench -p twid --bench replicas` while PostgreSQL listens on 127.0.0.1:5432
//! (user postgres, trust authentication). `TWID_REPLICA_TRIALS` sets the number of trials
//! (default 100).

// The shared end-to-end harness panics on set-up failures, which is what a benchmark wants too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

#[allow(dead_code)]
#[path = "../tests/e2e/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/e2e/replicas.rs"]
mod replicas;
#[allow(dead_code)]
#[path = "../tests/e2e/revoke_agent.rs"]
mod revoke_agent;

use replicas::{Replicas, uid_selector};
use revoke_agent::{WatchClient, unix_millis};

/// Trials when `TWID_REPLICA_TRIALS` is not set.
const DEFAULT_TRIALS: u64 = 100;

/// Maximum wait for one trial's update; a trial that takes longer fails the run.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let trials = env_count("TWID_REPLICA_TRIALS", DEFAULT_TRIALS)?;
    let Some(replicas) = Replicas::start() else {
        return Ok(());
    };
    let (agent, agent_id) = replicas.start_agent_on_b();
    let client = WatchClient::start(&agent.socket, None);
    let selector = uid_selector();
    // The client has one SVID before the first trial. Without an identity its stream ends
    // with PermissionDenied and reopens only after a delay of 0.5 s or more, which the first
    // trial would measure.
    replicas.a.create_entry(
        "spiffe://example.org/bench/warm-up",
        &agent_id,
        &[&selector],
    );
    wait_for_svids(&client, 0, 1);
    let mut samples_ms = Vec::with_capacity(usize::try_from(trials)?);
    for trial in 1..=trials {
        let before = unix_millis();
        replicas.a.create_entry(
            &format!("spiffe://example.org/bench/replica-{trial}"),
            &agent_id,
            &[&selector],
        );
        let received = wait_for_svids(&client, before, usize::try_from(trial)? + 1);
        samples_ms.push(received.saturating_sub(before));
    }
    println!("latencies in ms, in trial order: {samples_ms:?}");
    report(&mut samples_ms);
    Ok(())
}

/// Waits until `client` prints an update with `count` SVIDs, received at or after `since_ms`,
/// and returns when it was received, in Unix milliseconds.
fn wait_for_svids(client: &WatchClient, since_ms: u64, count: usize) -> u64 {
    let deadline = std::time::Instant::now() + TRIAL_TIMEOUT;
    loop {
        let found = client
            .updates()
            .into_iter()
            .find(|update| update.received_unix_ms >= since_ms && update.serials.len() == count);
        if let Some(update) = found {
            return update.received_unix_ms;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no update with {count} SVIDs within {TRIAL_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads a whole number from the environment variable `name`, or returns `default` when it is
/// not set.
fn env_count(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().map_err(|error| {
            anyhow::anyhow!("invalid {name} {text:?}: {error}; expected a whole number")
        }),
        Err(_) => Ok(default),
    }
}

fn report(samples_ms: &mut [u64]) {
    samples_ms.sort_unstable();
    let percentile = |p: f64| {
        let index = ((samples_ms.len() as f64 * p).ceil() as usize).saturating_sub(1);
        samples_ms[index.min(samples_ms.len() - 1)]
    };
    println!(
        "entry on replica A to SVID through replica B's agent: n={} median={} ms p90={} ms \
         p99={} ms max={} ms",
        samples_ms.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
}
