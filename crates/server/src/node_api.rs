//! The node API: node attestation, agent SVID renewal, entry sync and workload SVID signing,
//! over mutual TLS.
//!
//! Invariant: every RPC but `AttestAgent` runs only for a caller whose TLS client certificate
//! is the current SVID of an attested, unbanned agent (or its unexpired previous SVID, until the
//! agent uses the current one), and signs only for entries authorized for that agent.
//!
//! Every SVID is recorded in the issuance log before it is returned (see [`crate::provenance`]),
//! and so is every request for an unauthorized entry and every rejected join token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use twid_proto::node::node_server::{Node, NodeServer};
use twid_proto::node::{
    AgentSvid, AttestAgentRequest, AttestAgentResponse, BatchNewX509SvidRequest,
    BatchNewX509SvidResponse, NewJwtSvidRequest, NewJwtSvidResponse, NewWitSvidRequest,
    NewWitSvidResponse, RenewAgentRequest, RenewAgentResponse, SyncHint, SyncRequest, SyncResponse,
    WatchRequest, X509SvidResult, attest_agent_request, attest_agent_response,
};
use twid_spiffe::SpiffeId;
use twid_telemetry::names;
use twid_types::{AttestedAgent, RegistrationEntry};

use crate::convert::{expiry_text, unix_now, unix_seconds};
use crate::provenance::{self, SignedX509};
use crate::{ServerError, Shared};
use twid_types::EntriesDigest;

/// Largest request the node API decodes. The biggest legitimate requests are agents' CSR
/// batches (500 CSRs of under 1 KiB each) and evidence envelopes (at most 1 MiB), so anything
/// larger is rejected before it is buffered. Responses (syncs of large entry sets) may be larger.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Concurrent streams one connection may hold open. An agent needs a handful; the limit keeps
/// one unauthenticated connection from parking thousands of attestation streams.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// How long an attestation stream may stay open before its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum number of audiences in one JWT-SVID, as the agent's Workload API allows.
const MAX_JWT_AUDIENCES: usize = 32;

/// Maximum length in bytes of one JWT-SVID audience.
const MAX_JWT_AUDIENCE_LEN: usize = 512;

