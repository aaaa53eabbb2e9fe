//! Revocation: rules that withdraw every unexpired credential issued on a basis (a selector, a
//! TCB status or an agent), their enforcement in the node API, and the signed list of revoked
//! serials and JWT IDs for relying parties. docs/revocation.md describes the semantics.
//!
//! A rule is stored first, so that enforcement starts before the issuance log is scanned for
//! the credentials it revokes.
//!
//! Limit: a request that passed the rule check just before the rule was stored, and whose
//! issuance record is appended after the scan has read the log's end, is neither refused nor
//! listed. The window is the duration of one request.
//!
//! Limit: rules are never removed. A rule that matches an entry's selector blocks that entry for
//! every agent attested before the rule, so a join-token agent needs a new join token.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tonic::Status;
use twid_ca::JwtKey;
use twid_datastore::{IssuedCredential, NewRevocation, RevocationRule, RevokedCredential};
use twid_evidence::TcbStatus;
use twid_proto::admin::{ListRevocationsResponse, RevokeRequest, RevokeResponse, revoke_request};
use twid_provenance::NewRecord;
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{AttestedAgent, RegistrationEntry, Selector};

use crate::convert::unix_seconds;
use crate::node_api::internal;
use crate::{ServerError, Shared, provenance};

/// `typ` header of the signed revocation list.
pub(crate) const SIGNED_LIST_TYPE: &str = "twid-revocation-list+jwt";

/// How long a signed revocation list is valid (`exp - iat`). Relying parties fetch a new one
/// before it expires, so this bounds how long they may miss a new revocation.
pub(crate) const SIGNED_LIST_TTL: Duration = Duration::from_secs(300);

/// Issuance log records read per query during a scan.
const SCAN_PAGE: u32 = 1000;

/// The basis on which a rule revokes credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Basis {
    /// Credentials whose record or attestation result lists the selector, and everything
    /// obtained through agents attested with it.
    Selector(Selector),
    /// Credentials whose attestation result has the TCB status, and everything obtained
    /// through agents attested with it.
    TcbStatus(TcbStatus),
    /// The agent's own SVIDs and everything obtained through it.
    Agent(SpiffeId),
}

impl Basis {
    /// Parses the basis of a `Revoke` request. An agent ID must be in `trust_domain`, the
    /// server's, because no other ID can match an agent of this server.
    ///
    /// # Errors
    /// Returns INVALID_ARGUMENT naming the value and the accepted forms.
    pub(crate) fn from_request(
        basis: Option<&revoke_request::Basis>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, Status> {
        match basis {
            Some(revoke_request::Basis::Selector(text)) => Selector::parse(text)
                .map(Self::Selector)
                .map_err(|error| Status::invalid_argument(error.to_string())),
            Some(revoke_request::Basis::TcbStatus(text)) => {
                text.parse::<TcbStatus>().map(Self::TcbStatus).map_err(|_| {
                    let accepted: Vec<&str> = TcbStatus::ALL
                        .iter()
                        .map(|status| status.as_str())
                        .collect();
                    Status::invalid_argument(format!(
                        "unknown TCB status {text:?}; use one of {}",
                        accepted.join(", ")
                    ))
                })
            }
            Some(revoke_request::Basis::AgentId(text)) => {
                let id = SpiffeId::new(text).map_err(|error| {
                    Status::invalid_argument(format!(
                        "invalid agent ID {text:?}: {error}; expected \
                         spiffe://<trust domain>/spire/agent/<attestor>/<id>"
                    ))
                })?;
                if !id.path().starts_with("/spire/agent/") {
                    return Err(Status::invalid_argument(format!(
                        "{id} is not an agent ID; expected \
                         spiffe://<trust domain>/spire/agent/<attestor>/<id>"
                    )));
                }
                if !id.is_member_of(trust_domain) {
                    return Err(Status::invalid_argument(format!(
                        "agent ID {id} is not in this server's trust domain {trust_domain}, so \
                         it matches no agent; use spiffe://{trust_domain}/spire/agent/..."
                    )));
                }
                Ok(Self::Agent(id))
            }
            None => Err(Status::invalid_argument(
                "the request needs a basis: a selector (<type>:<value>), a TCB status or an \
                 agent ID",
            )),
        }
    }

    /// Returns the basis of a stored rule, or `None` for a kind or value this server does
    /// not know, which it then ignores.
    pub(crate) fn from_rule(rule: &RevocationRule) -> Option<Self> {
        match rule.kind.as_str() {
            "selector" => Selector::parse(&rule.value).ok().map(Self::Selector),
            "tcb_status" => rule.value.parse().ok().map(Self::TcbStatus),
            "agent" => SpiffeId::new(&rule.value).ok().map(Self::Agent),
            _ => None,
        }
    }

    /// Returns the stored kind name.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Selector(_) => "selector",
            Self::TcbStatus(_) => "tcb_status",
            Self::Agent(_) => "agent",
        }
    }

    /// Returns the stored value.
    pub(crate) fn value(&self) -> String {
        match self {
            Self::Selector(selector) => selector.to_string(),
            Self::TcbStatus(status) => status.as_str().to_owned(),
            Self::Agent(id) => id.to_string(),
        }
    }

    /// Returns whether `selectors` (an entry's, a record's or an agent's node selectors)
    /// contain the basis. A TCB status matches a selector of any type whose value is
    /// `tcb_status:<status>`, which is how evidence selectors carry it.
    pub(crate) fn matches_selectors(&self, selectors: &[Selector]) -> bool {
        match self {
            Self::Selector(expected) => selectors.contains(expected),
            Self::TcbStatus(status) => {
                let expected = format!("tcb_status:{status}");
                selectors.iter().any(|selector| selector.value == expected)
            }
            Self::Agent(_) => false,
        }
    }

    /// Returns whether an attestation result (JSON claims of an issuance record) contains the
    /// basis. Agent attestation results name the members `twid.selectors` and
    /// `twid.tcb_status`, and workload attestation claims name the TCB status `tcb_status`.
    pub(crate) fn matches_attestation_result(&self, result: &Value) -> bool {
        match self {
            Self::Selector(expected) => {
                let expected = expected.to_string();
                ["twid.selectors", "selectors"].iter().any(|member| {
                    result
                        .get(member)
                        .and_then(Value::as_array)
                        .is_some_and(|list| {
                            list.iter().any(|item| item.as_str() == Some(&expected))
                        })
                })
            }
            Self::TcbStatus(status) => ["twid.tcb_status", "tcb_status"]
                .iter()
                .any(|member| result.get(member).and_then(Value::as_str) == Some(status.as_str())),
            Self::Agent(_) => false,
        }
    }

    /// Returns whether an agent's attestation matches: its ID, or its node selectors.
    pub(crate) fn matches_agent(&self, agent: &AttestedAgent) -> bool {
        match self {
            Self::Agent(id) => *id == agent.spiffe_id,
            _ => self.matches_selectors(&agent.selectors),
        }
    }
}

