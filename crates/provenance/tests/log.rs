//! Issuance log behaviour on both backends: each test body runs once on a temporary SQLite
//! file (module `sqlite`) and once on a fresh PostgreSQL database (module `postgres`).
//!
//! The PostgreSQL tests connect to `postgres://postgres@127.0.0.1:5432/postgres`, create a
//! uniquely named database per test and drop it afterwards. When the connection fails they
//! print "postgres not available, skipping" and pass.
//!
//! Tampering uses direct SQL connections that bypass the datastore, as a database
//! administrator would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use twid_datastore::{
    DatabaseType, Datastore, DatastoreConfig, DatastoreError, EntryFilter, IssuanceLogCheckpoint,
    IssuanceLogRecord, PolicyVersion, WriteOutcome,
};
use twid_provenance::{
    AlterationKind, GENESIS_HASH, IssuanceLog, LogError, LogOptions, MAX_INDEXED_BYTES,
    MAX_JSON_DEPTH, NewRecord, RecordKind, SigningKey, VerifyReport, evidence_digest,
    key_fingerprint, record_hash,
};
use twid_spiffe::SpiffeId;
use twid_types::{NewEntry, Selector};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// One test's database, removed when dropped.
struct TestDb {
    config: DatastoreConfig,
    /// A URL for direct sqlx connections that bypass the datastore.
    raw_url: String,
    /// The SQLite file's directory, deleted on drop.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database to drop on drop.
    postgres_name: Option<String>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("log.db");
        let text = path.to_str().expect("temp path is UTF-8").to_owned();
        Self {
            config: DatastoreConfig {
                ro_connection_string: None,
                database_type: DatabaseType::Sqlite,
                connection_string: text.clone(),
            },
            raw_url: format!("sqlite://{text}"),
            _dir: Some(dir),
            postgres_name: None,
        }
    }

    /// Creates a fresh PostgreSQL database, or returns `None` when the connection fails.
    async fn postgres() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let connect = AnyConnection::connect(POSTGRES_ADMIN_URL);
        let mut admin = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                println!("postgres not available, skipping: {error}");
                return None;
            }
            Err(_) => {
                println!("postgres not available, skipping: connect timed out after 10 s");
                return None;
            }
        };
        let name = unique_database_name();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let url = format!("{POSTGRES_BASE_URL}/{name}");
        Some(Self {
            config: DatastoreConfig {
                ro_connection_string: None,
                database_type: DatabaseType::Postgres,
                connection_string: url.clone(),
            },
            raw_url: url,
            _dir: None,
            postgres_name: Some(name),
        })
    }

    async fn open(&self) -> Datastore {
        Datastore::open(&self.config)
            .await
            .expect("open the test datastore")
    }

    async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(&self.raw_url)
            .await
            .expect("connect to the test database directly");
        if self.config.database_type == DatabaseType::Sqlite {
            sqlx::raw_sql("PRAGMA busy_timeout = 5000")
                .execute(&mut conn)
                .await
                .expect("set busy timeout");
        }
        conn
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on a future, so the cleanup
        // gets its own thread and runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build cleanup runtime");
            runtime.block_on(async {
                let mut admin = AnyConnection::connect(POSTGRES_ADMIN_URL).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("failed to drop test database: {error}"),
            Err(_) => eprintln!("test database cleanup thread panicked"),
        }
    }
}

fn unique_database_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "twid_provenance_test_{}_{nanos}_{sequence}",
        std::process::id()
    )
}

/// Defines, for each listed body `async fn name(db: &TestDb)`, the tests `sqlite::name` and
/// `postgres::name`.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $body() {
                    let db = super::TestDb::sqlite();
                    super::$body(&db).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $body() {
                    let Some(db) = super::TestDb::postgres().await else {
                        return;
                    };
                    super::$body(&db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    tampering_detected_at_position,
    replicas_share_one_chain,
    rewritten_chain_fails_checkpoints,
    tail_changes_detected,
    lookups_and_listing,
    on_demand_checkpoint,
    moved_records_classified,
    writer_checks_head,
    writer_stores_values_exactly,
    datastore_writes_during_appends,
    batch_interval_paces_only_under_load,
    longest_batch_interval_is_capped,
    rejected_record_spares_its_batch,
);

/// Returns a log on `store` that signs a checkpoint every `checkpoint_every` records with
/// `key`, and the key's public half.
fn signed_log(
    store: &Datastore,
    key: SigningKey,
    checkpoint_every: u64,
) -> (IssuanceLog, twid_provenance::PublicKey) {
    let public = key.public_key().clone();
    let log = IssuanceLog::new(
        store.clone(),
        LogOptions {
            checkpoint_every,
            signing_key: Some(key),
            ..LogOptions::default()
        },
    );
    (log, public)
}

fn ed25519_key() -> SigningKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
    SigningKey::ed25519_from_pkcs8(pkcs8.as_ref()).expect("load key")
}

fn p256_key() -> SigningKey {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .expect("generate key");
    SigningKey::ecdsa_p256_from_pkcs8(pkcs8.as_ref()).expect("load key")
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("valid SPIFFE ID")
}

/// Returns record number `n` of a test: X.509, JWT, WIT and refusal records in turn, with
/// `n` in their serial, jti or reason so that every record is distinct.
fn sample_record(n: u64) -> NewRecord {
    let workload = id(&format!("spiffe://example.org/workload/{}", n % 97));
    let mut record = match n % 4 {
        0 => NewRecord::x509(format!("{n:x}a0"), workload),
        1 => NewRecord::jwt(format!("jti-{n}"), workload),
        2 => NewRecord::wit(format!("wit-{n}"), workload),
        _ => {
            let mut refusal = NewRecord::refusal(format!("no entry matches request {n}"));
            refusal.spiffe_id = Some(workload);
            refusal
        }
    };
    record.agent_id = Some(id("spiffe://example.org/spire/agent/join_token/t1"));
    record.entry_id = Some(format!("entry-{}", n % 13));
    record.selectors = vec![
        Selector::new("unix", format!("uid:{}", n % 7)),
        Selector::new("k8s", "ns:default"),
    ];
    if record.kind != RecordKind::Refusal {
        record.key_fingerprint = Some(key_fingerprint(&n.to_be_bytes()));
    }
    record.evidence_digest = Some(evidence_digest(b"evidence"));
    record.attestation_result = Some(serde_json::json!({"tcb": "up-to-date", "svn": n % 5}));
    record.policy_version = Some("policy-3".into());
    record.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + n);
    record
}

