//! The issuance log on the server: opened at start with its checkpoint signing key, and
//! appended to by the node API for every SVID it issues and every request it rejects.
//!
//! Every issuance record is appended before its SVID leaves the server, so every SVID that an
//! agent or a workload has received has a record. When that append fails, the SVID is dropped and the
//! request fails with UNAVAILABLE. The converse does not hold: a record may exist for an SVID
//! that never reached the caller, for example when storing the agent fails after the append.
//!
//! A rejection whose record cannot be appended is still rejected with its own status. The
//! failed append is logged as an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tonic::Status;
use twid_ca::{KeyType, PrivateKey};
use twid_datastore::Datastore;
use twid_evidence::Verified;
use twid_evidence::result::AttestationResult;
use twid_proto::node::AgentSvid;
use twid_provenance::{
    IssuanceLog, LogError, LogOptions, NewRecord, PublicKey, SigningKey, key_fingerprint,
};
use twid_spiffe::SpiffeId;
use twid_types::{RegistrationEntry, Selector};

use crate::{ServerError, Shared};

/// File name, under the server's `data_dir`, of the ECDSA P-256 key that signs checkpoints.
pub(crate) const CHECKPOINT_KEY_FILE: &str = "issuance_log_key.pem";

/// The issuance log and the public key that verifies its checkpoints.
pub(crate) struct Provenance {
    pub(crate) log: IssuanceLog,
    pub(crate) checkpoint_key: PublicKey,
}

/// An X.509-SVID just signed, with what its issuance record needs.
pub(crate) struct SignedX509 {
    /// The certificate DER.
    pub(crate) cert: Vec<u8>,
    /// The serial number in lowercase hex.
    pub(crate) serial: String,
    /// SHA-256 of the CSR's SubjectPublicKeyInfo DER.
    pub(crate) key_fingerprint: [u8; 32],
}

/// Opens the issuance log on `datastore`, signing checkpoints with the key in
/// `data_dir/issuance_log_key.pem`, which is created (mode 0600) on first start.
///
/// NOTE: replacing the key file makes `VerifyIssuanceLog` report the checkpoints signed with
/// the earlier key as bad signatures, because it checks every checkpoint with the current key.
pub(crate) fn open(data_dir: &Path, datastore: &Datastore) -> Result<Provenance, ServerError> {
    let path = data_dir.join(CHECKPOINT_KEY_FILE);
    let signing_key = load_or_create_key(&path)?;
    let checkpoint_key = signing_key.public_key().clone();
    tracing::info!(
        path = %path.display(),
        key_id = %checkpoint_key.key_id(),
        "issuance log opened"
    );
    let log = IssuanceLog::new(
        datastore.clone(),
        LogOptions {
            signing_key: Some(signing_key),
            ..LogOptions::default()
        },
    );
    Ok(Provenance {
        log,
        checkpoint_key,
    })
}

fn load_or_create_key(path: &Path) -> Result<SigningKey, ServerError> {
    let key = match std::fs::symlink_metadata(path) {
        Ok(_) => PrivateKey::read_pem_file(path)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate(KeyType::EcP256)?;
            key.write_pem_file(path)?;
            tracing::info!(path = %path.display(), "created the issuance log checkpoint key");
            key
        }
        Err(error) => return Err(ServerError::io(path, error)),
    };
    if key.key_type() != KeyType::EcP256 {
        return Err(invalid_key(
            path,
            &format!("it is an {} key, not ec-p256", key.key_type()),
        ));
    }
    SigningKey::ecdsa_p256_from_pkcs8(key.pkcs8_der())
        .map_err(|error| invalid_key(path, &error.to_string()))
}

fn invalid_key(path: &Path, reason: &str) -> ServerError {
    ServerError::Ca(twid_ca::CaError::InvalidKeyFile {
        path: PathBuf::from(path),
        reason: format!(
            "issuance log checkpoint key: {reason}; remove the file to create a new key"
        ),
    })
}