/// Finds the credentials a rule revokes among issuance records read in seq order.
///
/// An agent's own X.509-SVID record (its SPIFFE ID is its agent ID) carries its node
/// selectors, so the matcher follows each agent's attested basis through the log. A workload
/// credential is revoked when the basis matched the agent's latest attestation or renewal
/// record before it. Agents without such a record in the scanned range are judged by their
/// current stored selectors.
pub(crate) struct Matcher {
    basis: Basis,
    /// Whether each agent's latest record seen matched the basis.
    agent_matches: HashMap<String, bool>,
    /// The stored selectors of every attested agent, for agents not yet seen in the log.
    stored_agents: HashMap<String, Vec<Selector>>,
    /// Upper bound of every credential's lifetime, in seconds.
    lifetime: i64,
    /// Unix seconds. Credentials whose expiry bound is at or before it have expired.
    now: i64,
}

impl Matcher {
    pub(crate) fn new(
        basis: Basis,
        agents: &[AttestedAgent],
        lifetime: Duration,
        now: i64,
    ) -> Self {
        let stored_agents = agents
            .iter()
            .map(|agent| (agent.spiffe_id.to_string(), agent.selectors.clone()))
            .collect();
        Self {
            basis,
            agent_matches: HashMap::new(),
            stored_agents,
            lifetime: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
            now,
        }
    }

    /// Considers the next record and returns the revoked credential when the rule matches
    /// it and its expiry bound is after `now`.
    pub(crate) fn consider(&mut self, record: &IssuedCredential) -> Option<RevokedCredential> {
        let selectors: Vec<Selector> = serde_json::from_str(&record.selectors).unwrap_or_default();
        let result: Option<Value> = record
            .attestation_result
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok());
        let own_match = self.basis.matches_selectors(&selectors)
            || result
                .as_ref()
                .is_some_and(|result| self.basis.matches_attestation_result(result));

        let is_agent_svid = record.kind == "x509"
            && record.agent_id.is_some()
            && record.agent_id == record.spiffe_id;
        let by_agent_id = match &self.basis {
            Basis::Agent(id) => {
                record.agent_id.as_deref() == Some(id.as_str())
                    || record.spiffe_id.as_deref() == Some(id.as_str())
            }
            _ => false,
        };
        let through_agent = match record.agent_id.as_deref() {
            Some(agent_id) if is_agent_svid => {
                self.agent_matches.insert(agent_id.to_owned(), own_match);
                false
            }
            Some(agent_id) => self.agent_matched(agent_id),
            None => false,
        };
        if !(own_match || by_agent_id || through_agent) {
            return None;
        }

        let issued_at = record.time_unix_ms.div_euclid(1000) + 1;
        let expires_at = issued_at.saturating_add(self.lifetime);
        if expires_at <= self.now {
            return None;
        }
        let (serial, jti) = match record.kind.as_str() {
            "x509" => (record.serial.clone(), None),
            _ => (None, record.jti.clone()),
        };
        if serial.is_none() && jti.is_none() {
            return None;
        }
        Some(RevokedCredential {
            revocation_id: 0,
            kind: record.kind.clone(),
            serial,
            jti,
            spiffe_id: record.spiffe_id.clone().unwrap_or_default(),
            agent_id: record.agent_id.clone(),
            expires_at,
        })
    }

    fn agent_matched(&self, agent_id: &str) -> bool {
        if let Some(matched) = self.agent_matches.get(agent_id) {
            return *matched;
        }
        self.stored_agents
            .get(agent_id)
            .is_some_and(|selectors| self.basis.matches_selectors(selectors))
    }
}

/// Returns the upper bound of every credential's lifetime that this server issues: the CA
/// and JWT key lifetime (`ca_ttl`), which caps every X.509-SVID, JWT-SVID and WIT signed with
/// them, or a longer configured SVID or issuer TTL.
///
/// Limit: a CA or JWT key created under an earlier, longer `ca_ttl` can sign credentials that
/// outlive this bound. Scans miss such credentials once they are older than the bound.
pub(crate) fn max_credential_lifetime(config: &twid_config::ServerConfig) -> Duration {
    let mut lifetime = config
        .ca_ttl
        .max(config.default_x509_svid_ttl)
        .max(config.default_jwt_svid_ttl);
    if let Some(agent_ttl) = config.agent_ttl {
        lifetime = lifetime.max(agent_ttl);
    }
    for issuer in &config.jwt_issuers {
        if let Some(ttl) = issuer.ttl {
            lifetime = lifetime.max(ttl);
        }
    }
    lifetime
}