/// Appends records `first..first + count` from `tasks` concurrent tasks and returns every
/// returned seq.
async fn append_concurrently(log: &IssuanceLog, first: u64, count: u64, tasks: u64) -> Vec<u64> {
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let log = log.clone();
        set.spawn(async move {
            let mut seqs = Vec::new();
            let mut n = first + task;
            while n < first + count {
                let position = log.append(sample_record(n)).await.expect("append");
                seqs.push(position.seq);
                n += tasks;
            }
            seqs
        });
    }
    let mut seqs = Vec::new();
    while let Some(result) = set.join_next().await {
        seqs.extend(result.expect("appender task"));
    }
    seqs
}

fn assert_intact(report: &VerifyReport, records: u64) {
    assert_eq!(report.alteration, None, "the log should be intact");
    assert_eq!(report.records, records, "intact record count");
}

fn assert_altered(report: &VerifyReport, seq: u64, kind: AlterationKind) {
    let Some(alteration) = &report.alteration else {
        panic!("verify found no alteration; expected {kind} at seq {seq}");
    };
    assert_eq!(alteration.kind, kind, "alteration kind: {alteration}");
    assert_eq!(alteration.seq, seq, "alteration seq: {alteration}");
}

/// Deletes the checkpoint at `seq` behind the log's back and returns it, for restoring.
async fn take_checkpoint(
    store: &Datastore,
    raw: &mut AnyConnection,
    seq: i64,
) -> IssuanceLogCheckpoint {
    let checkpoint = store
        .issuance_log_checkpoints(seq, 1)
        .await
        .expect("read checkpoint")
        .remove(0);
    assert_eq!(checkpoint.seq, seq);
    execute(
        raw,
        "DELETE FROM issuance_log_checkpoints WHERE seq = $1",
        &[seq],
    )
    .await;
    checkpoint
}

/// Asserts what [`IssuanceLog::check_head`] finds: nothing, or an alteration at a seq.
async fn assert_head(
    log: &IssuanceLog,
    key: Option<&twid_provenance::PublicKey>,
    expected: Option<(u64, AlterationKind)>,
) {
    let found = log.check_head(key).await.expect("check head");
    let found = found.map(|alteration| (alteration.seq, alteration.kind));
    assert_eq!(found, expected);
}

async fn execute(conn: &mut AnyConnection, sql: &str, binds: &[i64]) {
    let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
    for value in binds {
        query = query.bind(*value);
    }
    query.execute(conn).await.expect("direct SQL statement");
}

async fn swap_seqs(conn: &mut AnyConnection, a: i64, b: i64) {
    // Three steps, because SQLite checks the primary key after each row of an UPDATE.
    let parking = -1_000_000;
    execute(
        conn,
        "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
        &[parking, a],
    )
    .await;
    execute(
        conn,
        "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
        &[a, b],
    )
    .await;
    execute(
        conn,
        "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
        &[b, parking],
    )
    .await;
}

/// Stores `row` exactly as given, bypassing the log.
async fn insert_raw(conn: &mut AnyConnection, row: &IssuanceLogRecord) {
    sqlx::query(
        "INSERT INTO issuance_log (seq, prev_hash, hash, kind, serial, jti, spiffe_id, entry_id, \
         agent_id, selectors, key_fingerprint, evidence_digest, attestation_result, \
         policy_version, refusal_reason, time_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(row.seq)
    .bind(row.prev_hash.clone())
    .bind(row.hash.clone())
    .bind(row.kind.clone())
    .bind(row.serial.clone())
    .bind(row.jti.clone())
    .bind(row.spiffe_id.clone())
    .bind(row.entry_id.clone())
    .bind(row.agent_id.clone())
    .bind(row.selectors.clone())
    .bind(row.key_fingerprint.clone())
    .bind(row.evidence_digest.clone())
    .bind(row.attestation_result.clone())
    .bind(row.policy_version.clone())
    .bind(row.refusal_reason.clone())
    .bind(row.time_unix_ms)
    .execute(conn)
    .await
    .expect("insert a row directly");
}

async fn stored_row(store: &Datastore, seq: i64) -> IssuanceLogRecord {
    store
        .get_issuance_log_record(seq)
        .await
        .expect("read row")
        .expect("row exists")
}

/// Checks that 10,000 concurrent appends verify intact. Then one edited field, one deleted row
/// and two swapped seqs are each reported at their seq, and the restored log verifies again.
async fn tampering_detected_at_position(db: &TestDb) {
    const RECORDS: u64 = 10_000;
    let store = db.open().await;
    let (log, public) = signed_log(&store, ed25519_key(), 1000);

    let mut seqs = append_concurrently(&log, 0, RECORDS, 64).await;
    seqs.sort_unstable();
    let expected: Vec<u64> = (0..RECORDS).collect();
    assert_eq!(seqs, expected, "every append gets its own consecutive seq");

    let report = log.verify(Some(&public)).await.expect("verify");
    assert_intact(&report, RECORDS);
    assert_eq!(report.checkpoints, 10, "one checkpoint per 1000 records");
    assert!(report.signatures_checked);

    let mut raw = db.raw().await;

    // Edit one field of one row.
    let original = stored_row(&store, 4321).await;
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind("spiffe://example.org/forged")
        .bind(4321_i64)
        .execute(&mut raw)
        .await
        .expect("edit a row");
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 4321, AlterationKind::Edited);
    assert_eq!(report.records, 4321, "records before the edit are intact");
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind(original.spiffe_id.clone())
        .bind(4321_i64)
        .execute(&mut raw)
        .await
        .expect("restore the edited row");
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), RECORDS);

    // Delete one row.
    let deleted = stored_row(&store, 5000).await;
    execute(&mut raw, "DELETE FROM issuance_log WHERE seq = $1", &[5000]).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 5000, AlterationKind::Deleted);
    insert_raw(&mut raw, &deleted).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), RECORDS);

    // Swap two rows' seq.
    swap_seqs(&mut raw, 3000, 7000).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(
        &report,
        3000,
        AlterationKind::Reordered { original_seq: 7000 },
    );
    swap_seqs(&mut raw, 3000, 7000).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), RECORDS);

    raw.close().await.expect("close raw connection");
    store.close().await;
}

