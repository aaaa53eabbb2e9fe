//! Direct workload attestation (`twid.workload_attestation.v1.WorkloadAttestation`): a workload
//! in a TEE sends evidence bound to a server nonce and to its own key, and receives an
//! X.509-SVID and a WIT for that key, and on request a JWT-SVID.
//!
//! Every credential expires no later than the X.509-SVID. The X.509-SVID ends no later than
//! the attestation time plus the policy's `max_evidence_age`, and no later than the end of the
//! evidence's certificates, CRLs and collateral. Nothing here renews a credential, so a
//! workload keeps its identity only by attesting again with fresh evidence.
//!
//! Only attested agents may call it, because each agent relays its workloads' requests over its
//! mutual TLS connection. The agent's word about the workload counts for nothing: the SPIFFE ID
//! comes from the entries whose selectors the verified evidence has. The relaying agent only
//! narrows the candidates to entries parented to it or to one of its node aliases.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use twid_evidence::svid_claims::{AttestationClaims, EXTENSION_OID, JWT_CLAIM};
use twid_evidence::{Envelope, Verified};
use twid_proto::workload_attestation::workload_attestation_server::{
    WorkloadAttestation, WorkloadAttestationServer,
};
use twid_proto::workload_attestation::{
    AttestRequest, AttestResponse, GetNonceRequest, GetNonceResponse,
};
use twid_provenance::NewRecord;
use twid_spiffe::SpiffeId;
use twid_types::{AttestedAgent, RegistrationEntry, Selector};

use crate::convert::unix_seconds;
use crate::node_api::{NodeService, cert_expiry, internal, serial_hex};
use crate::provenance;
use crate::{ServerError, Shared};

/// How long a nonce stays valid after GetNonce.
pub(crate) const NONCE_TTL: Duration = Duration::from_secs(60);

/// Length of a nonce in bytes.
const NONCE_LEN: usize = 32;

/// Upper bound on unused, unexpired nonces. At the full rate this allows about 1,600 GetNonce
/// calls per second for [`NONCE_TTL`], and the full map takes an estimated 8 MB.
const MAX_OUTSTANDING_NONCES: usize = 100_000;

/// Upper bound on one agent's unused, unexpired nonces, so that one agent host cannot fill the
/// store for all others. It allows about 16 GetNonce calls per second for [`NONCE_TTL`].
const MAX_OUTSTANDING_NONCES_PER_AGENT: usize = 1_000;

/// Upper bound on a WIT's lifetime, the cap that twid-wimse's `issue_wit` also applies.
pub(crate) const MAX_WIT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The `typ` header of a WIT.
pub(crate) const WIT_TYPE: &str = "wit+jwt";

/// Builds the service for the node API port.
pub(crate) fn service(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> WorkloadAttestationServer<WorkloadAttestationService> {
    WorkloadAttestationServer::new(WorkloadAttestationService {
        node: NodeService {
            shared: Arc::clone(shared),
            shutdown: shutdown.clone(),
        },
        nonces: NonceStore::new(
            NONCE_TTL,
            MAX_OUTSTANDING_NONCES,
            MAX_OUTSTANDING_NONCES_PER_AGENT,
        ),
    })
    .max_decoding_message_size(2 * twid_evidence::envelope::MAX_ENVELOPE_BYTES)
}

/// Issued nonces with their expiry and the agent that obtained each, each usable once and only
/// by that agent.
///
/// Limit: the nonces live in this server process only. With several server replicas behind one
/// address, a workload must send Attest to the replica that issued its nonce, for example over
/// one agent connection, which stays on one replica.
struct NonceStore {
    ttl: Duration,
    capacity: usize,
    per_agent_capacity: usize,
    state: Mutex<NonceState>,
}

#[derive(Default)]
struct NonceState {
    nonces: HashMap<[u8; NONCE_LEN], IssuedNonce>,
    /// The number of entries in `nonces` per agent, without zero counts.
    per_agent: HashMap<SpiffeId, usize>,
}

struct IssuedNonce {
    expires: Instant,
    agent_id: SpiffeId,
}

/// Why [`NonceStore::insert`] rejected a nonce.
#[derive(Debug, PartialEq, Eq)]
enum NonceRejected {
    /// The store contains its maximum number of unexpired nonces.
    StoreFull,
    /// The agent has its maximum number of unexpired nonces.
    AgentFull,
}

impl NonceState {
    /// Drops every nonce that expired at `now`.
    fn prune(&mut self, now: Instant) {
        let per_agent = &mut self.per_agent;
        self.nonces.retain(|_, issued| {
            if issued.expires > now {
                return true;
            }
            decrement(per_agent, &issued.agent_id);
            false
        });
    }

    fn agent_count(&self, agent_id: &SpiffeId) -> usize {
        self.per_agent.get(agent_id).copied().unwrap_or(0)
    }
}

impl NonceStore {
    fn new(ttl: Duration, capacity: usize, per_agent_capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            per_agent_capacity,
            state: Mutex::new(NonceState::default()),
        }
    }

    /// Stores `nonce` as issued to `agent_id` at `now`. Expired nonces are dropped when the
    /// store or the agent's share of it is full, and an error is returned when it is still
    /// full after that.
    fn insert(
        &self,
        nonce: [u8; NONCE_LEN],
        agent_id: &SpiffeId,
        now: Instant,
    ) -> Result<(), NonceRejected> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.nonces.len() >= self.capacity
            || state.agent_count(agent_id) >= self.per_agent_capacity
        {
            state.prune(now);
            if state.agent_count(agent_id) >= self.per_agent_capacity {
                return Err(NonceRejected::AgentFull);
            }
            if state.nonces.len() >= self.capacity {
                return Err(NonceRejected::StoreFull);
            }
        }
        let issued = IssuedNonce {
            expires: now + self.ttl,
            agent_id: agent_id.clone(),
        };
        *state.per_agent.entry(agent_id.clone()).or_default() += 1;
        if let Some(replaced) = state.nonces.insert(nonce, issued) {
            // A repeated 32-byte random value is not expected, but the counts must stay exact.
            decrement(&mut state.per_agent, &replaced.agent_id);
        }
        Ok(())
    }

    /// Removes `nonce` and returns whether it was issued to `agent_id` and unexpired at `now`.
    /// A nonce presented by another agent stays in the store, so that agent cannot spend it.
    fn take(&self, nonce: &[u8], agent_id: &SpiffeId, now: Instant) -> bool {
        let Ok(key) = <[u8; NONCE_LEN]>::try_from(nonce) else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Entry::Occupied(slot) = state.nonces.entry(key) else {
            return false;
        };
        if &slot.get().agent_id != agent_id {
            return false;
        }
        let issued = slot.remove();
        decrement(&mut state.per_agent, &issued.agent_id);
        issued.expires > now
    }
}