/// Handles `Revoke`: stores the rule, scans the issuance log for the unexpired credentials it
/// revokes, stores them and wakes every agent's `Watch` stream.
pub(crate) async fn revoke(
    shared: &Shared,
    request: RevokeRequest,
) -> Result<RevokeResponse, Status> {
    let basis = Basis::from_request(request.basis.as_ref(), &shared.config.trust_domain)?;
    let reason = provenance::sanitize_reason(&request.reason);
    let now = SystemTime::now();
    let now_seconds = unix_seconds(now);
    let datastore = &shared.datastore;
    let rule = datastore
        .create_revocation(&NewRevocation {
            kind: basis.kind().to_owned(),
            value: basis.value(),
            reason,
            created_at: now_seconds,
        })
        .await
        .map_err(|error| internal(error.into()))?;
    tracing::info!(
        revocation_id = rule.id,
        kind = %rule.kind,
        value = %rule.value,
        "revocation rule stored"
    );

    let credentials = match scan(shared, basis, now_seconds).await {
        Ok(credentials) => credentials,
        Err(error) => {
            tracing::error!(
                revocation_id = rule.id,
                error = %crate::tasks::error_chain(&error),
                "scanning the issuance log for a revocation failed; the rule is enforced but \
                 its credentials are not listed"
            );
            // Other servers still learn of the rule.
            if let Err(error) = datastore.add_revoked_credentials(rule.id, &[]).await {
                tracing::warn!(error = %error, "notifying other servers of the rule failed");
            }
            shared.hints.revocation_list.invalidate();
            shared.hints.notify("revocation");
            return Err(Status::internal(format!(
                "revocation {} is stored and enforced, but listing its credentials failed; \
                 see the server log",
                rule.id
            )));
        }
    };
    let (credentials, already_revoked) = datastore
        .add_new_revoked_credentials(rule.id, credentials)
        .await
        .map_err(|error| internal(error.into()))?;
    shared.hints.revocation_list.invalidate();
    shared.hints.notify("revocation");

    let (serials, jtis) = split_identifiers(&credentials);
    tracing::info!(
        revocation_id = rule.id,
        x509_svids = serials.len(),
        jwts = jtis.len(),
        already_revoked,
        "credentials revoked"
    );
    Ok(RevokeResponse {
        revocation: Some(rule_to_pb(&rule)),
        revoked_x509_count: serials.len() as u64,
        revoked_jwt_count: jtis.len() as u64,
        revoked_x509_serials: serials,
        revoked_jtis: jtis,
        already_revoked_count: already_revoked,
    })
}

/// Reads the issuance records of the last two credential lifetimes (agent records from the
/// first one show the basis of agents whose SVIDs were still valid in the second) and returns
/// the unexpired credentials that `basis` revokes.
async fn scan(
    shared: &Shared,
    basis: Basis,
    now: i64,
) -> Result<Vec<RevokedCredential>, ServerError> {
    let lifetime = max_credential_lifetime(&shared.config);
    let agents = shared.datastore.list_attested_agents().await?;
    let mut matcher = Matcher::new(basis, &agents, lifetime, now);
    let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
    let from_ms = now
        .saturating_mul(1000)
        .saturating_sub(lifetime_ms.saturating_mul(2));
    let Some(first_seq) = shared
        .datastore
        .issuance_log_first_seq_since(from_ms)
        .await?
    else {
        return Ok(Vec::new());
    };
    let mut after_seq = first_seq - 1;
    let mut revoked = Vec::new();
    loop {
        let page = shared
            .datastore
            .issued_credentials_since(from_ms, after_seq, SCAN_PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after_seq = last.seq;
        revoked.extend(page.iter().filter_map(|record| matcher.consider(record)));
    }
    Ok(revoked)
}

/// Splits credentials into sorted, deduplicated X.509 serials and JWT IDs.
fn split_identifiers(credentials: &[RevokedCredential]) -> (Vec<String>, Vec<String>) {
    let serials: BTreeSet<&str> = credentials
        .iter()
        .filter_map(|credential| credential.serial.as_deref())
        .collect();
    let jtis: BTreeSet<&str> = credentials
        .iter()
        .filter_map(|credential| credential.jti.as_deref())
        .collect();
    (
        serials.into_iter().map(str::to_owned).collect(),
        jtis.into_iter().map(str::to_owned).collect(),
    )
}

/// Returns the unexpired revoked serials and JWT IDs that `agent_id` obtained, for `Sync`.
pub(crate) async fn revoked_for_agent(
    shared: &Shared,
    agent_id: &SpiffeId,
    now: i64,
) -> Result<(Vec<String>, Vec<String>), Status> {
    let credentials = shared
        .datastore
        .unexpired_revoked_credentials_of_agent(agent_id.as_str(), now)
        .await
        .map_err(|error| internal(error.into()))?;
    Ok(split_identifiers(&credentials))
}

/// Rejects an agent SVID that a rule revoked, for node API authentication.
pub(crate) async fn check_agent_svid(
    shared: &Shared,
    agent_id: &SpiffeId,
    serial: &str,
) -> Result<(), Status> {
    let revocation = shared
        .datastore
        .serial_revocation(serial)
        .await
        .map_err(|error| internal(error.into()))?;
    match revocation {
        None => Ok(()),
        Some(id) => Err(Status::permission_denied(format!(
            "the SVID of agent {agent_id} (serial {serial}) was revoked by revocation {id}; \
             the agent must attest again"
        ))),
    }
}

/// Returns the rules that apply to an agent's requests: those created at or after its
/// attestation.
pub(crate) async fn rules_for_agent(
    shared: &Shared,
    agent: &AttestedAgent,
) -> Result<Vec<RevocationRule>, Status> {
    shared
        .datastore
        .revocations_since(agent.attested_at)
        .await
        .map_err(|error| internal(error.into()))
}

/// Returns the first rule in `rules` that matches the agent or the entry, which refuses the
/// request.
pub(crate) fn refusing_rule<'a>(
    rules: &'a [RevocationRule],
    agent: &AttestedAgent,
    entry: Option<&RegistrationEntry>,
) -> Option<&'a RevocationRule> {
    rules.iter().find(|rule| {
        Basis::from_rule(rule).is_some_and(|basis| {
            basis.matches_agent(agent)
                || entry.is_some_and(|entry| basis.matches_selectors(&entry.selectors))
        })
    })
}

/// Returns the refusal message for a request that `rule` refuses.
pub(crate) fn refusal_message(rule: &RevocationRule, agent: &AttestedAgent, what: &str) -> String {
    format!(
        "{what} refused: revocation {} ({} {}, made at {}) withdrew credentials on this basis, \
         and agent {} was attested at {}, not after it; renewals without compliant fresh \
         evidence are refused, so the agent must attest again",
        rule.id,
        rule.kind,
        rule.value,
        twid_evidence::utc_text(rule.created_at),
        agent.spiffe_id,
        twid_evidence::utc_text(agent.attested_at)
    )
}