/// Rejects an audience list that is empty, contains an empty or duplicate audience, or is
/// larger than a token should carry. `field` names the request field in the message.
pub(crate) fn check_jwt_audiences(audiences: &[String], field: &str) -> Result<(), Status> {
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(Status::invalid_argument(format!(
            "{field} must contain at least one audience and no empty one"
        )));
    }
    if audiences.len() > MAX_JWT_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "{field} has {} audiences; at most {MAX_JWT_AUDIENCES} are allowed",
            audiences.len()
        )));
    }
    if let Some(long) = audiences.iter().find(|a| a.len() > MAX_JWT_AUDIENCE_LEN) {
        return Err(Status::invalid_argument(format!(
            "{field} has an audience of {} bytes; at most {MAX_JWT_AUDIENCE_LEN} are allowed",
            long.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(duplicate) = audiences.iter().find(|a| !seen.insert(a.as_str())) {
        return Err(Status::invalid_argument(format!(
            "{field} names audience {duplicate:?} twice; list each audience once"
        )));
    }
    Ok(())
}

/// File descriptors the server needs besides node API connections: datastore connections,
/// the admin socket, key files and the other listeners. An estimate with room to spare.
const DESCRIPTORS_BESIDES_CONNECTIONS: u64 = 256;

/// Logs a warning when the open file limit is too low for `max_connections` node API
/// connections, each of which takes one descriptor. Beyond the limit, accepting fails and new
/// agents cannot connect until others leave.
fn warn_if_descriptors_short(max_connections: usize) {
    let Ok((soft, _hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return;
    };
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(DESCRIPTORS_BESIDES_CONNECTIONS);
    if soft < needed {
        tracing::warn!(
            open_file_limit = soft,
            node_api_max_connections = max_connections,
            "the open file limit (ulimit -n) is below node_api_max_connections plus {} for \
             other files; raise it, or lower node_api_max_connections, or agents beyond the \
             limit cannot connect",
            DESCRIPTORS_BESIDES_CONNECTIONS
        );
    }
}

/// Binds the node API listener and starts serving it.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, ServerError> {
    let config = &shared.config;
    let address = SocketAddr::new(config.bind_address, config.bind_port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            address: address.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Bind {
        address: address.to_string(),
        source,
    })?;
    let tls = twid_tls::server_config(
        shared.identity.svid.clone(),
        shared.identity.trust.clone(),
        twid_tls::ClientAuth::Optional(twid_tls::Authorizer::MemberOf(config.trust_domain.clone())),
    )?;
    let max_connections = config.node_api_max_connections;
    warn_if_descriptors_short(max_connections);
    let incoming = twid_tls::TlsIncoming::new(listener, tls).with_max_connections(max_connections);
    let service = NodeServer::new(NodeService {
        shared: Arc::clone(shared),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(64 * 1024 * 1024);
    let verification = crate::verification_api::service(shared);
    let workload_attestation = crate::workload_attestation::service(shared, shutdown);
    let shutdown = shutdown.clone();
    tasks.spawn(
        async move {
            // HTTP/2 pings close connections whose peer stopped responding, including TLS
            // clients that never speak HTTP/2, so idle connections cannot pile up.
            let result = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(service)
                .add_service(verification)
                .add_service(workload_attestation)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            if let Err(error) = result {
                tracing::error!(error = %error, "node API stopped");
            }
        }
        .instrument(tracing::info_span!("node_api")),
    );
    tracing::info!(address = %bound, "node API listening");
    Ok(bound)
}

pub(crate) struct NodeService {
    pub(crate) shared: Arc<Shared>,
    /// Ends `Watch` streams, which never end on their own, so that shutdown does not wait on
    /// them.
    pub(crate) shutdown: CancellationToken,
}

pub(crate) type AttestStream =
    Pin<Box<dyn Stream<Item = Result<AttestAgentResponse, Status>> + Send>>;

pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<SyncHint, Status>> + Send>>;

pub(crate) type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

/// Entries per Sync message. An entry is a few hundred bytes, so a message stays far below
/// the 4 MiB that gRPC implementations accept by default.
const SYNC_ENTRIES_PER_MESSAGE: usize = 2_000;

/// Encoded entry bytes per Sync message. Entries may be large (the admin API accepts many long
/// selectors), so messages are also cut by size, below the 64 MiB that agents accept. A single
/// entry larger than this still travels, alone in its message.
const SYNC_BYTES_PER_MESSAGE: usize = 4 * 1024 * 1024;

/// Splits a Sync response into messages: `first` carries the bundles and revocations, the
/// entries and removed IDs follow in chunks, and the last message carries the revision, digest
/// and count. Entries are converted to messages as the stream is read, so a large set is not
/// held twice.
fn sync_messages(
    first: SyncResponse,
    view: crate::entries::EntriesView,
) -> impl Stream<Item = Result<SyncResponse, Status>> + Send {
    let crate::entries::EntriesView {
        entries,
        removed,
        revision,
        digest,
        count,
        ..
    } = view;
    async_stream::stream! {
        let mut message = first;
        let mut entries = entries.into_iter().peekable();
        let mut removed = removed.into_iter().peekable();
        loop {
            let mut bytes = 0;
            while let Some(next) = entries.peek() {
                let size = prost::Message::encoded_len(&next.pb);
                let full = message.entries.len() >= SYNC_ENTRIES_PER_MESSAGE
                    || bytes + size > SYNC_BYTES_PER_MESSAGE;
                if full && !message.entries.is_empty() {
                    break;
                }
                bytes += size;
                message.entries.extend(entries.next().map(|indexed| indexed.pb.clone()));
            }
            let room = SYNC_ENTRIES_PER_MESSAGE * 8 - message.entries.len();
            message.removed_entry_ids.extend(removed.by_ref().take(room));
            if entries.peek().is_none() && removed.peek().is_none() {
                message.entries_revision = revision;
                message.entries_digest = digest.to_bytes().to_vec();
                message.entries_count = u64::try_from(count).unwrap_or(u64::MAX);
                yield Ok(message);
                break;
            }
            yield Ok(std::mem::take(&mut message));
        }
    }
}

/// Turns an internal failure into a status that reveals no internals to the peer.
pub(crate) fn internal(error: ServerError) -> Status {
    tracing::error!(error = %crate::tasks::error_chain(&error), "node API request failed");
    Status::internal("internal server error; see the server log")
}

impl NodeService {
    /// Returns the attested agent that presented the request's TLS client certificate, which
    /// must be the agent's current SVID or its unexpired previous one. The first request with
    /// the current SVID clears the previous one.
    pub(crate) async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<AttestedAgent, Status> {
        self.authenticate_serial(request)
            .await
            .map(|(agent, _)| agent)
    }

    /// Authenticates the caller as [`NodeService::authenticate`] does, and also returns the
    /// serial number of the SVID that the caller presented.
    async fn authenticate_serial<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(AttestedAgent, String), Status> {
        let leaf = request
            .extensions()
            .get::<twid_tls::TlsConnectInfo>()
            .and_then(|info| info.peer_certificates.as_ref())
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this call needs the agent's X.509-SVID as TLS client certificate",
                )
            })?;
        let (spiffe_id, serial) = leaf_identity(&leaf)?;
        let agent = self.authenticate_agent(&spiffe_id, &serial).await?;
        Ok((agent, serial))
    }

    /// Returns the attested agent `spiffe_id` if it may call the node API with the SVID of
    /// `serial`: it is attested and not banned, the SVID is not revoked, and it is the
    /// agent's current SVID or its unexpired previous one.
    async fn authenticate_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<AttestedAgent, Status> {
        let mut agent = self
            .shared
            .datastore
            .get_attested_agent(spiffe_id)
            .await
            .map_err(|error| internal(error.into()))?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "agent {spiffe_id} is not attested (it may have been evicted); attest again"
                ))
            })?;
        if agent.banned {
            return Err(Status::permission_denied(format!(
                "agent {spiffe_id} is banned"
            )));
        }
        crate::revocation::check_agent_svid(&self.shared, spiffe_id, serial).await?;
        if agent.x509_svid_serial == serial {
            self.clear_previous_svid(&mut agent).await;
            return Ok(agent);
        }
        // The previous SVID stays valid until the agent uses its current one, so an agent
        // whose renewal or re-attestation reply was lost is not locked out.
        let previous_unexpired = agent
            .previous_x509_svid_expires_at
            .is_some_and(|expires_at| expires_at > unix_now());
        if previous_unexpired && agent.previous_x509_svid_serial.as_deref() == Some(serial) {
            tracing::info!(
                agent_id = %spiffe_id,
                serial = %serial,
                "agent authenticated with its previous SVID"
            );
            return Ok(agent);
        }
        Err(Status::permission_denied(format!(
            "the SVID presented by agent {spiffe_id} is neither its current one nor its \
             unexpired previous one; attest again"
        )))
    }

    /// Forgets the agent's previous SVID after the agent used its current one. A failed
    /// write is logged and ignored, because the previous SVID then only stays valid longer.
    async fn clear_previous_svid(&self, agent: &mut AttestedAgent) {
        if agent.previous_x509_svid_serial.is_none()
            && agent.previous_x509_svid_expires_at.is_none()
        {
            return;
        }
        let cleared = self
            .shared
            .datastore
            .clear_previous_agent_svid(&agent.spiffe_id, &agent.x509_svid_serial)
            .await;
        match cleared {
            Ok(_) => {
                agent.previous_x509_svid_serial = None;
                agent.previous_x509_svid_expires_at = None;
            }
            Err(error) => tracing::warn!(
                agent_id = %agent.spiffe_id,
                error = %error,
                "clearing the previous agent SVID failed"
            ),
        }
    }

    pub(crate) fn agent_ttl(&self) -> Duration {
        self.shared
            .config
            .agent_ttl
            .unwrap_or(self.shared.config.default_x509_svid_ttl)
    }

    /// Signs an SVID for the CSR's key with the active authority.
    fn sign_x509(
        &self,
        spiffe_id: &SpiffeId,
        csr: &[u8],
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<SignedX509, Status> {
        self.sign_x509_svid(spiffe_id, csr, ttl, dns_names, &[], SystemTime::now())
    }

    /// Signs an SVID valid from `now` for `ttl` (or until the CA expires, if sooner) with extra
    /// non-critical extensions, such as the attestation claims of an SVID issued on evidence.
    pub(crate) fn sign_x509_with_extensions(
        &self,
        spiffe_id: &SpiffeId,
        csr: &[u8],
        ttl: Duration,
        extensions: &[twid_ca::SvidExtension],
        now: SystemTime,
    ) -> Result<Vec<u8>, Status> {
        self.sign_x509_svid(spiffe_id, csr, ttl, &[], extensions, now)
            .map(|signed| signed.cert)
    }

    /// Signs an SVID with its extensions and returns it with the serial number and key
    /// fingerprint that the issuance log records.
    fn sign_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        csr: &[u8],
        ttl: Duration,
        dns_names: &[String],
        extensions: &[twid_ca::SvidExtension],
        now: SystemTime,
    ) -> Result<SignedX509, Status> {
        let csr = twid_ca::parse_csr(csr)
            .map_err(|error| Status::invalid_argument(format!("invalid CSR: {error}")))?;
        let snapshot = self.shared.ca.snapshot();
        let authority = snapshot
            .active_x509()
            .ok_or_else(|| internal(ServerError::NoActiveAuthority("X.509")))?;
        let cert = authority
            .sign_x509_svid_with_extensions(
                &twid_ca::X509SvidRequest {
                    spiffe_id,
                    public_key_spki_der: &csr.public_key_spki_der,
                    ttl,
                    dns_names,
                    now,
                },
                extensions,
            )
            .map_err(|error| internal(error.into()))?;
        metrics::counter!(names::X509_SVIDS_SIGNED_TOTAL).increment(1);
        let cert = cert.to_vec();
        let serial = serial_hex(&cert).map_err(|status| {
            internal(ServerError::Encode(format!(
                "the signed certificate cannot be parsed: {}",
                status.message()
            )))
        })?;
        Ok(SignedX509 {
            cert,
            serial,
            key_fingerprint: twid_provenance::key_fingerprint(&csr.public_key_spki_der),
        })
    }

    pub(crate) fn agent_svid(&self, spiffe_id: &SpiffeId, cert: Vec<u8>) -> AgentSvid {
        AgentSvid {
            cert_chain: self.shared.ca.snapshot().svid_chain(cert),
            spiffe_id: spiffe_id.to_string(),
            bundle: Some((*self.shared.bundle.load_full()).clone()),
        }
    }

    /// Returns the digest of the agent's authorized entries after the index covered hint
    /// `revision`, or `None` when the datastore could not be read, in which case the caller
    /// sends the hint anyway.
    async fn entries_digest(&self, agent: &AttestedAgent, revision: u64) -> Option<EntriesDigest> {
        let entries = &self.shared.entries;
        if let Err(error) = entries.refresh_for_hint(revision).await {
            tracing::warn!(error = %error, "reading entry changes for a Watch stream failed");
            return None;
        }
        Some(entries.authorized_digest(&agent.spiffe_id, &agent.selectors, unix_now()))
    }

    /// Returns, of the entries named by `ids`, those the agent is authorized for, keyed by ID.
    async fn authorized(
        &self,
        agent: &AttestedAgent,
        ids: &[&str],
    ) -> Result<HashMap<String, RegistrationEntry>, Status> {
        self.shared
            .entries
            .authorized_among(&agent.spiffe_id, &agent.selectors, ids, unix_now())
            .await
            .map_err(internal)
    }
}

