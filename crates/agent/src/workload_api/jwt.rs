//! FetchJWTSVID (signed by the server, with a token cache) and ValidateJWTSVID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tonic::Status;
use twid_proto::workload::{
    Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest, ValidateJwtsvidResponse,
};
use twid_spiffe::{JwtBundleSet, JwtSvid, TrustDomain};

use super::caller::Identity;
use super::responses::identities;
use crate::cache::{CachedEntry, Snapshot, half_life};
use crate::jwks::jwt_bundle;
use crate::revocation::Revoked;
use crate::sync::unix_now;

/// A JWT-SVID the server signed.
#[derive(Clone)]
pub(crate) struct IssuedJwt {
    /// The compact JWS; a bearer credential, never logged.
    pub(crate) token: String,
    /// Unix seconds.
    pub(crate) issued_at: i64,
    /// Unix seconds.
    pub(crate) expires_at: i64,
}

/// Signs JWT-SVIDs for an entry; the agent implements it with the node API's NewJwtSvid.
pub(crate) trait JwtIssuer: Send + Sync + 'static {
    /// Requests a JWT-SVID for `entry_id` with `audience`.
    fn issue(
        &self,
        entry_id: String,
        audience: Vec<String>,
    ) -> BoxFuture<'static, Result<IssuedJwt, Status>>;
}

/// Entry ID, SPIFFE ID and sorted, deduplicated audience.
type TokenKey = (String, String, Vec<String>);

/// The issuer plus a cache of tokens, each reused until half its lifetime.
pub(crate) struct JwtSvids {
    issuer: Arc<dyn JwtIssuer>,
    tokens: Mutex<HashMap<TokenKey, IssuedJwt>>,
}

/// Maximum number of audiences in one FetchJWTSVID request.
const MAX_AUDIENCES: usize = 32;

/// Maximum length in bytes of one requested audience.
const MAX_AUDIENCE_LEN: usize = 512;

/// Maximum number of cached tokens; the cache is emptied when it is full, because every
/// distinct audience list a caller sends would otherwise stay in memory until it expires.
const MAX_CACHED_TOKENS: usize = 4096;