/// Lowers the count of `agent_id` by one and removes it at zero.
fn decrement(per_agent: &mut HashMap<SpiffeId, usize>, agent_id: &SpiffeId) {
    if let Some(count) = per_agent.get_mut(agent_id) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            per_agent.remove(agent_id);
        }
    }
}

pub(crate) struct WorkloadAttestationService {
    node: NodeService,
    nonces: NonceStore,
}

/// The verified evidence, the entry it matched and the credentials issued for it.
struct Issued {
    entry: RegistrationEntry,
    other_entry_ids: Vec<String>,
    cert: Vec<u8>,
    serial: String,
    wit: Option<(String, String)>,
    /// The JWT-SVID, its `jti` and its expiry in Unix seconds.
    jwt_svid: Option<(String, String, i64)>,
    claims: AttestationClaims,
}

#[tonic::async_trait]
impl WorkloadAttestation for WorkloadAttestationService {
    async fn get_nonce(
        &self,
        request: Request<GetNonceRequest>,
    ) -> Result<Response<GetNonceResponse>, Status> {
        // Only agents may fill the nonce store.
        let agent = self.node.authenticate(&request).await?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| {
            internal(ServerError::Encode(
                "the random number generator failed".to_owned(),
            ))
        })?;
        match self.nonces.insert(nonce, &agent.spiffe_id, Instant::now()) {
            Ok(()) => {}
            Err(NonceRejected::AgentFull) => {
                tracing::warn!(
                    agent_id = %agent.spiffe_id,
                    capacity = self.nonces.per_agent_capacity,
                    "workload attestation nonce rejected: too many unused nonces for the agent"
                );
                return Err(Status::resource_exhausted(format!(
                    "too many unused nonces for agent {}; use or let them expire",
                    agent.spiffe_id
                )));
            }
            Err(NonceRejected::StoreFull) => {
                tracing::warn!(
                    agent_id = %agent.spiffe_id,
                    capacity = self.nonces.capacity,
                    "workload attestation nonce rejected: too many unused nonces"
                );
                return Err(Status::resource_exhausted(format!(
                    "{} nonces are outstanding, the maximum; retry in a few seconds",
                    self.nonces.capacity
                )));
            }
        }
        let expires_at = unix_seconds(SystemTime::now() + self.nonces.ttl);
        Ok(Response::new(GetNonceResponse {
            nonce: nonce.to_vec(),
            expires_at,
        }))
    }

    #[tracing::instrument(name = "workload_attestation", skip_all)]
    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let agent = self.node.authenticate(&request).await?;
        let request = request.into_inner();
        match self.attest_workload(&agent, &request).await {
            Ok(response) => Ok(Response::new(response)),
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                ) {
                    tracing::info!(
                        agent_id = %agent.spiffe_id,
                        code = ?status.code(),
                        reason = %provenance::sanitize_reason(status.message()),
                        "workload attestation rejected"
                    );
                    let mut record = NewRecord::refusal(format!(
                        "workload attestation rejected: {}",
                        status.message()
                    ));
                    record.agent_id = Some(agent.spiffe_id.clone());
                    record.policy_version = self
                        .node
                        .shared
                        .policies
                        .last_read_version()
                        .map(|version| version.to_string());
                    provenance::append_refusal(&self.node.shared, record).await;
                }
                // Messages can quote evidence parse errors, which echo attacker bytes.
                Err(provenance::sanitize_status(&status))
            }
        }
    }
}

