//! The admin API on the server's local Unix socket: entries, join tokens, the bundle,
//! attested agents and the issuance log.
//!
//! Access control is the socket's directory, created with mode 0700. Every write is committed
//! by the datastore before the reply is sent.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use twid_datastore::{DatastoreError, EntryFilter};
use twid_proto::admin::admin_server::{Admin, AdminServer};
use twid_proto::admin::batch_create_entry_response::Result as BatchCreateResult;
use twid_proto::admin::{
    BanAgentRequest, BanAgentResponse, BatchCreateEntryRequest, BatchCreateEntryResponse,
    CountEntriesRequest, CountEntriesResponse, CreateEntryRequest, CreateJoinTokenRequest,
    CreateJoinTokenResponse, DeleteEntryRequest, DeleteEntryResponse, EvictAgentRequest,
    EvictAgentResponse, GetAgentRequest, GetBundleRequest, GetEntryRequest,
    GetIssuanceRecordRequest, IssuanceLogAlteration, IssuanceRecord, ListAgentsRequest,
    ListAgentsResponse, ListEntriesRequest, ListEntriesResponse, ListIssuanceRecordsRequest,
    ListIssuanceRecordsResponse, ListRevocationsRequest, ListRevocationsResponse, RevokeRequest,
    RevokeResponse, UpdateEntryRequest, VerifyIssuanceLogRequest, VerifyIssuanceLogResponse,
    get_issuance_record_request,
};
use twid_proto::types as pb;
use twid_provenance::{Alteration, AlterationKind, LogError, Record};
use twid_spiffe::SpiffeId;

use crate::convert::{
    agent_to_pb, entry_to_pb, new_entry_from_pb, selector_from_pb, selector_to_pb, unix_now,
};
use crate::{ServerError, Shared};

/// Records `ListIssuanceRecords` returns when the request sets no limit.
const DEFAULT_RECORD_PAGE: u32 = 100;

/// Maximum records one `ListIssuanceRecords` call returns.
const MAX_RECORD_PAGE: u32 = 1000;

/// Maximum entries one `BatchCreateEntry` request may carry, so that one transaction and one
/// response stay bounded.
pub(crate) const MAX_BATCH_CREATE_ENTRIES: usize = 10_000;

/// Binds the admin socket and starts serving it.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<PathBuf, ServerError> {
    let path = shared.config.socket_path.clone();
    let listener =
        twid_uds::bind_private(&path).map_err(|source| ServerError::io(&path, source))?;
    let service = AdminServer::new(AdminService {
        shared: Arc::clone(shared),
    })
    .max_decoding_message_size(64 * 1024 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024);
    let shutdown = shutdown.clone();
    tasks.spawn(
        async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    twid_uds::incoming(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
            if let Err(error) = result {
                tracing::error!(error = %error, "admin API stopped");
            }
        }
        .instrument(tracing::info_span!("admin_api")),
    );
    tracing::info!(socket = %path.display(), "admin API listening");
    Ok(path)
}

struct AdminService {
    shared: Arc<Shared>,
}

/// Maps datastore failures to statuses; only backend failures are internal.
pub(crate) fn datastore_status(error: DatastoreError) -> Status {
    match error {
        DatastoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        DatastoreError::AlreadyExists(what) => Status::already_exists(format!(
            "{what} already exists; change its SPIFFE ID, parent ID or selectors"
        )),
        other => {
            tracing::error!(error = %crate::tasks::error_chain(&other), "admin API request failed");
            Status::internal("internal server error; see the server log")
        }
    }
}

