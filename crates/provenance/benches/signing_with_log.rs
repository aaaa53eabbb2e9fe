//! The cost of logging per X.509-SVID. 64 tasks sign SVIDs concurrently, as agents' requests
//! do on the server. In sign-only mode they only sign. In a log mode each signature is
//! followed by the append of its issuance record, which the server awaits before it returns
//! the SVID.
//!
//! The signers run for the whole benchmark and switch modes on a shared flag (see [`Load`]).
//! A round runs a slot of each log mode, each followed by a sign-only slot, and a log's cost
//! in its slot is one minus its rate over the mean of the sign-only slots on either side.
//! The result is the median over the rounds. Slots last [`SLOT`], so that the signing rate,
//! which drifts by several percent within seconds on a 2-vCPU virtual machine, changes
//! little between a log slot and its neighbours. An earlier version ran a phase of four
//! seconds per mode with a new set of signers each. On one machine its median costs for one
//! build ranged over 3.6 points between runs, and this version's over 2.7.
//!
//! Signing is the server path: parse and check the CSR, then sign the certificate with an
//! ECDSA P-256 CA key. The record has the fields the server fills in: serial, SPIFFE ID, entry
//! ID, agent ID, two selectors and the key fingerprint. Checkpoints are signed with ECDSA
//! P-256 every 1000 records, as the server does.
//!
//! The SQLite case uses a file in the temporary directory, so its result depends on how fast
//! that file system syncs. The PostgreSQL case connects to
//! `postgres://postgres@127.0.0.1:5432`, or to the server that `TWID_BENCH_POSTGRES_URL`
//! names (a URL without a database, such as `postgres://postgres@127.0.0.1:5433`), creates a
//! database for the run and drops it after, and is skipped with a message when the connection
//! fails. A server of its own lets PostgreSQL run on cores the benchmark does not use, as it
//! would on a database host.
//!
//! Run with `cargo bench -p twid-provenance --bench signing_with_log`.
//! `TWID_BENCH_CALLERS=N` runs N tasks instead of 64. With many tasks the
//! batches grow large, so the result shows the CPU cost of the log more than the commit
//! latency. `TWID_BENCH_BATCH_INTERVAL_US=N` sets the appender's batch interval in
//! microseconds instead of the default, and `TWID_BENCH_ROUNDS=N` runs N rounds instead of
//! [`DEFAULT_ROUNDS`]. `TWID_BENCH_SLOT_MS` and `TWID_BENCH_SETTLE_MS` set the length of a
//! slot and of its uncounted start, in milliseconds.
//!
//! `TWID_BENCH_HOLD=sign,sqlite,postgres` (any of the three, in any order) replaces the rounds
//! with one steady run of [`HOLD`] per listed mode. Each run prints the rate and, per thread
//! name, the CPU time per SVID and the context switches per second, read from
//! `/proc/self/task/*/schedstat` and `status` (Linux only). Per-thread CPU time drifts less
//! than the rate between runs, and it shows what the appender's thread costs.

// A benchmark setup failure should abort the run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use twid_ca::{
    CaSubject, KeyType, PrivateKey, X509Authority, X509SvidRequest, build_csr, parse_csr,
};
use twid_datastore::{DatabaseType, Datastore, DatastoreConfig};
use twid_provenance::{IssuanceLog, LogOptions, NewRecord, SigningKey, key_fingerprint};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::Selector;

/// Concurrent signers, unless `TWID_BENCH_CALLERS` sets another number.
const DEFAULT_CALLERS: u32 = 64;
/// Number of rounds, unless `TWID_BENCH_ROUNDS` sets another number.
const DEFAULT_ROUNDS: u32 = 20;
/// Time that the signers run before the first round.
const WARM_UP: Duration = Duration::from_secs(1);
/// Length of one mode's slot, unless `TWID_BENCH_SLOT_MS` sets another.
const SLOT: Duration = Duration::from_millis(500);
/// Start of a slot that its count leaves out, unless `TWID_BENCH_SETTLE_MS` sets another.
const SETTLE: Duration = Duration::from_millis(150);
/// Length of a steady run of one mode, after [`SETTLE`], under `TWID_BENCH_HOLD`.
const HOLD: Duration = Duration::from_secs(8);
const HOUR: Duration = Duration::from_secs(3600);
/// PostgreSQL server, unless `TWID_BENCH_POSTGRES_URL` names another.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// Name of a run's PostgreSQL database, before the run's process ID.
const DATABASE_PREFIX: &str = "twid_bench_signing_";

