//! Versions of the signed appraisal policy document.
//!
//! Every applied version is kept, and the highest version is the current one. The server
//! decides whether a version may follow the current one (signature, owner chain, version
//! number); [`Datastore::append_policy_version`] runs that decision inside the transaction
//! that inserts the version, so two servers sharing the database cannot both append the same
//! number.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::map_unique;
use crate::notify::{ChangeKind, send_change};
use crate::{Datastore, DatastoreError, to_u64};

/// One stored version of the policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// The version number, 1 for the first document.
    pub version: u64,
    /// The compact JWS as applied.
    pub jws: String,
    /// The JWS payload: the policy document JSON.
    pub document: String,
    /// The `kid` of the owner key that signed it (RFC 7638 thumbprint).
    pub signer_kid: String,
    /// When the server stored it, in unix seconds.
    pub applied_at: i64,
}

const COLUMNS: &str = "version, jws, document, signer_kid, applied_at";

impl Datastore {
    /// Returns the number of the current policy version, `None` before the first one. One
    /// indexed query, cheap enough to run on every attestation.
    ///
    /// # Errors
    /// Returns the database failure, or [`DatastoreError::Corrupt`] for a negative version.
    pub async fn current_policy_version(&self) -> Result<Option<u64>, DatastoreError> {
        let row = sqlx::query("SELECT MAX(version) AS version FROM policy_versions")
            .fetch_one(&self.pool)
            .await?;
        row.try_get::<Option<i64>, _>("version")?
            .map(|version| to_u64("policy_versions.version", version))
            .transpose()
    }

    /// Returns the stored policy `version`, or `None` when there is no such version, which
    /// includes every version above `i64::MAX` because none can be stored.
    ///
    /// # Errors
    /// Returns the database failure or a corrupt row.
    pub async fn get_policy_version(
        &self,
        version: u64,
    ) -> Result<Option<PolicyVersion>, DatastoreError> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policy_versions WHERE version = $1"
        )))
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(read_row).transpose()
    }

    /// Returns the current (highest) policy version, or `None` before the first one.
    ///
    /// # Errors
    /// Returns the database failure or a corrupt row.
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>, DatastoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policy_versions ORDER BY version DESC LIMIT 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(read_row).transpose()
    }

    /// Returns every stored policy version, oldest first.
    ///
    /// # Errors
    /// Returns the database failure or a corrupt row.
    pub async fn list_policy_versions(&self) -> Result<Vec<PolicyVersion>, DatastoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policy_versions ORDER BY version"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(read_row).collect()
    }

    /// Stores `new` when `check`, given the current version (`None` before the first one),
    /// accepts it. The current version is read and `new` inserted in one transaction, so the
    /// decision is still valid at commit.
    ///
    /// # Errors
    /// Returns `check`'s error unchanged; [`DatastoreError::AlreadyExists`] (converted to `E`)
    /// when another writer stored the same version number first; or the database failure.
    pub async fn append_policy_version<E: From<DatastoreError>>(
        &self,
        new: &PolicyVersion,
        check: impl FnOnce(Option<&PolicyVersion>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut tx = self.begin_write().await.map_err(DatastoreError::from)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policy_versions ORDER BY version DESC LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await
        .map_err(DatastoreError::from)?;
        let current = row.as_ref().map(read_row).transpose()?;
        check(current.as_ref())?;
        sqlx::query(
            "INSERT INTO policy_versions (version, jws, document, signer_kid, applied_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_i64(new.version)?)
        .bind(new.jws.as_str())
        .bind(new.document.as_str())
        .bind(new.signer_kid.as_str())
        .bind(new.applied_at)
        .execute(&mut *tx)
        .await
        .map_err(|error| map_unique(error, || format!("policy version {}", new.version)))?;
        send_change(&mut tx, self.backend, ChangeKind::Policy).await?;
        tx.commit().await.map_err(DatastoreError::from)?;
        tracing::debug!(version = new.version, "policy version stored");
        Ok(())
    }
}

fn to_i64(version: u64) -> Result<i64, DatastoreError> {
    i64::try_from(version).map_err(|_| {
        DatastoreError::InvalidConfig(format!(
            "policy version {version} is larger than the largest storable version {}",
            i64::MAX
        ))
    })
}

fn read_row(row: &AnyRow) -> Result<PolicyVersion, DatastoreError> {
    Ok(PolicyVersion {
        version: to_u64("policy_versions.version", row.try_get("version")?)?,
        jws: row.try_get("jws")?,
        document: row.try_get("document")?,
        signer_kid: row.try_get("signer_kid")?,
        applied_at: row.try_get("applied_at")?,
    })
}
