//! Revocation latency as a workload observes it: the time from starting
//! `twid revoke --selector unix:gid:<G>` to the `twid api watch x509` client of group G
//! printing an update without its SVIDs.
//!
//! Each run starts a real `twid server run` and `twid agent run` on a new data directory,
//! registers 1,000 entries in ten groups of 100 (each group selects `unix:uid:0` and its own
//! `unix:gid`), starts one watch client per group with that gid, waits until every client
//! holds its 100 SVIDs, and then revokes the ten groups one after the other. The agent's sync
//! interval is 10 minutes, so every revocation reaches it through the server's Watch hint.
//! Both clocks are the system clock of this machine, read by this process before the revoke
//! command starts and by the watch client when the update arrives.
//!
//! Run as root (the watch clients switch to their group's gid) with
//! `cargo bench -p twid --bench revoke`. `TWID_REVOKE_RUNS` sets the number of runs (default
//! 10, so 100 samples). `TWID_REVOKE_PAUSE_MS` sets a pause between one group's update and the
//! next revocation (default 0, so a revocation can arrive while the agent still syncs after the
//! previous one). Results go to docs/benchmarks.md.

// The shared end-to-end harness panics on set-up failures, which is what a benchmark wants too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

#[allow(dead_code)]
#[path = "../tests/e2e/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/e2e/revoke_agent.rs"]
mod revoke_agent;

use revoke_agent::{Fleet, GROUPS, group_gid, revoke_selector, unix_millis, wait_emptied};

/// Runs when `TWID_REVOKE_RUNS` is not set.
const DEFAULT_RUNS: usize = 10;

fn main() -> anyhow::Result<()> {
    if !common::is_root() {
        println!("not running as root, skipping: the watch clients need setgid to their group");
        return Ok(());
    }
    let runs = env_count("TWID_REVOKE_RUNS", DEFAULT_RUNS as u64)? as usize;
    let pause = Duration::from_millis(env_count("TWID_REVOKE_PAUSE_MS", 0)?);
    let mut samples_ms: Vec<u64> = Vec::with_capacity(runs * GROUPS as usize);
    for run in 1..=runs {
        let fleet = Fleet::start("INFO");
        let mut run_samples = Vec::with_capacity(GROUPS as usize);
        for group in 0..GROUPS {
            std::thread::sleep(pause);
            let before = unix_millis();
            revoke_selector(&fleet.server, &format!("unix:gid:{}", group_gid(group)));
            let emptied = wait_emptied(
                &fleet.clients[group as usize],
                before,
                Duration::from_secs(30),
            );
            run_samples.push(emptied.received_unix_ms.saturating_sub(before));
            check_others_unchanged(&fleet, group);
        }
        println!("run {run}/{runs}: latencies in ms {run_samples:?}");
        samples_ms.extend(run_samples);
    }
    report(&mut samples_ms);
    Ok(())
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

/// Checks that the groups not revoked yet still hold exactly their first serials.
fn check_others_unchanged(fleet: &Fleet, revoked_up_to: u32) {
    for group in revoked_up_to + 1..GROUPS {
        let latest = fleet.clients[group as usize].latest().unwrap();
        assert_eq!(
            latest.serials, fleet.initial[group as usize],
            "group {group} lost or changed SVIDs when group {revoked_up_to} was revoked"
        );
    }
}

fn report(samples_ms: &mut [u64]) {
    samples_ms.sort_unstable();
    let percentile = |p: f64| {
        let index = ((samples_ms.len() as f64 * p).ceil() as usize).saturating_sub(1);
        samples_ms[index.min(samples_ms.len() - 1)]
    };
    println!(
        "revoke to update without the group's SVIDs: n={} median={} ms p90={} ms p99={} ms \
         max={} ms",
        samples_ms.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
}