/// Rejects a FetchJWTSVID request without an audience, or with more or longer audiences than
/// a token should carry, before the caller is attested.
pub(crate) fn check_fetch_request(request: &JwtsvidRequest) -> Result<(), Status> {
    if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if request.audience.len() > MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "{} audiences requested; at most {MAX_AUDIENCES} are allowed",
            request.audience.len()
        )));
    }
    if request.audience.iter().any(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(Status::invalid_argument(format!(
            "an audience is longer than {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    Ok(())
}

/// Rejects a ValidateJWTSVID request with an empty field, before the caller is attested.
pub(crate) fn check_validate_request(request: &ValidateJwtsvidRequest) -> Result<(), Status> {
    if request.audience.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if request.svid.is_empty() {
        return Err(Status::invalid_argument("svid must be specified"));
    }
    Ok(())
}

impl JwtSvids {
    pub(crate) fn new(issuer: Arc<dyn JwtIssuer>) -> Self {
        Self {
            issuer,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Handles FetchJWTSVID for `caller`: one token per identity, or for the one identity the
    /// request names.
    pub(crate) async fn fetch(
        &self,
        snapshot: &Snapshot,
        caller: &Identity,
        request: JwtsvidRequest,
    ) -> Result<JwtsvidResponse, Status> {
        let entries = identities(snapshot, &caller.selectors);
        if entries.is_empty() {
            return Err(super::no_identity(caller));
        }
        let chosen = choose_identities(entries, &request.spiffe_id)?;
        let mut audience = request.audience;
        audience.sort();
        audience.dedup();
        let mut svids = Vec::with_capacity(chosen.len());
        for cached in chosen {
            let token = self
                .token(&cached.entry, &audience, &snapshot.revoked)
                .await?;
            svids.push(Jwtsvid {
                spiffe_id: cached.entry.spiffe_id.clone(),
                svid: token,
                hint: cached.entry.hint.clone(),
            });
        }
        Ok(JwtsvidResponse { svids })
    }

    /// Returns a cached token still before half its lifetime, or has a new one signed. A
    /// cached token that `revoked` matches (a revoked `jti` or a tainted key's `kid`) is
    /// removed and never returned.
    async fn token(
        &self,
        entry: &twid_proto::types::Entry,
        audience: &[String],
        revoked: &Revoked,
    ) -> Result<String, Status> {
        let key = (entry.id.clone(), entry.spiffe_id.clone(), audience.to_vec());
        let now = unix_now();
        {
            let mut tokens = self.lock();
            if let Some(cached) = tokens.get(&key) {
                if revoked.contains_token(&cached.token) {
                    tracing::debug!(entry_id = %entry.id, "dropping a revoked or tainted cached JWT-SVID");
                    tokens.remove(&key);
                } else if now < half_life(cached.issued_at, cached.expires_at) {
                    return Ok(cached.token.clone());
                }
            }
        }
        let issued = self.issuer.issue(key.0.clone(), key.2.clone()).await?;
        let token = issued.token.clone();
        let mut tokens = self.lock();
        tokens.retain(|_, t| t.expires_at > now);
        if tokens.len() >= MAX_CACHED_TOKENS {
            tokens.clear();
        }
        tokens.insert(key, issued);
        Ok(token)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, IssuedJwt>> {
        // A panic while holding the lock leaves only a cache behind, which stays usable.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Picks every identity, or the one whose SPIFFE ID the request names.
pub(super) fn choose_identities<'a>(
    entries: Vec<&'a CachedEntry>,
    spiffe_id: &str,
) -> Result<Vec<&'a CachedEntry>, Status> {
    if spiffe_id.is_empty() {
        return Ok(entries);
    }
    let chosen: Vec<&CachedEntry> = entries
        .into_iter()
        .filter(|cached| cached.entry.spiffe_id == spiffe_id)
        .take(1)
        .collect();
    if chosen.is_empty() {
        return Err(Status::permission_denied(format!(
            "no identity issued: {spiffe_id} is not an identity of this caller"
        )));
    }
    Ok(chosen)
}

/// Handles ValidateJWTSVID: the token must verify against the JWT bundle of the trust domain
/// its `sub` names, among the local one and those the caller's entries federate with.
pub(crate) fn validate(
    snapshot: &Snapshot,
    caller: &Identity,
    request: &ValidateJwtsvidRequest,
) -> Result<ValidateJwtsvidResponse, Status> {
    let entries = identities(snapshot, &caller.selectors);
    if entries.is_empty() {
        return Err(super::no_identity(caller));
    }
    let mut bundles = JwtBundleSet::new();
    if let Ok(local) = TrustDomain::new(&snapshot.trust_domain_id) {
        bundles.insert(jwt_bundle(local, &snapshot.jwt_authorities));
    }
    for (id, bundle) in snapshot.federated_for(&entries) {
        if let Ok(trust_domain) = TrustDomain::new(&id) {
            bundles.insert(jwt_bundle(trust_domain, &bundle.jwt_authorities));
        }
    }
    let audience = [request.audience.as_str()];
    let svid = JwtSvid::parse_and_validate(&request.svid, &bundles, &audience, SystemTime::now())
        .map_err(|error| Status::invalid_argument(format!("invalid JWT-SVID: {error}")))?;
    Ok(ValidateJwtsvidResponse {
        spiffe_id: svid.spiffe_id.to_string(),
        claims: Some(to_struct(svid.claims)),
    })
}

fn to_struct(claims: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    let fields = claims.into_iter().map(|(k, v)| (k, to_value(v))).collect();
    prost_types::Struct { fields }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn request(audience: Vec<String>) -> JwtsvidRequest {
        JwtsvidRequest {
            audience,
            spiffe_id: String::new(),
        }
    }

    #[test]
    fn fetch_request_limits_audiences() {
        let ok = request(vec!["a".repeat(MAX_AUDIENCE_LEN); MAX_AUDIENCES]);
        assert!(check_fetch_request(&ok).is_ok());

        let too_many = request(vec!["a".to_owned(); MAX_AUDIENCES + 1]);
        let status = check_fetch_request(&too_many).expect_err("too many audiences");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let too_long = request(vec!["a".repeat(MAX_AUDIENCE_LEN + 1)]);
        let status = check_fetch_request(&too_long).expect_err("audience too long");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
