//! Appends per second to an issuance log on a temporary SQLite file, with 64 tasks appending
//! concurrently so that the appender can group their records into shared transactions.
//! Checkpoints are signed with Ed25519 every 1000 records, as in a typical deployment.
//!
//! Run with `cargo bench -p twid-provenance --bench append`. The result depends on how fast
//! the temporary directory's file system syncs, because every transaction waits for a sync.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twid_datastore::Datastore;
use twid_provenance::{IssuanceLog, LogOptions, NewRecord, SigningKey, key_fingerprint};
use twid_spiffe::SpiffeId;
use twid_types::Selector;

const APPENDERS: u64 = 64;

fn record(n: u64) -> NewRecord {
    let spiffe_id = SpiffeId::new("spiffe://example.org/workload/bench").expect("valid SPIFFE ID");
    // Certificate serials are 6 bytes of milliseconds followed by 10 random bytes, so appends
    // insert at the right end of the serial index. Here n takes the place of the milliseconds,
    // and a hash of n the place of the random bytes, so runs are reproducible.
    let random = hex::encode(&key_fingerprint(&n.to_be_bytes())[..10]);
    let serial = format!("{n:012x}{random}");
    let mut record = NewRecord::x509(serial, spiffe_id);
    record.entry_id = Some("3f2c7d1e-0000-4000-8000-000000000000".into());
    record.agent_id =
        Some(SpiffeId::new("spiffe://example.org/spire/agent/x509pop/node").expect("valid"));
    record.selectors = vec![
        Selector::new("unix", "uid:1000"),
        Selector::new("unix", "gid:1000"),
    ];
    record.key_fingerprint = Some(key_fingerprint(&n.to_le_bytes()));
    record.policy_version = Some("7".into());
    record
}

/// Appends `count` records from [`APPENDERS`] tasks and returns the elapsed time.
async fn append_many(log: &IssuanceLog, first: u64, count: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..APPENDERS {
        let log = log.clone();
        tasks.spawn(async move {
            let mut n = task;
            while n < count {
                log.append(record(first + n)).await.expect("append");
                n += APPENDERS;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("appender task");
    }
    start.elapsed()
}

fn append_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build runtime");
    let dir = tempfile::tempdir().expect("create temp dir");
    let log = runtime.block_on(async {
        let store = Datastore::open_sqlite(&dir.path().join("bench.db"))
            .await
            .expect("open datastore");
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
        let key = SigningKey::ed25519_from_pkcs8(pkcs8.as_ref()).expect("load key");
        IssuanceLog::new(
            store,
            LogOptions {
                checkpoint_every: 1000,
                signing_key: Some(key),
                ..LogOptions::default()
            },
        )
    });

    let mut group = c.benchmark_group("issuance_log");
    group.throughput(Throughput::Elements(1));
    let mut next = 0_u64;
    group.bench_function("append_sqlite_64_concurrent", |b| {
        b.iter_custom(|iters| {
            let first = next;
            next += iters;
            runtime.block_on(append_many(&log, first, iters))
        });
    });
    group.finish();
}

criterion_group!(benches, append_throughput);
criterion_main!(benches);