/// Checks an agent-mediated request against the rules that apply to the agent. A refusal is
/// recorded in the issuance log and returned as PERMISSION_DENIED.
pub(crate) async fn check_request(
    shared: &Shared,
    agent: &AttestedAgent,
    entry: Option<&RegistrationEntry>,
    what: &str,
) -> Result<(), Status> {
    let rules = rules_for_agent(shared, agent).await?;
    let Some(rule) = refusing_rule(&rules, agent, entry) else {
        return Ok(());
    };
    let message = refusal_message(rule, agent, what);
    record_refusal(shared, agent, entry, &message).await;
    Err(Status::permission_denied(message))
}

/// Appends the issuance log record of a request refused by a revocation.
pub(crate) async fn record_refusal(
    shared: &Shared,
    agent: &AttestedAgent,
    entry: Option<&RegistrationEntry>,
    message: &str,
) {
    tracing::info!(
        agent_id = %agent.spiffe_id,
        entry_id = entry.map_or("", |entry| entry.id.as_str()),
        "request refused by a revocation"
    );
    let mut record = NewRecord::refusal(message);
    record.agent_id = Some(agent.spiffe_id.clone());
    if let Some(entry) = entry {
        record.entry_id = Some(entry.id.clone());
        record.spiffe_id = Some(entry.spiffe_id.clone());
        record.selectors = entry.selectors.clone();
    }
    provenance::append_refusal(shared, record).await;
}

/// Handles `ListRevocations`. The signed list comes from the same cache as `/revocations`.
pub(crate) async fn list(shared: &Shared) -> Result<ListRevocationsResponse, Status> {
    let rules = shared
        .datastore
        .list_revocations()
        .await
        .map_err(|error| internal(error.into()))?;
    let credentials = shared
        .datastore
        .unexpired_revoked_credentials(unix_seconds(SystemTime::now()))
        .await
        .map_err(|error| internal(error.into()))?;
    let signed_list = signed_list(shared).await?;
    let signed_list = std::str::from_utf8(&signed_list)
        .map_err(|_| Status::internal("the signed revocation list is not UTF-8"))?
        .to_owned();
    Ok(ListRevocationsResponse {
        revocations: rules.iter().map(rule_to_pb).collect(),
        credentials: credentials.iter().map(credential_to_pb).collect(),
        signed_list,
    })
}

/// Returns the current signed revocation list from the server's [`ListCache`], building it
/// first when the cached one is stale.
pub(crate) async fn signed_list(shared: &Shared) -> Result<Bytes, Status> {
    shared
        .hints
        .revocation_list
        .get_or_build(|| build_signed_list(shared))
        .await
}

/// Reads the unexpired revoked credentials and signs their list.
///
/// Limit: the whole list is read and signed again for every change. With 200,000 revoked
/// credentials that took 6 to 8 s in a debug build on a 2-core machine with a load average
/// near 4, and an admin request during it was delayed by up to 1.7 s.
async fn build_signed_list(shared: &Shared) -> Result<BuiltList, Status> {
    let key = shared.ca.snapshot().active_jwt().cloned().ok_or_else(|| {
        Status::unavailable("the server has no active JWT key yet; retry in a few seconds")
    })?;
    let issuer = twid_types::server_id(&shared.config.trust_domain);
    let datastore = shared.datastore.clone();
    let runtime = tokio::runtime::Handle::current();
    // Decoding the rows and signing the list take seconds of CPU for a large list, so they run
    // on a blocking thread rather than stall the requests scheduled on a runtime thread.
    let built = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        let credentials = runtime
            .block_on(datastore.unexpired_revoked_credentials(unix_seconds(now)))
            .map_err(|error| internal(error.into()))?;
        let signed = sign_list(&key, &issuer, &credentials, now)?;
        tracing::debug!(
            credentials = credentials.len(),
            bytes = signed.jws.len(),
            "signed revocation list built"
        );
        Ok(BuiltList {
            jws: Bytes::from(signed.jws),
            issued_at: signed.issued_at,
            expires_at: signed.expires_at,
            earliest_expiry: credentials
                .iter()
                .map(|credential| credential.expires_at)
                .min(),
        })
    })
    .await;
    built.map_err(|error| {
        tracing::error!(error = %error, "building the signed revocation list panicked");
        Status::internal("building the signed revocation list failed; see the server log")
    })?
}

/// How long before its `exp` a cached list is replaced, so that relying parties never fetch
/// a list about to expire.
const LIST_REFRESH_MARGIN: i64 = 60;

/// A freshly signed revocation list with the times that decide when it goes stale.
pub(crate) struct BuiltList {
    pub(crate) jws: Bytes,
    /// `iat` of the list, in Unix seconds.
    pub(crate) issued_at: i64,
    /// `exp` of the list, in Unix seconds.
    pub(crate) expires_at: i64,
    /// The earliest `expires_at` of a listed credential, after which the list contains an
    /// expired credential and must be rebuilt.
    pub(crate) earliest_expiry: Option<i64>,
}

impl BuiltList {
    /// Returns the Unix second from which the list is stale: [`LIST_REFRESH_MARGIN`] before
    /// `exp` (half its lifetime for a list valid shorter than twice the margin, as when its
    /// key expires soon), or when its earliest credential expires, whichever comes first.
    fn stale_at(&self) -> i64 {
        let lifetime = self.expires_at.saturating_sub(self.issued_at).max(0);
        let margin = LIST_REFRESH_MARGIN.min(lifetime / 2);
        let refresh_at = self.expires_at.saturating_sub(margin);
        self.earliest_expiry
            .map_or(refresh_at, |expiry| expiry.min(refresh_at))
    }
}

/// A cached signed list.
struct CachedList {
    jws: Bytes,
    /// The [`ListCache::generation`] that the list was built in.
    generation: u64,
    /// Unix seconds; see [`BuiltList::stale_at`].
    stale_at: i64,
}

