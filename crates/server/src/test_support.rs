//! The datastore of tests that open one, on the backend that the environment variable
//! `TWID_TEST_DATASTORE` selects: `sqlite` (the default) or `postgres`.
//!
//! The unit tests compile this file as the crate's `test_support` module, and each integration
//! test under `tests/` includes it with `#[path]`, so it uses only crates that both can reach.
//! Under `postgres` every [`TestDatastore`] is a fresh database on
//! `postgres://postgres@127.0.0.1:5432`, dropped with `DROP DATABASE ... WITH (FORCE)` when the
//! value is dropped. An unreachable PostgreSQL fails the test rather than skipping it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Connection as _};
use twid_datastore::{DatabaseType, DatastoreConfig};

const DATASTORE_ENV: &str = "TWID_TEST_DATASTORE";
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// One test's datastore. Open it with `Datastore::open(&datastore.config)` as often as the test
/// needs, as a restarted server would.
pub(crate) struct TestDatastore {
    pub(crate) config: DatastoreConfig,
    /// The PostgreSQL database to drop on drop.
    postgres_name: Option<String>,
}

impl TestDatastore {
    /// Selects the SQLite file `<dir>/datastore.sqlite3`, which `Datastore::open` creates, or
    /// creates a fresh PostgreSQL database.
    ///
    /// # Panics
    /// Panics when `TWID_TEST_DATASTORE` is neither unset, `sqlite` nor `postgres`, and under
    /// `postgres` when the database cannot be created.
    pub(crate) fn new(dir: &Path) -> Self {
        let selected =
            std::env::var_os(DATASTORE_ENV).map(|value| value.to_string_lossy().into_owned());
        match selected.as_deref() {
            None | Some("sqlite") => Self {
                config: DatastoreConfig {
                    ro_connection_string: None,
                    database_type: DatabaseType::Sqlite,
                    connection_string: dir.join("datastore.sqlite3").display().to_string(),
                },
                postgres_name: None,
            },
            Some("postgres") => {
                let name = unique_database_name();
                run_admin_statement(format!("CREATE DATABASE {name}")).unwrap_or_else(|error| {
                    panic!(
                        "{DATASTORE_ENV}=postgres, but creating database {name} at \
                         127.0.0.1:5432 (user postgres) failed: {error}"
                    )
                });
                Self {
                    config: DatastoreConfig {
                        ro_connection_string: None,
                        database_type: DatabaseType::Postgres,
                        connection_string: format!("{POSTGRES_BASE_URL}/{name}"),
                    },
                    postgres_name: Some(name),
                }
            }
            Some(other) => {
                panic!("invalid {DATASTORE_ENV} value {other:?}, expected sqlite or postgres")
            }
        }
    }
}

impl Drop for TestDatastore {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(error) = run_admin_statement(sql) {
            eprintln!("failed to drop test database {name}: {error}");
        }
    }
}

/// Runs `sql` on the `postgres` database. It runs on a thread with its own runtime, because
/// callers are synchronous tests, async tests and `Drop`, and a runtime cannot block on a
/// future inside another.
fn run_admin_statement(sql: String) -> Result<(), String> {
    let statement = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async {
            sqlx::any::install_default_drivers();
            let mut admin = AnyConnection::connect(POSTGRES_ADMIN_URL)
                .await
                .map_err(|error| error.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .map_err(|error| error.to_string())?;
            admin.close().await.map_err(|error| error.to_string())
        })
    });
    statement
        .join()
        .unwrap_or_else(|_| Err("the statement thread panicked".to_owned()))
}

/// Returns `twid_test_<pid>_<nanoseconds since 1970>_<sequence>`, unique across the test
/// processes that run at the same time and across earlier runs.
fn unique_database_name() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("twid_test_{}_{nanos}_{sequence}", std::process::id())
}