impl WorkloadAttestationService {
    async fn attest_workload(
        &self,
        agent: &AttestedAgent,
        request: &AttestRequest,
    ) -> Result<AttestResponse, Status> {
        if !self
            .nonces
            .take(&request.nonce, &agent.spiffe_id, Instant::now())
        {
            return Err(Status::permission_denied(
                "nonce unknown, used, expired or issued to another agent; get a new one",
            ));
        }
        let csr = twid_ca::parse_csr(&request.csr)
            .map_err(|error| Status::invalid_argument(format!("invalid CSR: {error}")))?;
        if csr.public_key_spki_der != request.public_key {
            return Err(Status::invalid_argument(
                "the CSR's public key differs from public_key; sign the CSR with the key the \
                 evidence binds",
            ));
        }
        self.check_audiences(&request.jwt_audiences)?;
        let now_time = crate::node_evidence::whole_seconds(SystemTime::now());
        let now = unix_seconds(now_time);
        let (verified, attestor_name, policy_version, max_evidence_age) =
            self.verify(request, now).await?;
        let selectors: Vec<Selector> = verified
            .selectors()
            .into_iter()
            .map(|(kind, value)| Selector::new(kind, value))
            .collect();
        let (entry, other_entry_ids) = self.matching_entry(agent, &selectors, now).await?;

        let x509_ttl = ttl_or(
            entry.x509_svid_ttl,
            self.node.shared.config.default_x509_svid_ttl,
        );
        let evidence_end =
            crate::node_evidence::evidence_expiry(verified.valid_until, max_evidence_age, now);
        let ttl = remaining_ttl(x509_ttl, evidence_end, now).ok_or_else(|| {
            Status::permission_denied(format!(
                "{attestor_name} evidence rejected: its certificates or collateral stop being \
                 valid at {:?}, which is not after now {now}",
                verified.valid_until
            ))
        })?;
        let claims = AttestationClaims::from_verified(&verified, now, policy_version);
        let cert = self.sign_x509(&entry, &request.public_key, &claims, ttl, now_time)?;
        let serial = serial_hex(&cert)?;
        let expiry = cert_expiry(&cert);
        let wit = if request.skip_wit {
            None
        } else {
            Some(self.sign_wit(
                &entry.spiffe_id,
                &request.public_key,
                &claims,
                expiry,
                now_time,
            )?)
        };
        let jwt_svid = if request.jwt_audiences.is_empty() {
            None
        } else {
            Some(self.sign_jwt_svid(&entry, &request.jwt_audiences, &claims, expiry, now_time)?)
        };
        let issued = Issued {
            entry,
            other_entry_ids,
            cert,
            serial,
            wit,
            jwt_svid,
            claims,
        };
        self.record(agent, &verified, &selectors, &issued).await?;
        tracing::info!(
            agent_id = %agent.spiffe_id,
            spiffe_id = %issued.entry.spiffe_id,
            entry_id = %issued.entry.id,
            attestor = %attestor_name,
            serial = %issued.serial,
            wit = issued.wit.is_some(),
            jwt_svid = issued.jwt_svid.is_some(),
            expires_at = expiry,
            "workload attested with hardware evidence"
        );
        self.response(issued)
    }