fn parse_agent_id(text: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(text)
        .map_err(|error| Status::invalid_argument(format!("invalid agent ID {text:?}: {error}")))
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(skip_all)]
    async fn create_entry(
        &self,
        request: Request<CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("request lacks the entry"))?;
        let new = new_entry_from_pb(&entry, &self.shared.config.trust_domain)?;
        let created = self
            .shared
            .datastore
            .create_entry(&new, unix_now())
            .await
            .map_err(datastore_status)?;
        tracing::debug!(entry_id = %created.id, spiffe_id = %created.spiffe_id, "entry created");
        self.shared.hints.notify("entry");
        Ok(Response::new(entry_to_pb(&created)))
    }

    #[tracing::instrument(skip_all)]
    async fn batch_create_entry(
        &self,
        request: Request<BatchCreateEntryRequest>,
    ) -> Result<Response<BatchCreateEntryResponse>, Status> {
        let entries = request.into_inner().entries;
        if entries.len() > MAX_BATCH_CREATE_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "the request has {} entries; BatchCreateEntry accepts at most \
                 {MAX_BATCH_CREATE_ENTRIES}, so split it into several requests",
                entries.len()
            )));
        }
        let trust_domain = &self.shared.config.trust_domain;
        // Invalid entries get their error in place, and the valid ones go to the datastore
        // together. `slots` maps each datastore result back to its position in the request.
        let mut results: Vec<Option<BatchCreateResult>> = Vec::with_capacity(entries.len());
        let mut valid = Vec::with_capacity(entries.len());
        let mut slots = Vec::with_capacity(entries.len());
        for entry in &entries {
            match new_entry_from_pb(entry, trust_domain) {
                Ok(new) => {
                    slots.push(results.len());
                    valid.push(new);
                    results.push(None);
                }
                Err(status) => results.push(Some(BatchCreateResult {
                    entry: None,
                    error: status.message().to_owned(),
                })),
            }
        }
        let stored = if valid.is_empty() {
            Vec::new()
        } else {
            self.shared
                .datastore
                .create_entries(&valid, unix_now())
                .await
                .map_err(datastore_status)?
        };
        let mut created = 0_usize;
        for (slot, outcome) in slots.into_iter().zip(stored) {
            results[slot] = Some(match outcome {
                Ok(entry) => {
                    created += 1;
                    BatchCreateResult {
                        entry: Some(entry_to_pb(&entry)),
                        error: String::new(),
                    }
                }
                Err(error) => BatchCreateResult {
                    entry: None,
                    error: datastore_status(error).message().to_owned(),
                },
            });
        }
        tracing::debug!(
            requested = entries.len(),
            created,
            "entries created in a batch"
        );
        if created > 0 {
            self.shared.hints.notify("entry");
        }
        let results = results
            .into_iter()
            .map(|result| {
                result.ok_or_else(|| Status::internal("the datastore returned too few results"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(BatchCreateEntryResponse { results }))
    }

    async fn get_entry(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = request.into_inner().id;
        let entry = self
            .shared
            .datastore
            .get_entry(&id)
            .await
            .map_err(datastore_status)?
            .ok_or_else(|| Status::not_found(format!("entry {id} not found")))?;
        Ok(Response::new(entry_to_pb(&entry)))
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let filter = EntryFilter {
            spiffe_id: non_empty(&request.spiffe_id)
                .map(parse_entry_id)
                .transpose()?,
            parent_id: non_empty(&request.parent_id)
                .map(parse_entry_id)
                .transpose()?,
            selectors: request
                .selectors
                .iter()
                .map(selector_from_pb)
                .collect::<Result<_, _>>()?,
        };
        let entries = self
            .shared
            .datastore
            .list_entries(&filter)
            .await
            .map_err(datastore_status)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.iter().map(entry_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_entry(
        &self,
        request: Request<UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("request lacks the entry"))?;
        if entry.id.is_empty() {
            return Err(Status::invalid_argument("the entry to update needs its ID"));
        }
        let new = new_entry_from_pb(&entry, &self.shared.config.trust_domain)?;
        let updated = self
            .shared
            .datastore
            .update_entry(&entry.id, &new, unix_now())
            .await
            .map_err(datastore_status)?;
        self.shared.hints.notify("entry");
        Ok(Response::new(entry_to_pb(&updated)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_entry(
        &self,
        request: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let id = request.into_inner().id;
        self.shared
            .datastore
            .delete_entry(&id)
            .await
            .map_err(datastore_status)?;
        self.shared.hints.notify("entry");
        Ok(Response::new(DeleteEntryResponse {}))
    }

    async fn count_entries(
        &self,
        _request: Request<CountEntriesRequest>,
    ) -> Result<Response<CountEntriesResponse>, Status> {
        let count = self
            .shared
            .datastore
            .count_entries()
            .await
            .map_err(datastore_status)?;
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        Ok(Response::new(CountEntriesResponse { count }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let request = request.into_inner();
        if request.ttl <= 0 {
            return Err(Status::invalid_argument(format!(
                "invalid join token ttl {}: it must be at least one second",
                request.ttl
            )));
        }
        let trust_domain = &self.shared.config.trust_domain;
        let alias = non_empty(&request.spiffe_id)
            .map(parse_entry_id)
            .transpose()?;
        if let Some(alias) = &alias
            && !alias.is_member_of(trust_domain)
        {
            return Err(Status::invalid_argument(format!(
                "alias {alias} is outside the server's trust domain {trust_domain}"
            )));
        }
        let token = twid_attestation::node::join_token::generate_token();
        let expires_at = unix_now().saturating_add(request.ttl);
        let agent_id = twid_types::agent_id_for_join_token(trust_domain, &token)
            .map_err(|error| Status::internal(error.to_string()))?;
        if let Some(alias) = alias {
            // SPIRE's convention: the alias entry is parented to the agent ID the token will
            // produce, so workload entries can name the alias as their parent.
            let selector = twid_types::Selector::new("spiffe_id", agent_id.to_string());
            let new = twid_types::NewEntry::new(alias, agent_id.clone(), vec![selector]);
            new.validate(trust_domain)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            self.shared
                .datastore
                .create_entry(&new, unix_now())
                .await
                .map_err(datastore_status)?;
            self.shared.hints.notify("entry");
        }
        self.shared
            .datastore
            .create_join_token(&token, expires_at)
            .await
            .map_err(datastore_status)?;
        // The token is a secret until used, and the agent ID contains it, so neither is logged.
        tracing::info!(expires_at, "join token created");
        Ok(Response::new(CreateJoinTokenResponse { token, expires_at }))
    }

    async fn get_bundle(
        &self,
        _request: Request<GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        Ok(Response::new((*self.shared.bundle.load_full()).clone()))
    }

    async fn list_agents(
        &self,
        _request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let agents = self
            .shared
            .datastore
            .list_attested_agents()
            .await
            .map_err(datastore_status)?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.iter().map(agent_to_pb).collect(),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_agent_id(&request.into_inner().spiffe_id)?;
        let agent = self
            .shared
            .datastore
            .get_attested_agent(&id)
            .await
            .map_err(datastore_status)?
            .ok_or_else(|| Status::not_found(format!("agent {id} not found")))?;
        Ok(Response::new(agent_to_pb(&agent)))
    }

    #[tracing::instrument(skip_all)]
    async fn evict_agent(
        &self,
        request: Request<EvictAgentRequest>,
    ) -> Result<Response<EvictAgentResponse>, Status> {
        let id = parse_agent_id(&request.into_inner().spiffe_id)?;
        self.shared
            .datastore
            .delete_attested_agent(&id)
            .await
            .map_err(datastore_status)?;
        tracing::info!(agent_id = %id, "agent evicted");
        self.shared.hints.notify("agent");
        Ok(Response::new(EvictAgentResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn ban_agent(
        &self,
        request: Request<BanAgentRequest>,
    ) -> Result<Response<BanAgentResponse>, Status> {
        let id = parse_agent_id(&request.into_inner().spiffe_id)?;
        self.shared
            .datastore
            .set_agent_banned(&id, true)
            .await
            .map_err(datastore_status)?;
        tracing::info!(agent_id = %id, "agent banned");
        self.shared.hints.notify("agent");
        Ok(Response::new(BanAgentResponse {}))
    }

    async fn get_issuance_record(
        &self,
        request: Request<GetIssuanceRecordRequest>,
    ) -> Result<Response<IssuanceRecord>, Status> {
        let log = &self.shared.issuance_log.log;
        let (record, wanted) = match request.into_inner().key {
            Some(get_issuance_record_request::Key::Serial(serial)) => {
                let record = log.find_by_serial(&serial).await.map_err(log_status)?;
                (record, format!("serial {serial}"))
            }
            Some(get_issuance_record_request::Key::Jti(jti)) => {
                let record = log.find_by_jti(&jti).await.map_err(log_status)?;
                (record, format!("jti {jti}"))
            }
            None => {
                return Err(Status::invalid_argument(
                    "the request needs a serial or a jti",
                ));
            }
        };
        let record = record
            .ok_or_else(|| Status::not_found(format!("no issuance log record with {wanted}")))?;
        Ok(Response::new(record_to_pb(&record)))
    }

    async fn list_issuance_records(
        &self,
        request: Request<ListIssuanceRecordsRequest>,
    ) -> Result<Response<ListIssuanceRecordsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_RECORD_PAGE,
            limit => limit.min(MAX_RECORD_PAGE),
        };
        let records = self
            .shared
            .issuance_log
            .log
            .list(request.from_seq, limit)
            .await
            .map_err(log_status)?;
        Ok(Response::new(ListIssuanceRecordsResponse {
            records: records.iter().map(record_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_issuance_log(
        &self,
        _request: Request<VerifyIssuanceLogRequest>,
    ) -> Result<Response<VerifyIssuanceLogResponse>, Status> {
        let provenance = &self.shared.issuance_log;
        let report = provenance
            .log
            .verify(Some(&provenance.checkpoint_key))
            .await
            .map_err(log_status)?;
        match &report.alteration {
            Some(alteration) => tracing::warn!(
                seq = alteration.seq,
                kind = %alteration.kind,
                detail = %alteration.detail,
                "issuance log verification found an alteration"
            ),
            None => tracing::info!(
                records = report.records,
                checkpoints = report.checkpoints,
                "issuance log verified intact"
            ),
        }
        Ok(Response::new(VerifyIssuanceLogResponse {
            records: report.records,
            checkpoints: report.checkpoints,
            signatures_checked: report.signatures_checked,
            alteration: report.alteration.as_ref().map(alteration_to_pb),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        crate::revocation::revoke(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_revocations(
        &self,
        _request: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        crate::revocation::list(&self.shared)
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn apply_policy(
        &self,
        request: Request<twid_proto::admin::ApplyPolicyRequest>,
    ) -> Result<Response<twid_proto::admin::ApplyPolicyResponse>, Status> {
        crate::policy::apply_request(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_policies(
        &self,
        _request: Request<twid_proto::admin::ListPoliciesRequest>,
    ) -> Result<Response<twid_proto::admin::ListPoliciesResponse>, Status> {
        crate::policy::list_request(&self.shared)
            .await
            .map(Response::new)
    }

    async fn get_policy(
        &self,
        request: Request<twid_proto::admin::GetPolicyRequest>,
    ) -> Result<Response<twid_proto::admin::PolicyVersion>, Status> {
        crate::policy::get_request(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_local_authorities(
        &self,
        request: Request<twid_proto::admin::ListLocalAuthoritiesRequest>,
    ) -> Result<Response<twid_proto::admin::ListLocalAuthoritiesResponse>, Status> {
        crate::localauthority::list(&self.shared, request.get_ref()).map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn prepare_local_authority(
        &self,
        request: Request<twid_proto::admin::PrepareLocalAuthorityRequest>,
    ) -> Result<Response<twid_proto::admin::LocalAuthorityResponse>, Status> {
        crate::localauthority::prepare_request(&self.shared, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn activate_local_authority(
        &self,
        request: Request<twid_proto::admin::LocalAuthorityRequest>,
    ) -> Result<Response<twid_proto::admin::LocalAuthorityResponse>, Status> {
        use crate::localauthority::{Step, step_request};
        step_request(&self.shared, Step::Activate, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn taint_local_authority(
        &self,
        request: Request<twid_proto::admin::LocalAuthorityRequest>,
    ) -> Result<Response<twid_proto::admin::LocalAuthorityResponse>, Status> {
        use crate::localauthority::{Step, step_request};
        step_request(&self.shared, Step::Taint, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_local_authority(
        &self,
        request: Request<twid_proto::admin::LocalAuthorityRequest>,
    ) -> Result<Response<twid_proto::admin::LocalAuthorityResponse>, Status> {
        use crate::localauthority::{Step, step_request};
        step_request(&self.shared, Step::Revoke, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn create_federation_relationship(
        &self,
        request: Request<twid_proto::admin::FederationRelationship>,
    ) -> Result<Response<twid_proto::admin::FederationRelationship>, Status> {
        crate::federation_admin::create(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_federation_relationships(
        &self,
        _request: Request<twid_proto::admin::ListFederationRelationshipsRequest>,
    ) -> Result<Response<twid_proto::admin::ListFederationRelationshipsResponse>, Status> {
        crate::federation_admin::list(&self.shared)
            .await
            .map(Response::new)
    }

    async fn get_federation_relationship(
        &self,
        request: Request<twid_proto::admin::FederationRelationshipRequest>,
    ) -> Result<Response<twid_proto::admin::FederationRelationship>, Status> {
        crate::federation_admin::get(&self.shared, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn update_federation_relationship(
        &self,
        request: Request<twid_proto::admin::FederationRelationship>,
    ) -> Result<Response<twid_proto::admin::FederationRelationship>, Status> {
        crate::federation_admin::update(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_federation_relationship(
        &self,
        request: Request<twid_proto::admin::FederationRelationshipRequest>,
    ) -> Result<Response<twid_proto::admin::DeleteFederationRelationshipResponse>, Status> {
        crate::federation_admin::delete(&self.shared, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn refresh_federated_bundle(
        &self,
        request: Request<twid_proto::admin::FederationRelationshipRequest>,
    ) -> Result<Response<twid_proto::admin::RefreshFederatedBundleResponse>, Status> {
        crate::federation_admin::refresh(&self.shared, request.get_ref())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn set_federated_bundle(
        &self,
        request: Request<twid_proto::admin::SetFederatedBundleRequest>,
    ) -> Result<Response<twid_proto::admin::SetFederatedBundleResponse>, Status> {
        crate::federation_admin::set_bundle(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Maps issuance log failures to statuses. An invalid serial is the caller's mistake, damaged
/// log data is DataLoss with its details, and every other failure is logged and internal.
fn log_status(error: LogError) -> Status {
    match error {
        LogError::InvalidRecord(message) => Status::invalid_argument(message),
        // The operator who calls the admin API needs the details to repair the log.
        damaged if damaged.is_damaged_log() => {
            tracing::error!(
                error = %crate::tasks::error_chain(&damaged),
                "admin API issuance log request found damaged log data"
            );
            Status::data_loss(format!("the issuance log is damaged: {damaged}"))
        }
        other => {
            tracing::error!(
                error = %crate::tasks::error_chain(&other),
                "admin API issuance log request failed"
            );
            Status::internal("internal server error; see the server log")
        }
    }
}

fn record_to_pb(record: &Record) -> IssuanceRecord {
    let content = &record.content;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let digest = |value: &Option<[u8; 32]>| value.map(|d| d.to_vec()).unwrap_or_default();
    IssuanceRecord {
        seq: record.seq,
        prev_hash: record.prev_hash.to_vec(),
        hash: record.hash.to_vec(),
        kind: content.kind.as_str().to_owned(),
        serial: text(&content.serial),
        jti: text(&content.jti),
        spiffe_id: content
            .spiffe_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        entry_id: text(&content.entry_id),
        agent_id: content
            .agent_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        selectors: content.selectors.iter().map(selector_to_pb).collect(),
        key_fingerprint: digest(&content.key_fingerprint),
        evidence_digest: digest(&content.evidence_digest),
        // The log stores canonical JSON, and serde_json (with `preserve_order`) keeps the
        // decoded key order, so this reproduces the stored text.
        attestation_result: content
            .attestation_result
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        policy_version: text(&content.policy_version),
        refusal_reason: text(&content.refusal_reason),
        time_unix_ms: unix_ms(content.time),
    }
}

fn unix_ms(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn alteration_to_pb(alteration: &Alteration) -> IssuanceLogAlteration {
    let (kind, original_seq) = match alteration.kind {
        AlterationKind::Edited => ("edited", 0),
        AlterationKind::Deleted => ("deleted", 0),
        AlterationKind::Reordered { original_seq } => ("reordered", original_seq),
        AlterationKind::Inserted => ("inserted", 0),
        AlterationKind::CheckpointMismatch => ("checkpoint_mismatch", 0),
        AlterationKind::BadCheckpointSignature => ("bad_checkpoint_signature", 0),
        AlterationKind::CheckpointMissing => ("checkpoint_missing", 0),
        _ => ("unknown", 0),
    };
    IssuanceLogAlteration {
        seq: alteration.seq,
        kind: kind.to_owned(),
        original_seq,
        detail: alteration.detail.clone(),
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn parse_entry_id(text: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(text)
        .map_err(|error| Status::invalid_argument(format!("invalid SPIFFE ID {text:?}: {error}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    use hyper_util::rt::TokioIo;
    use tonic::codegen::{Context, Poll, Service};
    use tonic::transport::{Channel, Endpoint, Uri};
    use twid_config::ServerConfig;
    use twid_proto::admin::admin_client::AdminClient;
    use twid_spiffe::TrustDomain;

    use super::*;
    use crate::Server;

    /// Dials the admin socket for a tonic channel.
    #[derive(Clone)]
    struct UnixConnector(PathBuf);

    impl Service<Uri> for UnixConnector {
        type Response = TokioIo<tokio::net::UnixStream>;
        type Error = std::io::Error;
        type Future =
            std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let path = self.0.clone();
            Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
        }
    }

    /// Starts a development server in `dir` on the datastore `TWID_TEST_DATASTORE` selects;
    /// the returned database is removed when dropped.
    async fn start_server(
        dir: &std::path::Path,
    ) -> (crate::ServerHandle, crate::test_support::TestDatastore) {
        let data_dir = dir.join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let database = crate::test_support::TestDatastore::new(&data_dir);
        let mut config = ServerConfig::new_dev(TrustDomain::new("example.org").unwrap(), &data_dir);
        config.datastore = database.config.clone();
        (Server::start(config).await.unwrap(), database)
    }

    async fn admin_client(path: PathBuf) -> AdminClient<Channel> {
        let channel = Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(UnixConnector(path))
            .await
            .unwrap();
        AdminClient::new(channel)
    }

    fn entry(path: &str, uid: u32) -> pb::Entry {
        pb::Entry {
            spiffe_id: format!("spiffe://example.org/{path}"),
            parent_id: "spiffe://example.org/spire/agent/join_token/batch".to_owned(),
            selectors: vec![pb::Selector {
                r#type: "unix".to_owned(),
                value: format!("uid:{uid}"),
            }],
            ..pb::Entry::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_create_reports_each_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _database) = start_server(dir.path()).await;
        let mut client = admin_client(server.admin_socket().to_path_buf()).await;

        let mut invalid = entry("invalid", 3);
        invalid.spiffe_id = "spiffe://other.org/invalid".to_owned();
        let entries = vec![entry("a", 1), entry("b", 2), entry("a", 1), invalid];
        let results = client
            .batch_create_entry(BatchCreateEntryRequest { entries })
            .await
            .unwrap()
            .into_inner()
            .results;

        assert_eq!(results.len(), 4);
        assert!(results[0].error.is_empty(), "{}", results[0].error);
        assert!(results[1].error.is_empty(), "{}", results[1].error);
        assert!(results[2].entry.is_none());
        assert!(
            results[2].error.contains("already exists"),
            "{}",
            results[2].error
        );
        assert!(results[3].entry.is_none());
        assert!(
            results[3].error.contains("other.org"),
            "{}",
            results[3].error
        );
        let stored = client
            .count_entries(CountEntriesRequest {})
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(stored, 2);
        let first = results[0].entry.as_ref().unwrap();
        let fetched = client
            .get_entry(GetEntryRequest {
                id: first.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.spiffe_id, "spiffe://example.org/a");

        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_create_rejects_oversized_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _database) = start_server(dir.path()).await;
        let mut client = admin_client(server.admin_socket().to_path_buf()).await;

        let entries = (0..=MAX_BATCH_CREATE_ENTRIES)
            .map(|n| entry(&format!("w{n}"), 1))
            .collect();
        let status = client
            .batch_create_entry(BatchCreateEntryRequest { entries })
            .await
            .unwrap_err();

        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("at most 10000"),
            "{}",
            status.message()
        );
        let stored = client
            .count_entries(CountEntriesRequest {})
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(stored, 0);

        server.shutdown().await;
    }
}