/// The CA, the CSR and the IDs that every caller shares.
struct Signer {
    ca: X509Authority,
    csr: Vec<u8>,
    spiffe_id: SpiffeId,
    agent_id: SpiffeId,
}

impl Signer {
    fn new() -> Self {
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let ca = X509Authority::self_signed(
            &trust_domain,
            key,
            &CaSubject::default(),
            SystemTime::now(),
            24 * HOUR,
            None,
        )
        .unwrap();
        let csr = build_csr(&PrivateKey::generate(KeyType::EcP256).unwrap()).unwrap();
        Self {
            ca,
            csr,
            spiffe_id: SpiffeId::new("spiffe://example.org/workload/bench").unwrap(),
            agent_id: SpiffeId::new("spiffe://example.org/spire/agent/join_token/bench").unwrap(),
        }
    }

    /// Signs one SVID as the server does and returns its issuance record.
    fn sign(&self) -> NewRecord {
        let info = parse_csr(&self.csr).unwrap();
        let cert = self
            .ca
            .sign_x509_svid(&X509SvidRequest {
                spiffe_id: &self.spiffe_id,
                public_key_spki_der: &info.public_key_spki_der,
                ttl: HOUR,
                dns_names: &[],
                now: SystemTime::now(),
            })
            .unwrap();
        // The server reads the serial back from the signed certificate the same way.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let serial = hex::encode(parsed.raw_serial());
        let mut record = NewRecord::x509(serial, self.spiffe_id.clone());
        record.entry_id = Some("3f2c7d1e-0000-4000-8000-000000000000".into());
        record.agent_id = Some(self.agent_id.clone());
        record.selectors = vec![
            Selector::new("unix", "uid:1000"),
            Selector::new("unix", "gid:1000"),
        ];
        record.key_fingerprint = Some(key_fingerprint(&info.public_key_spki_der));
        record
    }
}

/// Returns the positive integer in the environment variable `name`, or `default` when it is
/// not set.
fn positive_setting(name: &str, default: u32) -> u32 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    match text.parse() {
        Ok(value) if value > 0 => value,
        _ => panic!("{name}={text:?} is invalid; set a positive integer"),
    }
}

/// Returns the number of concurrent signers: `TWID_BENCH_CALLERS`, or [`DEFAULT_CALLERS`].
fn callers() -> u64 {
    u64::from(positive_setting("TWID_BENCH_CALLERS", DEFAULT_CALLERS))
}

/// The length of a slot and of the start that its count leaves out.
#[derive(Debug, Clone, Copy)]
struct SlotTiming {
    slot: Duration,
    settle: Duration,
}

/// Returns the slot timing: `TWID_BENCH_SLOT_MS` and `TWID_BENCH_SETTLE_MS` in milliseconds,
/// or [`SLOT`] and [`SETTLE`].
fn slot_timing() -> SlotTiming {
    let millis = |name, default: Duration| {
        let default = u32::try_from(default.as_millis()).unwrap();
        Duration::from_millis(u64::from(positive_setting(name, default)))
    };
    let timing = SlotTiming {
        slot: millis("TWID_BENCH_SLOT_MS", SLOT),
        settle: millis("TWID_BENCH_SETTLE_MS", SETTLE),
    };
    assert!(
        timing.settle < timing.slot,
        "TWID_BENCH_SETTLE_MS must be shorter than TWID_BENCH_SLOT_MS"
    );
    timing
}

/// Returns the appender's batch interval: `TWID_BENCH_BATCH_INTERVAL_US` in microseconds, or
/// the default.
fn batch_interval() -> Duration {
    let Ok(text) = std::env::var("TWID_BENCH_BATCH_INTERVAL_US") else {
        return LogOptions::default().batch_interval;
    };
    match text.parse() {
        Ok(micros) if micros <= 1_000_000 => Duration::from_micros(micros),
        _ => panic!(
            "TWID_BENCH_BATCH_INTERVAL_US={text:?} is invalid; set microseconds up to 1000000"
        ),
    }
}