    /// Verifies the envelope with the attestor for its kind: signatures, chains, the binding
    /// of the request's nonce and key, and the attestor's policy. Returns the verified
    /// evidence, the attestor's name, and the policy's version and `max_evidence_age`.
    async fn verify(
        &self,
        request: &AttestRequest,
        now: i64,
    ) -> Result<(Verified, String, Option<u64>, Option<Duration>), Status> {
        let shared = &self.node.shared;

        let envelope = Envelope::from_json(&request.evidence_envelope).map_err(|error| {
            Status::invalid_argument(format!("invalid evidence envelope: {error}"))
        })?;
        let Some(attestor) = shared.evidence.for_kind(envelope.kind) else {
            return Err(Status::failed_precondition(format!(
                "this server has no evidence node attestor for {} evidence; configured: {}",
                envelope.kind,
                shared.evidence.names().join(", ")
            )));
        };

        let attestor = Arc::clone(attestor);
        let name = attestor.config.name.clone();
        let applied = crate::policy::applied_for(shared, &name).await?;
        let policy = Arc::clone(&applied.policy);
        let envelope_json = request.evidence_envelope.clone();
        let nonce = request.nonce.clone();
        let public_key = request.public_key.clone();
        let verification = tokio::task::spawn_blocking(move || {
            attestor.verify(&envelope_json, &nonce, &public_key, &policy, now)
        })
        .await
        .map_err(|error| {
            internal(ServerError::Encode(format!(
                "verifier task failed: {error}"
            )))
        })?;

        match verification {
            Ok(verified) => Ok((
                verified,
                name,
                applied.version,
                applied.policy.max_evidence_age,
            )),
            Err(error) => Err(Status::permission_denied(format!(
                "{name} evidence rejected: {error}"
            ))),
        }
    }

    /// Returns the first entry, by creation time and then ID, whose selectors are all among
    /// `selectors` and whose parent is the agent or one of its node aliases, with the IDs of
    /// the others. Node alias entries themselves (parent = the server) group agents and are
    /// never returned.
    async fn matching_entry(
        &self,
        agent: &AttestedAgent,
        selectors: &[Selector],
        now: i64,
    ) -> Result<(RegistrationEntry, Vec<String>), Status> {
        let entries = self.node.shared.entries.all().await.map_err(internal)?;
        let server_id = twid_types::server_id(&self.node.shared.config.trust_domain);
        let parents = candidate_parents(agent, &entries, &server_id, now);
        let matching = matching_entries(&entries, &parents, selectors, now);
        let Some(first) = matching.first() else {
            let listed: Vec<String> = selectors.iter().map(ToString::to_string).collect();
            let parents: Vec<String> = parents.iter().map(ToString::to_string).collect();
            return Err(Status::permission_denied(format!(
                "no registration entry matches selectors [{}] with parent {}",
                listed.join(", "),
                parents.join(" or ")
            )));
        };
        let others = matching[1..].iter().map(|entry| entry.id.clone()).collect();
        Ok(((*first).clone(), others))
    }

