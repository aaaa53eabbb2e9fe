//! FetchWITSVID and FetchWITBundles, the WIT-SVID profile of the Workload API.
//!
//! For each identity of the caller the agent generates a P-256 key, has the server sign a
//! Workload Identity Token (WIT) whose `cnf.jwk` is that key, and sends the token with the
//! private key. The private key goes out as a JWK (RFC 7517) with `d`, because the WIT-SVID
//! profile of the SPIFFE Workload API (the `WITSVID.wit_svid_key` field of the standard's
//! experimental WIMSE branch) defines that field as a JWK-encoded private key.
//!
//! A WIT and its key are shared by every caller of the same entry, as X.509-SVIDs are, and
//! replaced at half their lifetime. Streams send the new message then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_lc_rs::encoding::{AsBigEndian as _, AsDer as _};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tonic::Status;
use tonic::codegen::BoxStream;
use twid_proto::node::NewWitSvidRequest;
use twid_proto::workload::{WitBundlesResponse, Witsvid, WitsvidRequest, WitsvidResponse};

use super::Caller;
use super::caller::Identity;
use super::jwt::choose_identities;
use super::responses::{identities, jwt_bundles};
use crate::cache::{CachedEntry, Snapshot, half_life};
use crate::node::{ServerConnection, call};
use crate::revocation::Revoked;
use crate::sync::unix_now;

/// A WIT the server signed.
#[derive(Clone)]
pub(crate) struct IssuedWit {
    /// The compact JWS; a credential, never logged.
    pub(crate) token: String,
    /// Unix seconds.
    pub(crate) issued_at: i64,
    /// Unix seconds.
    pub(crate) expires_at: i64,
}

/// Signs WITs for an entry and a workload public key; the agent implements it with the node
/// API's NewWitSvid.
pub(crate) trait WitIssuer: Send + Sync + 'static {
    /// Requests a WIT for `entry_id` whose `cnf.jwk` is `public_key` (DER
    /// SubjectPublicKeyInfo).
    fn issue(
        &self,
        entry_id: String,
        public_key: Vec<u8>,
    ) -> BoxFuture<'static, Result<IssuedWit, Status>>;
}

/// Signs WITs with the node API's NewWitSvid.
pub(crate) struct NodeWitIssuer {
    pub(crate) connection: Arc<ServerConnection>,
}

impl WitIssuer for NodeWitIssuer {
    fn issue(
        &self,
        entry_id: String,
        public_key: Vec<u8>,
    ) -> BoxFuture<'static, Result<IssuedWit, Status>> {
        let mut client = self.connection.client();
        Box::pin(async move {
            let request = NewWitSvidRequest {
                entry_id: entry_id.clone(),
                public_key,
            };
            let response = call("NewWitSvid", client.new_wit_svid(request))
                .await
                .map_err(|error| {
                    tracing::warn!(entry_id = %entry_id, %error, "WIT-SVID signing failed");
                    Status::unavailable(format!(
                        "failed to obtain a WIT-SVID from the server: {error}"
                    ))
                })?;
            Ok(IssuedWit {
                token: response.token,
                issued_at: response.issued_at,
                expires_at: response.expires_at,
            })
        })
    }
}

/// Maximum length in bytes of the `spiffe_id` of a FetchWITSVID request: the maximum length
/// of a SPIFFE ID that the SPIFFE ID standard recommends.
const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Maximum number of cached WITs; the cache is emptied when it is full.
const MAX_CACHED_WITS: usize = 4096;

/// Delay before a failed renewal is tried again while the previous WIT is still valid.
const RETRY_DELAY: Duration = Duration::from_secs(10);

/// A WIT with its private key as a JWK document.
#[derive(Clone)]
struct CachedWit {
    issued: IssuedWit,
    /// The private JWK; secret, never logged.
    key_jwk: String,
}

/// Entry ID and SPIFFE ID.
type WitKey = (String, String);