/// The mode in which the signers only sign: a value that is no log's index.
const SIGN_ONLY: usize = usize::MAX;

/// A mode that `TWID_BENCH_HOLD` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldMode {
    SignOnly,
    Sqlite,
    Postgres,
}

/// Returns the modes listed in `TWID_BENCH_HOLD`, or `None` when it is not set.
fn hold_modes() -> Option<Vec<HoldMode>> {
    let text = std::env::var("TWID_BENCH_HOLD").ok()?;
    let modes = text
        .split(',')
        .map(|name| match name.trim() {
            "sign" => HoldMode::SignOnly,
            "sqlite" => HoldMode::Sqlite,
            "postgres" => HoldMode::Postgres,
            other => panic!(
                "TWID_BENCH_HOLD={text:?} contains the invalid mode {other:?}. List sign, \
                 sqlite or postgres, separated by commas"
            ),
        })
        .collect();
    Some(modes)
}

/// CPU time and context switches of the threads that share a name.
#[derive(Debug, Default, Clone, Copy)]
struct ThreadTimes {
    threads: u32,
    cpu_ns: u64,
    voluntary_switches: u64,
    involuntary_switches: u64,
}

/// Reads the CPU time and context switches of every thread of this process, summed by
/// thread name.
fn thread_times() -> std::collections::BTreeMap<String, ThreadTimes> {
    let mut times = std::collections::BTreeMap::<String, ThreadTimes>::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let name = read("comm").trim().to_owned();
        // A thread that ended after the listing has no files left, so it is skipped.
        if name.is_empty() {
            continue;
        }
        // schedstat starts with the time spent on the CPU, in nanoseconds.
        let cpu_ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let status = read("status");
        let status_field = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        let sum = times.entry(name).or_default();
        sum.threads += 1;
        sum.cpu_ns += cpu_ns;
        sum.voluntary_switches += status_field("voluntary_ctxt_switches:");
        sum.involuntary_switches += status_field("nonvoluntary_ctxt_switches:");
    }
    times
}

/// Signers that run for the whole benchmark and switch between modes on a shared flag, so
/// that the modes alternate in slots of [`SLOT`] without restarting the load. A slot counts
/// the SVIDs completed after its first [`SETTLE`], once records appended under the previous
/// mode have committed and the appender's batches have reached their steady size.
struct Load {
    /// SVIDs signed, and logged in a log mode, since the start.
    done: Arc<AtomicU64>,
    /// [`SIGN_ONLY`], or the index of the log in use.
    mode: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    /// Starts `callers` tasks on `runtime` that sign in a loop, in sign-only mode.
    fn start(
        runtime: &tokio::runtime::Runtime,
        signer: &Arc<Signer>,
        logs: &[IssuanceLog],
        callers: u64,
    ) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(AtomicUsize::new(SIGN_ONLY));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let signer = Arc::clone(signer);
            let logs = logs.to_vec();
            let (done, mode, stop) = (Arc::clone(&done), Arc::clone(&mode), Arc::clone(&stop));
            tasks.spawn_on(
                async move {
                    while !stop.load(Ordering::Relaxed) {
                        let record = signer.sign();
                        if let Some(log) = logs.get(mode.load(Ordering::Relaxed)) {
                            log.append(record).await.unwrap();
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        // Without a log there is no await, and the task must yield to let
                        // the stop flag and the other tasks through.
                        tokio::task::yield_now().await;
                    }
                },
                runtime.handle(),
            );
        }
        Self {
            done,
            mode,
            stop,
            tasks,
        }
    }

    /// Switches to `mode` and returns the SVIDs completed per second in the slot.
    fn slot(&self, mode: usize, timing: SlotTiming) -> f64 {
        self.mode.store(mode, Ordering::Relaxed);
        std::thread::sleep(timing.settle);
        let (start, before) = (Instant::now(), self.done.load(Ordering::Relaxed));
        std::thread::sleep(timing.slot - timing.settle);
        let count = self.done.load(Ordering::Relaxed) - before;
        count as f64 / start.elapsed().as_secs_f64()
    }

    /// Runs `mode` for [`SETTLE`] and then [`HOLD`], and prints the rate and each thread
    /// name's CPU time per SVID and context switches per second over the hold.
    fn hold(&self, label: &str, mode: usize) {
        self.mode.store(mode, Ordering::Relaxed);
        std::thread::sleep(SETTLE);
        let (before, done_before, start) = (
            thread_times(),
            self.done.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(HOLD);
        let (after, done) = (thread_times(), self.done.load(Ordering::Relaxed));
        let seconds = start.elapsed().as_secs_f64();
        let svids = (done - done_before).max(1) as f64;
        println!(
            "{label}: {:.0} SVIDs/s over {seconds:.1} s",
            svids / seconds
        );
        for (name, end) in &after {
            let begin = before.get(name).copied().unwrap_or_default();
            let cpu_us = end.cpu_ns.saturating_sub(begin.cpu_ns) as f64 / 1000.0;
            let voluntary = end
                .voluntary_switches
                .saturating_sub(begin.voluntary_switches);
            let involuntary = end
                .involuntary_switches
                .saturating_sub(begin.involuntary_switches);
            println!(
                "  {name} (threads: {}): {:.2} µs of CPU per SVID, {:.0} voluntary and \
                 {:.0} involuntary context switches/s",
                end.threads,
                cpu_us / svids,
                voluntary as f64 / seconds,
                involuntary as f64 / seconds,
            );
        }
    }

    /// Stops the signers and waits for the records they are appending.
    fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            while let Some(result) = self.tasks.join_next().await {
                result.unwrap();
            }
        });
    }
}