/// The signed revocation list, built and signed once and served until it goes stale: after a
/// revocation ([`ListCache::invalidate`]), once a listed credential expires, or a minute before
/// the list's `exp`. Concurrent requests for a stale list share one rebuild.
///
/// On PostgreSQL, revocations stored through another server that shares the database
/// invalidate the cache too, through the change notifications that `hints.rs` follows.
pub(crate) struct ListCache {
    /// Grows with every invalidation.
    generation: AtomicU64,
    current: std::sync::Mutex<Option<Arc<CachedList>>>,
    /// Held by the one request that rebuilds the list. It stores the failure of the last
    /// rebuild, which the requests that waited for that rebuild return too.
    rebuild: tokio::sync::Mutex<Option<Status>>,
    /// Rebuilds finished, successful or not.
    builds: AtomicU64,
    /// Requests that found the list stale and have not returned yet.
    waiting: AtomicU64,
}

impl ListCache {
    pub(crate) fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            current: std::sync::Mutex::new(None),
            rebuild: tokio::sync::Mutex::new(None),
            builds: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    /// Marks the cached list stale; call after storing revoked credentials.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns the number of invalidations so far.
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Returns the number of rebuilds finished, successful or not.
    pub(crate) fn builds(&self) -> u64 {
        self.builds.load(Ordering::SeqCst)
    }

    /// Returns the cached list if it is still fresh at `now` (Unix seconds).
    fn fresh(&self, now: i64) -> Option<Bytes> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        let same_generation = current.generation == self.generation.load(Ordering::SeqCst);
        (same_generation && now < current.stale_at).then(|| current.jws.clone())
    }

    /// Returns the cached list, or calls `build` when it is stale. Only one request builds at
    /// a time: the others wait for it and return its list, or its error if it failed.
    ///
    /// # Errors
    /// Returns the error of `build`.
    pub(crate) async fn get_or_build<F, Fut>(&self, build: F) -> Result<Bytes, Status>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BuiltList, Status>>,
    {
        if let Some(jws) = self.fresh(unix_seconds(SystemTime::now())) {
            return Ok(jws);
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let result = self.rebuild_once(build).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn rebuild_once<F, Fut>(&self, build: F) -> Result<Bytes, Status>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BuiltList, Status>>,
    {
        let builds_before = self.builds();
        let mut last_failure = self.rebuild.lock().await;
        if let Some(jws) = self.fresh(unix_seconds(SystemTime::now())) {
            return Ok(jws);
        }
        // A rebuild finished while this request waited, and the list is not fresh: it failed.
        if self.builds() != builds_before
            && let Some(status) = last_failure.as_ref()
        {
            return Err(status.clone());
        }
        // Read before the datastore, so that a revocation stored during the build leaves the
        // result stale.
        let generation = self.generation.load(Ordering::SeqCst);
        let built = build().await;
        self.builds.fetch_add(1, Ordering::SeqCst);
        match built {
            Ok(built) => {
                *last_failure = None;
                let cached = Arc::new(CachedList {
                    jws: built.jws.clone(),
                    generation,
                    stale_at: built.stale_at(),
                });
                *self
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cached);
                Ok(built.jws)
            }
            Err(status) => {
                *last_failure = Some(status.clone());
                Err(status)
            }
        }
    }

    /// Returns the number of requests that found the list stale and have not returned yet.
    #[cfg(test)]
    fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }
}

impl Default for ListCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the claims of the signed revocation list; docs/revocation.md describes them.
pub(crate) fn list_claims(
    issuer: &SpiffeId,
    credentials: &[RevokedCredential],
    issued_at: i64,
    expires_at: i64,
) -> Map<String, Value> {
    let (serials, jtis) = split_identifiers(credentials);
    let mut expiry: HashMap<&str, i64> = HashMap::new();
    for credential in credentials {
        let key = credential
            .serial
            .as_deref()
            .or(credential.jti.as_deref())
            .unwrap_or_default();
        let bound = expiry.entry(key).or_insert(credential.expires_at);
        *bound = (*bound).max(credential.expires_at);
    }
    let x509: Vec<Value> = serials
        .iter()
        .map(|serial| json!({ "serial": serial, "expires_at": expiry.get(serial.as_str()) }))
        .collect();
    let jwt: Vec<Value> = jtis
        .iter()
        .map(|jti| json!({ "jti": jti, "expires_at": expiry.get(jti.as_str()) }))
        .collect();
    let mut claims = Map::new();
    claims.insert("iss".into(), issuer.as_str().into());
    claims.insert("iat".into(), issued_at.into());
    claims.insert("exp".into(), expires_at.into());
    claims.insert("revoked_x509_serials".into(), json!(serials));
    claims.insert("revoked_jtis".into(), json!(jtis));
    claims.insert("x509_svids".into(), Value::Array(x509));
    claims.insert("jwts".into(), Value::Array(jwt));
    claims
}

/// A signed list with its `iat` and `exp` (Unix seconds).
struct SignedList {
    jws: String,
    issued_at: i64,
    expires_at: i64,
}

/// Signs the list of `credentials` as `issuer` with `key`, the trust domain's active JWT key,
/// valid for [`SIGNED_LIST_TTL`] or until the key expires.
fn sign_list(
    key: &JwtKey,
    issuer: &SpiffeId,
    credentials: &[RevokedCredential],
    now: SystemTime,
) -> Result<SignedList, Status> {
    let issued_at = unix_seconds(now);
    let ttl = i64::try_from(SIGNED_LIST_TTL.as_secs()).unwrap_or(i64::MAX);
    let expires_at = issued_at
        .saturating_add(ttl)
        .min(unix_seconds(key.not_after()));
    let claims = list_claims(issuer, credentials, issued_at, expires_at);
    let jws = key
        .sign_claims(SIGNED_LIST_TYPE, &claims, now)
        .map_err(|error| internal(error.into()))?;
    Ok(SignedList {
        jws,
        issued_at,
        expires_at,
    })
}

fn rule_to_pb(rule: &RevocationRule) -> twid_proto::admin::Revocation {
    twid_proto::admin::Revocation {
        id: rule.id,
        kind: rule.kind.clone(),
        value: rule.value.clone(),
        reason: rule.reason.clone(),
        created_at: rule.created_at,
    }
}

fn credential_to_pb(credential: &RevokedCredential) -> twid_proto::admin::RevokedCredential {
    twid_proto::admin::RevokedCredential {
        revocation_id: credential.revocation_id,
        kind: credential.kind.clone(),
        serial: credential.serial.clone().unwrap_or_default(),
        jti: credential.jti.clone().unwrap_or_default(),
        spiffe_id: credential.spiffe_id.clone(),
        agent_id: credential.agent_id.clone().unwrap_or_default(),
        expires_at: credential.expires_at,
    }
}