/// Builds the record of a workload X.509-SVID signed for `entry` at `agent_id`'s request.
pub(crate) fn workload_x509_record(
    entry: &RegistrationEntry,
    agent_id: &SpiffeId,
    serial: &str,
    key_fingerprint: [u8; 32],
) -> NewRecord {
    let mut record = NewRecord::x509(serial, entry.spiffe_id.clone());
    record.entry_id = Some(entry.id.clone());
    record.agent_id = Some(agent_id.clone());
    record.selectors = entry.selectors.clone();
    record.key_fingerprint = Some(key_fingerprint);
    record
}

/// Builds the record of an agent's own X.509-SVID, issued at attestation or renewal.
pub(crate) fn agent_x509_record(
    agent_id: &SpiffeId,
    selectors: &[Selector],
    serial: &str,
    key_fingerprint: [u8; 32],
) -> NewRecord {
    let mut record = NewRecord::x509(serial, agent_id.clone());
    record.agent_id = Some(agent_id.clone());
    record.selectors = selectors.to_vec();
    record.key_fingerprint = Some(key_fingerprint);
    record
}

/// Builds the record of a JWT-SVID signed for `entry` at `agent_id`'s request.
pub(crate) fn jwt_record(entry: &RegistrationEntry, agent_id: &SpiffeId, jti: &str) -> NewRecord {
    let mut record = NewRecord::jwt(jti, entry.spiffe_id.clone());
    record.entry_id = Some(entry.id.clone());
    record.agent_id = Some(agent_id.clone());
    record.selectors = entry.selectors.clone();
    record
}

/// Builds the record of a rejected request for `entry_id` by `agent_id`.
pub(crate) fn entry_refusal_record(agent_id: &SpiffeId, entry_id: &str, reason: &str) -> NewRecord {
    let mut record = NewRecord::refusal(reason);
    record.agent_id = Some(agent_id.clone());
    record.entry_id = Some(entry_id.to_owned());
    record
}

/// Appends the record of an issued credential and waits for its commit.
///
/// # Errors
/// Returns UNAVAILABLE when the append fails; the caller must then drop the credential.
pub(crate) async fn append_issuance(shared: &Shared, record: NewRecord) -> Result<(), Status> {
    shared
        .issuance_log
        .log
        .append(record)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Appends the records of several issued credentials concurrently, so that the log's group
/// commit stores them in one transaction, and waits for every commit.
///
/// # Errors
/// Returns UNAVAILABLE when any append fails; the caller must then drop every credential.
pub(crate) async fn append_issuances(
    shared: &Shared,
    records: Vec<NewRecord>,
) -> Result<(), Status> {
    let log = &shared.issuance_log.log;
    let appends = records.into_iter().map(|record| log.append(record));
    for result in futures::future::join_all(appends).await {
        result.map_err(unavailable)?;
    }
    Ok(())
}

/// Appends the record of a rejected request. A failure is logged, not returned, because the
/// request is rejected either way.
pub(crate) async fn append_refusal(shared: &Shared, record: NewRecord) {
    if let Err(error) = shared.issuance_log.log.append(record).await {
        tracing::error!(
            error = %error,
            "failed to append a rejection to the issuance log; the rejection has no record"
        );
    }
}

/// Turns a failed issuance append into the status sent to the caller.
fn unavailable(error: LogError) -> Status {
    tracing::error!(
        error = %crate::tasks::error_chain(&error),
        "failed to append to the issuance log; the credential was not issued"
    );
    Status::unavailable("the issuance log is unavailable, so no credential was issued; retry later")
}

/// Returns the `jti` claim of a compact JWT that this server signed, without checking the
/// signature.
pub(crate) fn jwt_id(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

/// Returns the serial number (lowercase hex) and the key fingerprint of a certificate.
pub(crate) fn certificate_identity(der: &[u8]) -> Result<(String, [u8; 32]), ServerError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        ServerError::Encode(format!("the signed certificate cannot be parsed: {error}"))
    })?;
    let serial = hex::encode(cert.raw_serial());
    let fingerprint = key_fingerprint(cert.tbs_certificate.subject_pki.raw);
    Ok((serial, fingerprint))
}

