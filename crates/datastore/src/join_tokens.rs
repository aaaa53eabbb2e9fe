//! Single-use join tokens.
//!
//! The table stores the hex SHA-256 of each token, never the token itself, so a copy of the
//! database does not reveal tokens that are still unused. Callers pass and receive plain
//! tokens.

use std::fmt;

use sqlx::Row;

use crate::error::map_unique;
use crate::{Datastore, DatastoreError, sha256_hex};

/// A join token taken from the store.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The token value, a credential until it is used.
    pub token: String,
    /// Expiry time in unix seconds.
    pub expires_at: i64,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Datastore {
    /// Stores a join token that expires at `expires_at` (unix seconds).
    ///
    /// # Errors
    /// Returns [`DatastoreError::AlreadyExists`] if the same token is stored, or the database
    /// failure.
    pub async fn create_join_token(
        &self,
        token: &str,
        expires_at: i64,
    ) -> Result<(), DatastoreError> {
        sqlx::query("INSERT INTO join_tokens (token_sha256, expires_at) VALUES ($1, $2)")
            .bind(sha256_hex(token.as_bytes()))
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|error| map_unique(error, || "join token".to_owned()))?;
        tracing::debug!(expires_at, "join token stored");
        Ok(())
    }

    /// Deletes the token and returns it, or returns `None` if it is not stored. Of several
    /// concurrent callers with the same token, exactly one receives it. The token is returned
    /// even if it has expired; the caller checks `expires_at`.
    ///
    /// # Errors
    /// Returns the database failure, in which case the token stays stored.
    pub async fn take_join_token(&self, token: &str) -> Result<Option<JoinToken>, DatastoreError> {
        // One DELETE ... RETURNING statement both claims and reads the row, so no second
        // caller can read it between the two steps.
        let row =
            sqlx::query("DELETE FROM join_tokens WHERE token_sha256 = $1 RETURNING expires_at")
                .bind(sha256_hex(token.as_bytes()))
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(JoinToken {
            token: token.to_owned(),
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Deletes every token whose `expires_at` is not after `now`, and returns how many it
    /// deleted.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn prune_join_tokens(&self, now: i64) -> Result<u64, DatastoreError> {
        let deleted = sqlx::query("DELETE FROM join_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted > 0 {
            tracing::info!(deleted, "expired join tokens pruned");
        }
        Ok(deleted)
    }
}
