//! Schema migrations: the SQL files under `migrations/<backend>/`, compiled into the binary and
//! applied in version order, each in its own transaction together with its
//! `schema_migrations` row.

use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::{DatabaseType, DatastoreError};

/// The PostgreSQL advisory lock key that serializes migrators: the ASCII bytes of "twid-mig".
const POSTGRES_MIGRATION_LOCK: i64 = 0x7477_6964_2d6d_6967;

/// One schema version.
struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, in ascending version order. Append only: a shipped migration never changes.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../migrations/sqlite/0002_issuance_log.sql"),
        postgres: include_str!("../migrations/postgres/0002_issuance_log.sql"),
    },
    Migration {
        version: 3,
        sqlite: include_str!("../migrations/sqlite/0003_previous_agent_svid.sql"),
        postgres: include_str!("../migrations/postgres/0003_previous_agent_svid.sql"),
    },
    Migration {
        version: 4,
        sqlite: include_str!("../migrations/sqlite/0004_policy_versions.sql"),
        postgres: include_str!("../migrations/postgres/0004_policy_versions.sql"),
    },
    Migration {
        version: 5,
        sqlite: include_str!("../migrations/sqlite/0005_revocations.sql"),
        postgres: include_str!("../migrations/postgres/0005_revocations.sql"),
    },
    Migration {
        version: 6,
        sqlite: include_str!("../migrations/sqlite/0006_federation.sql"),
        postgres: include_str!("../migrations/postgres/0006_federation.sql"),
    },
    Migration {
        version: 7,
        sqlite: include_str!("../migrations/sqlite/0007_entry_changes.sql"),
        postgres: include_str!("../migrations/postgres/0007_entry_changes.sql"),
    },
    Migration {
        version: 8,
        sqlite: include_str!("../migrations/sqlite/0008_datastore_identity.sql"),
        postgres: include_str!("../migrations/postgres/0008_datastore_identity.sql"),
    },
    Migration {
        version: 9,
        sqlite: include_str!("../migrations/sqlite/0009_change_tokens.sql"),
        postgres: include_str!("../migrations/postgres/0009_change_tokens.sql"),
    },
    Migration {
        version: 10,
        sqlite: include_str!("../migrations/sqlite/0010_log_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0010_log_indexes.sql"),
    },
];

/// Returns the newest schema version this binary supports.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every migration newer than the database's version.
///
/// Concurrent migrators of one database wait for each other: on PostgreSQL through a
/// session advisory lock, on SQLite because each migration runs in a `BEGIN IMMEDIATE`
/// transaction that re-reads the version.
pub(crate) async fn run(pool: &AnyPool, backend: DatabaseType) -> Result<(), DatastoreError> {
    let mut conn = pool.acquire().await?;
    if backend == DatabaseType::Sqlite {
        return migrate(&mut conn, backend).await;
    }

    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(POSTGRES_MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = migrate(&mut conn, backend).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(POSTGRES_MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Closing the session releases its advisory locks.
        conn.close_on_drop();
    }
    result?;
    unlocked?;
    Ok(())
}

async fn migrate(conn: &mut AnyConnection, backend: DatabaseType) -> Result<(), DatastoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version BIGINT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    check_not_too_new(current_version(conn).await?)?;
    for migration in MIGRATIONS {
        apply(conn, backend, migration).await?;
    }
    Ok(())
}

fn check_not_too_new(current: i64) -> Result<(), DatastoreError> {
    if current > latest_version() {
        return Err(DatastoreError::SchemaTooNew {
            found: current,
            supported: latest_version(),
        });
    }
    Ok(())
}

async fn current_version(conn: &mut AnyConnection) -> Result<i64, DatastoreError> {
    let row = sqlx::query("SELECT MAX(version) AS version FROM schema_migrations")
        .fetch_one(conn)
        .await?;
    Ok(row.try_get::<Option<i64>, _>("version")?.unwrap_or(0))
}

/// Applies `migration` unless the database already has it, reading the version inside the
/// migration's transaction.
async fn apply(
    conn: &mut AnyConnection,
    backend: DatabaseType,
    migration: &Migration,
) -> Result<(), DatastoreError> {
    let (sql, begin) = match backend {
        // IMMEDIATE takes the write lock before the version is read.
        DatabaseType::Sqlite => (migration.sqlite, "BEGIN IMMEDIATE"),
        DatabaseType::Postgres => (migration.postgres, "BEGIN"),
    };
    let mut tx = conn.begin_with(begin).await?;
    let current = current_version(&mut tx).await?;
    check_not_too_new(current)?;
    if current >= migration.version {
        return Ok(());
    }

    tracing::info!(version = migration.version, "applying schema migration");
    sqlx::raw_sql(sql).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
        .bind(migration.version)
        .bind(crate::unix_now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