fn open_log(
    runtime: &tokio::runtime::Runtime,
    config: &DatastoreConfig,
    batch_interval: Duration,
) -> IssuanceLog {
    runtime.block_on(async {
        let store = Datastore::open(config).await.unwrap();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        let key = SigningKey::ecdsa_p256_from_pkcs8(pkcs8.as_ref()).unwrap();
        IssuanceLog::new(
            store,
            LogOptions {
                checkpoint_every: 1000,
                signing_key: Some(key),
                batch_interval,
            },
        )
    })
}

/// Returns the URL of the PostgreSQL server, without a database.
fn postgres_server_url() -> String {
    std::env::var("TWID_BENCH_POSTGRES_URL")
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// Returns the URL of the server's `postgres` database, for creating and dropping others.
fn postgres_admin_url() -> String {
    format!("{}/postgres", postgres_server_url())
}

/// Creates a database for this run, or returns `None` when PostgreSQL is not reachable.
async fn create_postgres_database(name: &str) -> Option<DatastoreConfig> {
    sqlx::any::install_default_drivers();
    let admin_url = postgres_admin_url();
    let connect = AnyConnection::connect(&admin_url);
    let mut admin = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            println!("postgres not available, skipping the PostgreSQL case: {error}");
            return None;
        }
        Err(_) => {
            println!("postgres not available, skipping the PostgreSQL case: connect timed out");
            return None;
        }
    };
    drop_abandoned_databases(&mut admin).await;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    Some(DatastoreConfig {
        ro_connection_string: None,
        database_type: DatabaseType::Postgres,
        connection_string: format!("{}/{name}", postgres_server_url()),
    })
}

/// Drops the databases of earlier runs on this machine whose process no longer runs, such as
/// a run stopped with Ctrl-C, which leaves its database behind. A database name ends in its
/// run's process ID, which is checked under `/proc`, so only Linux drops them.
async fn drop_abandoned_databases(admin: &mut AnyConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    // `_` in the pattern matches any character, so the loop checks the prefix exactly.
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{DATABASE_PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
            .unwrap();
    for name in names {
        let Some(pid) = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("dropping database {name}, left behind by an earlier run");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut *admin)
        .await
        .unwrap();
    }
}