    /// Signs the X.509-SVID for the workload's key with the attestation claims extension.
    fn sign_x509(
        &self,
        entry: &RegistrationEntry,
        public_key: &[u8],
        claims: &AttestationClaims,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<u8>, Status> {
        let value_der = claims.to_der().map_err(|error| {
            internal(ServerError::Encode(format!(
                "the attestation claims cannot be encoded: {error}"
            )))
        })?;
        let extension = twid_ca::SvidExtension {
            oid: EXTENSION_OID.to_owned(),
            value_der,
        };
        let snapshot = self.node.shared.ca.snapshot();
        let authority = snapshot
            .active_x509()
            .ok_or_else(|| internal(ServerError::NoActiveAuthority("X.509")))?;
        let cert = authority
            .sign_x509_svid_with_extensions(
                &twid_ca::X509SvidRequest {
                    spiffe_id: &entry.spiffe_id,
                    public_key_spki_der: public_key,
                    ttl,
                    dns_names: &entry.dns_names,
                    now,
                },
                &[extension],
            )
            .map_err(|error| internal(error.into()))?;
        metrics::counter!(twid_telemetry::names::X509_SVIDS_SIGNED_TOTAL).increment(1);
        Ok(cert.to_vec())
    }

    /// Signs a WIT for `subject` whose `cnf.jwk` is the workload's key, expiring with the
    /// X.509-SVID at `expiry` (Unix seconds) or earlier. Returns the token and its `jti`.
    fn sign_wit(
        &self,
        subject: &SpiffeId,
        public_key: &[u8],
        claims: &AttestationClaims,
        expiry: i64,
        now: SystemTime,
    ) -> Result<(String, String), Status> {
        let confirmation_key = confirmation_jwk(public_key)?;
        let snapshot = self.node.shared.ca.snapshot();
        let key = snapshot.active_jwt().ok_or_else(|| {
            Status::unavailable("the server has no active JWT key yet; retry in a few seconds")
        })?;

        let issued_at = unix_seconds(now);
        let max_wit_expiry = issued_at.saturating_add(MAX_WIT_TTL.as_secs() as i64);
        let expiry = expiry
            .min(max_wit_expiry)
            .min(unix_seconds(key.not_after()));
        if expiry <= issued_at {
            return Err(Status::unavailable(
                "the server's JWT key expires now; retry after the key rotates",
            ));
        }

        let jti = uuid::Uuid::now_v7().simple().to_string();
        let claims_json = claims.to_json().map_err(|error| {
            internal(ServerError::Encode(format!(
                "the attestation claims cannot be encoded: {error}"
            )))
        })?;
        let issuer = twid_types::server_id(&self.node.shared.config.trust_domain);
        let mut token_claims = Map::new();
        token_claims.insert("iss".into(), Value::from(issuer.as_str()));
        token_claims.insert("sub".into(), Value::from(subject.as_str()));
        token_claims.insert("exp".into(), expiry.into());
        token_claims.insert("iat".into(), issued_at.into());
        token_claims.insert("jti".into(), Value::from(jti.as_str()));
        token_claims.insert("cnf".into(), serde_json::json!({ "jwk": confirmation_key }));
        token_claims.insert(JWT_CLAIM.into(), claims_json);
        let token = key
            .sign_claims(WIT_TYPE, &token_claims, now)
            .map_err(|error| internal(error.into()))?;
        Ok((token, jti))
    }

    /// Rejects JWT-SVID audiences that are empty, duplicated, too many or too long, or that
    /// belong to a named JWT issuer. An empty list is accepted and means no JWT-SVID.
    fn check_audiences(&self, audiences: &[String]) -> Result<(), Status> {
        if audiences.is_empty() {
            return Ok(());
        }
        crate::node_api::check_jwt_audiences(audiences, "jwt_audiences")?;
        // Limit: named issuers sign with their own key, `iss` and TTL, and their signing path
        // takes no attestation claims, so their audiences are rejected here.
        match self.node.shared.issuers.for_audience(audiences) {
            Ok(None) => Ok(()),
            Ok(Some(issuer)) => Err(Status::invalid_argument(format!(
                "jwt_audiences {audiences:?} belong to JWT issuer {:?}, but attested workloads \
                 get JWT-SVIDs signed with the trust domain's JWT key only; request other \
                 audiences",
                issuer.config.name
            ))),
            Err(message) => Err(Status::invalid_argument(message)),
        }
    }

    /// Signs a JWT-SVID for the entry's SPIFFE ID with the trust domain's JWT key, as the node
    /// API does for agents, with a `jti` and the attestation claims. It expires after the
    /// entry's or the server's JWT-SVID TTL, and no later than `max_expiry` (Unix seconds).
    /// Returns the token, its `jti` and its expiry.
    fn sign_jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audiences: &[String],
        claims: &AttestationClaims,
        max_expiry: i64,
        now: SystemTime,
    ) -> Result<(String, String, i64), Status> {
        let shared = &self.node.shared;
        let ttl = ttl_or(entry.jwt_svid_ttl, shared.config.default_jwt_svid_ttl);
        let ttl = remaining_ttl(ttl, Some(max_expiry), unix_seconds(now)).ok_or_else(|| {
            Status::unavailable("the X.509-SVID expires now; retry after the CA rotates")
        })?;
        let claims_json = claims.to_json().map_err(|error| {
            internal(ServerError::Encode(format!(
                "the attestation claims cannot be encoded: {error}"
            )))
        })?;
        let jti = uuid::Uuid::now_v7().simple().to_string();
        let mut extra = Map::new();
        extra.insert("jti".into(), Value::from(jti.as_str()));
        extra.insert(JWT_CLAIM.into(), claims_json);

        let snapshot = shared.ca.snapshot();
        let key = snapshot.active_jwt().ok_or_else(|| {
            Status::unavailable("the server has no active JWT key yet; retry in a few seconds")
        })?;
        let (token, expiry) = key
            .sign_jwt_svid(&entry.spiffe_id, audiences, ttl, now, Some(&extra))
            .map_err(|error| match error {
                twid_ca::CaError::Expired { .. } => Status::unavailable(
                    "the server's JWT key expires now; retry after the key rotates",
                ),
                error => internal(error.into()),
            })?;
        metrics::counter!(twid_telemetry::names::JWT_SVIDS_SIGNED_TOTAL).increment(1);
        Ok((token, jti, unix_seconds(expiry)))
    }