/// Two datastore handles, as two server replicas have, append concurrently from many tasks
/// each, and the result is one chain.
async fn replicas_share_one_chain(db: &TestDb) {
    const PER_REPLICA: u64 = 1500;
    // Both replicas sign with the same key, as a deployment would configure them.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
    let replica = async || {
        let key = SigningKey::ed25519_from_pkcs8(pkcs8.as_ref()).expect("load key");
        IssuanceLog::new(
            db.open().await,
            LogOptions {
                checkpoint_every: 100,
                signing_key: Some(key),
                ..LogOptions::default()
            },
        )
    };
    let first = replica().await;
    let second = replica().await;
    let public = SigningKey::ed25519_from_pkcs8(pkcs8.as_ref())
        .expect("load key")
        .public_key()
        .clone();
    let (a, b) = tokio::join!(
        append_concurrently(&first, 0, PER_REPLICA, 32),
        append_concurrently(&second, PER_REPLICA, PER_REPLICA, 32),
    );
    let mut seqs: Vec<u64> = a.into_iter().chain(b).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (0..2 * PER_REPLICA).collect();
    assert_eq!(
        seqs, expected,
        "the replicas' seqs interleave without gaps or duplicates"
    );

    let report = first.verify(Some(&public)).await.expect("verify");
    assert_intact(&report, 2 * PER_REPLICA);
    assert_eq!(
        report.checkpoints, 30,
        "one checkpoint per 100 records, from either replica"
    );
    let report = second.verify(Some(&public)).await.expect("verify");
    assert_intact(&report, 2 * PER_REPLICA);

    // Each record is stored once, with the contents its appender gave.
    for n in [0, 1, PER_REPLICA, PER_REPLICA + 1] {
        let expected = sample_record(n);
        let found = match (&expected.serial, &expected.jti) {
            (Some(serial), _) => first.find_by_serial(serial).await,
            (None, Some(jti)) => first.find_by_jti(jti).await,
            (None, None) => panic!("sample records 0 and 1 mod 4 have a serial or jti"),
        }
        .expect("lookup")
        .expect("record found");
        assert_eq!(found.content.spiffe_id, expected.spiffe_id);
        assert_eq!(found.content.time, expected.time);
    }
}

/// Checks checkpoints against a chain rewritten from some seq on with recomputed hashes. The
/// links stay intact but the checkpoints no longer match, and re-signing needs the private key.
async fn rewritten_chain_fails_checkpoints(db: &TestDb) {
    let store = db.open().await;
    let (log, public) = signed_log(&store, p256_key(), 50);
    append_concurrently(&log, 0, 300, 8).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 300);

    // Rewrite record 120's SPIFFE ID and recompute the hashes of it and every later record.
    let mut raw = db.raw().await;
    let mut prev = stored_row(&store, 119).await.hash;
    for seq in 120..300_i64 {
        let mut row = stored_row(&store, seq).await;
        if seq == 120 {
            row.spiffe_id = Some("spiffe://example.org/forged".into());
        }
        let prev_array: [u8; 32] = prev.as_slice().try_into().expect("32-byte hash");
        let hash = record_hash(seq as u64, &prev_array, &row).expect("hash");
        sqlx::query(
            "UPDATE issuance_log SET spiffe_id = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
        )
        .bind(row.spiffe_id.clone())
        .bind(prev.clone())
        .bind(hash.to_vec())
        .bind(seq)
        .execute(&mut raw)
        .await
        .expect("rewrite a row");
        prev = hash.to_vec();
    }
    sqlx::query("UPDATE issuance_log_head SET head_hash = $1")
        .bind(prev.clone())
        .execute(&mut raw)
        .await
        .expect("rewrite the head");

    // Checkpoints sign seqs 49, 99, 149, ...; the first one after the rewrite is 149.
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 149, AlterationKind::CheckpointMismatch);
    assert_eq!(report.checkpoints, 2, "checkpoints 49 and 99 are intact");
    assert_eq!(report.records, 149, "records before the failed checkpoint");
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 149, AlterationKind::CheckpointMismatch);

    // Updating the checkpoint hashes too breaks their signatures.
    for seq in [149_i64, 199, 249, 299] {
        let hash = stored_row(&store, seq).await.hash;
        sqlx::query("UPDATE issuance_log_checkpoints SET hash = $1 WHERE seq = $2")
            .bind(hash)
            .bind(seq)
            .execute(&mut raw)
            .await
            .expect("rewrite a checkpoint");
    }
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 149, AlterationKind::BadCheckpointSignature);
    // Without the public key, verify cannot distinguish the rewritten hashes from genuine ones.
    assert_intact(&log.verify(None).await.expect("verify"), 300);

    // A different key does not verify genuine checkpoints.
    let other = ed25519_key();
    let report = log.verify(Some(other.public_key())).await.expect("verify");
    assert_altered(&report, 49, AlterationKind::BadCheckpointSignature);

    raw.close().await.expect("close raw connection");
    store.close().await;
}

