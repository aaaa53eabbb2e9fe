//! Direct workload attestation (`twid.workload_attestation.v1.WorkloadAttestation`): a workload
//! in a TEE sends evidence bound to a server nonce and to its own key, and receives an
//! X.509-SVID and a WIT for that key.
//!
//! Only attested agents may call it, because each agent relays its workloads' requests over its
//! mutual TLS connection. The agent's word about the workload counts for nothing: the SPIFFE ID
//! comes from the entries whose selectors the verified evidence has. The relaying agent only
//! narrows the candidates to entries parented to it or to the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
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

/// Upper bound on a WIT's lifetime, the cap that twid-wimse's `issue_wit` also applies.
pub(crate) const MAX_WIT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The `typ` header of a WIT.
pub(crate) const WIT_TYPE: &str = "wit+jwt";

/// Builds the service for the node API port.
pub(crate) fn service(
    shared: &Arc<Shared>,
) -> WorkloadAttestationServer<WorkloadAttestationService> {
    WorkloadAttestationServer::new(WorkloadAttestationService {
        node: NodeService {
            shared: Arc::clone(shared),
        },
        nonces: NonceStore::new(NONCE_TTL, MAX_OUTSTANDING_NONCES),
    })
    .max_decoding_message_size(2 * twid_evidence::envelope::MAX_ENVELOPE_BYTES)
}

/// Issued nonces with their expiry, each usable once.
///
/// Limit: the nonces live in this server process only. With several server replicas behind one
/// address, a workload must send Attest to the replica that issued its nonce, for example over
/// one agent connection, which stays on one replica.
struct NonceStore {
    ttl: Duration,
    capacity: usize,
    nonces: Mutex<HashMap<[u8; NONCE_LEN], Instant>>,
}

impl NonceStore {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `nonce` as issued at `now`. Expired nonces are dropped when the store is full,
    /// and `false` is returned when it is still full after that.
    fn insert(&self, nonce: [u8; NONCE_LEN], now: Instant) -> bool {
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if nonces.len() >= self.capacity {
            nonces.retain(|_, expires| *expires > now);
            if nonces.len() >= self.capacity {
                return false;
            }
        }
        nonces.insert(nonce, now + self.ttl);
        true
    }