/// The issuer plus the WITs signed so far, each reused until half its lifetime.
pub(crate) struct WitSvids {
    issuer: Arc<dyn WitIssuer>,
    svids: Mutex<HashMap<WitKey, CachedWit>>,
}

/// Rejects a FetchWITSVID request whose `spiffe_id` is longer than a SPIFFE ID may be,
/// before the caller is attested.
pub(crate) fn check_fetch_request(request: &WitsvidRequest) -> Result<(), Status> {
    if request.spiffe_id.len() > MAX_SPIFFE_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "spiffe_id is longer than {MAX_SPIFFE_ID_LEN} bytes"
        )));
    }
    Ok(())
}

impl WitSvids {
    pub(crate) fn new(issuer: Arc<dyn WitIssuer>) -> Self {
        Self {
            issuer,
            svids: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the FetchWITSVID stream for `caller`: one WIT-SVID per identity, or for the one
    /// identity `spiffe_id` names, sent again after every change of the caller's entries and
    /// at half the lifetime of the earliest-expiring WIT.
    pub(crate) fn stream(
        self: Arc<Self>,
        mut caller: Caller,
        mut shutdown: Option<watch::Receiver<bool>>,
        spiffe_id: String,
    ) -> Result<BoxStream<WitsvidResponse>, Status> {
        {
            let snapshot = caller.updates.borrow().clone();
            let entries = identities(&snapshot, &caller.identity.selectors);
            if entries.is_empty() {
                return Err(super::no_identity(&caller.identity));
            }
            choose_identities(entries, &spiffe_id)?;
        }
        let stream = async_stream::stream! {
            let mut last: Option<WitsvidResponse> = None;
            loop {
                let snapshot = caller.updates.borrow_and_update().clone();
                let refresh_at = match self.build(&snapshot, &caller.identity, &spiffe_id).await {
                    Ok((message, refresh_at)) => {
                        if last.as_ref() != Some(&message) {
                            last = Some(message.clone());
                            yield Ok(message);
                        }
                        refresh_at
                    }
                    Err(status) => {
                        yield Err(status);
                        break;
                    }
                };
                let wait = u64::try_from(refresh_at.saturating_sub(unix_now())).unwrap_or(0);
                tokio::select! {
                    changed = caller.updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(wait.max(1))) => {}
                    () = super::stopped(&mut shutdown) => {
                        yield Err(Status::unavailable("the agent is shutting down"));
                        break;
                    }
                }
            }
        };
        Ok(Box::pin(stream))
    }

    /// Builds the message for `caller` and returns it with the Unix time at which a WIT in it
    /// should be renewed.
    async fn build(
        &self,
        snapshot: &Snapshot,
        caller: &Identity,
        spiffe_id: &str,
    ) -> Result<(WitsvidResponse, i64), Status> {
        let entries = identities(snapshot, &caller.selectors);
        if entries.is_empty() {
            return Err(super::no_identity(caller));
        }
        let chosen = choose_identities(entries, spiffe_id)?;
        let mut svids = Vec::with_capacity(chosen.len());
        let mut refresh_at = i64::MAX;
        for cached in chosen {
            let (wit, renew_at) = self.wit(cached, &snapshot.revoked).await?;
            refresh_at = refresh_at.min(renew_at);
            svids.push(Witsvid {
                spiffe_id: cached.entry.spiffe_id.clone(),
                wit_svid: wit.issued.token,
                wit_svid_key: wit.key_jwk,
                hint: cached.entry.hint.clone(),
            });
        }
        Ok((WitsvidResponse { svids }, refresh_at))
    }

    /// Returns the cached WIT of `cached` while it is before half its lifetime, or has a new
    /// one signed for a new key, with the Unix time at which to renew it. When renewal fails,
    /// a WIT that has not expired is returned again and renewal is retried after
    /// [`RETRY_DELAY`]. A cached WIT whose `jti` is in `revoked` is removed and never
    /// returned, not even when renewal fails.
    async fn wit(
        &self,
        cached: &CachedEntry,
        revoked: &Revoked,
    ) -> Result<(CachedWit, i64), Status> {
        let key = (cached.entry.id.clone(), cached.entry.spiffe_id.clone());
        let now = unix_now();
        let mut current = self.lock().get(&key).cloned();
        if current
            .as_ref()
            .is_some_and(|wit| revoked.contains_token(&wit.issued.token))
        {
            tracing::debug!(entry_id = %cached.entry.id, "dropping a revoked cached WIT-SVID");
            self.lock().remove(&key);
            current = None;
        }
        if let Some(current) = &current {
            let renew_at = half_life(current.issued.issued_at, current.issued.expires_at);
            if now < renew_at {
                return Ok((current.clone(), renew_at));
            }
        }

        let (public_key, key_jwk) = generate_key()?;
        let issued = match self.issuer.issue(key.0.clone(), public_key).await {
            Ok(issued) => issued,
            Err(status) => {
                return match current {
                    Some(current) if now < current.issued.expires_at => {
                        let retry_at = now.saturating_add(RETRY_DELAY.as_secs() as i64);
                        Ok((current, retry_at))
                    }
                    _ => Err(status),
                };
            }
        };

        let renew_at = half_life(issued.issued_at, issued.expires_at);
        let wit = CachedWit { issued, key_jwk };
        let mut svids = self.lock();
        svids.retain(|_, wit| wit.issued.expires_at > now);
        if svids.len() >= MAX_CACHED_WITS {
            svids.clear();
        }
        svids.insert(key, wit.clone());
        Ok((wit, renew_at))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<WitKey, CachedWit>> {
        // A panic while holding the lock leaves only a cache behind, which stays usable.
        self.svids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Generates a P-256 key and returns its DER SubjectPublicKeyInfo and its private JWK
/// (`kty`, `crv`, `x`, `y`, `d` and `alg` ES256).
fn generate_key() -> Result<(Vec<u8>, String), Status> {
    let failed = |what: &str| {
        tracing::error!(what, "WIT key generation failed");
        Status::internal(format!("failed to {what} for the WIT-SVID"))
    };
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| failed("generate a P-256 key"))?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| failed("encode the public key"))?
        .as_ref()
        .to_vec();
    // The public key is the uncompressed point 0x04 || x || y, 32 bytes each for P-256.
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err(failed("read the public point"));
    }
    let private = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| failed("export the private key"))?;
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "d": URL_SAFE_NO_PAD.encode(private.as_ref()),
        "alg": "ES256",
    });
    Ok((spki, jwk.to_string()))
}

