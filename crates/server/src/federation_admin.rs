//! The admin API's federation calls: relationships, an immediate refresh, and setting a
//! foreign trust domain's bundle by hand.

use std::time::SystemTime;

use tonic::Status;
use twid_datastore::{BundleEndpointProfile, DatastoreError, FederationRelationship};
use twid_proto::admin;
use twid_spiffe::{SpiffeId, TrustDomain};

use crate::Shared;
use crate::admin_api::datastore_status;
use crate::federation::{self, check_authorities, parse_supplied_bundle};

/// Parses a foreign trust domain, rejecting the server's own.
fn foreign_trust_domain(shared: &Shared, text: &str) -> Result<TrustDomain, Status> {
    let trust_domain = TrustDomain::new(text).map_err(|error| {
        Status::invalid_argument(format!("invalid trust domain {text:?}: {error}"))
    })?;
    if trust_domain == shared.config.trust_domain {
        return Err(Status::invalid_argument(format!(
            "{trust_domain} is this server's own trust domain; federation is with foreign \
             trust domains only"
        )));
    }
    Ok(trust_domain)
}

/// Converts and checks a relationship from a request.
fn relationship_from_pb(
    shared: &Shared,
    request: &admin::FederationRelationship,
) -> Result<FederationRelationship, Status> {
    let trust_domain = foreign_trust_domain(shared, &request.trust_domain)?;
    let bundle_endpoint_url = twid_config::bundle_endpoint_url_str(&request.bundle_endpoint_url)
        .map_err(|reason| {
            Status::invalid_argument(format!(
                "invalid bundle endpoint URL {:?}: {reason}",
                request.bundle_endpoint_url
            ))
        })?;
    let profile = match request.bundle_endpoint_profile.as_str() {
        "https_spiffe" => {
            let id = SpiffeId::new(&request.endpoint_spiffe_id).map_err(|error| {
                Status::invalid_argument(format!(
                    "invalid endpoint SPIFFE ID {:?}: {error}; https_spiffe needs the ID the \
                     endpoint presents",
                    request.endpoint_spiffe_id
                ))
            })?;
            if !id.is_member_of(&trust_domain) {
                return Err(Status::invalid_argument(format!(
                    "endpoint SPIFFE ID {id} is not in trust domain {trust_domain}, whose \
                     bundle authenticates the endpoint"
                )));
            }
            BundleEndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: id,
            }
        }
        "https_web" => {
            if !request.endpoint_spiffe_id.is_empty() {
                return Err(Status::invalid_argument(
                    "an endpoint SPIFFE ID applies to the https_spiffe profile only",
                ));
            }
            BundleEndpointProfile::HttpsWeb
        }
        other => {
            return Err(Status::invalid_argument(format!(
                "invalid bundle endpoint profile {other:?}; use https_spiffe or https_web"
            )));
        }
    };
    Ok(FederationRelationship {
        trust_domain,
        bundle_endpoint_url,
        profile,
        created_at: 0,
        updated_at: 0,
    })
}

async fn relationship_to_pb(
    shared: &Shared,
    relationship: &FederationRelationship,
) -> Result<admin::FederationRelationship, Status> {
    let stored = shared
        .datastore
        .get_bundle(&relationship.trust_domain)
        .await
        .map_err(datastore_status)?;
    let status = shared
        .federation
        .status(&relationship.trust_domain)
        .unwrap_or_default();
    let endpoint_spiffe_id = match &relationship.profile {
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => endpoint_spiffe_id.to_string(),
        BundleEndpointProfile::HttpsWeb => String::new(),
    };
    Ok(admin::FederationRelationship {
        trust_domain: relationship.trust_domain.name().to_owned(),
        bundle_endpoint_url: relationship.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: relationship.profile.name().to_owned(),
        endpoint_spiffe_id,
        trust_domain_bundle: Vec::new(),
        created_at: relationship.created_at,
        updated_at: relationship.updated_at,
        bundle_sequence: stored.map_or(0, |bundle| bundle.sequence),
        last_refresh: status.last_success.unwrap_or(0),
        last_error: status.last_error.unwrap_or_default(),
        next_refresh: status.next_refresh,
    })
}

/// Checks a supplied bundle and stores it as the trust domain's bundle; returns its sequence.
async fn store_supplied_bundle(
    shared: &Shared,
    trust_domain: &TrustDomain,
    data: &[u8],
) -> Result<u64, Status> {
    let bundle = parse_supplied_bundle(trust_domain, data).map_err(|reason| {
        Status::invalid_argument(format!("invalid bundle for {trust_domain}: {reason}"))
    })?;
    check_authorities(&bundle, SystemTime::now()).map_err(|rejection| {
        Status::invalid_argument(format!("bundle for {trust_domain} rejected: {rejection}"))
    })?;
    let sequence = shared
        .datastore
        .set_bundle(trust_domain, &bundle.to_json())
        .await
        .map_err(datastore_status)?;
    shared.hints.notify("bundle");
    tracing::info!(%trust_domain, sequence, "federated bundle set by an administrator");
    Ok(sequence)
}

