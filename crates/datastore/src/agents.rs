//! Attested agents, keyed by SPIFFE ID.

use sqlx::Row;
use sqlx::any::AnyRow;
use twid_spiffe::SpiffeId;
use twid_types::AttestedAgent;

use crate::error::map_unique;
use crate::notify::{ChangeKind, send_change};
use crate::{
    Datastore, DatastoreError, bump_revision, from_json, get_bool, parse_spiffe_id, to_json,
};

/// The columns [`agent_from_row`] reads, as a literal for `concat!`.
macro_rules! agent_columns {
    () => {
        "spiffe_id, attestation_type, x509_svid_serial, x509_svid_expires_at, \
         previous_x509_svid_serial, previous_x509_svid_expires_at, selectors, banned, \
         attested_at"
    };
}

impl Datastore {
    /// Stores a newly attested agent.
    ///
    /// # Errors
    /// Returns [`DatastoreError::AlreadyExists`] if an agent with the same SPIFFE ID is
    /// stored, or the database failure.
    pub async fn create_attested_agent(&self, agent: &AttestedAgent) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO attested_agents (spiffe_id, attestation_type, x509_svid_serial, \
             x509_svid_expires_at, previous_x509_svid_serial, previous_x509_svid_expires_at, \
             selectors, banned, attested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(agent.spiffe_id.as_str())
        .bind(agent.attestation_type.as_str())
        .bind(agent.x509_svid_serial.as_str())
        .bind(agent.x509_svid_expires_at)
        .bind(agent.previous_x509_svid_serial.as_deref())
        .bind(agent.previous_x509_svid_expires_at)
        .bind(to_json(&agent.selectors))
        .bind(agent.banned)
        .bind(agent.attested_at)
        .execute(&mut *tx)
        .await
        .map_err(|error| map_unique(error, || format!("attested agent {}", agent.spiffe_id)))?;
        bump_revision(&mut tx).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %agent.spiffe_id, "attested agent stored");
        Ok(())
    }

    /// Stores `agent`, replacing a stored agent with the same SPIFFE ID in one statement, so a
    /// concurrent reader finds either the old or the new record. The server uses it when a
    /// platform attests again with evidence.
    ///
    /// When a record is replaced, the previous fields of `agent` are ignored. The stored current
    /// X.509-SVID becomes the previous one, unless `presented_serial` (the SVID the caller
    /// presented) is the stored previous one: then the caller never received the current SVID,
    /// and the previous one stays. A new record stores the previous fields of `agent`.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn replace_attested_agent(
        &self,
        agent: &AttestedAgent,
        presented_serial: Option<&str>,
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        // SQLite (3.24 and later) and PostgreSQL (9.5 and later) both accept this upsert.
        sqlx::query(
            "INSERT INTO attested_agents (spiffe_id, attestation_type, x509_svid_serial, \
             x509_svid_expires_at, previous_x509_svid_serial, previous_x509_svid_expires_at, \
             selectors, banned, attested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (spiffe_id) DO UPDATE SET \
             attestation_type = excluded.attestation_type, \
             previous_x509_svid_serial = CASE \
             WHEN attested_agents.previous_x509_svid_serial = $10 \
             THEN attested_agents.previous_x509_svid_serial \
             ELSE attested_agents.x509_svid_serial END, \
             previous_x509_svid_expires_at = CASE \
             WHEN attested_agents.previous_x509_svid_serial = $10 \
             THEN attested_agents.previous_x509_svid_expires_at \
             ELSE attested_agents.x509_svid_expires_at END, \
             x509_svid_serial = excluded.x509_svid_serial, \
             x509_svid_expires_at = excluded.x509_svid_expires_at, \
             selectors = excluded.selectors, \
             banned = excluded.banned, \
             attested_at = excluded.attested_at",
        )
        .bind(agent.spiffe_id.as_str())
        .bind(agent.attestation_type.as_str())
        .bind(agent.x509_svid_serial.as_str())
        .bind(agent.x509_svid_expires_at)
        .bind(agent.previous_x509_svid_serial.as_deref())
        .bind(agent.previous_x509_svid_expires_at)
        .bind(to_json(&agent.selectors))
        .bind(agent.banned)
        .bind(agent.attested_at)
        .bind(presented_serial)
        .execute(&mut *tx)
        .await?;
        bump_revision(&mut tx).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %agent.spiffe_id, "attested agent stored or replaced");
        Ok(())
    }

    /// Returns the agent with `spiffe_id`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn get_attested_agent(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<Option<AttestedAgent>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            agent_columns!(),
            " FROM attested_agents WHERE spiffe_id = $1"
        ))
        .bind(spiffe_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// Returns every agent, ordered by SPIFFE ID.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn list_attested_agents(&self) -> Result<Vec<AttestedAgent>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            agent_columns!(),
            " FROM attested_agents ORDER BY spiffe_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Records the agent's new X.509-SVID after a renewal by a caller that presented the SVID
    /// with `presented_serial`. The current SVID becomes the previous one, unless
    /// `presented_serial` is the previous one: then the caller never received the current SVID,
    /// and the previous one stays.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] if no agent has `spiffe_id`, or the database
    /// failure.
    pub async fn update_agent_svid(
        &self,
        spiffe_id: &SpiffeId,
        presented_serial: &str,
        serial: &str,
        expires_at: i64,
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        // Every right-hand side reads the row as it was before this statement.
        let updated = sqlx::query(
            "UPDATE attested_agents SET \
             previous_x509_svid_serial = CASE WHEN previous_x509_svid_serial = $4 \
             THEN previous_x509_svid_serial ELSE x509_svid_serial END, \
             previous_x509_svid_expires_at = CASE WHEN previous_x509_svid_serial = $4 \
             THEN previous_x509_svid_expires_at ELSE x509_svid_expires_at END, \
             x509_svid_serial = $1, x509_svid_expires_at = $2 \
             WHERE spiffe_id = $3",
        )
        .bind(serial)
        .bind(expires_at)
        .bind(spiffe_id.as_str())
        .bind(presented_serial)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(agent_not_found(spiffe_id));
        }
        bump_revision(&mut tx).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %spiffe_id, serial, "agent SVID recorded");
        Ok(())
    }

    /// Clears the agent's previous X.509-SVID once the agent has used its current one. Nothing
    /// changes unless the current serial is still `expected_current_serial`, so a renewal that
    /// lands in between keeps its previous SVID. Returns whether a previous SVID was cleared.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn clear_previous_agent_svid(
        &self,
        spiffe_id: &SpiffeId,
        expected_current_serial: &str,
    ) -> Result<bool, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE attested_agents SET previous_x509_svid_serial = NULL, \
             previous_x509_svid_expires_at = NULL \
             WHERE spiffe_id = $1 AND x509_svid_serial = $2 \
             AND (previous_x509_svid_serial IS NOT NULL \
             OR previous_x509_svid_expires_at IS NOT NULL)",
        )
        .bind(spiffe_id.as_str())
        .bind(expected_current_serial)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        bump_revision(&mut tx).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %spiffe_id, "previous agent SVID cleared");
        Ok(true)
    }

    /// Deletes the agent, so it must attest again.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] if no agent has `spiffe_id`, or the database
    /// failure.
    pub async fn delete_attested_agent(&self, spiffe_id: &SpiffeId) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM attested_agents WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(agent_not_found(spiffe_id));
        }
        bump_revision(&mut tx).await?;
        send_change(&mut tx, self.backend, ChangeKind::Agent).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %spiffe_id, "attested agent deleted");
        Ok(())
    }

    /// Sets or clears the agent's banned flag.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] if no agent has `spiffe_id`, or the database
    /// failure.
    pub async fn set_agent_banned(
        &self,
        spiffe_id: &SpiffeId,
        banned: bool,
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE attested_agents SET banned = $1 WHERE spiffe_id = $2")
            .bind(banned)
            .bind(spiffe_id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(agent_not_found(spiffe_id));
        }
        bump_revision(&mut tx).await?;
        send_change(&mut tx, self.backend, ChangeKind::Agent).await?;
        tx.commit().await?;
        tracing::debug!(agent_id = %spiffe_id, banned, "agent banned flag set");
        Ok(())
    }
}

fn agent_not_found(spiffe_id: &SpiffeId) -> DatastoreError {
    DatastoreError::NotFound(format!("attested agent {spiffe_id}"))
}

fn agent_from_row(row: &AnyRow) -> Result<AttestedAgent, DatastoreError> {
    let spiffe_id: String = row.try_get("spiffe_id")?;
    let field = |column: &str| format!("{column} of attested agent {spiffe_id}");
    Ok(AttestedAgent {
        spiffe_id: parse_spiffe_id(&field("spiffe_id"), &spiffe_id)?,
        attestation_type: row.try_get("attestation_type")?,
        x509_svid_serial: row.try_get("x509_svid_serial")?,
        x509_svid_expires_at: row.try_get("x509_svid_expires_at")?,
        previous_x509_svid_serial: row.try_get("previous_x509_svid_serial")?,
        previous_x509_svid_expires_at: row.try_get("previous_x509_svid_expires_at")?,
        selectors: from_json(&field("selectors"), &row.try_get::<String, _>("selectors")?)?,
        banned: get_bool(row, "banned")?,
        attested_at: row.try_get("attested_at")?,
    })
}
