//! Several CA managers on one database, as server replicas run them: each signs with its own
//! key, every bundle is the union, and rows from before instance IDs existed keep their CA.
//!
//! The PostgreSQL tests connect to `postgres://postgres@127.0.0.1:5432/postgres` and create a
//! uniquely named database per test, dropped afterwards. When the connection fails they fail,
//! unless `TWID_SKIP_POSTGRES=1` is set, in which case they return early.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::{AnyConnection, Connection as _};
use twid_ca::X509SvidRequest;
use twid_datastore::{ChangeEvent, ChangeKind, DatabaseType, Datastore, DatastoreConfig};
use twid_spiffe::x509::{X509Bundle, X509BundleSet};
use twid_spiffe::{SpiffeId, TrustDomain};

use super::*;
use crate::test_support::TestDatastore;

const TTL: Duration = Duration::from_secs(3600);
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Functional bound for a notification to arrive; it takes milliseconds.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh PostgreSQL database, dropped on drop.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    async fn create() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let mut admin = match AnyConnection::connect(POSTGRES_ADMIN_URL).await {
            Ok(conn) => conn,
            Err(error) if std::env::var("TWID_SKIP_POSTGRES").as_deref() == Ok("1") => {
                eprintln!("skipping PostgreSQL test: {error}");
                return None;
            }
            Err(error) => panic!(
                "PostgreSQL at 127.0.0.1:5432 (user postgres) is unreachable: {error}; start \
                 it, or set TWID_SKIP_POSTGRES=1 to skip the PostgreSQL tests"
            ),
        };
        let name = format!(
            "twid_replica_ca_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Some(Self { name })
    }

    async fn open(&self) -> Datastore {
        let config = DatastoreConfig {
            ro_connection_string: None,
            database_type: DatabaseType::Postgres,
            connection_string: format!("postgres://postgres@127.0.0.1:5432/{}", self.name),
        };
        Datastore::open(&config).await.unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block, so the cleanup gets its own
        // thread and runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = AnyConnection::connect(POSTGRES_ADMIN_URL).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("failed to drop test database: {error}");
        }
    }
}

fn settings(keys_dir: &Path, instance_id: &str) -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: TTL,
        subject: CaSubject {
            country: Vec::new(),
            organization: vec!["twid test".to_owned()],
            common_name: None,
        },
        keys_dir: Some(keys_dir.to_owned()),
        instance_id: instance_id.to_owned(),
        upstream: None,
    }
}

async fn open_sqlite(path: &Path) -> Datastore {
    let config = DatastoreConfig {
        ro_connection_string: None,
        database_type: DatabaseType::Sqlite,
        connection_string: path.display().to_string(),
    };
    Datastore::open(&config).await.unwrap()
}

fn active_id(ca: &CaManager) -> String {
    hex::encode(ca.snapshot().active_x509().unwrap().key_id())
}

fn jwt_key_ids(snapshot: &CaSnapshot) -> Vec<String> {
    snapshot
        .jwt_public_keys()
        .into_iter()
        .map(|key| key.key_id)
        .collect()
}