/// Builds the FetchWITBundles message: the JWK Sets of FetchJWTBundles as strings, because
/// WITs are signed with the trust domain's JWT keys.
pub(crate) fn wit_bundles(snapshot: &Snapshot, entries: &[&CachedEntry]) -> WitBundlesResponse {
    let bundles = jwt_bundles(snapshot, entries)
        .bundles
        .into_iter()
        .map(|(id, jwks)| (id, String::from_utf8_lossy(&jwks).into_owned()))
        .collect();
    WitBundlesResponse { bundles }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_jwk_matches_spki() {
        let (spki, jwk) = generate_key().expect("key generation");
        let jwk: serde_json::Value = serde_json::from_str(&jwk).expect("JWK JSON");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        let decode = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().expect("member present"))
                .expect("base64url")
        };
        let (x, y, d) = (decode("x"), decode("y"), decode("d"));
        assert_eq!(x.len(), 32);
        assert_eq!(y.len(), 32);
        assert_eq!(d.len(), 32);
        let mut point = vec![4u8];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            &point,
        )
        .expect("d, x and y form one key pair");
        let rebuilt = pair.public_key().as_der().expect("SPKI").as_ref().to_vec();
        assert_eq!(rebuilt, spki);
    }

    #[test]
    fn long_spiffe_id_rejected() {
        let request = WitsvidRequest {
            spiffe_id: "a".repeat(MAX_SPIFFE_ID_LEN + 1),
        };
        let status = check_fetch_request(&request).expect_err("too long");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(check_fetch_request(&WitsvidRequest::default()).is_ok());
    }
}