/// Reads the SPIFFE ID and the serial number (lowercase hex) of a certificate.
fn leaf_identity(der: &[u8]) -> Result<(SpiffeId, String), Status> {
    let spiffe_id = twid_spiffe::x509::check_leaf(der)
        .map_err(|error| Status::unauthenticated(format!("invalid client SVID: {error}")))?;
    if !spiffe_id.path().starts_with("/spire/agent/") {
        return Err(Status::permission_denied(format!(
            "{spiffe_id} is not an agent ID; only agents may call the node API"
        )));
    }
    Ok((spiffe_id, serial_hex(der)?))
}

pub(crate) fn serial_hex(der: &[u8]) -> Result<String, Status> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| Status::unauthenticated(format!("invalid client certificate: {error}")))?;
    Ok(hex_lower(cert.raw_serial()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(crate) fn cert_expiry(der: &[u8]) -> i64 {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Node for NodeService {
    #[tracing::instrument(name = "node_attestation", skip_all)]
    async fn attest_agent(
        &self,
        request: Request<Streaming<AttestAgentRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        // An agent that attests again presents its current SVID, which lets it replace its own
        // record of an evidence-attested ID.
        let client_leaf = request
            .extensions()
            .get::<twid_tls::TlsConnectInfo>()
            .and_then(|info| info.peer_certificates.as_ref())
            .and_then(|certs| certs.first())
            .map(|leaf| leaf.to_vec());
        let mut stream = request.into_inner();
        // Unauthenticated callers may open this stream, so one that never sends its params
        // must not hold a connection slot for long.
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no attestation params within {} s of opening the stream",
                    FIRST_MESSAGE_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("attestation stream closed before params"))?;
        let Some(attest_agent_request::Step::Params(params)) = first.step else {
            return Err(Status::invalid_argument(
                "the first attestation message must carry params",
            ));
        };
        let data = params
            .data
            .ok_or_else(|| Status::invalid_argument("attestation params lack attestation data"))?;
        if self.shared.evidence.get(&data.r#type).is_some() {
            return Ok(Response::new(self.attest_evidence_stream(
                data.r#type,
                params.csr,
                stream,
                client_leaf,
            )));
        }
        let result = match data.r#type.as_str() {
            "join_token" => {
                let result = self.attest_join_token(&data.payload, &params.csr).await;
                provenance::record_rejected_attestation(&self.shared, "join_token", &result).await;
                result
            }
            other => {
                let mut supported = vec!["join_token"];
                supported.extend(self.shared.evidence.names());
                Err(Status::invalid_argument(format!(
                    "unsupported node attestor {other:?}; this server accepts {}",
                    supported.join(", ")
                )))
            }
        };
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        metrics::counter!(names::NODE_ATTESTATIONS_TOTAL, "result" => outcome).increment(1);
        let svid = result?;
        let response = AttestAgentResponse {
            step: Some(attest_agent_response::Step::Result(svid)),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            response,
        )]))))
    }

    #[tracing::instrument(skip_all)]
    async fn renew_agent(
        &self,
        request: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let (agent, presented_serial) = self.authenticate_serial(&request).await?;
        crate::revocation::check_request(&self.shared, &agent, None, "agent SVID renewal").await?;
        let now = crate::node_evidence::whole_seconds(SystemTime::now());
        let ttl = self.renewal_ttl(&agent, now)?;
        let csr = &request.get_ref().csr;
        let signed = self.sign_x509_svid(&agent.spiffe_id, csr, ttl, &[], &[], now)?;
        let record = provenance::agent_x509_record(
            &agent.spiffe_id,
            &agent.selectors,
            &signed.serial,
            signed.key_fingerprint,
        );
        provenance::append_issuance(&self.shared, record).await?;
        let serial = signed.serial;
        // A caller that presented its previous SVID keeps it as the previous one, so it can
        // retry when this reply is lost too.
        self.shared
            .datastore
            .update_agent_svid(
                &agent.spiffe_id,
                &presented_serial,
                &serial,
                cert_expiry(&signed.cert),
            )
            .await
            .map_err(|error| internal(error.into()))?;
        tracing::debug!(agent_id = %agent.spiffe_id, serial = %serial, "agent SVID renewed");
        Ok(Response::new(RenewAgentResponse {
            svid: Some(self.agent_svid(&agent.spiffe_id, signed.cert)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let agent = self.authenticate(&request).await?;
        let known = request.get_ref().entries_revision;
        let now = unix_now();
        let view = self
            .shared
            .entries
            .view_for(&agent.spiffe_id, &agent.selectors, known, now)
            .await
            .map_err(internal)?;
        let (revoked_x509_serials, revoked_jtis) =
            crate::revocation::revoked_for_agent(&self.shared, &agent.spiffe_id, now).await?;
        tracing::debug!(
            agent_id = %agent.spiffe_id,
            known_revision = known,
            revision = view.revision,
            full = view.full,
            sent = view.entries.len(),
            removed = view.removed.len(),
            authorized = view.count,
            revoked = revoked_x509_serials.len() + revoked_jtis.len(),
            "sync"
        );
        let authorities = self.shared.ca.snapshot();
        let federated_bundles =
            crate::federation::federated_bundles(&self.shared, view.federates_with.iter())
                .await
                .map_err(internal)?;
        let first = SyncResponse {
            bundle: Some((*self.shared.bundle.load_full()).clone()),
            federated_bundles,
            revoked_x509_serials,
            revoked_jtis,
            tainted_x509_authority_ids: authorities.tainted_x509_ids(),
            tainted_jwt_key_ids: authorities.tainted_jwt_ids(),
            full: view.full,
            ..SyncResponse::default()
        };
        Ok(Response::new(Box::pin(sync_messages(first, view))))
    }

    #[tracing::instrument(skip_all)]
    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let (agent, serial) = self.authenticate_serial(&request).await?;
        let agent_id = agent.spiffe_id.clone();
        let slot = self.shared.hints.open_stream(&agent_id).map_err(|open| {
            tracing::info!(
                agent_id = %agent_id,
                open,
                "Watch stream rejected: the agent has the maximum number open"
            );
            Status::resource_exhausted(format!(
                "agent {agent_id} already has {open} Watch streams open, the maximum; an \
                 agent needs one, so close the others before opening another"
            ))
        })?;
        tracing::debug!(agent_id = %agent_id, "agent watching for changes");
        let mut changes = self.shared.hints.subscribe();
        let shutdown = self.shutdown.clone();
        let node = NodeService {
            shared: Arc::clone(&self.shared),
            shutdown: self.shutdown.clone(),
        };
        let stream = async_stream::stream! {
            // Dropped with the stream, which releases the agent's slot.
            let _slot = slot;
            // The first hint makes a reconnecting agent sync whatever it missed.
            let first = *changes.borrow_and_update();
            let mut agent = agent;
            let mut seen = first.revision;
            let mut digest = node.entries_digest(&agent, first.revision).await;
            yield Ok(SyncHint { revision: first.revision, reason: "connected".to_owned() });
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let change = *changes.borrow_and_update();
                        let entries_only = change.broadcast_revision <= seen;
                        seen = change.revision;
                        let current = node.entries_digest(&agent, change.revision).await;
                        if entries_only && current.is_some() && current == digest {
                            // Entries of other agents changed; this agent's are as they were.
                            continue;
                        }
                        digest = current;
                        // Bans, evictions and revocations all send a hint, so checking the
                        // agent again here ends the stream of an agent that lost its standing.
                        match node.authenticate_agent(&agent_id, &serial).await {
                            Ok(current) => agent = current,
                            Err(status) => {
                                tracing::info!(
                                    agent_id = %agent_id,
                                    code = ?status.code(),
                                    "Watch stream ended: the agent no longer authenticates"
                                );
                                yield Err(status);
                                break;
                            }
                        }
                        yield Ok(SyncHint {
                            revision: change.revision,
                            reason: change.reason.to_owned(),
                        });
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn batch_new_x509_svid(
        &self,
        request: Request<BatchNewX509SvidRequest>,
    ) -> Result<Response<BatchNewX509SvidResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let ids: Vec<&str> = request
            .get_ref()
            .params
            .iter()
            .map(|params| params.entry_id.as_str())
            .collect();
        let by_id = self.authorized(&agent, &ids).await?;
        let rules = crate::revocation::rules_for_agent(&self.shared, &agent).await?;
        let default_ttl = self.shared.config.default_x509_svid_ttl;
        let count = request.get_ref().params.len();
        let mut results = Vec::with_capacity(count);
        let mut issued = Vec::with_capacity(count);
        let mut refused = Vec::new();
        for params in &request.get_ref().params {
            let Some(entry) = by_id.get(params.entry_id.as_str()) else {
                // The entry ID is caller-chosen text, so it is escaped and cut before it is
                // echoed or recorded.
                let reason = provenance::sanitize_reason(&format!(
                    "entry {} does not exist or is not authorized for agent {}",
                    params.entry_id, agent.spiffe_id
                ));
                refused.push(provenance::entry_refusal_record(
                    &agent.spiffe_id,
                    &params.entry_id,
                    &reason,
                ));
                results.push(X509SvidResult {
                    entry_id: params.entry_id.clone(),
                    error: reason,
                    ..X509SvidResult::default()
                });
                continue;
            };
            if let Some(rule) = crate::revocation::refusing_rule(&rules, &agent, Some(entry)) {
                let reason = crate::revocation::refusal_message(rule, &agent, "X.509-SVID");
                crate::revocation::record_refusal(&self.shared, &agent, Some(entry), &reason).await;
                results.push(X509SvidResult {
                    entry_id: entry.id.clone(),
                    error: reason,
                    revoked: true,
                    ..X509SvidResult::default()
                });
                continue;
            }
            let ttl = ttl_or(entry.x509_svid_ttl, default_ttl);
            let result = match self.sign_x509(&entry.spiffe_id, &params.csr, ttl, &entry.dns_names)
            {
                Ok(signed) => {
                    issued.push(provenance::workload_x509_record(
                        entry,
                        &agent.spiffe_id,
                        &signed.serial,
                        signed.key_fingerprint,
                    ));
                    X509SvidResult {
                        entry_id: entry.id.clone(),
                        expires_at: cert_expiry(&signed.cert),
                        cert_chain: self.shared.ca.snapshot().svid_chain(signed.cert),
                        error: String::new(),
                        revoked: false,
                    }
                }
                Err(status) => X509SvidResult {
                    entry_id: entry.id.clone(),
                    error: status.message().to_owned(),
                    ..X509SvidResult::default()
                },
            };
            results.push(result);
        }
        let refusals = refused
            .into_iter()
            .map(|record| provenance::append_refusal(&self.shared, record));
        let (issued, _) = tokio::join!(
            provenance::append_issuances(&self.shared, issued),
            futures::future::join_all(refusals),
        );
        issued?;
        Ok(Response::new(BatchNewX509SvidResponse { results }))
    }

    #[tracing::instrument(skip_all)]
    async fn new_jwt_svid(
        &self,
        request: Request<NewJwtSvidRequest>,
    ) -> Result<Response<NewJwtSvidResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let params = request.get_ref();
        check_jwt_audiences(&params.audience, "audience")?;
        let authorized = self.authorized(&agent, &[params.entry_id.as_str()]).await?;
        let Some(entry) = authorized.get(&params.entry_id) else {
            let reason = format!(
                "entry {} does not exist or is not authorized for agent {}",
                params.entry_id, agent.spiffe_id
            );
            let record =
                provenance::entry_refusal_record(&agent.spiffe_id, &params.entry_id, &reason);
            provenance::append_refusal(&self.shared, record).await;
            return Err(provenance::sanitize_status(&Status::permission_denied(
                reason,
            )));
        };
        crate::revocation::check_request(&self.shared, &agent, Some(entry), "JWT-SVID").await?;
        let now = SystemTime::now();
        let issuer = self
            .shared
            .issuers
            .for_audience(&params.audience)
            .map_err(Status::invalid_argument)?;
        let (token, expiry) = if let Some(issuer) = issuer {
            tracing::debug!(issuer = %issuer.config.name, spiffe_id = %entry.spiffe_id, "signing JWT-SVID with a named issuer");
            issuer
                .sign(&entry.spiffe_id, &params.audience, now)
                .map_err(|error| internal(error.into()))?
        } else {
            let snapshot = self.shared.ca.snapshot();
            let key = snapshot
                .active_jwt()
                .ok_or_else(|| internal(ServerError::NoActiveAuthority("JWT")))?;
            let ttl = ttl_or(entry.jwt_svid_ttl, self.shared.config.default_jwt_svid_ttl);
            // SPIFFE allows a `jti` in JWT-SVIDs; the issuance log needs one to name the token.
            let mut claims = serde_json::Map::new();
            claims.insert(
                "jti".into(),
                uuid::Uuid::now_v7().simple().to_string().into(),
            );
            key.sign_jwt_svid(&entry.spiffe_id, &params.audience, ttl, now, Some(&claims))
                .map_err(|error| internal(error.into()))?
        };
        metrics::counter!(names::JWT_SVIDS_SIGNED_TOTAL).increment(1);
        let jti = provenance::jwt_id(&token).ok_or_else(|| {
            internal(ServerError::Encode(
                "the signed JWT-SVID has no jti claim".to_owned(),
            ))
        })?;
        let record = provenance::jwt_record(entry, &agent.spiffe_id, &jti);
        provenance::append_issuance(&self.shared, record).await?;
        Ok(Response::new(NewJwtSvidResponse {
            token,
            spiffe_id: entry.spiffe_id.to_string(),
            expires_at: unix_seconds(expiry),
            issued_at: unix_seconds(now),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn new_wit_svid(
        &self,
        request: Request<NewWitSvidRequest>,
    ) -> Result<Response<NewWitSvidResponse>, Status> {
        self.check_wit_revocation(&request).await?;
        self.handle_new_wit_svid(request).await
    }
}

fn ttl_or(seconds: i64, default: Duration) -> Duration {
    u64::try_from(seconds)
        .ok()
        .filter(|&seconds| seconds > 0)
        .map_or(default, Duration::from_secs)
}

impl NodeService {
    /// Refuses a WIT request on a basis that a revocation newer than the agent's attestation
    /// matches. An unknown or unauthorized entry is left to the WIT handler, which rejects it.
    ///
    /// Limit: this authenticates the caller a second time, before the WIT handler does.
    async fn check_wit_revocation(
        &self,
        request: &Request<NewWitSvidRequest>,
    ) -> Result<(), Status> {
        let agent = self.authenticate(request).await?;
        let rules = crate::revocation::rules_for_agent(&self.shared, &agent).await?;
        if rules.is_empty() {
            return Ok(());
        }
        let entry_id = request.get_ref().entry_id.as_str();
        let authorized = self.authorized(&agent, &[entry_id]).await?;
        let entry = authorized.get(entry_id);
        let Some(rule) = crate::revocation::refusing_rule(&rules, &agent, entry) else {
            return Ok(());
        };
        let reason = crate::revocation::refusal_message(rule, &agent, "WIT-SVID");
        crate::revocation::record_refusal(&self.shared, &agent, entry, &reason).await;
        Err(Status::permission_denied(reason))
    }

    /// Attests an agent with a join token: the token is consumed whether or not the rest
    /// succeeds, except that it is restored when the server itself fails afterwards.
    async fn attest_join_token(&self, payload: &[u8], csr: &[u8]) -> Result<AgentSvid, Status> {
        let token = std::str::from_utf8(payload)
            .map_err(|_| Status::invalid_argument("join token is not valid UTF-8"))?;
        // Check the CSR before using up the single-use token, so a malformed request does not
        // cost the operator a new token.
        twid_ca::parse_csr(csr)
            .map_err(|error| Status::invalid_argument(format!("invalid CSR: {error}")))?;
        let datastore = &self.shared.datastore;
        let stored = datastore
            .take_join_token(token)
            .await
            .map_err(|error| internal(error.into()))?;
        let Some(stored) = stored else {
            tracing::warn!(
                reason = "unknown or used",
                "join token attestation rejected"
            );
            return Err(Status::permission_denied(
                "join token does not exist or has already been used; generate a new one with \
                 `twid token generate`",
            ));
        };
        let now = unix_now();
        if stored.expires_at <= now {
            tracing::warn!(
                reason = "expired",
                expired_at = stored.expires_at,
                "join token attestation rejected"
            );
            return Err(Status::permission_denied(format!(
                "join token expired at {}; generate a new one with `twid token generate`",
                expiry_text(stored.expires_at)
            )));
        }
        let trust_domain = &self.shared.config.trust_domain;
        let agent_id = twid_types::agent_id_for_join_token(trust_domain, token)
            .map_err(|error| Status::invalid_argument(format!("invalid join token: {error}")))?;
        match self.issue_agent(&agent_id, csr).await {
            Ok(svid) => {
                tracing::info!(agent_id = %agent_id, "agent attested with a join token");
                Ok(svid)
            }
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::Internal | tonic::Code::Unavailable
                ) {
                    let _ = datastore.create_join_token(token, stored.expires_at).await;
                }
                Err(status)
            }
        }
    }

    async fn issue_agent(&self, agent_id: &SpiffeId, csr: &[u8]) -> Result<AgentSvid, Status> {
        let signed = self.sign_x509(agent_id, csr, self.agent_ttl(), &[])?;
        let record =
            provenance::agent_x509_record(agent_id, &[], &signed.serial, signed.key_fingerprint);
        provenance::append_issuance(&self.shared, record).await?;
        let cert = signed.cert;
        let agent = AttestedAgent {
            spiffe_id: agent_id.clone(),
            attestation_type: "join_token".to_owned(),
            x509_svid_serial: signed.serial,
            x509_svid_expires_at: cert_expiry(&cert),
            previous_x509_svid_serial: None,
            previous_x509_svid_expires_at: None,
            selectors: Vec::new(),
            banned: false,
            attested_at: unix_now(),
        };
        self.shared
            .datastore
            .create_attested_agent(&agent)
            .await
            .map_err(|error| match error {
                twid_datastore::DatastoreError::AlreadyExists(_) => Status::permission_denied(
                    format!("agent {agent_id} is already attested; a join token works once"),
                ),
                other => internal(other.into()),
            })?;
        Ok(self.agent_svid(agent_id, cert))
    }
}
