//! Federation relationships: the foreign trust domains whose bundles the server fetches, with
//! the bundle endpoint URL and profile of each.

use sqlx::Row;
use sqlx::any::AnyRow;
use twid_spiffe::{SpiffeId, TrustDomain};

use crate::error::map_unique;
use crate::{Datastore, DatastoreError, parse_spiffe_id, parse_trust_domain};

/// The profile that authenticates a foreign bundle endpoint, as the SPIFFE Federation
/// specification defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEndpointProfile {
    /// The endpoint presents an X.509-SVID with this SPIFFE ID, which must chain to the stored
    /// bundle of the foreign trust domain.
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint must present.
        endpoint_spiffe_id: SpiffeId,
    },
    /// The endpoint presents a certificate that chains to the web PKI roots.
    HttpsWeb,
}

impl BundleEndpointProfile {
    /// Returns the profile name the specification and SPIRE use: `https_spiffe` or `https_web`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpsSpiffe { .. } => "https_spiffe",
            Self::HttpsWeb => "https_web",
        }
    }
}

/// A stored federation relationship with one foreign trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRelationship {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// The `https://` URL of the foreign trust domain's bundle endpoint.
    pub bundle_endpoint_url: String,
    /// The profile that authenticates the endpoint.
    pub profile: BundleEndpointProfile,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The columns of `federation_relationships` in the order [`relationship_from_row`] reads.
macro_rules! columns {
    () => {
        "trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, created_at, updated_at"
    };
}

impl Datastore {
    /// Stores a new relationship; `created_at` and `updated_at` are set to `now`.
    ///
    /// # Errors
    /// Returns [`DatastoreError::AlreadyExists`] when the trust domain already has one, or the
    /// database failure.
    pub async fn create_federation_relationship(
        &self,
        relationship: &FederationRelationship,
        now: i64,
    ) -> Result<FederationRelationship, DatastoreError> {
        let (profile, endpoint_id) = profile_columns(&relationship.profile);
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO federation_relationships (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $5)"
        ))
        .bind(relationship.trust_domain.name())
        .bind(&relationship.bundle_endpoint_url)
        .bind(profile)
        .bind(endpoint_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            map_unique(error, || {
                format!("federation relationship with {}", relationship.trust_domain)
            })
        })?;
        tx.commit().await?;
        Ok(FederationRelationship {
            created_at: now,
            updated_at: now,
            ..relationship.clone()
        })
    }

    /// Replaces the URL and profile of an existing relationship and sets `updated_at` to `now`.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] when the trust domain has no relationship, or the
    /// database failure.
    pub async fn update_federation_relationship(
        &self,
        relationship: &FederationRelationship,
        now: i64,
    ) -> Result<FederationRelationship, DatastoreError> {
        let (profile, endpoint_id) = profile_columns(&relationship.profile);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE federation_relationships SET bundle_endpoint_url = $2, profile = $3, \
             endpoint_spiffe_id = $4, updated_at = $5 WHERE trust_domain = $1 RETURNING ",
            columns!()
        ))
        .bind(relationship.trust_domain.name())
        .bind(&relationship.bundle_endpoint_url)
        .bind(profile)
        .bind(endpoint_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(DatastoreError::NotFound(format!(
                "federation relationship with {}",
                relationship.trust_domain
            )));
        };
        tx.commit().await?;
        relationship_from_row(&row)
    }

    /// Creates the relationship, or updates it when the trust domain already has one whose URL
    /// or profile differs. Returns whether anything was written.
    ///
    /// # Errors
    /// Returns the database failure.
    pub async fn put_federation_relationship(
        &self,
        relationship: &FederationRelationship,
        now: i64,
    ) -> Result<bool, DatastoreError> {
        match self
            .get_federation_relationship(&relationship.trust_domain)
            .await?
        {
            None => {
                self.create_federation_relationship(relationship, now)
                    .await?;
                Ok(true)
            }
            Some(stored)
                if stored.bundle_endpoint_url == relationship.bundle_endpoint_url
                    && stored.profile == relationship.profile =>
            {
                Ok(false)
            }
            Some(_) => {
                self.update_federation_relationship(relationship, now)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Returns the relationship with `trust_domain`, or `None`.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn get_federation_relationship(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederationRelationship>, DatastoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM federation_relationships WHERE trust_domain = $1"
        ))
        .bind(trust_domain.name())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(relationship_from_row).transpose()
    }

    /// Returns every relationship, ordered by trust domain.
    ///
    /// # Errors
    /// Returns the database failure or [`DatastoreError::Corrupt`].
    pub async fn list_federation_relationships(
        &self,
    ) -> Result<Vec<FederationRelationship>, DatastoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM federation_relationships ORDER BY trust_domain"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(relationship_from_row).collect()
    }

    /// Deletes the relationship with `trust_domain`. The trust domain's stored bundle stays.
    ///
    /// # Errors
    /// Returns [`DatastoreError::NotFound`] when there is none, or the database failure.
    pub async fn delete_federation_relationship(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM federation_relationships WHERE trust_domain = $1")
            .bind(trust_domain.name())
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Err(DatastoreError::NotFound(format!(
                "federation relationship with {trust_domain}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}

fn profile_columns(profile: &BundleEndpointProfile) -> (&'static str, Option<String>) {
    match profile {
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            (profile.name(), Some(endpoint_spiffe_id.to_string()))
        }
        BundleEndpointProfile::HttpsWeb => (profile.name(), None),
    }
}

fn relationship_from_row(row: &AnyRow) -> Result<FederationRelationship, DatastoreError> {
    let name: String = row.try_get("trust_domain")?;
    let trust_domain = parse_trust_domain("federation_relationships.trust_domain", &name)?;
    let profile_name: String = row.try_get("profile")?;
    let endpoint_id: Option<String> = row.try_get("endpoint_spiffe_id")?;
    let profile = match (profile_name.as_str(), endpoint_id) {
        ("https_spiffe", Some(id)) => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: parse_spiffe_id(
                "federation_relationships.endpoint_spiffe_id",
                &id,
            )?,
        },
        ("https_web", _) => BundleEndpointProfile::HttpsWeb,
        (other, _) => {
            return Err(DatastoreError::Corrupt(format!(
                "federation relationship with {name} has profile {other:?} without a valid \
                 endpoint SPIFFE ID"
            )));
        }
    };
    Ok(FederationRelationship {
        trust_domain,
        bundle_endpoint_url: row.try_get("bundle_endpoint_url")?,
        profile,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