/// Signs an X.509-SVID with the active authority of `signer` and verifies it against the
/// union bundle of `verifier`.
fn verify_across(signer: &CaManager, verifier: &CaManager, now: SystemTime) -> Result<(), String> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let spiffe_id = SpiffeId::new("spiffe://example.org/workload").unwrap();
    let leaf = signer
        .snapshot()
        .active_x509()
        .unwrap()
        .sign_x509_svid(&X509SvidRequest {
            spiffe_id: &spiffe_id,
            public_key_spki_der: &key.public_key_spki_der(),
            ttl: Duration::from_secs(600),
            dns_names: &[],
            now,
        })
        .unwrap();
    let trust_domain = TrustDomain::new("example.org").unwrap();
    let bundle =
        X509Bundle::from_authorities(trust_domain, verifier.snapshot().x509_authorities()).unwrap();
    let mut bundles = X509BundleSet::new();
    bundles.insert(bundle);
    twid_spiffe::x509::verify_x509_svid(&[leaf], &bundles, now)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sign_with_own_keys() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let a = CaManager::load_or_create(
        settings(&dir.path().join("keys-a"), "a"),
        database.open().await,
        now,
    )
    .await
    .unwrap();
    // A started alone, so it has no peers until it reloads.
    assert_eq!(a.snapshot().x509_authorities().len(), 1);
    let b = CaManager::load_or_create(
        settings(&dir.path().join("keys-b"), "b"),
        database.open().await,
        now,
    )
    .await
    .unwrap();
    assert_ne!(active_id(&a), active_id(&b));
    assert!(a.reload_peers(now).await.unwrap());
    assert!(!a.reload_peers(now).await.unwrap(), "an unchanged reload");

    for ca in [&a, &b] {
        let snapshot = ca.snapshot();
        assert_eq!(snapshot.x509.len(), 1, "own authorities only");
        let union = snapshot.x509_authorities();
        assert_eq!(union.len(), 2);
        for other in [&a, &b] {
            let cert = other.snapshot().active_x509().unwrap().cert_der().clone();
            assert!(union.contains(&cert), "{} missing", other.instance_id());
        }
        let jwt = jwt_key_ids(&snapshot);
        assert_eq!(jwt.len(), 2);
        for other in [&a, &b] {
            let kid = other.snapshot().active_jwt().unwrap().key_id().to_owned();
            assert!(
                jwt.contains(&kid),
                "JWT key of {} missing",
                other.instance_id()
            );
        }
    }
    verify_across(&a, &b, now).expect("A-signed SVID verifies with B's bundle");
    verify_across(&b, &a, now).expect("B-signed SVID verifies with A's bundle");

    // Each replica keeps its key files in its own directory.
    let a_key = dir
        .path()
        .join("keys-a")
        .join(format!("x509-ca-{}.pem", a.snapshot().x509[0].id));
    assert!(a_key.exists());
    let b_has_a_key = dir
        .path()
        .join("keys-b")
        .join(format!("x509-ca-{}.pem", a.snapshot().x509[0].id));
    assert!(!b_has_a_key.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_change_seen_after_notification() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let a = CaManager::load_or_create(
        settings(&dir.path().join("keys-a"), "a"),
        database.open().await,
        now,
    )
    .await
    .unwrap();
    let b_datastore = database.open().await;
    let b = CaManager::load_or_create(
        settings(&dir.path().join("keys-b"), "b"),
        b_datastore.clone(),
        now,
    )
    .await
    .unwrap();
    let mut listener = b_datastore.listen_for_changes().await.unwrap().unwrap();

    let (prepared, tainted_jwt) = a
        .apply_manual(|ca, x509, jwt| -> Result<_, ServerError> {
            let slot = ca.create_x509_slot(now, SlotState::Prepared)?;
            let prepared = slot.authority.cert_der().clone();
            x509.push(slot);
            jwt[0].tainted = true;
            Ok((prepared, jwt[0].key.key_id().to_owned()))
        })
        .await
        .unwrap();
    assert!(!b.snapshot().x509_authorities().contains(&prepared));

    let event = tokio::time::timeout(RECEIVE_TIMEOUT, async {
        loop {
            let event = listener.recv().await;
            if event == ChangeEvent::Changed(ChangeKind::Authorities) {
                return event;
            }
        }
    })
    .await
    .expect("no authorities notification from A");
    assert_eq!(event, ChangeEvent::Changed(ChangeKind::Authorities));
    let generation = b.snapshot().generation;
    assert!(b.reload_peers(now).await.unwrap());
    let snapshot = b.snapshot();
    assert!(snapshot.generation > generation);
    assert!(snapshot.x509_authorities().contains(&prepared));
    assert_eq!(snapshot.x509_authorities().len(), 3);
    assert_eq!(snapshot.tainted_jwt_ids(), [tainted_jwt]);
    // B's own authorities are untouched: it still signs with its own active one.
    assert_eq!(snapshot.x509.len(), 1);
}

