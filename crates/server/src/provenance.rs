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
//!
//! Callers cause rejections, so their records are limited. Every rejection reason is escaped
//! and cut to [`MAX_REASON_BYTES`]. Each source may append [`REFUSAL_BURST`] records at once
//! and [`REFUSALS_PER_SECOND`] after that, where all unauthenticated callers are one source
//! and each authenticated agent ID is another. Rejections beyond the limit are counted in
//! `twid_refusals_not_recorded_total` and summarized in one record per source every
//! [`SUMMARY_INTERVAL`]. Issuance records are never limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Maximum length in bytes of a rejection reason in the log or in a log line, after escaping.
pub(crate) const MAX_REASON_BYTES: usize = 512;
/// Maximum length in bytes of a status message built from caller-influenced text.
pub(crate) const MAX_STATUS_MESSAGE_BYTES: usize = 1024;
/// Rejection records that one source may append per second once its burst is used up.
pub(crate) const REFUSALS_PER_SECOND: f64 = 50.0;
/// Rejection records that one source may append at once.
pub(crate) const REFUSAL_BURST: f64 = 500.0;
/// Time after the first rejection that was not recorded at which a summary record is written.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Source name of node API callers that have not authenticated as an agent.
const UNAUTHENTICATED_SOURCE: &str = "unauthenticated node API callers";
/// Number of tracked sources above which idle sources are forgotten.
const MAX_IDLE_SOURCES: usize = 4096;

/// The issuance log and the public key that verifies its checkpoints.
pub(crate) struct Provenance {
    pub(crate) log: IssuanceLog,
    pub(crate) checkpoint_key: PublicKey,
    refusal_limiter: Arc<RefusalLimiter>,
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
        refusal_limiter: Arc::new(RefusalLimiter::default()),
    })
}

/// Checks the newest end of the issuance log at start-up and logs an error for an alteration.
/// The server starts anyway, because refusing to issue would take identities away from every
/// workload, and `twid log verify` reports more than this check can.
pub(crate) async fn check_at_start(provenance: &Provenance) {
    match provenance
        .log
        .check_head(Some(&provenance.checkpoint_key))
        .await
    {
        Ok(None) => tracing::debug!("issuance log head checked"),
        Ok(Some(alteration)) => tracing::error!(
            seq = alteration.seq,
            kind = %alteration.kind,
            detail = %alteration.detail,
            "the issuance log was altered; run `twid log verify` to find the first alteration"
        ),
        Err(error) if error.is_damaged_log() => tracing::error!(
            error = %error,
            "the issuance log is damaged; run `twid log verify` to find the first alteration"
        ),
        Err(error) => tracing::warn!(error = %error, "checking the issuance log head failed"),
    }
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

/// Builds the record of a rejected request for `entry_id` by `agent_id`. The caller chooses
/// `entry_id`, so it is escaped and cut like the reason.
pub(crate) fn entry_refusal_record(agent_id: &SpiffeId, entry_id: &str, reason: &str) -> NewRecord {
    let mut record = NewRecord::refusal(sanitize_reason(reason));
    record.agent_id = Some(agent_id.clone());
    record.entry_id = Some(sanitize_reason(entry_id));
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
        .map_err(append_status)
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
        result.map_err(append_status)?;
    }
    Ok(())
}

/// Appends the record of a rejected request, with its reason and entry ID escaped and cut,
/// unless the rate limit of its source is used up. The source is the record's agent ID, or all
/// unauthenticated callers when it has none. A failure is logged, not returned, because the
/// request is rejected either way.
pub(crate) async fn append_refusal(shared: &Shared, mut record: NewRecord) {
    record.refusal_reason = record.refusal_reason.as_deref().map(sanitize_reason);
    record.entry_id = record.entry_id.as_deref().map(sanitize_reason);
    let source = record.agent_id.as_ref().map(SpiffeId::to_string);
    let provenance = &shared.issuance_log;
    let key = source.as_deref().unwrap_or(UNAUTHENTICATED_SOURCE);
    match provenance.refusal_limiter.admit(key, Instant::now()) {
        Admission::Record => {}
        Admission::Skip { first_in_interval } => {
            metrics::counter!(twid_telemetry::names::REFUSALS_NOT_RECORDED_TOTAL).increment(1);
            if first_in_interval {
                spawn_summary(provenance, key.to_owned(), record.agent_id.clone());
            }
            return;
        }
    }
    append_refusal_record(&provenance.log, record).await;
}