    /// Removes `nonce` and returns whether it was issued and unexpired at `now`.
    fn take(&self, nonce: &[u8], now: Instant) -> bool {
        let Ok(key) = <[u8; NONCE_LEN]>::try_from(nonce) else {
            return false;
        };
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        nonces.remove(&key).is_some_and(|expires| expires > now)
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
    claims: AttestationClaims,
}

#[tonic::async_trait]
impl WorkloadAttestation for WorkloadAttestationService {
    async fn get_nonce(
        &self,
        request: Request<GetNonceRequest>,
    ) -> Result<Response<GetNonceResponse>, Status> {
        // Only agents may fill the nonce store.
        self.node.authenticate(&request).await?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| {
            internal(ServerError::Encode(
                "the random number generator failed".to_owned(),
            ))
        })?;
        if !self.nonces.insert(nonce, Instant::now()) {
            tracing::warn!(
                capacity = self.nonces.capacity,
                "workload attestation nonce rejected: too many unused nonces"
            );
            return Err(Status::resource_exhausted(format!(
                "{} nonces are outstanding, the maximum; retry in a few seconds",
                self.nonces.capacity
            )));
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
                        reason = %status.message(),
                        "workload attestation rejected"
                    );
                    let mut record = NewRecord::refusal(format!(
                        "workload attestation rejected: {}",
                        status.message()
                    ));
                    record.agent_id = Some(agent.spiffe_id.clone());
                    provenance::append_refusal(&self.node.shared, record).await;
                }
                Err(status)
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
        if !self.nonces.take(&request.nonce, Instant::now()) {
            return Err(Status::permission_denied(
                "nonce unknown, used or expired; get a new one",
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
        let now_time = crate::node_evidence::whole_seconds(SystemTime::now());
        let now = unix_seconds(now_time);
        let (verified, attestor_name) = self.verify(request, now).await?;
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
        let ttl = remaining_ttl(x509_ttl, verified.valid_until, now).ok_or_else(|| {
            Status::permission_denied(format!(
                "{attestor_name} evidence rejected: its certificates or collateral stop being \
                 valid at {:?}, which is not after now {now}",
                verified.valid_until
            ))
        })?;
        let claims = AttestationClaims::from_verified(&verified, now, None);
        let cert = self.sign_x509(&entry, &request.public_key, &claims, ttl, now_time)?;
        let serial = serial_hex(&cert)?;
        let wit = if request.skip_wit {
            None
        } else {
            let expiry = cert_expiry(&cert);
            Some(self.sign_wit(
                &entry.spiffe_id,
                &request.public_key,
                &claims,
                expiry,
                now_time,
            )?)
        };
        let issued = Issued {
            entry,
            other_entry_ids,
            cert,
            serial,
            wit,
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
            "workload attested with hardware evidence"
        );
        self.response(issued)
    }

    /// Verifies the envelope with the attestor for its kind: signatures, chains, the binding
    /// of the request's nonce and key, and the attestor's policy.
    async fn verify(
        &self,
        request: &AttestRequest,
        now: i64,
    ) -> Result<(Verified, String), Status> {
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
        let envelope_json = request.evidence_envelope.clone();
        let nonce = request.nonce.clone();
        let public_key = request.public_key.clone();
        let verification = tokio::task::spawn_blocking(move || {
            attestor.verify(&envelope_json, &nonce, &public_key, now)
        })
        .await
        .map_err(|error| {
            internal(ServerError::Encode(format!(
                "verifier task failed: {error}"
            )))
        })?;

        match verification {
            Ok(verified) => Ok((verified, name)),
            Err(error) => Err(Status::permission_denied(format!(
                "{name} evidence rejected: {error}"
            ))),
        }
    }

    /// Returns the first entry, by creation time and then ID, whose selectors are all among
    /// `selectors` and whose parent is the agent or the server, with the IDs of the others.
    async fn matching_entry(
        &self,
        agent: &AttestedAgent,
        selectors: &[Selector],
        now: i64,
    ) -> Result<(RegistrationEntry, Vec<String>), Status> {
        let entries = self.node.shared.entries.all().await.map_err(internal)?;
        let server_id = twid_types::server_id(&self.node.shared.config.trust_domain);
        let mut matching: Vec<&RegistrationEntry> = entries
            .iter()
            .filter(|entry| entry.parent_id == agent.spiffe_id || entry.parent_id == server_id)
            .filter(|entry| entry.expires_at.is_none_or(|expires| expires > now))
            .filter(|entry| {
                !entry.selectors.is_empty()
                    && entry
                        .selectors
                        .iter()
                        .all(|selector| selectors.contains(selector))
            })
            .collect();
        matching.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let Some(first) = matching.first() else {
            let listed: Vec<String> = selectors.iter().map(ToString::to_string).collect();
            return Err(Status::permission_denied(format!(
                "no registration entry matches selectors [{}] with parent {} or {server_id}",
                listed.join(", "),
                agent.spiffe_id
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

        let jti = uuid::Uuid::new_v4().simple().to_string();
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

    /// Appends the issuance records of the X.509-SVID and the WIT, with the evidence digest
    /// and the attestation claims. The caller must drop both credentials on an error.
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
            wit.attestation_result = claims_json;
            records.push(wit);
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
        Ok(AttestResponse {
            expires_at: cert_expiry(&issued.cert),
            svid_chain: vec![issued.cert],
            bundle: bundle.x509_authorities.clone(),
            wit: issued.wit.map(|(token, _)| token).unwrap_or_default(),
            spiffe_id: issued.entry.spiffe_id.to_string(),
            attestation_claims: claims_json.to_string().into_bytes(),
            entry_id: issued.entry.id,
            other_entry_ids: issued.other_entry_ids,
        })
    }
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

    #[test]
    fn nonce_used_once() {
        let store = NonceStore::new(NONCE_TTL, 4);
        let now = Instant::now();
        assert!(store.insert([1; NONCE_LEN], now));
        assert!(store.take(&[1; NONCE_LEN], now));
        assert!(!store.take(&[1; NONCE_LEN], now));
    }

    #[test]
    fn nonce_expires_after_ttl() {
        let store = NonceStore::new(NONCE_TTL, 4);
        let now = Instant::now();
        assert!(store.insert([2; NONCE_LEN], now));
        assert!(store.insert([3; NONCE_LEN], now));
        assert!(store.take(&[2; NONCE_LEN], now + NONCE_TTL - Duration::from_secs(1)));
        assert!(!store.take(&[3; NONCE_LEN], now + NONCE_TTL));
    }

    #[test]
    fn nonce_unknown_or_short_rejected() {
        let store = NonceStore::new(NONCE_TTL, 4);
        let now = Instant::now();
        assert!(store.insert([4; NONCE_LEN], now));
        assert!(!store.take(&[5; NONCE_LEN], now));
        assert!(!store.take(&[4; 16], now));
        assert!(!store.take(&[], now));
    }

    #[test]
    fn full_store_prunes_expired() {
        let store = NonceStore::new(NONCE_TTL, 2);
        let now = Instant::now();
        assert!(store.insert([6; NONCE_LEN], now));
        assert!(store.insert([7; NONCE_LEN], now));
        assert!(!store.insert([8; NONCE_LEN], now));
        let later = now + NONCE_TTL;
        assert!(store.insert([8; NONCE_LEN], later));
        assert!(store.take(&[8; NONCE_LEN], later));
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
