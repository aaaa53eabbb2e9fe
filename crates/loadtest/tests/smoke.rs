//! Runs `twid-load` at a small size against real servers: one on SQLite, and two replicas on
//! PostgreSQL (skipped when nothing listens on 127.0.0.1:5432).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Each run must finish within this time.
const RUN_LIMIT: Duration = Duration::from_secs(60);

const AGENTS: u64 = 20;
const ENTRIES: u64 = 200;
const TRIALS: u64 = 5;

/// Returns the `twid-load` binary and the `twid` binary from the same target directory.
fn binaries() -> (PathBuf, PathBuf) {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_twid-load"));
    let twid = load.parent().unwrap().join("twid");
    assert!(
        twid.is_file(),
        "the twid binary is missing at {}; build it first in the same profile with \
         `cargo build -p twid` (`cargo build --workspace --all-targets` builds it too)",
        twid.display()
    );
    (load, twid)
}

/// Runs the tool with the smoke-test sizes plus `extra` and returns its JSON report.
fn run_tool(name: &str, extra: &[&str]) -> Value {
    let (load, twid) = binaries();
    let json = std::env::temp_dir().join(format!("twid-load-{name}-{}.json", std::process::id()));
    let started = Instant::now();
    let output = Command::new(&load)
        .arg("--twid")
        .arg(&twid)
        .args(["--agents", &AGENTS.to_string()])
        .args(["--entries", &ENTRIES.to_string()])
        .args(["--trials", &TRIALS.to_string()])
        .args(["--steady-secs", "2"])
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "twid-load failed with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        elapsed < RUN_LIMIT,
        "twid-load took {elapsed:?}, more than {RUN_LIMIT:?}"
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).unwrap()
}

fn check_report(report: &Value) {
    let text = serde_json::to_string_pretty(report).unwrap();
    assert_eq!(report["agents_synced"], AGENTS, "{text}");
    assert_eq!(report["agents_complete"], AGENTS, "{text}");
    assert_eq!(report["agent_failures"], 0, "{text}");
    assert_eq!(report["svids_signed"], ENTRIES, "{text}");
    assert_eq!(
        report["propagation"]["created_propagated"], TRIALS,
        "{text}"
    );
    assert_eq!(
        report["propagation"]["deleted_propagated"], TRIALS,
        "{text}"
    );
    assert_eq!(report["digest_mismatches"], 0, "{text}");
    assert_eq!(report["sync_errors"], 0, "{text}");
}

#[test]
fn smoke_sqlite() {
    let report = run_tool("sqlite", &["--backend", "sqlite"]);
    check_report(&report);
}

#[test]
fn smoke_postgres_replicas() {
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        eprintln!("skipping: nothing listens on 127.0.0.1:5432");
        return;
    }
    let report = run_tool("postgres", &["--backend", "postgres", "--replicas", "2"]);
    check_report(&report);
    assert_eq!(report["replicas"], 2);
    assert_eq!(report["propagation"]["via_other_replica"], 2);
}
