//! The cost of logging per X.509-SVID. 64 tasks sign SVIDs concurrently, as agents' requests
//! do on the server. In `sign_only` they only sign. In `sign_and_append_*` each signature is
//! followed by the append of its issuance record, which the server awaits before it returns
//! the SVID. The tasks run for the whole of a case, and every sample times a number of SVIDs
//! completed under that running load (see [`SteadyLoad`]).
//!
//! Signing is the server path: parse and check the CSR, then sign the certificate with an
//! ECDSA P-256 CA key. The record has the fields the server fills in: serial, SPIFFE ID, entry
//! ID, agent ID, two selectors and the key fingerprint. Checkpoints are signed with ECDSA
//! P-256 every 1000 records, as the server does.
//!
//! The SQLite case uses a file in the temporary directory, so its result depends on how fast
//! that file system syncs. The PostgreSQL case connects to
//! `postgres://postgres@127.0.0.1:5432`, creates a database for the run and drops it after,
//! and is skipped with a message when the connection fails.
//!
//! Run with `cargo bench -p twid-provenance --bench signing_with_log`.
//! `TWID_BENCH_CALLERS=N` runs N tasks instead of 64 in every case. With many tasks the
//! batches grow large, so the result shows the CPU cost of the log more than the commit
//! latency. `TWID_BENCH_BATCH_INTERVAL_US=N` sets the appender's batch interval in
//! microseconds instead of the default.

// A benchmark setup failure should abort the run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use twid_ca::{
    CaSubject, KeyType, PrivateKey, X509Authority, X509SvidRequest, build_csr, parse_csr,
};
use twid_datastore::{DatabaseType, Datastore, DatastoreConfig};
use twid_provenance::{IssuanceLog, LogOptions, NewRecord, SigningKey, key_fingerprint};
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::Selector;

/// Concurrent signers, unless `TWID_BENCH_CALLERS` sets another number.
const DEFAULT_CALLERS: u64 = 64;
const HOUR: Duration = Duration::from_secs(3600);
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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

/// Returns the number of concurrent signers: `TWID_BENCH_CALLERS`, or [`DEFAULT_CALLERS`].
fn callers() -> u64 {
    let Ok(text) = std::env::var("TWID_BENCH_CALLERS") else {
        return DEFAULT_CALLERS;
    };
    match text.parse() {
        Ok(callers) if callers > 0 => callers,
        _ => panic!("TWID_BENCH_CALLERS={text:?} is invalid; set a positive integer"),
    }
}

/// Returns the appender's batch interval: `TWID_BENCH_BATCH_INTERVAL_US` in microseconds, or
/// the default.
fn batch_interval() -> Duration {
    let Ok(text) = std::env::var("TWID_BENCH_BATCH_INTERVAL_US") else {
        return LogOptions::default().batch_interval;
    };
    match text.parse() {
        Ok(micros) => Duration::from_micros(micros),
        _ => panic!("TWID_BENCH_BATCH_INTERVAL_US={text:?} is invalid; set microseconds"),
    }
}

/// Signers that run from [`SteadyLoad::start`] until [`SteadyLoad::stop`], so that every
/// sample measures a load that is already running. A sample that started its own signers
/// would also time their start and the drain at its end. During the drain, fewer and fewer
/// signers keep the cores busy while the last records wait for their commits. Criterion's
/// first samples are a few dozen SVIDs, so that drain would weigh on the result, while a
/// server under sustained load never drains.
struct SteadyLoad {
    /// SVIDs signed, and logged when there is a log, since the start.
    done: Arc<AtomicU64>,
    /// The count at which a signer reports to the sample that waits for it.
    target: Arc<AtomicU64>,
    reached: std::sync::mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl SteadyLoad {
    /// Starts `callers` tasks on `runtime` that sign, and append to `log` when given, in a
    /// loop.
    fn start(
        runtime: &tokio::runtime::Runtime,
        signer: &Arc<Signer>,
        log: Option<&IssuanceLog>,
        callers: u64,
    ) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (report, reached) = std::sync::mpsc::sync_channel(1);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let signer = Arc::clone(signer);
            let log = log.cloned();
            let (done, target, stop) = (Arc::clone(&done), Arc::clone(&target), Arc::clone(&stop));
            let report = report.clone();
            tasks.spawn_on(
                async move {
                    while !stop.load(Ordering::Relaxed) {
                        let record = signer.sign();
                        if let Some(log) = &log {
                            log.append(record).await.unwrap();
                        }
                        let count = done.fetch_add(1, Ordering::AcqRel) + 1;
                        if count == target.load(Ordering::Acquire) {
                            let _ = report.try_send(());
                        }
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
            target,
            reached,
            stop,
            tasks,
        }
    }

    /// Waits until the signers have completed `count` more SVIDs and returns the time taken.
    fn measure(&self, count: u64) -> Duration {
        while self.reached.try_recv().is_ok() {}
        let start = Instant::now();
        let target = self.done.load(Ordering::Acquire) + count;
        self.target.store(target, Ordering::Release);
        // A signer that passed the target before it was stored did not report.
        if self.done.load(Ordering::Acquire) < target {
            self.reached.recv().unwrap();
        }
        start.elapsed()
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

fn open_log(runtime: &tokio::runtime::Runtime, config: &DatastoreConfig) -> IssuanceLog {
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
                batch_interval: batch_interval(),
            },
        )
    })
}

/// Creates a database for this run, or returns `None` when PostgreSQL is not reachable.
async fn create_postgres_database(name: &str) -> Option<DatastoreConfig> {
    sqlx::any::install_default_drivers();
    let connect = AnyConnection::connect(POSTGRES_ADMIN_URL);
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
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    Some(DatastoreConfig {
        ro_connection_string: None,
        database_type: DatabaseType::Postgres,
        connection_string: format!("postgres://postgres@127.0.0.1:5432/{name}"),
    })
}

async fn drop_postgres_database(name: &str) {
    let mut admin = AnyConnection::connect(POSTGRES_ADMIN_URL).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn signing_with_log(c: &mut Criterion) {
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
    );
    let postgres_name = format!("twid_bench_signing_{}", std::process::id());
    let postgres_config = runtime.block_on(create_postgres_database(&postgres_name));
    let postgres_log = postgres_config
        .as_ref()
        .map(|config| open_log(&runtime, config));

    let callers = callers();
    let mut group = c.benchmark_group("signing_with_log");
    group.throughput(Throughput::Elements(1));
    let mut cases = vec![
        (format!("sign_only_{callers}_concurrent"), None),
        (
            format!("sign_and_append_sqlite_{callers}_concurrent"),
            Some(&sqlite_log),
        ),
    ];
    if let Some(log) = &postgres_log {
        cases.push((
            format!("sign_and_append_postgres_{callers}_concurrent"),
            Some(log),
        ));
    }
    for (name, log) in cases {
        // Criterion's filter decides whether a case runs, and only a case that runs may load
        // the machine.
        let mut load = None;
        group.bench_function(name, |b| {
            let load =
                load.get_or_insert_with(|| SteadyLoad::start(&runtime, &signer, log, callers));
            b.iter_custom(|iters| load.measure(iters));
        });
        if let Some(load) = load {
            load.stop(&runtime);
        }
    }
    group.finish();

    drop(postgres_log);
    if postgres_config.is_some() {
        runtime.block_on(drop_postgres_database(&postgres_name));
    }
}

criterion_group!(benches, signing_with_log);
criterion_main!(benches);
