//! Locks that let one server replica at a time run a periodic job over shared rows.
//!
//! On PostgreSQL a lock is a transaction-level advisory lock (`pg_try_advisory_xact_lock`) in
//! a transaction that stays open while the job runs. Dropping the [`JobLock`] rolls the
//! transaction back, which releases the lock, and so does a lost connection or a crashed
//! server. On SQLite, where one file has one server, every lock is granted and holds no
//! connection, because the pool's single connection is needed by the job itself.

use sqlx::Row;

use crate::{DatabaseType, Datastore, DatastoreError};

/// A held job lock, released on drop.
#[derive(Debug)]
pub struct JobLock {
    /// The open transaction that holds the advisory lock; `None` on SQLite.
    _transaction: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

impl Datastore {
    /// Takes the lock of the job `name` without waiting, or returns `None` when another
    /// session holds it. Every server on the database must use the same name for a job.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn try_lock_job(&self, name: &str) -> Result<Option<JobLock>, DatastoreError> {
        if self.backend != DatabaseType::Postgres {
            return Ok(Some(JobLock { _transaction: None }));
        }
        let mut transaction = self.pool.begin().await?;
        let row = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind(job_lock_key(name))
            .fetch_one(&mut *transaction)
            .await?;
        let locked: bool = row.try_get("locked")?;
        if !locked {
            tracing::debug!(job = name, "job lock held by another session");
            return Ok(None);
        }
        Ok(Some(JobLock {
            _transaction: Some(transaction),
        }))
    }
}

/// Returns the advisory lock key of the job `name`: the first 8 bytes of the SHA-256 of
/// `twid job <name>`, so that it is the same on every server and unlikely to collide with
/// another application's keys on a shared database.
fn job_lock_key(name: &str) -> i64 {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("twid job {name}").as_bytes(),
    );
    let mut bytes = [0_u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::job_lock_key;

    #[test]
    fn job_lock_keys_differ_per_job() {
        assert_eq!(job_lock_key("prune"), job_lock_key("prune"));
        assert_ne!(job_lock_key("prune"), job_lock_key("prune_join_tokens"));
    }
}
