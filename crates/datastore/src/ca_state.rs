//! The CA's own records (which authorities exist and their states), as opaque values by key.

use sqlx::Row;

use crate::{Datastore, DatastoreError};

impl Datastore {
    /// Stores `value` under `key`, replacing any previous value.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn put_ca_state(&self, key: &str, value: &[u8]) -> Result<(), DatastoreError> {
        sqlx::query(
            "INSERT INTO ca_state (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        tracing::debug!(key, bytes = value.len(), "CA state stored");
        Ok(())
    }

    /// Returns the value stored under `key`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn get_ca_state(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        let row = sqlx::query("SELECT value FROM ca_state WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get("value"))
            .transpose()
            .map_err(DatastoreError::from)
    }
}