async fn append_refusal_record(log: &IssuanceLog, record: NewRecord) {
    if let Err(error) = log.append(record).await {
        tracing::error!(
            error = %error,
            "failed to append a rejection to the issuance log; the rejection has no record"
        );
    }
}

/// Writes, after [`SUMMARY_INTERVAL`], one record and one log line that count the rejections
/// from `source` that were not recorded.
fn spawn_summary(provenance: &Provenance, source: String, agent_id: Option<SpiffeId>) {
    let log = provenance.log.clone();
    let limiter = Arc::clone(&provenance.refusal_limiter);
    tokio::spawn(async move {
        tokio::time::sleep(SUMMARY_INTERVAL).await;
        let Some(skipped) = limiter.take_skipped(&source) else {
            return;
        };
        let reason = sanitize_reason(&format!(
            "{skipped} refusals not recorded in the last {} s from {source}",
            SUMMARY_INTERVAL.as_secs()
        ));
        tracing::info!(source = %source, skipped, "{reason}");
        let mut record = NewRecord::refusal(reason);
        record.agent_id = agent_id;
        append_refusal_record(&log, record).await;
    });
}

/// Escapes and cuts a rejection reason or another caller-influenced text to
/// [`MAX_REASON_BYTES`] for the log and for log lines.
pub(crate) fn sanitize_reason(text: &str) -> String {
    sanitize_text(text, MAX_REASON_BYTES)
}

/// Returns `status` with its message escaped and cut to [`MAX_STATUS_MESSAGE_BYTES`], for a
/// rejection whose message contains caller-chosen text such as an entry ID.
pub(crate) fn sanitize_status(status: &Status) -> Status {
    Status::new(
        status.code(),
        sanitize_text(status.message(), MAX_STATUS_MESSAGE_BYTES),
    )
}

/// Returns `text` with every control character (C0, DEL, C1) and every bidirectional
/// formatting character replaced by its `\u{..}` escape. When the escaped text is longer than
/// `max_bytes`, it is cut on a character boundary and "… (N bytes cut)" is appended, where N
/// counts bytes of the escaped text, so that the result is at most `max_bytes` long. Applying
/// this function to its own result returns that result unchanged.
pub(crate) fn sanitize_text(text: &str, max_bytes: usize) -> String {
    let mut escaped = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        if needs_escape(c) {
            // Writing to a String cannot fail.
            let _ = write!(escaped, "{}", c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    if escaped.len() <= max_bytes {
        return escaped;
    }
    // The marker is at most this long, because N is at most the escaped length.
    let marker_max = "… ( bytes cut)".len() + escaped.len().to_string().len();
    let mut end = max_bytes.saturating_sub(marker_max);
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    let cut = escaped.len() - end;
    escaped.truncate(end);
    let _ = write!(escaped, "… ({cut} bytes cut)");
    escaped
}

/// Returns whether a terminal could act on `c`: control characters, and the Unicode
/// bidirectional formatting characters that reorder how the text around them is shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A token bucket: `capacity` tokens at most, refilled at `rate` tokens per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// Creates a full bucket.
    pub(crate) fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        Self {
            capacity,
            rate,
            tokens: capacity,
            updated: now,
        }
    }

    /// Takes one token at time `now` and returns whether there was one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// Whether a rejection is recorded.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Record,
    /// The source's rate limit is used up. `first_in_interval` is true for the first skipped
    /// rejection since the last summary, so the caller schedules the next summary.
    Skip {
        first_in_interval: bool,
    },
}