/// Serves the signed revocation list at `/revocations` on the OIDC discovery listener.
pub(crate) struct SignedListSource {
    pub(crate) shared: Arc<Shared>,
}

impl twid_oidc::RevocationSource for SignedListSource {
    fn signed_list(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>> {
        Box::pin(async move {
            signed_list(&self.shared)
                .await
                .map_err(|status| status.message().to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).unwrap()
    }

    fn selectors_json(selectors: &[&str]) -> String {
        let list: Vec<Selector> = selectors
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        serde_json::to_string(&list).unwrap()
    }

    fn record(
        seq: i64,
        kind: &str,
        spiffe_id: &str,
        agent_id: &str,
        selectors: &[&str],
    ) -> IssuedCredential {
        IssuedCredential {
            seq,
            kind: kind.to_owned(),
            serial: (kind == "x509").then(|| format!("{seq:02x}")),
            jti: (kind != "x509").then(|| format!("jti-{seq}")),
            spiffe_id: Some(spiffe_id.to_owned()),
            entry_id: None,
            agent_id: (!agent_id.is_empty()).then(|| agent_id.to_owned()),
            selectors: selectors_json(selectors),
            attestation_result: None,
            time_unix_ms: (NOW - 60) * 1000,
        }
    }

    fn agent(spiffe_id: &str, selectors: &[&str]) -> AttestedAgent {
        AttestedAgent {
            spiffe_id: id(spiffe_id),
            attestation_type: "join_token".to_owned(),
            x509_svid_serial: "01".to_owned(),
            x509_svid_expires_at: NOW + 3600,
            previous_x509_svid_serial: None,
            previous_x509_svid_expires_at: None,
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            banned: false,
            attested_at: NOW - 100,
        }
    }

    fn revoked_serials(matcher: &mut Matcher, records: &[IssuedCredential]) -> Vec<String> {
        records
            .iter()
            .filter_map(|record| matcher.consider(record))
            .map(|credential| credential.serial.or(credential.jti).unwrap())
            .collect()
    }

    const AGENT_A: &str = "spiffe://example.org/spire/agent/tdx/a";
    const AGENT_B: &str = "spiffe://example.org/spire/agent/tdx/b";

    #[test]
    fn refusal_message_gives_times_in_utc() {
        let rule = RevocationRule {
            id: 7,
            kind: "selector".to_owned(),
            value: "tdx:mrtd:00".to_owned(),
            reason: String::new(),
            created_at: NOW,
        };
        let message = refusal_message(&rule, &agent(AGENT_A, &[]), "X.509-SVID");
        assert!(
            message.contains("made at 2027-01-15T08:00:00Z")
                && message.contains("attested at 2027-01-15T07:58:20Z"),
            "{message}"
        );
    }

    #[test]
    fn selector_matches_entry_selectors() {
        let basis = Basis::Selector(Selector::parse("unix:gid:2000").unwrap());
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let records = [
            record(
                1,
                "x509",
                "spiffe://example.org/w1",
                AGENT_A,
                &["unix:uid:1000"],
            ),
            record(
                2,
                "x509",
                "spiffe://example.org/w2",
                AGENT_A,
                &["unix:uid:1000", "unix:gid:2000"],
            ),
            record(
                3,
                "jwt",
                "spiffe://example.org/w2",
                AGENT_A,
                &["unix:uid:1000", "unix:gid:2000"],
            ),
        ];
        assert_eq!(revoked_serials(&mut matcher, &records), ["02", "jti-3"]);
    }

    #[test]
    fn selector_follows_agent_attestation() {
        let basis = Basis::Selector(Selector::parse("tdx:mrtd:aa").unwrap());
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let records = [
            record(1, "x509", AGENT_A, AGENT_A, &["tdx:mrtd:aa"]),
            record(2, "x509", AGENT_B, AGENT_B, &["tdx:mrtd:bb"]),
            record(
                3,
                "x509",
                "spiffe://example.org/w",
                AGENT_A,
                &["unix:uid:1"],
            ),
            record(
                4,
                "x509",
                "spiffe://example.org/w",
                AGENT_B,
                &["unix:uid:1"],
            ),
            // Agent A attests again with other evidence: what it obtains later stays valid.
            record(5, "x509", AGENT_A, AGENT_A, &["tdx:mrtd:cc"]),
            record(6, "wit", "spiffe://example.org/w", AGENT_A, &["unix:uid:1"]),
        ];
        assert_eq!(revoked_serials(&mut matcher, &records), ["01", "03"]);
    }

    #[test]
    fn stored_agent_selectors_used_when_unseen() {
        let basis = Basis::Selector(Selector::parse("tdx:mrtd:aa").unwrap());
        let agents = [
            agent(AGENT_A, &["tdx:mrtd:aa"]),
            agent(AGENT_B, &["tdx:mrtd:bb"]),
        ];
        let mut matcher = Matcher::new(basis, &agents, HOUR, NOW);
        let records = [
            record(1, "jwt", "spiffe://example.org/w", AGENT_A, &["unix:uid:1"]),
            record(2, "jwt", "spiffe://example.org/w", AGENT_B, &["unix:uid:1"]),
        ];
        assert_eq!(revoked_serials(&mut matcher, &records), ["jti-1"]);
    }

    #[test]
    fn tcb_status_matches_result_and_selectors() {
        let basis = Basis::TcbStatus(TcbStatus::OutOfDate);
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let mut workload = record(
            1,
            "x509",
            "spiffe://example.org/w",
            AGENT_B,
            &["tdx:mrtd:aa"],
        );
        workload.attestation_result = Some(r#"{"kind":"tdx","tcb_status":"OutOfDate"}"#.to_owned());
        let mut up_to_date = record(2, "x509", "spiffe://example.org/w", AGENT_B, &[]);
        up_to_date.attestation_result = Some(r#"{"tcb_status":"UpToDate"}"#.to_owned());
        let mut agent_record = record(3, "x509", AGENT_A, AGENT_A, &[]);
        agent_record.attestation_result =
            Some(r#"{"twid.tcb_status":"OutOfDate","twid.selectors":[]}"#.to_owned());
        let records = [
            workload,
            up_to_date,
            agent_record,
            record(4, "jwt", "spiffe://example.org/w", AGENT_A, &[]),
            record(5, "x509", AGENT_B, AGENT_B, &["tdx:tcb_status:OutOfDate"]),
            record(6, "jwt", "spiffe://example.org/w", AGENT_B, &[]),
        ];
        assert_eq!(
            revoked_serials(&mut matcher, &records),
            ["01", "03", "jti-4", "05", "jti-6"]
        );
    }

    #[test]
    fn selector_matches_attestation_result_selectors() {
        let basis = Basis::Selector(Selector::parse("tdx:mrtd:aa").unwrap());
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let mut agent_record = record(1, "x509", AGENT_A, AGENT_A, &[]);
        agent_record.attestation_result = Some(r#"{"twid.selectors":["tdx:mrtd:aa"]}"#.to_owned());
        assert_eq!(revoked_serials(&mut matcher, &[agent_record]), ["01"]);
    }

    #[test]
    fn agent_basis_matches_own_and_obtained() {
        let basis = Basis::Agent(id(AGENT_A));
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let records = [
            record(1, "x509", AGENT_A, AGENT_A, &[]),
            record(2, "x509", AGENT_B, AGENT_B, &[]),
            record(3, "jwt", "spiffe://example.org/w", AGENT_A, &[]),
            record(4, "jwt", "spiffe://example.org/w", AGENT_B, &[]),
        ];
        assert_eq!(revoked_serials(&mut matcher, &records), ["01", "jti-3"]);
    }

    #[test]
    fn expired_credentials_skipped() {
        let basis = Basis::Agent(id(AGENT_A));
        let mut matcher = Matcher::new(basis, &[], HOUR, NOW);
        let mut old = record(1, "x509", AGENT_A, AGENT_A, &[]);
        old.time_unix_ms = (NOW - 3601) * 1000;
        let mut recent = record(2, "x509", AGENT_A, AGENT_A, &[]);
        recent.time_unix_ms = (NOW - 3599) * 1000;
        let revoked: Vec<RevokedCredential> = [old, recent]
            .iter()
            .filter_map(|r| matcher.consider(r))
            .collect();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].serial.as_deref(), Some("02"));
        assert_eq!(revoked[0].expires_at, NOW - 3599 + 1 + 3600);
    }

    #[test]
    fn request_parsing_rejects_bad_values() {
        let cases = [
            revoke_request::Basis::Selector("unix".to_owned()),
            revoke_request::Basis::Selector(":uid:1".to_owned()),
            revoke_request::Basis::TcbStatus("Outdated".to_owned()),
            revoke_request::Basis::AgentId("not a uri".to_owned()),
            revoke_request::Basis::AgentId("spiffe://example.org/workload".to_owned()),
        ];
        let trust_domain = TrustDomain::new("example.org").unwrap();
        for basis in cases {
            let status = Basis::from_request(Some(&basis), &trust_domain).expect_err("accepted");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{basis:?}");
        }
        let status = Basis::from_request(None, &trust_domain).expect_err("accepted");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = Basis::from_request(
            Some(&revoke_request::Basis::TcbStatus("Outdated".to_owned())),
            &trust_domain,
        )
        .unwrap_err();
        assert!(
            status.message().contains("OutOfDate"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn request_rejects_foreign_agent_id() {
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let foreign = "spiffe://other.org/spire/agent/join_token/x";
        let basis = revoke_request::Basis::AgentId(foreign.to_owned());
        let status = Basis::from_request(Some(&basis), &trust_domain).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(foreign), "{}", status.message());
        assert!(
            status.message().contains("trust domain example.org"),
            "{}",
            status.message()
        );

        let own = revoke_request::Basis::AgentId(AGENT_A.to_owned());
        assert_eq!(
            Basis::from_request(Some(&own), &trust_domain).unwrap(),
            Basis::Agent(id(AGENT_A))
        );
    }

    /// Returns a list valid for [`SIGNED_LIST_TTL`] from now, with `jws` as its bytes.
    fn built_list(jws: &str, earliest_expiry: Option<i64>) -> BuiltList {
        let issued_at = unix_seconds(SystemTime::now());
        BuiltList {
            jws: Bytes::from(jws.to_owned()),
            issued_at,
            expires_at: issued_at + 300,
            earliest_expiry,
        }
    }

    #[test]
    fn built_list_stale_times() {
        let list = |issued_at: i64, expires_at: i64, earliest_expiry: Option<i64>| BuiltList {
            jws: Bytes::new(),
            issued_at,
            expires_at,
            earliest_expiry,
        };
        assert_eq!(list(NOW, NOW + 300, None).stale_at(), NOW + 240);
        assert_eq!(list(NOW, NOW + 300, Some(NOW + 10)).stale_at(), NOW + 10);
        assert_eq!(list(NOW, NOW + 300, Some(NOW + 900)).stale_at(), NOW + 240);
        // A list cut short by its key's expiry is replaced at half its lifetime.
        assert_eq!(list(NOW, NOW + 40, None).stale_at(), NOW + 20);
        assert_eq!(list(NOW, NOW, None).stale_at(), NOW);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_cache_concurrent_requests_share_build() {
        const REQUESTS: u64 = 16;
        let cache = Arc::new(ListCache::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(AtomicU64::new(0));
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..REQUESTS {
            let cache = Arc::clone(&cache);
            let started = Arc::clone(&started);
            let mut released = released.clone();
            requests.spawn(async move {
                cache
                    .get_or_build(|| async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        released.wait_for(|open| *open).await.unwrap();
                        Ok(built_list("list-1", None))
                    })
                    .await
            });
        }
        // Hold the first build until every request waits for a list.
        while cache.waiting() < REQUESTS {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        while let Some(result) = requests.join_next().await {
            assert_eq!(result.unwrap().unwrap(), "list-1");
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(cache.builds(), 1);
        assert_eq!(cache.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_cache_waiters_share_failure() {
        const REQUESTS: u64 = 8;
        let cache = Arc::new(ListCache::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(AtomicU64::new(0));
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..REQUESTS {
            let cache = Arc::clone(&cache);
            let started = Arc::clone(&started);
            let mut released = released.clone();
            requests.spawn(async move {
                cache
                    .get_or_build(|| async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        released.wait_for(|open| *open).await.unwrap();
                        Err(Status::unavailable("no JWT key yet"))
                    })
                    .await
            });
        }
        while cache.waiting() < REQUESTS {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        while let Some(result) = requests.join_next().await {
            let status = result.unwrap().unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(cache.builds(), 1);
    }

    #[tokio::test]
    async fn list_cache_rebuilds_after_invalidate() {
        let cache = ListCache::new();
        let first = cache
            .get_or_build(|| async { Ok(built_list("list-1", None)) })
            .await
            .unwrap();
        assert_eq!(first, "list-1");
        let cached = cache
            .get_or_build(|| async { Ok(built_list("unexpected", None)) })
            .await
            .unwrap();
        assert_eq!(cached, "list-1");
        assert_eq!(cache.builds(), 1);

        cache.invalidate();
        let rebuilt = cache
            .get_or_build(|| async { Ok(built_list("list-2", None)) })
            .await
            .unwrap();
        assert_eq!(rebuilt, "list-2");
        assert_eq!(cache.builds(), 2);
    }

    #[tokio::test]
    async fn list_cache_rebuilds_after_credential_expiry() {
        let cache = ListCache::new();
        let now = unix_seconds(SystemTime::now());
        // The earliest listed credential expired already, so the list is stale at once.
        cache
            .get_or_build(|| async { Ok(built_list("list-1", Some(now - 1))) })
            .await
            .unwrap();
        let rebuilt = cache
            .get_or_build(|| async { Ok(built_list("list-2", None)) })
            .await
            .unwrap();
        assert_eq!(rebuilt, "list-2");
        assert_eq!(cache.builds(), 2);
    }

    #[tokio::test]
    async fn list_cache_keeps_no_failure() {
        let cache = ListCache::new();
        let status = cache
            .get_or_build(|| async { Err(Status::unavailable("no JWT key yet")) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let list = cache
            .get_or_build(|| async { Ok(built_list("list-1", None)) })
            .await
            .unwrap();
        assert_eq!(list, "list-1");
        assert_eq!(cache.builds(), 2);
    }

    #[test]
    fn rule_round_trips() {
        let bases = [
            Basis::Selector(Selector::parse("unix:uid:1000").unwrap()),
            Basis::TcbStatus(TcbStatus::SWHardeningNeeded),
            Basis::Agent(id(AGENT_A)),
        ];
        for basis in bases {
            let rule = RevocationRule {
                id: 1,
                kind: basis.kind().to_owned(),
                value: basis.value(),
                reason: String::new(),
                created_at: NOW,
            };
            assert_eq!(Basis::from_rule(&rule), Some(basis));
        }
    }

    #[test]
    fn refusing_rule_matches_agent_or_entry() {
        let rule = |id: i64, kind: &str, value: &str| RevocationRule {
            id,
            kind: kind.to_owned(),
            value: value.to_owned(),
            reason: String::new(),
            created_at: NOW,
        };
        let tdx_agent = agent(AGENT_A, &["tdx:tcb_status:OutOfDate", "tdx:mrtd:aa"]);
        let entry = RegistrationEntry {
            selectors: vec![Selector::parse("unix:gid:2000").unwrap()],
            ..entry()
        };
        let rules = [
            rule(1, "selector", "unix:gid:3000"),
            rule(2, "agent", AGENT_B),
        ];
        assert!(refusing_rule(&rules, &tdx_agent, Some(&entry)).is_none());
        let rules = [rule(3, "tcb_status", "OutOfDate")];
        assert_eq!(
            refusing_rule(&rules, &tdx_agent, None).map(|r| r.id),
            Some(3)
        );
        let rules = [rule(4, "selector", "unix:gid:2000")];
        assert!(refusing_rule(&rules, &tdx_agent, None).is_none());
        assert_eq!(
            refusing_rule(&rules, &tdx_agent, Some(&entry)).map(|r| r.id),
            Some(4)
        );
        let rules = [rule(5, "agent", AGENT_A)];
        assert_eq!(
            refusing_rule(&rules, &tdx_agent, None).map(|r| r.id),
            Some(5)
        );
        let rules = [rule(6, "unknown", "x")];
        assert!(refusing_rule(&rules, &tdx_agent, Some(&entry)).is_none());
    }

    fn entry() -> RegistrationEntry {
        RegistrationEntry {
            id: "entry-1".to_owned(),
            spiffe_id: id("spiffe://example.org/w"),
            parent_id: id(AGENT_A),
            selectors: Vec::new(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: Vec::new(),
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: None,
            created_at: NOW,
            revision_number: 0,
        }
    }

    #[test]
    fn list_claims_deduplicate_and_sort() {
        let credential =
            |serial: Option<&str>, jti: Option<&str>, expires_at: i64| RevokedCredential {
                revocation_id: 1,
                kind: if serial.is_some() { "x509" } else { "jwt" }.to_owned(),
                serial: serial.map(str::to_owned),
                jti: jti.map(str::to_owned),
                spiffe_id: "spiffe://example.org/w".to_owned(),
                agent_id: None,
                expires_at,
            };
        let credentials = [
            credential(Some("0b"), None, NOW + 10),
            credential(Some("0a"), None, NOW + 20),
            credential(Some("0b"), None, NOW + 30),
            credential(None, Some("j1"), NOW + 40),
        ];
        let claims = list_claims(
            &id("spiffe://example.org/spire/server"),
            &credentials,
            NOW,
            NOW + 300,
        );
        assert_eq!(claims["revoked_x509_serials"], json!(["0a", "0b"]));
        assert_eq!(claims["revoked_jtis"], json!(["j1"]));
        assert_eq!(
            claims["x509_svids"][1],
            json!({ "serial": "0b", "expires_at": NOW + 30 })
        );
        assert_eq!(
            claims["jwts"][0],
            json!({ "jti": "j1", "expires_at": NOW + 40 })
        );
        assert_eq!(claims["iss"], "spiffe://example.org/spire/server");
        assert_eq!(claims["exp"], NOW + 300);
    }
}