/// Checks changes at the end of the log: a record added past the head, the last record
/// rewritten, and records removed with or without rewinding the head row.
async fn tail_changes_detected(db: &TestDb) {
    let store = db.open().await;
    let (log, public) = signed_log(&store, ed25519_key(), 10);
    append_concurrently(&log, 0, 40, 4).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);
    assert_head(&log, Some(&public), None).await;
    let other = ed25519_key().public_key().clone();
    let expected = Some((39, AlterationKind::BadCheckpointSignature));
    assert_head(&log, Some(&other), expected).await;
    let mut raw = db.raw().await;

    // A record added past the head.
    let mut extra = stored_row(&store, 39).await;
    extra.seq = 40;
    extra.prev_hash = extra.hash.clone();
    extra.hash = vec![0xee; 32];
    insert_raw(&mut raw, &extra).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 40, AlterationKind::Inserted);
    assert_head(&log, Some(&public), Some((40, AlterationKind::Inserted))).await;
    // Appends fail with a damaged-log error, which retrying does not fix: first on the path
    // that checks the remembered head, then on the path that locks the head row.
    for attempt in 0..2 {
        let error = log
            .append(sample_record(100 + attempt))
            .await
            .expect_err("an append onto a record past the head must fail");
        assert!(error.is_damaged_log(), "{error}");
        assert!(error.to_string().contains("past its head row"), "{error}");
    }
    execute(&mut raw, "DELETE FROM issuance_log WHERE seq = $1", &[40]).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);

    // A head row moved ahead, or a second head row: appends refuse to continue from it, and
    // reads report it.
    let last_hash = stored_row(&store, 39).await.hash;
    sqlx::query("UPDATE issuance_log_head SET next_seq = $1")
        .bind(45_i64)
        .execute(&mut raw)
        .await
        .expect("move the head ahead");
    let error = log
        .append(sample_record(110))
        .await
        .expect_err("an append after a moved head must fail");
    assert!(error.is_damaged_log(), "{error}");
    assert!(
        error.to_string().contains("record 44 is missing"),
        "{error}"
    );
    sqlx::query("INSERT INTO issuance_log_head (next_seq, head_hash) VALUES ($1, $2)")
        .bind(40_i64)
        .bind(last_hash.clone())
        .execute(&mut raw)
        .await
        .expect("add a second head row");
    let error = log
        .check_head(Some(&public))
        .await
        .expect_err("two head rows");
    assert!(error.is_damaged_log(), "{error}");
    assert!(error.to_string().contains("2 rows"), "{error}");
    execute(
        &mut raw,
        "DELETE FROM issuance_log_head WHERE next_seq = $1",
        &[45],
    )
    .await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);

    // The last record edited without a new hash, then an older one. The head check finds
    // only the first.
    let last = stored_row(&store, 39).await;
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind("spiffe://example.org/forged")
        .bind(39_i64)
        .execute(&mut raw)
        .await
        .expect("edit the last row");
    assert_head(&log, Some(&public), Some((39, AlterationKind::Edited))).await;
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind(last.spiffe_id.clone())
        .bind(39_i64)
        .execute(&mut raw)
        .await
        .expect("restore the last row");
    let older = stored_row(&store, 5).await;
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind("spiffe://example.org/forged")
        .bind(5_i64)
        .execute(&mut raw)
        .await
        .expect("edit an older row");
    assert_head(&log, Some(&public), None).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 5, AlterationKind::Edited);
    sqlx::query("UPDATE issuance_log SET spiffe_id = $1 WHERE seq = $2")
        .bind(older.spiffe_id.clone())
        .bind(5_i64)
        .execute(&mut raw)
        .await
        .expect("restore the older row");
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);

    // The last record rewritten with a recomputed hash: the chain holds, the head row differs.
    let original = stored_row(&store, 39).await;
    let mut rewritten = original.clone();
    rewritten.policy_version = Some("forged".into());
    let prev: [u8; 32] = original
        .prev_hash
        .as_slice()
        .try_into()
        .expect("32-byte hash");
    let hash = record_hash(39, &prev, &rewritten).expect("hash");
    sqlx::query("UPDATE issuance_log SET policy_version = $1, hash = $2 WHERE seq = $3")
        .bind(rewritten.policy_version.clone())
        .bind(hash.to_vec())
        .bind(39_i64)
        .execute(&mut raw)
        .await
        .expect("rewrite the last row");
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 39, AlterationKind::CheckpointMismatch);
    assert_head(&log, None, Some((39, AlterationKind::Edited))).await;
    // Without the checkpoint at seq 39, its absence reveals the rewrite.
    let checkpoint = take_checkpoint(&store, &mut raw, 39).await;
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 39, AlterationKind::CheckpointMissing);
    assert_eq!(report.records, 39);
    // A log that signs no periodic checkpoints expects none, and the head row still reveals
    // the rewrite.
    let unsigned = IssuanceLog::new(store.clone(), LogOptions::default());
    let report = unsigned.verify(None).await.expect("verify");
    assert_altered(&report, 39, AlterationKind::Edited);
    assert_eq!(report.records, 39);
    store
        .insert_issuance_log_checkpoint(&checkpoint)
        .await
        .expect("restore checkpoint");
    sqlx::query("UPDATE issuance_log SET policy_version = $1, hash = $2 WHERE seq = $3")
        .bind(original.policy_version.clone())
        .bind(original.hash.clone())
        .bind(39_i64)
        .execute(&mut raw)
        .await
        .expect("restore the last row");
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);

    // A periodic checkpoint in the middle deleted.
    let middle = take_checkpoint(&store, &mut raw, 19).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 19, AlterationKind::CheckpointMissing);
    assert_eq!(report.records, 19);
    // The head check looks only for the newest checkpoint due, at seq 39.
    assert_head(&log, Some(&public), None).await;
    let newest = take_checkpoint(&store, &mut raw, 39).await;
    let expected = Some((39, AlterationKind::CheckpointMissing));
    assert_head(&log, Some(&public), expected).await;
    store
        .insert_issuance_log_checkpoint(&newest)
        .await
        .expect("restore checkpoint");
    store
        .insert_issuance_log_checkpoint(&middle)
        .await
        .expect("restore checkpoint");
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 40);

    // The last five records removed, head row left alone.
    execute(&mut raw, "DELETE FROM issuance_log WHERE seq >= $1", &[35]).await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 35, AlterationKind::Deleted);
    assert_eq!(report.records, 35);
    // The head check reads only the newest record, so it names that one.
    assert_head(&log, Some(&public), Some((39, AlterationKind::Deleted))).await;

    // The head row rewound too: the checkpoint at seq 39 remains past the head.
    let head = stored_row(&store, 34).await.hash;
    sqlx::query("UPDATE issuance_log_head SET next_seq = $1, head_hash = $2")
        .bind(35_i64)
        .bind(head)
        .execute(&mut raw)
        .await
        .expect("rewind the head");
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 35, AlterationKind::Deleted);
    assert_head(&log, Some(&public), Some((35, AlterationKind::Deleted))).await;

    raw.close().await.expect("close raw connection");
    store.close().await;
}