    /// Appends the issuance records of the X.509-SVID, the WIT and the JWT-SVID, with the
    /// evidence digest and the attestation claims. The caller must drop every credential on an
    /// error.
    async fn record(
        &self,
        agent: &AttestedAgent,
        verified: &Verified,
        selectors: &[Selector],
        issued: &Issued,
    ) -> Result<(), Status> {
        let claims_json = issued.claims.to_json().ok();
        let key_fingerprint = provenance::certificate_identity(&issued.cert)
            .map_err(internal)?
            .1;
        let mut x509 = provenance::workload_x509_record(
            &issued.entry,
            &agent.spiffe_id,
            &issued.serial,
            key_fingerprint,
        );
        x509.selectors = selectors.to_vec();
        x509.evidence_digest = Some(verified.evidence_sha256);
        x509.attestation_result.clone_from(&claims_json);
        let mut records = vec![x509];
        if let Some((_, jti)) = &issued.wit {
            let mut wit = NewRecord::wit(jti.as_str(), issued.entry.spiffe_id.clone());
            wit.entry_id = Some(issued.entry.id.clone());
            wit.agent_id = Some(agent.spiffe_id.clone());
            wit.selectors = selectors.to_vec();
            wit.key_fingerprint = Some(key_fingerprint);
            wit.evidence_digest = Some(verified.evidence_sha256);
            wit.attestation_result.clone_from(&claims_json);
            records.push(wit);
        }
        if let Some((_, jti, _)) = &issued.jwt_svid {
            let mut jwt = NewRecord::jwt(jti.as_str(), issued.entry.spiffe_id.clone());
            jwt.entry_id = Some(issued.entry.id.clone());
            jwt.agent_id = Some(agent.spiffe_id.clone());
            jwt.selectors = selectors.to_vec();
            jwt.evidence_digest = Some(verified.evidence_sha256);
            jwt.attestation_result = claims_json;
            records.push(jwt);
        }
        let policy_version = issued
            .claims
            .policy_version
            .map(|version| version.to_string());
        for record in &mut records {
            record.policy_version.clone_from(&policy_version);
        }
        provenance::append_issuances(&self.node.shared, records).await
    }

    fn response(&self, issued: Issued) -> Result<AttestResponse, Status> {
        let claims_json = issued.claims.to_json().map_err(|error| {
            internal(ServerError::Encode(format!(
                "the attestation claims cannot be encoded: {error}"
            )))
        })?;
        let bundle = self.node.shared.bundle.load_full();
        let (jwt_svid, jwt_svid_expires_at) = issued
            .jwt_svid
            .map_or((String::new(), 0), |(token, _, expiry)| (token, expiry));
        Ok(AttestResponse {
            expires_at: cert_expiry(&issued.cert),
            svid_chain: self.node.shared.ca.snapshot().svid_chain(issued.cert),
            bundle: bundle.x509_authorities.clone(),
            wit: issued.wit.map(|(token, _)| token).unwrap_or_default(),
            spiffe_id: issued.entry.spiffe_id.to_string(),
            attestation_claims: claims_json.to_string().into_bytes(),
            entry_id: issued.entry.id,
            other_entry_ids: issued.other_entry_ids,
            jwt_svid,
            jwt_svid_expires_at,
        })
    }
}

/// Returns the parents a directly attested workload's entry may have: the relaying agent's ID
/// and the IDs of the node aliases whose selectors the agent's selectors satisfy.
fn candidate_parents<'a>(
    agent: &'a AttestedAgent,
    entries: &'a [RegistrationEntry],
    server_id: &SpiffeId,
    now: i64,
) -> Vec<&'a SpiffeId> {
    let mut parents = vec![&agent.spiffe_id];
    parents.extend(twid_types::node_alias_ids(
        &agent.selectors,
        entries,
        server_id,
        now,
    ));
    parents
}

/// Returns the unexpired entries whose parent is in `parents` and whose selectors, at least
/// one, are all among `selectors`, sorted by creation time and then ID.
fn matching_entries<'a>(
    entries: &'a [RegistrationEntry],
    parents: &[&SpiffeId],
    selectors: &[Selector],
    now: i64,
) -> Vec<&'a RegistrationEntry> {
    let mut matching: Vec<&RegistrationEntry> = entries
        .iter()
        .filter(|entry| parents.contains(&&entry.parent_id))
        .filter(|entry| !entry.is_expired(now))
        .filter(|entry| twid_types::selectors_match(&entry.selectors, selectors))
        .collect();
    matching.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    matching
}

/// Builds the `cnf.jwk` of a WIT: the public JWK of a DER SubjectPublicKeyInfo with `alg`,
/// ES256, ES384 or ES512 by curve, and RS256 for RSA keys.
pub(crate) fn confirmation_jwk(public_key: &[u8]) -> Result<Value, Status> {
    let authority = twid_spiffe::JwtAuthority::from_spki_der("workload", public_key)
        .map_err(|error| Status::invalid_argument(format!("invalid public_key: {error}")))?;
    let mut jwk = authority.to_jwk(None);
    let Value::Object(object) = &mut jwk else {
        return Err(Status::invalid_argument("invalid public_key: no JWK form"));
    };
    object.remove("kid");
    let algorithm = match (
        object.get("kty").and_then(Value::as_str),
        object.get("crv").and_then(Value::as_str),
    ) {
        (Some("EC"), Some("P-256")) => "ES256",
        (Some("EC"), Some("P-384")) => "ES384",
        (Some("EC"), Some("P-521")) => "ES512",
        (Some("RSA"), _) => "RS256",
        _ => {
            return Err(Status::invalid_argument(
                "invalid public_key: expected an EC P-256, P-384 or P-521 key or an RSA key",
            ));
        }
    };
    object.insert("alg".into(), algorithm.into());
    Ok(jwk)
}