/// Appends the record of an agent SVID issued on hardware evidence, with the evidence digest
/// and the attestation result claims. The node API calls this after storing the agent and
/// before it sends `svid`.
///
/// # Errors
/// Returns UNAVAILABLE when the append fails, or INTERNAL when `svid` is malformed; the caller
/// must then drop the SVID.
pub(crate) async fn record_evidence_agent(
    shared: &Arc<Shared>,
    svid: &AgentSvid,
    verified: &Verified,
) -> Result<(), Status> {
    let record = evidence_agent_record(svid, verified).map_err(crate::node_api::internal)?;
    append_issuance(shared, record).await
}

fn evidence_agent_record(svid: &AgentSvid, verified: &Verified) -> Result<NewRecord, ServerError> {
    let agent_id = SpiffeId::new(&svid.spiffe_id).map_err(|error| {
        ServerError::Encode(format!("invalid agent ID {:?}: {error}", svid.spiffe_id))
    })?;
    let cert = svid
        .cert_chain
        .first()
        .ok_or_else(|| ServerError::Encode("the agent SVID has no certificate".to_owned()))?;
    let (serial, fingerprint) = certificate_identity(cert)?;
    let selectors: Vec<Selector> = verified
        .selectors()
        .into_iter()
        .map(|(kind, value)| Selector::new(kind, value))
        .collect();
    let result = AttestationResult {
        verified: Some(verified.clone()),
        error: None,
        policy_version: None,
        // Node attestation always checks the binding before an agent SVID is issued.
        binding_checked: true,
    };
    let claims = result.claims(None, env!("CARGO_PKG_VERSION"));
    let mut record = agent_x509_record(&agent_id, &selectors, &serial, fingerprint);
    record.evidence_digest = Some(verified.evidence_sha256);
    record.attestation_result = Some(Value::Object(claims));
    Ok(record)
}

/// Appends a rejection record when `result` is a node attestation that ended in
/// PERMISSION_DENIED. Other failures (malformed requests, timeouts, server faults) are not
/// rejections of the attester.
/// The record has no agent ID, because a join token agent ID contains the token, which is a
/// secret until it is used.
pub(crate) async fn record_rejected_attestation<T>(
    shared: &Shared,
    attestor: &str,
    result: &Result<T, Status>,
) {
    if let Err(status) = result
        && status.code() == tonic::Code::PermissionDenied
    {
        let reason = format!("{attestor} node attestation rejected: {}", status.message());
        append_refusal(shared, NewRecord::refusal(reason)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_id_reads_payload_claim() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"spiffe://example.org/w","jti":"abc"}"#);
        let token = format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln");
        assert_eq!(jwt_id(&token).as_deref(), Some("abc"));
    }

    #[test]
    fn jwt_id_missing_claim_is_none() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"spiffe://example.org/w"}"#);
        assert_eq!(jwt_id(&format!("e30.{payload}.c2ln")), None);
        assert_eq!(jwt_id("not-a-token"), None);
        assert_eq!(jwt_id("e30.!!!.c2ln"), None);
    }

    #[test]
    fn checkpoint_key_is_reused() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(CHECKPOINT_KEY_FILE);
        let first = load_or_create_key(&path).expect("create key");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_key(&path).expect("load key");
        assert_eq!(first.public_key(), second.public_key());
    }

    #[test]
    fn checkpoint_key_rejects_other_types() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(CHECKPOINT_KEY_FILE);
        let key = PrivateKey::generate(KeyType::EcP384).expect("generate");
        key.write_pem_file(&path).expect("write");
        let error = load_or_create_key(&path).expect_err("P-384 key accepted");
        assert!(format!("{error:?}").contains("not ec-p256"), "{error:?}");
    }
}