/// Lookups by serial and jti, listing, validation and an empty log.
async fn lookups_and_listing(db: &TestDb) {
    let store = db.open().await;
    let log = IssuanceLog::new(store.clone(), LogOptions::default());

    let empty = log.verify(None).await.expect("verify an empty log");
    assert_intact(&empty, 0);
    assert!(log.list(0, 10).await.expect("list").is_empty());

    for n in 0..8 {
        let position = log.append(sample_record(n)).await.expect("append");
        assert_eq!(position.seq, n, "sequential appends get consecutive seqs");
    }

    let first = log.list(0, 1).await.expect("list");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].prev_hash, GENESIS_HASH,
        "seq 0 follows the genesis hash"
    );
    let page = log.list(2, 3).await.expect("list");
    let seqs: Vec<u64> = page.iter().map(|record| record.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(
        page[1].prev_hash, page[0].hash,
        "records link to their predecessor"
    );
    assert_eq!(
        page[0].content,
        sample_record(2),
        "contents come back as appended"
    );

    let by_serial = log
        .find_by_serial(&format!("{:X}A0", 4))
        .await
        .expect("find by serial")
        .expect("serial is stored");
    assert_eq!(by_serial.seq, 4, "serial lookup ignores case");
    let by_jti = log
        .find_by_jti("jti-5")
        .await
        .expect("find by jti")
        .expect("jti is stored");
    assert_eq!(by_jti.seq, 5);
    assert_eq!(by_jti.content.kind, RecordKind::Jwt);
    assert!(log.find_by_jti("jti-99").await.expect("find").is_none());
    assert!(matches!(
        log.find_by_serial("not-hex").await,
        Err(LogError::InvalidRecord(_))
    ));
    // Stored serials keep their leading zero bytes, which tools that print serials as
    // integers drop.
    let mut zero_nibble = sample_record(100);
    zero_nibble.serial = Some("01a2b3".into());
    let zero_nibble = log.append(zero_nibble).await.expect("append").seq;
    let mut zero_byte = sample_record(104);
    zero_byte.serial = Some("00c4d5".into());
    let zero_byte = log.append(zero_byte).await.expect("append").seq;
    for (query, seq) in [
        ("1a2b3", zero_nibble),
        ("1A2B3", zero_nibble),
        ("c4d5", zero_byte),
    ] {
        let found = log
            .find_by_serial(query)
            .await
            .expect("find by serial")
            .unwrap_or_else(|| panic!("serial {query} not found"));
        assert_eq!(found.seq, seq, "serial {query}");
    }
    assert!(log.find_by_serial("2a2b3").await.expect("find").is_none());

    let mut invalid = sample_record(0);
    invalid.serial = None;
    assert!(matches!(
        log.append(invalid).await,
        Err(LogError::InvalidRecord(_))
    ));
    assert_intact(&log.verify(None).await.expect("verify"), 10);
    assert_eq!(store.count_issuance_log_records().await.expect("count"), 10);
    store.close().await;
}

/// On-demand checkpoints sign the newest record, and repeating one returns the stored one.
async fn on_demand_checkpoint(db: &TestDb) {
    let store = db.open().await;
    let unsigned = IssuanceLog::new(store.clone(), LogOptions::default());
    assert!(matches!(
        unsigned.checkpoint().await,
        Err(LogError::NoSigningKey)
    ));

    let (log, public) = signed_log(&store, ed25519_key(), 0);
    assert_eq!(log.checkpoint().await.expect("checkpoint"), None);
    for n in 0..5 {
        log.append(sample_record(n)).await.expect("append");
    }
    // With a key but no checkpoint yet, no signature was verified.
    let unsigned_report = log.verify(Some(&public)).await.expect("verify");
    assert_intact(&unsigned_report, 5);
    assert_eq!(unsigned_report.checkpoints, 0);
    assert!(!unsigned_report.signatures_checked);
    let head = log.list(4, 1).await.expect("list").remove(0);
    let checkpoint = log
        .checkpoint()
        .await
        .expect("checkpoint")
        .expect("log is not empty");
    assert_eq!(checkpoint.seq, 4);
    assert_eq!(checkpoint.hash, head.hash);
    assert_eq!(checkpoint.key_id, public.key_id());
    let again = log.checkpoint().await.expect("checkpoint").expect("stored");
    assert_eq!(
        again, checkpoint,
        "a second request returns the stored checkpoint"
    );

    let report = log.verify(Some(&public)).await.expect("verify");
    assert_intact(&report, 5);
    assert_eq!(report.checkpoints, 1);
    assert!(report.signatures_checked);
    store.close().await;
}