fn ttl_or(seconds: i64, default: Duration) -> Duration {
    u64::try_from(seconds)
        .ok()
        .filter(|&seconds| seconds > 0)
        .map_or(default, Duration::from_secs)
}

/// Returns `ttl` shortened so that `now + ttl` does not pass `valid_until`, or `None` when
/// nothing of it is left.
fn remaining_ttl(ttl: Duration, valid_until: Option<i64>, now: i64) -> Option<Duration> {
    let Some(valid_until) = valid_until else {
        return Some(ttl);
    };
    let left = u64::try_from(valid_until.saturating_sub(now)).ok()?;
    if left == 0 {
        return None;
    }
    Some(ttl.min(Duration::from_secs(left)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT_A: &str = "spiffe://td/spire/agent/join_token/a";
    const AGENT_B: &str = "spiffe://td/spire/agent/join_token/b";
    const SERVER: &str = "spiffe://td/spire/server";

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).expect("test id must parse")
    }

    fn store(capacity: usize, per_agent_capacity: usize) -> NonceStore {
        NonceStore::new(NONCE_TTL, capacity, per_agent_capacity)
    }

    #[test]
    fn nonce_used_once() {
        let store = store(4, 4);
        let agent = id(AGENT_A);
        let now = Instant::now();
        assert_eq!(store.insert([1; NONCE_LEN], &agent, now), Ok(()));
        assert!(store.take(&[1; NONCE_LEN], &agent, now));
        assert!(!store.take(&[1; NONCE_LEN], &agent, now));
    }

    #[test]
    fn nonce_expires_after_ttl() {
        let store = store(4, 4);
        let agent = id(AGENT_A);
        let now = Instant::now();
        assert_eq!(store.insert([2; NONCE_LEN], &agent, now), Ok(()));
        assert_eq!(store.insert([3; NONCE_LEN], &agent, now), Ok(()));
        let before = now + NONCE_TTL - Duration::from_secs(1);
        assert!(store.take(&[2; NONCE_LEN], &agent, before));
        assert!(!store.take(&[3; NONCE_LEN], &agent, now + NONCE_TTL));
    }

    #[test]
    fn nonce_unknown_or_short_rejected() {
        let store = store(4, 4);
        let agent = id(AGENT_A);
        let now = Instant::now();
        assert_eq!(store.insert([4; NONCE_LEN], &agent, now), Ok(()));
        assert!(!store.take(&[5; NONCE_LEN], &agent, now));
        assert!(!store.take(&[4; 16], &agent, now));
        assert!(!store.take(&[], &agent, now));
    }

    #[test]
    fn nonce_bound_to_issuing_agent() {
        let store = store(4, 4);
        let (a, b) = (id(AGENT_A), id(AGENT_B));
        let now = Instant::now();
        assert_eq!(store.insert([9; NONCE_LEN], &a, now), Ok(()));
        assert!(!store.take(&[9; NONCE_LEN], &b, now));
        // The other agent's attempt leaves the nonce usable by the agent that obtained it.
        assert!(store.take(&[9; NONCE_LEN], &a, now));
        assert!(!store.take(&[9; NONCE_LEN], &a, now));
    }

    #[test]
    fn full_store_prunes_expired() {
        let store = store(2, 2);
        let agent = id(AGENT_A);
        let now = Instant::now();
        assert_eq!(store.insert([6; NONCE_LEN], &agent, now), Ok(()));
        assert_eq!(store.insert([7; NONCE_LEN], &agent, now), Ok(()));
        assert!(store.insert([8; NONCE_LEN], &agent, now).is_err());
        let later = now + NONCE_TTL;
        assert_eq!(store.insert([8; NONCE_LEN], &agent, later), Ok(()));
        assert!(store.take(&[8; NONCE_LEN], &agent, later));
    }

    #[test]
    fn per_agent_cap_spares_others() {
        let store = store(10, 3);
        let (a, b) = (id(AGENT_A), id(AGENT_B));
        let now = Instant::now();
        for byte in 0..3 {
            assert_eq!(store.insert([byte; NONCE_LEN], &a, now), Ok(()));
        }
        assert_eq!(
            store.insert([3; NONCE_LEN], &a, now),
            Err(NonceRejected::AgentFull)
        );
        assert_eq!(store.insert([4; NONCE_LEN], &b, now), Ok(()));

        // Using a nonce frees one place for its agent.
        assert!(store.take(&[0; NONCE_LEN], &a, now));
        assert_eq!(store.insert([3; NONCE_LEN], &a, now), Ok(()));
        assert_eq!(
            store.insert([5; NONCE_LEN], &a, now),
            Err(NonceRejected::AgentFull)
        );

        // Expiry frees the agent's places too.
        let later = now + NONCE_TTL;
        assert_eq!(store.insert([5; NONCE_LEN], &a, later), Ok(()));
    }

    #[test]
    fn global_cap_still_applies() {
        let store = store(3, 2);
        let (a, b) = (id(AGENT_A), id(AGENT_B));
        let c = id("spiffe://td/spire/agent/join_token/c");
        let now = Instant::now();
        assert_eq!(store.insert([1; NONCE_LEN], &a, now), Ok(()));
        assert_eq!(store.insert([2; NONCE_LEN], &a, now), Ok(()));
        assert_eq!(store.insert([3; NONCE_LEN], &b, now), Ok(()));
        assert_eq!(
            store.insert([4; NONCE_LEN], &c, now),
            Err(NonceRejected::StoreFull)
        );
    }

    fn entry(name: &str, spiffe_id: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        let selectors = selectors
            .iter()
            .map(|s| Selector::parse(s).expect("test selector must parse"))
            .collect();
        let new = twid_types::NewEntry::new(id(spiffe_id), id(parent), selectors);
        RegistrationEntry::from_new(name.to_owned(), new, 0, 0)
    }

    fn agent(spiffe_id: &str, selectors: &[&str]) -> AttestedAgent {
        AttestedAgent {
            spiffe_id: id(spiffe_id),
            attestation_type: "join_token".to_owned(),
            x509_svid_serial: "01".to_owned(),
            x509_svid_expires_at: 0,
            previous_x509_svid_serial: None,
            previous_x509_svid_expires_at: None,
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).expect("test selector must parse"))
                .collect(),
            banned: false,
            attested_at: 0,
        }
    }

    fn matching_names(agent: &AttestedAgent, entries: &[RegistrationEntry]) -> Vec<String> {
        let workload = [Selector::new("tdx", "mrtd:aa")];
        let parents = candidate_parents(agent, entries, &id(SERVER), 0);
        matching_entries(entries, &parents, &workload, 0)
            .iter()
            .map(|entry| entry.id.clone())
            .collect()
    }

    #[test]
    fn alias_entry_never_matches_workload() {
        let entries = vec![entry(
            "alias",
            "spiffe://td/nodes/tdx",
            SERVER,
            &["tdx:mrtd:aa"],
        )];
        let member = agent(AGENT_A, &["tdx:mrtd:aa"]);
        assert!(matching_names(&member, &entries).is_empty());
    }

    #[test]
    fn entry_under_agent_alias_matches() {
        let entries = vec![
            entry(
                "alias",
                "spiffe://td/nodes/g",
                SERVER,
                &["join_token:group:g"],
            ),
            entry(
                "via-alias",
                "spiffe://td/tee",
                "spiffe://td/nodes/g",
                &["tdx:mrtd:aa"],
            ),
            entry("direct", "spiffe://td/tee2", AGENT_A, &["tdx:mrtd:aa"]),
            entry("other-agent", "spiffe://td/tee3", AGENT_B, &["tdx:mrtd:aa"]),
            entry("no-match", "spiffe://td/tee4", AGENT_A, &["tdx:mrtd:bb"]),
        ];
        let member = agent(AGENT_A, &["join_token:group:g"]);
        assert_eq!(matching_names(&member, &entries), ["direct", "via-alias"]);
        let outsider = agent(AGENT_A, &["join_token:group:h"]);
        assert_eq!(matching_names(&outsider, &entries), ["direct"]);
    }

    #[test]
    fn evidence_types_cover_every_kind() {
        for kind in twid_evidence::Kind::ALL {
            assert!(
                twid_types::EVIDENCE_SELECTOR_TYPES.contains(&kind.selector_type()),
                "{kind} selectors are missing from EVIDENCE_SELECTOR_TYPES"
            );
        }
    }

    #[test]
    fn confirmation_jwk_sets_alg() {
        let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256).unwrap();
        let jwk = confirmation_jwk(&key.public_key_spki_der()).unwrap();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert!(jwk.get("kid").is_none(), "{jwk}");
        let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP384).unwrap();
        let jwk = confirmation_jwk(&key.public_key_spki_der()).unwrap();
        assert_eq!(jwk["alg"], "ES384");
        assert!(confirmation_jwk(b"not a key").is_err());
    }

    #[test]
    fn remaining_ttl_caps_lifetime() {
        let hour = Duration::from_secs(3600);
        assert_eq!(remaining_ttl(hour, None, 100), Some(hour));
        assert_eq!(
            remaining_ttl(hour, Some(160), 100),
            Some(Duration::from_secs(60))
        );
        assert_eq!(remaining_ttl(hour, Some(100), 100), None);
    }
}