#[tokio::test]
async fn legacy_row_keeps_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let now = SystemTime::now();
    let first_dir = dir.path().join("first");
    let upgraded_dir = dir.path().join("upgraded");
    std::fs::create_dir(&first_dir).unwrap();
    std::fs::create_dir(&upgraded_dir).unwrap();
    let first_database = TestDatastore::new(&first_dir);
    let upgraded_database = TestDatastore::new(&upgraded_dir);
    let first = Datastore::open(&first_database.config).await.unwrap();
    let before = CaManager::load_or_create(settings(&keys, "before"), first.clone(), now)
        .await
        .unwrap();
    let x509_id = active_id(&before);
    let jwt_id = before.snapshot().active_jwt().unwrap().key_id().to_owned();
    // Rows as a server from before instance IDs wrote them: the same values under bare keys.
    let x509_row = first.get_ca_state("x509_authorities/before").await.unwrap();
    let jwt_row = first.get_ca_state("jwt_keys/before").await.unwrap();
    drop(before);
    let upgraded = Datastore::open(&upgraded_database.config).await.unwrap();
    upgraded
        .put_ca_state(X509_STATE_KEY, &x509_row.unwrap())
        .await
        .unwrap();
    upgraded
        .put_ca_state(JWT_STATE_KEY, &jwt_row.unwrap())
        .await
        .unwrap();

    // A server with another key directory does not have the keys, so it leaves the rows.
    let stranger = CaManager::load_or_create(
        settings(&dir.path().join("other-keys"), "stranger"),
        upgraded.clone(),
        now,
    )
    .await
    .unwrap();
    assert_ne!(active_id(&stranger), x509_id);
    assert!(
        upgraded
            .get_ca_state(X509_STATE_KEY)
            .await
            .unwrap()
            .is_some()
    );
    drop(stranger);

    let ca = CaManager::load_or_create(settings(&keys, "upgraded"), upgraded.clone(), now)
        .await
        .unwrap();
    assert_eq!(active_id(&ca), x509_id);
    assert_eq!(ca.snapshot().active_jwt().unwrap().key_id(), jwt_id);
    assert!(
        upgraded
            .get_ca_state(X509_STATE_KEY)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        upgraded
            .get_ca_state(JWT_STATE_KEY)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        upgraded
            .get_ca_state("x509_authorities/upgraded")
            .await
            .unwrap()
            .is_some()
    );
    drop(ca);

    // The moved rows load again on the next start.
    let restarted = CaManager::load_or_create(settings(&keys, "upgraded"), upgraded, now)
        .await
        .unwrap();
    assert_eq!(active_id(&restarted), x509_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_lock_runs_job_once() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let first = database.open().await;
    let second = database.open().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();

    let holder = {
        let runs = Arc::clone(&runs);
        let first = first.clone();
        tokio::spawn(async move {
            crate::tasks::run_exclusive(&first, "test_job", async {
                runs.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Ok::<_, ServerError>(())
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let skipped = crate::tasks::run_exclusive(&second, "test_job", async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ServerError>(())
    })
    .await
    .unwrap();
    assert_eq!(
        skipped, None,
        "the second runner ran while the first held the lock"
    );
    let other_job =
        crate::tasks::run_exclusive(&second, "other_job", async { Ok::<_, ServerError>(()) })
            .await
            .unwrap();
    assert_eq!(other_job, Some(()), "another job's lock is independent");

    release_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Some(()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The released lock is free for the other runner. The rollback that releases it may
    // reach the server a moment after the job returns, so this retries briefly.
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let ran = crate::tasks::run_exclusive(&second, "test_job", async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ServerError>(())
        })
        .await
        .unwrap();
        if ran.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job lock stayed held after its job finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn job_lock_always_granted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let datastore = open_sqlite(&dir.path().join("jobs.sqlite3")).await;
    let held = datastore.try_lock_job("test_job").await.unwrap();
    assert!(held.is_some());
    // The held lock keeps no connection, so the job can use the single SQLite connection.
    let ran = crate::tasks::run_exclusive(&datastore, "test_job", async {
        datastore.prune_join_tokens(0).await
    })
    .await
    .unwrap();
    assert_eq!(ran, Some(0));
}