/// Adjacent swaps, insertions that shift later records up, and deletions that renumber
/// later records down are classified by where the moved record belongs.
async fn moved_records_classified(db: &TestDb) {
    let store = db.open().await;
    let log = IssuanceLog::new(store.clone(), LogOptions::default());
    append_concurrently(&log, 0, 60, 4).await;
    let mut raw = db.raw().await;

    swap_seqs(&mut raw, 20, 21).await;
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 20, AlterationKind::Reordered { original_seq: 21 });
    swap_seqs(&mut raw, 20, 21).await;
    assert_intact(&log.verify(None).await.expect("verify"), 60);

    // Shift records 30.. up by one and put a forged record at 30.
    for seq in (30..60_i64).rev() {
        execute(
            &mut raw,
            "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
            &[seq + 1, seq],
        )
        .await;
    }
    let mut forged = stored_row(&store, 31).await;
    forged.seq = 30;
    forged.hash = vec![0xab; 32];
    forged.jti = Some("forged".into());
    insert_raw(&mut raw, &forged).await;
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 30, AlterationKind::Inserted);

    // Remove the forged record and renumber the rest down, which restores the log.
    execute(&mut raw, "DELETE FROM issuance_log WHERE seq = $1", &[30]).await;
    for seq in 31..61_i64 {
        execute(
            &mut raw,
            "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
            &[seq - 1, seq],
        )
        .await;
    }
    assert_intact(&log.verify(None).await.expect("verify"), 60);

    // Delete record 10 and renumber the later ones down to close the gap.
    execute(&mut raw, "DELETE FROM issuance_log WHERE seq = $1", &[10]).await;
    for seq in 11..60_i64 {
        execute(
            &mut raw,
            "UPDATE issuance_log SET seq = $1 WHERE seq = $2",
            &[seq - 1, seq],
        )
        .await;
    }
    let report = log.verify(None).await.expect("verify");
    assert_altered(&report, 10, AlterationKind::Deleted);

    raw.close().await.expect("close raw connection");
    store.close().await;
}

/// The writer stores a batch only while the head row contains the head the batch continues,
/// and a batch it stores brings its checkpoints and the new head along.
async fn writer_checks_head(db: &TestDb) {
    let store = db.open().await;
    let mut writer = store.issuance_log_writer().expect("writer");
    let row = |seq: i64, prev_hash: Vec<u8>, hash: Vec<u8>| IssuanceLogRecord {
        seq,
        prev_hash,
        hash,
        kind: "x509".into(),
        serial: Some(format!("{seq:02x}")),
        jti: None,
        spiffe_id: Some("spiffe://example.org/w".into()),
        entry_id: None,
        agent_id: None,
        selectors: r#"[{"type":"unix","value":"uid:0"}]"#.into(),
        key_fingerprint: Some(vec![7; 32]),
        evidence_digest: None,
        attestation_result: None,
        policy_version: None,
        refusal_reason: None,
        time_unix_ms: 1_700_000_000_000,
    };
    let first = [
        row(0, GENESIS_HASH.to_vec(), vec![1; 32]),
        row(1, vec![1; 32], vec![2; 32]),
    ];
    let checkpoint = IssuanceLogCheckpoint {
        seq: 1,
        hash: vec![2; 32],
        algorithm: "ed25519".into(),
        key_id: "test-key".into(),
        signature: vec![3; 64],
        created_at_ms: 1_700_000_000_000,
    };

    let stale_hash = writer
        .append(0, &[9; 32], &first, std::slice::from_ref(&checkpoint))
        .await
        .expect("append");
    assert_eq!(stale_hash, WriteOutcome::HeadMoved);
    let stale_seq = writer
        .append(1, &GENESIS_HASH, &first, std::slice::from_ref(&checkpoint))
        .await
        .expect("append");
    assert_eq!(stale_seq, WriteOutcome::HeadMoved);
    let head = store.issuance_log_head().await.expect("head");
    assert_eq!(head.next_seq, 0, "a batch on a moved head stores nothing");
    assert_eq!(head.max_record_seq, None);
    assert_eq!(head.max_checkpoint_seq, None);

    let stored = writer
        .append(0, &GENESIS_HASH, &first, std::slice::from_ref(&checkpoint))
        .await
        .expect("append");
    assert_eq!(stored, WriteOutcome::Committed);
    let head = store.issuance_log_head().await.expect("head");
    assert_eq!(head.next_seq, 2);
    assert_eq!(head.head_hash, vec![2; 32]);
    assert_eq!(head.max_record_seq, Some(1));
    assert_eq!(head.max_checkpoint_seq, Some(1));
    assert_eq!(stored_row(&store, 0).await, first[0]);
    assert_eq!(stored_row(&store, 1).await, first[1]);
    let checkpoints = store
        .issuance_log_checkpoints(0, 10)
        .await
        .expect("read checkpoints");
    assert_eq!(checkpoints, [checkpoint]);

    // The same head again is stale now, and the next batch continues from the new one.
    let replayed = writer
        .append(0, &GENESIS_HASH, &first, &[])
        .await
        .expect("append");
    assert_eq!(replayed, WriteOutcome::HeadMoved);
    let next = [row(2, vec![2; 32], vec![4; 32])];
    let continued = writer
        .append(2, &[2; 32], &next, &[])
        .await
        .expect("append");
    assert_eq!(continued, WriteOutcome::Committed);
    assert_eq!(store.count_issuance_log_records().await.expect("count"), 3);
    assert_eq!(stored_row(&store, 2).await, next[0]);

    drop(writer);
    store.close().await;
}

