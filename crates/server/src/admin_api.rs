//! The admin API on the server's local Unix socket: entries, join tokens, the bundle and
//! attested agents.
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
use twid_proto::admin::{
    BanAgentRequest, BanAgentResponse, CountEntriesRequest, CountEntriesResponse,
    CreateEntryRequest, CreateJoinTokenRequest, CreateJoinTokenResponse, DeleteEntryRequest,
    DeleteEntryResponse, EvictAgentRequest, EvictAgentResponse, GetAgentRequest, GetBundleRequest,
    GetEntryRequest, ListAgentsRequest, ListAgentsResponse, ListEntriesRequest,
    ListEntriesResponse, UpdateEntryRequest,
};
use twid_proto::types as pb;
use twid_spiffe::SpiffeId;

use crate::convert::{agent_to_pb, entry_to_pb, new_entry_from_pb, selector_from_pb, unix_now};
use crate::{ServerError, Shared};

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
fn datastore_status(error: DatastoreError) -> Status {
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
        Ok(Response::new(entry_to_pb(&created)))
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
        Ok(Response::new(BanAgentResponse {}))
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn parse_entry_id(text: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(text)
        .map_err(|error| Status::invalid_argument(format!("invalid SPIFFE ID {text:?}: {error}")))
}
