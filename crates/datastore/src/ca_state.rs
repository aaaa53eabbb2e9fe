//! The CA's own records (which authorities exist and their states), as opaque values by key.
//!
//! Server replicas that share a database each keep their authorities under keys of their own
//! (`<kind>/<instance ID>`), and each reads the others' rows to build the trust bundle.

use sqlx::Row;

use crate::notify::{ChangeKind, send_change};
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

    /// Stores every `(key, value)` pair of a replica's authorities in one transaction, which
    /// sends the [`ChangeKind::Authorities`] notification on PostgreSQL, so that the other
    /// replicas reload their trust bundle.
    ///
    /// # Errors
    /// Returns the database failure; then nothing is stored.
    pub async fn put_authority_states(
        &self,
        values: &[(&str, &[u8])],
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        for (key, value) in values {
            sqlx::query(
                "INSERT INTO ca_state (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(*key)
            .bind(*value)
            .execute(&mut *tx)
            .await?;
        }
        send_change(&mut tx, self.backend, ChangeKind::Authorities).await?;
        tx.commit().await?;
        tracing::debug!(rows = values.len(), "authority states stored");
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

    /// Returns every `(key, value)` whose key starts with `prefix`, ordered by key.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn list_ca_state(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT key, value FROM ca_state WHERE key LIKE $1 ESCAPE '\\' ORDER BY key",
        )
        .bind(format!("{}%", escape_like(prefix)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key")?, row.try_get("value")?)))
            .collect()
    }

    /// Moves each `(old key, new key)` pair's value to the new key in one transaction, and
    /// returns whether anything moved. A pair whose old key is absent is skipped, and a value
    /// whose new key already exists is dropped with its old key. Of several servers moving the
    /// same old key at once, exactly one receives it, because the `DELETE` that reads it locks
    /// the row. A move sends the [`ChangeKind::Authorities`] notification on PostgreSQL.
    ///
    /// # Errors
    /// Returns the database failure; then nothing moves.
    pub async fn move_ca_state(&self, moves: &[(&str, &str)]) -> Result<bool, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let mut moved = false;
        for (old_key, new_key) in moves {
            let row = sqlx::query("DELETE FROM ca_state WHERE key = $1 RETURNING value")
                .bind(*old_key)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                continue;
            };
            let value: Vec<u8> = row.try_get("value")?;
            sqlx::query(
                "INSERT INTO ca_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(*new_key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
            tracing::debug!(old_key, new_key, "CA state moved");
            moved = true;
        }
        if moved {
            send_change(&mut tx, self.backend, ChangeKind::Authorities).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }
}

/// Escapes the `LIKE` wildcards `%` and `_` and the escape character `\` in `text`.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}