/// Checks that the writer stores text and byte strings exactly as given: JSON escapes,
/// non-ASCII text, an empty byte string and extreme integers. On SQLite also a NUL in text,
/// which takes the statement-per-step path instead of the JSON batch statement. PostgreSQL
/// rejects NUL in text.
async fn writer_stores_values_exactly(db: &TestDb) {
    let store = db.open().await;
    let mut writer = store.issuance_log_writer().expect("writer");
    let unusual = IssuanceLogRecord {
        seq: 0,
        prev_hash: GENESIS_HASH.to_vec(),
        hash: vec![1; 32],
        kind: "refusal".into(),
        serial: None,
        jti: Some("quote \" backslash \\ slash / tab \t newline \n".into()),
        spiffe_id: Some("spiffe://example.org/\u{e9}t\u{e9}/\u{1f980}".into()),
        entry_id: Some(String::new()),
        agent_id: Some("\u{1}\u{1f}\u{7f}\u{2028}".into()),
        selectors: r#"[{"type":"unix","value":"uid:0"}]"#.into(),
        key_fingerprint: Some(Vec::new()),
        evidence_digest: Some(vec![0, 255, 0x80]),
        attestation_result: Some(r#"{"a":"\"","b":[1,2.5e3,null]}"#.into()),
        policy_version: Some("v1".into()),
        refusal_reason: Some("{\"not\": \"json\"".into()),
        time_unix_ms: i64::MIN,
    };
    let with_nul = IssuanceLogRecord {
        seq: 1,
        prev_hash: vec![1; 32],
        hash: vec![2; 32],
        refusal_reason: Some("before\0after".into()),
        time_unix_ms: i64::MAX,
        ..unusual.clone()
    };

    let stored = writer
        .append(0, &GENESIS_HASH, std::slice::from_ref(&unusual), &[])
        .await
        .expect("append");
    assert_eq!(stored, WriteOutcome::Committed);
    assert_eq!(stored_row(&store, 0).await, unusual);

    if store.database_type() == DatabaseType::Sqlite {
        let stored = writer
            .append(1, &[1; 32], std::slice::from_ref(&with_nul), &[])
            .await
            .expect("append with NUL");
        assert_eq!(stored, WriteOutcome::Committed);
        assert_eq!(stored_row(&store, 1).await, with_nul);
        let head = store.issuance_log_head().await.expect("head");
        assert_eq!(head.next_seq, 2);
        assert_eq!(head.head_hash, vec![2; 32]);
    }

    drop(writer);
    store.close().await;
}

/// Datastore writes while the appender commits batches on its own connection: on SQLite two
/// connections then take turns on the write lock, and no write of either may fail. Applying
/// a policy version reads the current version before it inserts, the case where a deferred
/// SQLite transaction cannot upgrade its lock after another connection's commit.
async fn datastore_writes_during_appends(db: &TestDb) {
    const ENTRIES: u64 = 200;
    let store = db.open().await;
    let log = IssuanceLog::new(store.clone(), LogOptions::default());
    let parent = id("spiffe://example.org/agent");
    let writes = async {
        for n in 0..ENTRIES {
            let entry = NewEntry::new(
                id(&format!("spiffe://example.org/workload/{n}")),
                parent.clone(),
                vec![Selector::new("unix", format!("uid:{n}"))],
            );
            let created = store
                .create_entry(&entry, 1_700_000_000)
                .await
                .expect("create an entry while the log appends");
            store
                .delete_entry(&created.id)
                .await
                .expect("delete an entry while the log appends");
            let version = PolicyVersion {
                version: n + 1,
                jws: format!("jws-{n}"),
                document: "{}".into(),
                signer_kid: "kid".into(),
                applied_at: 1_700_000_000,
            };
            store
                .append_policy_version(&version, |current| {
                    assert_eq!(
                        current.map(|stored| stored.version),
                        Some(n).filter(|&v| v > 0)
                    );
                    Ok::<(), DatastoreError>(())
                })
                .await
                .expect("apply a policy version while the log appends");
        }
    };
    let (seqs, ()) = tokio::join!(append_concurrently(&log, 0, 2000, 32), writes);
    assert_eq!(seqs.len(), 2000);
    assert_intact(&log.verify(None).await.expect("verify"), 2000);
    assert!(
        store
            .list_entries(&EntryFilter::default())
            .await
            .expect("list entries")
            .is_empty(),
        "every entry was created and deleted"
    );
    store.close().await;
}

/// A record that arrives after a quiet spell is written at once, and so, after a short check
/// that nothing follows it, is one that arrives alone right after a batch. Records that keep
/// arriving wait for the batch interval to pass since the previous batch began.
async fn batch_interval_paces_only_under_load(db: &TestDb) {
    // The pause ends early after a step of a twentieth of this, 100 ms, without a record.
    const INTERVAL: Duration = Duration::from_secs(2);
    const ARRIVAL_GAP: Duration = Duration::from_millis(10);
    let store = db.open().await;
    let log = IssuanceLog::new(
        store.clone(),
        LogOptions {
            batch_interval: INTERVAL,
            ..LogOptions::default()
        },
    );
    log.append(sample_record(0)).await.expect("first append");
    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;

    let started = Instant::now();
    log.append(sample_record(1))
        .await
        .expect("append after a quiet spell");
    let quiet = started.elapsed();
    log.append(sample_record(2))
        .await
        .expect("append alone right after a batch");
    let alone = started.elapsed();
    assert!(
        quiet < INTERVAL / 4,
        "a record after a quiet spell took {quiet:?}, as if it had waited for the interval"
    );
    assert!(
        alone < INTERVAL / 4,
        "a record alone after a batch was written after {alone:?}, as if it had waited for the \
         interval"
    );

    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
    let mut appends = tokio::task::JoinSet::new();
    let arrivals = u64::try_from(INTERVAL.as_millis() / ARRIVAL_GAP.as_millis()).expect("u64") + 20;
    for n in 0..arrivals {
        let log = log.clone();
        appends.spawn(async move {
            let arrived = Instant::now();
            log.append(sample_record(3 + n))
                .await
                .map(|_| arrived.elapsed())
        });
        tokio::time::sleep(ARRIVAL_GAP).await;
    }
    let mut waits = Vec::new();
    while let Some(joined) = appends.join_next().await {
        waits.push(joined.expect("append task").expect("append under load"));
    }
    waits.sort();
    // Paced, the first record starts a batch at once and the rest wait for the interval, on
    // average half of it. A stall of the arrivals for a whole step starts one batch early
    // and shortens the waits of the records before it. Written as they come, each record
    // would wait for one commit, milliseconds.
    let median_wait = waits[waits.len() / 2];
    assert!(
        median_wait >= INTERVAL / 5,
        "records arriving every {ARRIVAL_GAP:?} waited {median_wait:?} at the median, as if \
         nothing paced them"
    );
    assert_intact(&log.verify(None).await.expect("verify"), 3 + arrivals);
    store.close().await;
}

/// A batch interval near `Duration::MAX` is cut to the maximum, so that adding it to the time
/// of a batch cannot overflow and stop the appender.
async fn longest_batch_interval_is_capped(db: &TestDb) {
    let store = db.open().await;
    let log = IssuanceLog::new(
        store.clone(),
        LogOptions {
            batch_interval: Duration::MAX,
            ..LogOptions::default()
        },
    );
    for n in 0..3 {
        log.append(sample_record(n)).await.expect("append");
    }
    assert_intact(&log.verify(None).await.expect("verify"), 3);
    store.close().await;
}

/// A record that the database could not store is rejected on its own, and the records appended
/// beside it, which may share its batch, are stored.
async fn rejected_record_spares_its_batch(db: &TestDb) {
    let store = db.open().await;
    let log = IssuanceLog::new(
        store.clone(),
        LogOptions {
            // A long interval, so that the records queue up and share batches.
            batch_interval: Duration::from_millis(50),
            ..LogOptions::default()
        },
    );
    let mut long_jti = sample_record(1);
    long_jti.jti = Some("j".repeat(MAX_INDEXED_BYTES * 4));
    let mut deep = serde_json::json!(null);
    for _ in 0..=MAX_JSON_DEPTH {
        deep = serde_json::json!([deep]);
    }
    let mut deep_result = sample_record(3);
    deep_result.attestation_result = Some(deep);
    let bad = [
        NewRecord::refusal("nul \0 in the reason"),
        long_jti,
        deep_result,
    ];

    let mut set = tokio::task::JoinSet::new();
    for n in 0..60_u64 {
        let log = log.clone();
        let record = match n % 20 {
            5 => bad[usize::try_from(n / 20).expect("small")].clone(),
            _ => sample_record(100 + n),
        };
        let good = n % 20 != 5;
        set.spawn(async move { (good, log.append(record).await) });
    }
    let mut stored = 0;
    while let Some(result) = set.join_next().await {
        let (good, outcome) = result.expect("append task");
        if good {
            outcome.expect("a valid record beside a rejected one");
            stored += 1;
        } else {
            assert!(
                matches!(outcome, Err(LogError::InvalidRecord(_))),
                "expected InvalidRecord, got {outcome:?}"
            );
        }
    }
    assert_eq!(stored, 57);
    assert_intact(&log.verify(None).await.expect("verify"), 57);
    assert_eq!(log.list(0, 100).await.expect("list").len(), 57);
    store.close().await;
}

/// SQLite stores any value in any column, so an edit can leave a value that does not decode
/// as its column's type. Verify names that record as edited instead of failing, on a page
/// read and on the lookahead past an unchained record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_sqlite_value_detected() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    let (log, public) = signed_log(&store, ed25519_key(), 10);
    append_concurrently(&log, 0, 30, 4).await;
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 30);
    let mut raw = db.raw().await;

    // The driver converts some foreign values to the column's type, such as an integer to
    // text. Such a record counts as edited because its contents no longer match its hash.
    let edits = [
        ("time_unix_ms", "'noon'", true),
        ("spiffe_id", "x'ff00'", true),
        ("spiffe_id", "CAST(x'ff' AS TEXT)", true),
        ("prev_hash", "3.5", true),
        ("kind", "12", false),
    ];
    for (column, value, undecodable) in edits {
        let original = stored_row(&store, 17).await;
        let sql = format!("UPDATE issuance_log SET {column} = {value} WHERE seq = 17");
        execute(&mut raw, &sql, &[]).await;
        let report = log
            .verify(Some(&public))
            .await
            .unwrap_or_else(|error| panic!("verify with {column} = {value}: {error}"));
        assert_altered(&report, 17, AlterationKind::Edited);
        assert_eq!(report.records, 17, "records before the edit are intact");
        let detail = &report.alteration.as_ref().expect("alteration").detail;
        assert_eq!(
            detail.contains("does not decode"),
            undecodable,
            "{column}: {detail}"
        );
        if undecodable {
            assert!(detail.contains(column), "{column}: {detail}");
        }
        execute(&mut raw, "DELETE FROM issuance_log WHERE seq = $1", &[17]).await;
        insert_raw(&mut raw, &original).await;
        assert_intact(&log.verify(Some(&public)).await.expect("verify"), 30);
    }

    // An edited record followed by an undecodable one: the lookahead that checks whether the
    // next record continues the chain in the edited one's place must not fail on it.
    let originals = [stored_row(&store, 20).await, stored_row(&store, 21).await];
    execute(
        &mut raw,
        "UPDATE issuance_log SET spiffe_id = 'spiffe://example.org/forged' WHERE seq = $1",
        &[20],
    )
    .await;
    execute(
        &mut raw,
        "UPDATE issuance_log SET time_unix_ms = 'noon' WHERE seq = $1",
        &[21],
    )
    .await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 20, AlterationKind::Edited);
    execute(
        &mut raw,
        "DELETE FROM issuance_log WHERE seq IN (20, 21)",
        &[],
    )
    .await;
    for original in &originals {
        insert_raw(&mut raw, original).await;
    }
    assert_intact(&log.verify(Some(&public)).await.expect("verify"), 30);

    // Two swapped records, the one moved to the later seq undecodable: classifying the
    // earlier one reads it.
    swap_seqs(&mut raw, 12, 14).await;
    execute(
        &mut raw,
        "UPDATE issuance_log SET time_unix_ms = 'noon' WHERE seq = $1",
        &[14],
    )
    .await;
    let report = log.verify(Some(&public)).await.expect("verify");
    assert_altered(&report, 12, AlterationKind::Reordered { original_seq: 14 });

    // The newest record undecodable: the start check names it.
    execute(
        &mut raw,
        "UPDATE issuance_log SET time_unix_ms = 'noon' WHERE seq = $1",
        &[29],
    )
    .await;
    assert_head(&log, Some(&public), Some((29, AlterationKind::Edited))).await;

    raw.close().await.expect("close raw connection");
    store.close().await;
}