#[derive(Debug)]
struct SourceState {
    bucket: TokenBucket,
    skipped: u64,
}

/// The rate limits of rejection records, one token bucket per source.
#[derive(Debug, Default)]
struct RefusalLimiter {
    sources: Mutex<HashMap<String, SourceState>>,
}

impl RefusalLimiter {
    fn admit(&self, source: &str, now: Instant) -> Admission {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() > MAX_IDLE_SOURCES && !sources.contains_key(source) {
            sources.retain(|_, state| state.skipped > 0 || !state.bucket.is_full(now));
        }
        let state = sources
            .entry(source.to_owned())
            .or_insert_with(|| SourceState {
                bucket: TokenBucket::new(REFUSAL_BURST, REFUSALS_PER_SECOND, now),
                skipped: 0,
            });
        if state.bucket.try_take(now) {
            return Admission::Record;
        }
        state.skipped += 1;
        Admission::Skip {
            first_in_interval: state.skipped == 1,
        }
    }

    /// Returns and resets the number of skipped rejections of `source`, or None when there
    /// were none.
    fn take_skipped(&self, source: &str) -> Option<u64> {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = sources.get_mut(source)?;
        let skipped = std::mem::take(&mut state.skipped);
        (skipped > 0).then_some(skipped)
    }
}

/// Turns a failed issuance append into the status sent to the caller. A damaged log fails
/// every append until an operator repairs it, so the caller gets FailedPrecondition, which
/// means that retrying at once does not help, instead of Unavailable.
pub(crate) fn append_status(error: LogError) -> Status {
    tracing::error!(
        error = %crate::tasks::error_chain(&error),
        "failed to append to the issuance log; the credential was not issued"
    );
    if error.is_damaged_log() {
        return Status::failed_precondition(
            "the issuance log is damaged, so no credential was issued; the server's operator \
             must run `twid log verify` and repair it",
        );
    }
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
    policy_version: Option<u64>,
) -> Result<(), Status> {
    let record =
        evidence_agent_record(svid, verified, policy_version).map_err(crate::node_api::internal)?;
    append_issuance(shared, record).await
}