async fn drop_postgres_database(name: &str) {
    let mut admin = AnyConnection::connect(&postgres_admin_url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// Returns the number of rounds: `TWID_BENCH_ROUNDS`, or [`DEFAULT_ROUNDS`].
fn rounds() -> u32 {
    positive_setting("TWID_BENCH_ROUNDS", DEFAULT_ROUNDS)
}

/// Returns the median of `values`, which must not be empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// Runs the rounds of slots and returns the sign-only rates and each log's costs in percent.
fn run_rounds(
    load: &Load,
    names: &[&str],
    rounds: u32,
    timing: SlotTiming,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut costs = vec![Vec::new(); names.len()];
    let mut sign_only = Vec::new();
    let mut before = load.slot(SIGN_ONLY, timing);
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (index, (name, costs)) in names.iter().zip(&mut costs).enumerate() {
            let rate = load.slot(index, timing);
            let after = load.slot(SIGN_ONLY, timing);
            let base = (before + after) / 2.0;
            sign_only.push(base);
            let cost = 100.0 * (1.0 - rate / base);
            costs.push(cost);
            line.push_str(&format!(
                " {name} {rate:.0}/s against {base:.0}/s ({cost:.1} %)"
            ));
            before = after;
        }
        println!("{line}");
    }
    (sign_only, costs)
}

/// Holds each of `modes` in turn, with `logs` logs open: SQLite first, then PostgreSQL.
fn run_holds(load: &Load, modes: &[HoldMode], logs: usize) {
    for mode in modes {
        let (label, index) = match mode {
            HoldMode::SignOnly => ("sign-only", Some(SIGN_ONLY)),
            HoldMode::Sqlite => ("SQLite", Some(0)),
            HoldMode::Postgres => ("PostgreSQL", (logs > 1).then_some(1)),
        };
        match index {
            Some(index) => load.hold(label, index),
            None => println!("{label}: skipped, no PostgreSQL log"),
        }
    }
}

fn main() {
    // Read the settings first, so that an invalid one stops the run before it creates a
    // database.
    let (callers, rounds, interval) = (callers(), rounds(), batch_interval());
    let timing = slot_timing();
    let hold = hold_modes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let signer = Arc::new(Signer::new());
    let dir = tempfile::tempdir().unwrap();
    let sqlite_log = open_log(
        &runtime,
        &DatastoreConfig {
            ro_connection_string: None,
            database_type: DatabaseType::Sqlite,
            connection_string: dir.path().join("bench.db").to_str().unwrap().to_owned(),
        },
        interval,
    );
    let postgres_name = format!("{DATABASE_PREFIX}{}", std::process::id());
    let postgres_config = runtime.block_on(create_postgres_database(&postgres_name));
    let postgres_log = postgres_config
        .as_ref()
        .map(|config| open_log(&runtime, config, interval));
    let mut logs = vec![("SQLite", sqlite_log)];
    if let Some(log) = postgres_log {
        logs.push(("PostgreSQL", log));
    }

    let handles: Vec<IssuanceLog> = logs.iter().map(|(_, log)| log.clone()).collect();
    let names: Vec<&str> = logs.iter().map(|(name, _)| *name).collect();
    match hold {
        Some(modes) => {
            println!("{callers} signers, {} s per mode", HOLD.as_secs());
            let load = Load::start(&runtime, &signer, &handles, callers);
            std::thread::sleep(WARM_UP);
            run_holds(&load, &modes, names.len());
            load.stop(&runtime);
        }
        None => {
            println!(
                "{callers} signers, {rounds} rounds of {} slots of {} ms, each counted after {} ms",
                2 * logs.len(),
                timing.slot.as_millis(),
                timing.settle.as_millis()
            );
            let load = Load::start(&runtime, &signer, &handles, callers);
            std::thread::sleep(WARM_UP);
            let (sign_only, costs) = run_rounds(&load, &names, rounds, timing);
            load.stop(&runtime);
            println!("median sign-only rate: {:.0}/s", median(&sign_only));
            for (name, costs) in names.iter().zip(&costs) {
                let (low, high) = costs.iter().fold((f64::MAX, f64::MIN), |(low, high), &c| {
                    (low.min(c), high.max(c))
                });
                println!(
                    "{name}: median cost {:.1} % (slots from {low:.1} to {high:.1} %)",
                    median(costs)
                );
            }
        }
    }

    drop(handles);
    drop(logs);
    if postgres_config.is_some() {
        runtime.block_on(drop_postgres_database(&postgres_name));
    }
}
