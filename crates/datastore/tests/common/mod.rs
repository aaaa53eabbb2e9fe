//! The both-backends harness shared by the datastore integration tests: a per-test database
//! (`TestDb`) and the `on_both_backends!` macro that runs each test body on SQLite and on
//! PostgreSQL.
//!
//! The PostgreSQL tests connect to `postgres://postgres@127.0.0.1:5432/postgres`, create a
//! uniquely named database per test and drop it afterwards. When the connection fails they
//! fail too, unless `TWID_SKIP_POSTGRES=1` is set, in which case they return early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Connection};
use twid_datastore::{DatabaseType, Datastore, DatastoreConfig};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432";
const SKIP_POSTGRES_ENV: &str = "TWID_SKIP_POSTGRES";

/// One test's database, removed when dropped.
pub(crate) struct TestDb {
    pub(crate) config: DatastoreConfig,
    /// The SQLite file's directory, deleted on drop.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database to drop on drop.
    postgres_name: Option<String>,
}

impl TestDb {
    /// Creates a temporary directory holding the SQLite file `file_name`, which the datastore
    /// creates when it opens.
    pub(crate) fn sqlite(file_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(file_name);
        Self {
            config: DatastoreConfig {
                ro_connection_string: None,
                database_type: DatabaseType::Sqlite,
                connection_string: path.to_str().expect("temp path is UTF-8").to_owned(),
            },
            _dir: Some(dir),
            postgres_name: None,
        }
    }

    /// Creates a fresh PostgreSQL database whose name starts with `name_prefix`, or returns
    /// `None` when the connection fails and `TWID_SKIP_POSTGRES=1`.
    pub(crate) async fn postgres(name_prefix: &str) -> Option<Self> {
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
        let name = unique_database_name(name_prefix);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        Some(Self {
            config: DatastoreConfig {
                ro_connection_string: None,
                database_type: DatabaseType::Postgres,
                connection_string: format!("{POSTGRES_BASE_URL}/{name}"),
            },
            _dir: None,
            postgres_name: Some(name),
        })
    }

    pub(crate) async fn open(&self) -> Datastore {
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

/// Returns `<prefix>_<pid>_<nanoseconds since 1970>_<sequence>`, unique across the test
/// processes that run at the same time.
fn unique_database_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{nanos}_{sequence}", std::process::id())
}

/// Defines, for each listed body `async fn name(db: &TestDb)` at the test file's root, the tests
/// `sqlite::name` and `postgres::name`. The SQLite test uses a file named `sqlite_file`, the
/// PostgreSQL test a database whose name starts with `postgres_prefix`, and both run on a
/// multi-thread runtime with `worker_threads` threads.
macro_rules! on_both_backends {
    (
        sqlite_file: $sqlite_file:literal,
        postgres_prefix: $postgres_prefix:literal,
        worker_threads: $worker_threads:tt,
        tests: [$($body:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $worker_threads)]
                async fn $body() {
                    let db = $crate::common::TestDb::sqlite($sqlite_file);
                    super::$body(&db).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $worker_threads)]
                async fn $body() {
                    let Some(db) = $crate::common::TestDb::postgres($postgres_prefix).await else {
                        return;
                    };
                    super::$body(&db).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_backends;