pub(crate) async fn create(
    shared: &Shared,
    request: admin::FederationRelationship,
) -> Result<admin::FederationRelationship, Status> {
    let relationship = relationship_from_pb(shared, &request)?;
    // The bundle is checked before anything is stored, so a bad bundle leaves no relationship.
    if !request.trust_domain_bundle.is_empty() {
        let bundle =
            parse_supplied_bundle(&relationship.trust_domain, &request.trust_domain_bundle)
                .map_err(|reason| {
                    Status::invalid_argument(format!("invalid trust domain bundle: {reason}"))
                })?;
        check_authorities(&bundle, SystemTime::now()).map_err(|rejection| {
            Status::invalid_argument(format!("trust domain bundle rejected: {rejection}"))
        })?;
    }
    let created = shared
        .datastore
        .create_federation_relationship(&relationship, crate::convert::unix_now())
        .await
        .map_err(|error| match error {
            DatastoreError::AlreadyExists(what) => Status::already_exists(format!(
                "{what} already exists; use `twid federation update` to change it"
            )),
            other => datastore_status(other),
        })?;
    if !request.trust_domain_bundle.is_empty() {
        store_supplied_bundle(shared, &created.trust_domain, &request.trust_domain_bundle).await?;
    }
    tracing::info!(
        trust_domain = %created.trust_domain,
        url = %created.bundle_endpoint_url,
        profile = created.profile.name(),
        "federation relationship created"
    );
    relationship_to_pb(shared, &created).await
}

pub(crate) async fn list(
    shared: &Shared,
) -> Result<admin::ListFederationRelationshipsResponse, Status> {
    let relationships = shared
        .datastore
        .list_federation_relationships()
        .await
        .map_err(datastore_status)?;
    let mut converted = Vec::with_capacity(relationships.len());
    for relationship in &relationships {
        converted.push(relationship_to_pb(shared, relationship).await?);
    }
    Ok(admin::ListFederationRelationshipsResponse {
        relationships: converted,
    })
}

async fn load(shared: &Shared, trust_domain: &str) -> Result<FederationRelationship, Status> {
    let trust_domain = foreign_trust_domain(shared, trust_domain)?;
    shared
        .datastore
        .get_federation_relationship(&trust_domain)
        .await
        .map_err(datastore_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no federation relationship with {trust_domain}; create one with `twid \
                 federation create`"
            ))
        })
}

pub(crate) async fn get(
    shared: &Shared,
    request: &admin::FederationRelationshipRequest,
) -> Result<admin::FederationRelationship, Status> {
    let relationship = load(shared, &request.trust_domain).await?;
    relationship_to_pb(shared, &relationship).await
}

pub(crate) async fn update(
    shared: &Shared,
    request: admin::FederationRelationship,
) -> Result<admin::FederationRelationship, Status> {
    let relationship = relationship_from_pb(shared, &request)?;
    let updated = shared
        .datastore
        .update_federation_relationship(&relationship, crate::convert::unix_now())
        .await
        .map_err(datastore_status)?;
    // The next refresh uses the new URL and profile at once.
    shared.federation.forget(&updated.trust_domain);
    tracing::info!(
        trust_domain = %updated.trust_domain,
        url = %updated.bundle_endpoint_url,
        profile = updated.profile.name(),
        "federation relationship updated"
    );
    relationship_to_pb(shared, &updated).await
}

pub(crate) async fn delete(
    shared: &Shared,
    request: &admin::FederationRelationshipRequest,
) -> Result<admin::DeleteFederationRelationshipResponse, Status> {
    let trust_domain = foreign_trust_domain(shared, &request.trust_domain)?;
    shared
        .datastore
        .delete_federation_relationship(&trust_domain)
        .await
        .map_err(datastore_status)?;
    shared.federation.forget(&trust_domain);
    tracing::info!(%trust_domain, "federation relationship deleted");
    Ok(admin::DeleteFederationRelationshipResponse {})
}

pub(crate) async fn refresh(
    shared: &Shared,
    request: &admin::FederationRelationshipRequest,
) -> Result<admin::RefreshFederatedBundleResponse, Status> {
    let relationship = load(shared, &request.trust_domain).await?;
    let outcome = federation::refresh(shared, &relationship)
        .await
        .map_err(|reason| {
            Status::unavailable(format!(
                "refreshing the bundle of {} from {} failed: {reason}",
                relationship.trust_domain, relationship.bundle_endpoint_url
            ))
        })?;
    Ok(admin::RefreshFederatedBundleResponse {
        changed: outcome.changed,
        bundle_sequence: outcome.sequence,
    })
}

pub(crate) async fn set_bundle(
    shared: &Shared,
    request: admin::SetFederatedBundleRequest,
) -> Result<admin::SetFederatedBundleResponse, Status> {
    let trust_domain = foreign_trust_domain(shared, &request.trust_domain)?;
    let sequence = store_supplied_bundle(shared, &trust_domain, &request.bundle).await?;
    Ok(admin::SetFederatedBundleResponse {
        bundle_sequence: sequence,
    })
}
