//! Errors returned by datastore operations.

/// A failed datastore operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A record with the same key, or an identical registration entry, already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A concurrent write got in the way; retrying the operation may succeed.
    #[error("conflicting concurrent write: {0}")]
    Conflict(String),
    /// The database driver failed (connection, SQL or I/O error).
    #[error("database operation failed: {0}")]
    Backend(#[source] sqlx::Error),
    /// The issuance log's own SQLite connection failed (SQL or I/O error).
    #[error("database operation failed: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A stored value cannot be decoded, for example an invalid SPIFFE ID or JSON.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was migrated by a newer twid than this one.
    #[error(
        "database schema version {found} is newer than the {supported} this binary supports; \
         run a twid release that supports it"
    )]
    SchemaTooNew {
        /// The highest migration version recorded in the database.
        found: i64,
        /// The highest migration version this binary ships.
        supported: i64,
    },
    /// The SQLite database file could not be created or inspected.
    #[error("failed to prepare database file {path}: {source}")]
    File {
        /// The database file path.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite file exists but cannot be opened as a database (corrupt, truncated or not
    /// a database at all).
    #[error(
        "cannot open SQLite database {path}: {source}; restore it from a backup or move it away"
    )]
    Open {
        /// The database file path.
        path: std::path::PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The read-only replica contains another database than the primary.
    #[error(
        "ro_connection_string reaches a database with datastore ID {found}, but \
         connection_string's database has {expected}: point ro_connection_string at a \
         read-only replica of the same database"
    )]
    ReplicaMismatch {
        /// The ID the replica returned.
        found: String,
        /// The primary's ID.
        expected: String,
    },
    /// The configuration cannot be used, for example a non-UTF-8 path.
    #[error("invalid datastore configuration: {0}")]
    InvalidConfig(String),
    /// No connection to the database server could be opened.
    #[error(
        "cannot reach PostgreSQL: {0}; check that it is running and that connection_string \
         names its host and port"
    )]
    Unreachable(String),
}

impl From<sqlx::Error> for DatastoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient_conflict(&error) {
            Self::Conflict(error.to_string())
        } else if matches!(
            error,
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)
        ) {
            // The schema fixes each column's type, so a stored value that does not decode,
            // such as text in an integer column of SQLite, was written outside twid.
            Self::Corrupt(format!("a stored value cannot be decoded: {error}"))
        } else {
            Self::Backend(error)
        }
    }
}

impl From<rusqlite::Error> for DatastoreError {
    fn from(error: rusqlite::Error) -> Self {
        // SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock past busy_timeout.
        let conflict = matches!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        if conflict {
            Self::Conflict(error.to_string())
        } else if matches!(
            error,
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..)
        ) {
            Self::Corrupt(format!("a stored value cannot be decoded: {error}"))
        } else {
            Self::Sqlite(error)
        }
    }
}

/// Returns whether `error` is a lock or serialization conflict that a retry may resolve:
/// PostgreSQL SQLSTATE 40001 (serialization failure) or 40P01 (deadlock), or SQLite
/// `SQLITE_BUSY` or `SQLITE_LOCKED` with any extended code.
fn is_transient_conflict(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        return matches!(db.code().as_deref(), Some("40001" | "40P01"));
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // sqlx reports the SQLite extended result code, whose low byte is the primary code.
        let primary = db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff);
        return matches!(primary, Some(5 | 6));
    }
    false
}

/// Returns whether `error` is a unique or primary key violation.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Maps a unique violation to [`DatastoreError::AlreadyExists`] naming `what`, and any other
/// driver error as [`From`] does.
pub(crate) fn map_unique(error: sqlx::Error, what: impl FnOnce() -> String) -> DatastoreError {
    if is_unique_violation(&error) {
        DatastoreError::AlreadyExists(what())
    } else {
        DatastoreError::from(error)
    }
}