fn evidence_agent_record(
    svid: &AgentSvid,
    verified: &Verified,
    policy_version: Option<u64>,
) -> Result<NewRecord, ServerError> {
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
        policy_version,
        // Node attestation always checks the binding before an agent SVID is issued.
        binding_checked: true,
    };
    let claims = result.claims(None, env!("CARGO_PKG_VERSION"));
    let mut record = agent_x509_record(&agent_id, &selectors, &serial, fingerprint);
    record.evidence_digest = Some(verified.evidence_sha256);
    record.attestation_result = Some(Value::Object(claims));
    record.policy_version = policy_version.map(|version| version.to_string());
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
        let reason = sanitize_reason(&format!(
            "{attestor} node attestation rejected: {}",
            status.message()
        ));
        let mut record = NewRecord::refusal(reason);
        if shared.evidence.get(attestor).is_some() {
            record.policy_version = shared
                .policies
                .last_read_version()
                .map(|version| version.to_string());
        }
        append_refusal(shared, record).await;
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
    fn sanitize_escapes_control_characters() {
        let text = "a\u{1b}[2Jb\r\nc\u{7f}d\u{9b}e\u{202e}f\u{fe}";
        let sanitized = sanitize_reason(text);
        assert_eq!(
            sanitized,
            "a\\u{1b}[2Jb\\u{d}\\u{a}c\\u{7f}d\\u{9b}e\\u{202e}f\u{fe}"
        );
        assert!(!sanitized.chars().any(needs_escape), "{sanitized:?}");
    }

    #[test]
    fn sanitize_keeps_short_text() {
        assert_eq!(sanitize_reason("join token expired"), "join token expired");
        assert_eq!(sanitize_reason(""), "");
        let exact = "x".repeat(MAX_REASON_BYTES);
        assert_eq!(sanitize_reason(&exact), exact);
    }

    #[test]
    fn sanitize_cuts_long_text() {
        let text = "y".repeat(1024 * 1024);
        let sanitized = sanitize_reason(&text);
        assert_eq!(sanitized.len(), MAX_REASON_BYTES, "{sanitized}");
        let kept = sanitized.split('…').next().unwrap_or_default();
        assert!(kept.bytes().all(|b| b == b'y'), "{sanitized}");
        let cut = text.len() - kept.len();
        assert!(
            sanitized.ends_with(&format!("… ({cut} bytes cut)")),
            "{sanitized}"
        );

        let status = sanitize_status(&Status::permission_denied(text));
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let message = status.message();
        assert!(message.len() <= MAX_STATUS_MESSAGE_BYTES, "{message}");
        assert!(message.starts_with(&"y".repeat(900)), "{message}");
    }

    #[test]
    fn sanitize_cuts_on_char_boundary() {
        // "é" is 2 bytes. The 19-byte marker leaves 493 bytes, which end inside an "é".
        let text = "é".repeat(400);
        let sanitized = sanitize_reason(&text);
        let kept = sanitized.split('…').next().unwrap_or_default();
        assert_eq!(kept.len(), 492);
        assert!(sanitized.ends_with("… (308 bytes cut)"), "{sanitized}");
        assert!(sanitized.len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn sanitize_cuts_escaped_text() {
        let text = "\u{1b}".repeat(200);
        let sanitized = sanitize_reason(&text);
        assert!(!sanitized.contains('\u{1b}'));
        assert!(sanitized.len() <= MAX_REASON_BYTES);
        assert!(sanitized.ends_with(" bytes cut)"), "{sanitized}");
    }

    #[test]
    fn sanitize_twice_changes_nothing() {
        let inputs = [
            "y".repeat(1024 * 1024),
            "é".repeat(400),
            "\u{1b}[2J".repeat(300),
            "plain reason".to_owned(),
        ];
        for text in inputs {
            let once = sanitize_reason(&text);
            assert_eq!(sanitize_reason(&once), once);
        }
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 2.0, start);
        for _ in 0..5 {
            assert!(bucket.try_take(start));
        }
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_millis(400)));
        assert!(bucket.try_take(start + Duration::from_millis(500)));
        assert!(!bucket.try_take(start + Duration::from_millis(500)));
        // A long pause refills the bucket to its capacity, no further.
        let later = start + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(bucket.try_take(later));
        }
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn token_bucket_ignores_earlier_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 1.0, start + Duration::from_secs(1));
        assert!(bucket.try_take(start + Duration::from_secs(1)));
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_millis(1500)));
        assert!(bucket.try_take(start + Duration::from_secs(2)));
    }

    #[test]
    fn refusal_limiter_counts_per_source() {
        let limiter = RefusalLimiter::default();
        let now = Instant::now();
        let burst = REFUSAL_BURST as usize;
        for _ in 0..burst {
            assert_eq!(limiter.admit("a", now), Admission::Record);
        }

        assert_eq!(
            limiter.admit("a", now),
            Admission::Skip {
                first_in_interval: true
            }
        );
        assert_eq!(
            limiter.admit("a", now),
            Admission::Skip {
                first_in_interval: false
            }
        );
        // Another source has its own bucket.
        assert_eq!(limiter.admit("b", now), Admission::Record);

        // Taking the count starts a new summary interval.
        assert_eq!(limiter.take_skipped("a"), Some(2));
        assert_eq!(limiter.take_skipped("a"), None);
        assert_eq!(limiter.take_skipped("b"), None);
        assert_eq!(
            limiter.admit("a", now),
            Admission::Skip {
                first_in_interval: true
            }
        );

        // One second refills 50 tokens.
        assert_eq!(
            limiter.admit("a", now + Duration::from_secs(1)),
            Admission::Record
        );
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
