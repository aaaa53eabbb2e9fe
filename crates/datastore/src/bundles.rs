//! Trust bundles, one per trust domain, with a sequence number per trust domain.

use sqlx::Row;
use sqlx::any::AnyRow;
use twid_spiffe::TrustDomain;

use crate::notify::{ChangeKind, send_change};
use crate::{Datastore, DatastoreError, bump_revision, parse_trust_domain, to_u64, unix_now};

/// A stored trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBundle {
    /// The trust domain the bundle is for.
    pub trust_domain: TrustDomain,
    /// The bundle as the caller stored it, for example SPIFFE bundle JSON.
    pub data: Vec<u8>,
    /// 1 for the first bundle of the trust domain, incremented by every [`Datastore::set_bundle`].
    pub sequence: u64,
    /// When the bundle was last set, in unix seconds by the datastore host's clock.
    pub updated_at: i64,
}

impl Datastore {
    /// Stores `bundle` as the trust domain's bundle, replacing any previous one, and returns
    /// the new sequence number: 1 for the first bundle, then one more than the previous.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn set_bundle(
        &self,
        trust_domain: &TrustDomain,
        bundle: &[u8],
    ) -> Result<u64, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO bundles (trust_domain, data, sequence, updated_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (trust_domain) DO UPDATE SET data = excluded.data, \
             sequence = bundles.sequence + 1, updated_at = excluded.updated_at \
             RETURNING sequence",
        )
        .bind(trust_domain.name())
        .bind(bundle)
        .bind(unix_now())
        .fetch_one(&mut *tx)
        .await?;
        let sequence = to_u64("bundles.sequence", row.try_get("sequence")?)?;
        bump_revision(&mut tx).await?;
        send_change(&mut tx, self.backend, ChangeKind::Bundle).await?;
        tx.commit().await?;
        tracing::debug!(%trust_domain, sequence, "bundle stored");
        Ok(sequence)
    }

    /// Returns the trust domain's bundle, or `None`.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn get_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<StoredBundle>, DatastoreError> {
        let row = sqlx::query(
            "SELECT trust_domain, data, sequence, updated_at FROM bundles WHERE trust_domain = $1",
        )
        .bind(trust_domain.name())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(bundle_from_row).transpose()
    }

    /// Returns every stored bundle, ordered by trust domain.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn list_bundles(&self) -> Result<Vec<StoredBundle>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT trust_domain, data, sequence, updated_at FROM bundles ORDER BY trust_domain",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bundle_from_row).collect()
    }
}

fn bundle_from_row(row: &AnyRow) -> Result<StoredBundle, DatastoreError> {
    let name: String = row.try_get("trust_domain")?;
    Ok(StoredBundle {
        trust_domain: parse_trust_domain("bundles.trust_domain", &name)?,
        data: row.try_get("data")?,
        sequence: to_u64(
            &format!("sequence of bundle {name}"),
            row.try_get("sequence")?,
        )?,
        updated_at: row.try_get("updated_at")?,
    })
}
