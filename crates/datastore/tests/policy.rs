//! Policy versions on both backends: each test body runs once on a temporary SQLite file
//! (module `sqlite`) and once on a fresh PostgreSQL database (module `postgres`).
//!
//! The PostgreSQL tests connect to `postgres://postgres@127.0.0.1:5432/postgres`, create a
//! uniquely named database per test and drop it afterwards. When the connection fails they
//! fail too, unless `TWID_SKIP_POSTGRES=1` is set, in which case they return early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Connection};
use twid_datastore::{DatabaseType, Datastore, DatastoreConfig, DatastoreError, PolicyVersion};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432";
const SKIP_POSTGRES_ENV: &str = "TWID_SKIP_POSTGRES";

/// One test's database, removed when dropped.
struct TestDb {
    config: DatastoreConfig,
    _dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("policy.db");
        Self {
            config: DatastoreConfig {
                database_type: DatabaseType::Sqlite,
                connection_string: path.to_str().expect("temp path is UTF-8").to_owned(),
            },
            _dir: Some(dir),
            postgres_name: None,
        }
    }

    async fn postgres() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let connect = AnyConnection::connect(POSTGRES_ADMIN_URL);
        let mut admin = match tokio::time::timeout(Duration::from_secs(20), connect).await {
            Ok(Ok(conn)) => conn,
            failure => {
                let reason = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out after 20 s".to_owned(),
                };
                if std::env::var(SKIP_POSTGRES_ENV).as_deref() == Ok("1") {
                    eprintln!("skipping PostgreSQL test: {reason}");
                    return None;
                }
                panic!(
                    "PostgreSQL at 127.0.0.1:5432 (user postgres) is unreachable: {reason}; \
                     start it, or set {SKIP_POSTGRES_ENV}=1 to skip the PostgreSQL tests"
                );
            }
        };
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let name = format!(
            "twid_policy_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        Some(Self {
            config: DatastoreConfig {
                database_type: DatabaseType::Postgres,
                connection_string: format!("{POSTGRES_BASE_URL}/{name}"),
            },
            _dir: None,
            postgres_name: Some(name),
        })
    }

    async fn open(&self) -> Datastore {
        Datastore::open(&self.config)
            .await
            .expect("open the test datastore")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build cleanup runtime");
            runtime.block_on(async {
                let mut admin = AnyConnection::connect(POSTGRES_ADMIN_URL).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
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
    versions_are_kept_and_listed_in_order,
    check_gets_current_and_can_reject,
    same_version_twice_rejected,
    concurrent_appends_store_one,
);

fn version(number: u64, signer: &str) -> PolicyVersion {
    PolicyVersion {
        version: number,
        jws: format!("header.payload{number}.signature"),
        document: format!("{{\"version\":{number}}}"),
        signer_kid: signer.to_owned(),
        applied_at: 1_700_000_000 + i64::try_from(number).expect("small"),
    }
}

/// A check that accepts exactly the next version number.
fn next_of(new: u64) -> impl FnOnce(Option<&PolicyVersion>) -> Result<(), DatastoreError> {
    move |current| {
        let expected = current.map_or(1, |current| current.version + 1);
        if new == expected {
            Ok(())
        } else {
            Err(DatastoreError::Conflict(format!("expected {expected}")))
        }
    }
}

async fn versions_are_kept_and_listed_in_order(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.current_policy_version().await.expect("query"), None);
    assert_eq!(store.current_policy().await.expect("query"), None);
    for number in 1..=3 {
        let new = version(number, &format!("owner{number}"));
        store
            .append_policy_version(&new, next_of(number))
            .await
            .expect("append");
    }
    assert_eq!(
        store.current_policy_version().await.expect("query"),
        Some(3)
    );
    assert_eq!(
        store.current_policy().await.expect("query"),
        Some(version(3, "owner3"))
    );
    assert_eq!(
        store.get_policy_version(2).await.expect("query"),
        Some(version(2, "owner2"))
    );
    assert_eq!(store.get_policy_version(4).await.expect("query"), None);
    // Versions that no column can store are absent, not an error.
    for unstorable in [1 << 63, u64::MAX] {
        assert_eq!(
            store.get_policy_version(unstorable).await.expect("query"),
            None
        );
    }
    let listed: Vec<u64> = store
        .list_policy_versions()
        .await
        .expect("list")
        .iter()
        .map(|stored| stored.version)
        .collect();
    assert_eq!(listed, [1, 2, 3]);

    // A reopened store reads the same versions.
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store.get_policy_version(1).await.expect("query"),
        Some(version(1, "owner1"))
    );
}

async fn check_gets_current_and_can_reject(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    let mut seen = None;
    let rejected = store
        .append_policy_version(&version(3, "a"), |current: Option<&PolicyVersion>| {
            seen = current.map(|current| (current.version, current.signer_kid.clone()));
            next_of(3)(current)
        })
        .await;
    assert!(
        matches!(&rejected, Err(DatastoreError::Conflict(message)) if message == "expected 2"),
        "{rejected:?}"
    );
    assert_eq!(seen, Some((1, "a".to_owned())));
    assert_eq!(
        store.current_policy_version().await.expect("query"),
        Some(1)
    );
    assert_eq!(store.list_policy_versions().await.expect("list").len(), 1);
}

async fn same_version_twice_rejected(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    // A check that accepts anything still cannot overwrite a stored version.
    let again = store
        .append_policy_version(&version(1, "b"), |_: Option<&PolicyVersion>| {
            Ok::<(), DatastoreError>(())
        })
        .await;
    assert!(
        matches!(&again, Err(DatastoreError::AlreadyExists(what)) if what == "policy version 1"),
        "{again:?}"
    );
    assert_eq!(
        store.get_policy_version(1).await.expect("query"),
        Some(version(1, "a"))
    );
}

async fn concurrent_appends_store_one(db: &TestDb) {
    let store = db.open().await;
    store
        .append_policy_version(&version(1, "a"), next_of(1))
        .await
        .expect("append 1");
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_policy_version(&version(2, &format!("w{writer}")), next_of(2))
                .await
        }));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => stored += 1,
            Err(DatastoreError::AlreadyExists(_) | DatastoreError::Conflict(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(store.list_policy_versions().await.expect("list").len(), 2);
}
