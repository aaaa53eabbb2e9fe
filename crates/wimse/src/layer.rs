//! A tower layer that authenticates HTTP requests carrying a WIT and a WPT, for axum
//! routers and any other tower service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use futures::future::{Either, Ready, ready};
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use serde_json::json;
use tower::{Layer, Service};

use crate::replay::DEFAULT_REPLAY_CACHE_CAPACITY;
use crate::wit::DEFAULT_CLOCK_SKEW;
use crate::wpt::MAX_PROOF_TTL;
use crate::{
    BoundTokens, JwsAlgorithm, Proof, ProofValidation, ReplayCache, SharedIssuerKeys, WimseError,
    Wit, WitValidation, verify_wit, verify_wpt,
};

/// The header field carrying the WIT.
pub const WIT_HEADER: &str = "workload-identity-token";
/// The header field carrying the WPT.
pub const WPT_HEADER: &str = "workload-proof-token";
/// The header field carrying a Txn-Token, bound by the WPT `tth` claim.
pub const TXN_TOKEN_HEADER: &str = "txn-token";

/// The settings of a [`WimseAuthLayer`].
#[derive(Debug, Clone)]
pub struct WimseAuthConfig {
    /// The Identity Server keys of each trusted trust domain.
    pub issuer_keys: SharedIssuerKeys,
    /// The WPT audiences this service accepts, typically its own URLs without query or
    /// fragment. The layer never derives audiences from `Host` or `X-Forwarded-Host`.
    pub accepted_audiences: Vec<String>,
    /// The maximum WPT lifetime accepted.
    pub max_proof_lifetime: Duration,
    /// The clock difference tolerated in WIT and WPT time checks.
    pub clock_skew: Duration,
    /// When set, the WIT `iss` must equal it.
    pub expected_issuer: Option<String>,
    /// The algorithms accepted for the Identity Server signature on the WIT.
    pub allowed_algorithms: Vec<JwsAlgorithm>,
    /// Header fields whose tokens the WPT must bind through `oth` when present.
    pub other_token_headers: Vec<HeaderName>,
    /// The number of unexpired proof IDs remembered for replay detection.
    pub replay_cache_capacity: usize,
    /// The status of a rejected request.
    ///
    /// The default is 400 Bad Request, as both WIMSE drafts recommend: they advise against
    /// 401 because it requires a `WWW-Authenticate` challenge and an `Authorization`
    /// header, which WIMSE does not use. With 401 the response carries a
    /// `WWW-Authenticate: WIMSE error_description="..."` header.
    pub rejection_status: StatusCode,
}

impl WimseAuthConfig {
    /// Creates a configuration with the defaults: [`MAX_PROOF_TTL`],
    /// [`DEFAULT_CLOCK_SKEW`], any issuer, every [`JwsAlgorithm`], no `oth` headers,
    /// [`DEFAULT_REPLAY_CACHE_CAPACITY`] and 400 for rejections.
    pub fn new(issuer_keys: impl Into<SharedIssuerKeys>, accepted_audiences: Vec<String>) -> Self {
        Self {
            issuer_keys: issuer_keys.into(),
            accepted_audiences,
            max_proof_lifetime: MAX_PROOF_TTL,
            clock_skew: DEFAULT_CLOCK_SKEW,
            expected_issuer: None,
            allowed_algorithms: JwsAlgorithm::ALL.to_vec(),
            other_token_headers: Vec::new(),
            replay_cache_capacity: DEFAULT_REPLAY_CACHE_CAPACITY,
            rejection_status: StatusCode::BAD_REQUEST,
        }
    }
}

/// Authenticates every request with its `Workload-Identity-Token` and
/// `Workload-Proof-Token` headers.
///
/// On success the verified [`Wit`] and [`Proof`] are inserted into the request extensions,
/// so handlers read the caller's SPIFFE ID with `Extension<Wit>`. Otherwise the layer
/// responds with [`WimseAuthConfig::rejection_status`] and an RFC 9457 problem document
/// whose `detail` is a short reason. When the replay cache is full it responds with 503.
///
/// Clones share one replay cache.
#[derive(Debug, Clone)]
pub struct WimseAuthLayer {
    state: Arc<AuthState>,
}

#[derive(Debug)]
struct AuthState {
    issuer_keys: SharedIssuerKeys,
    wit_validation: WitValidation,
    proof_validation: ProofValidation,
    other_token_headers: Vec<HeaderName>,
    replay_cache: ReplayCache,
    rejection_status: StatusCode,
}

impl WimseAuthLayer {
    /// Creates the layer and its replay cache.
    pub fn new(config: WimseAuthConfig) -> Self {
        let mut proof_validation = ProofValidation::new(config.accepted_audiences);
        proof_validation.max_proof_lifetime = config.max_proof_lifetime;
        proof_validation.clock_skew = config.clock_skew;
        proof_validation.other_token_headers = config
            .other_token_headers
            .iter()
            .map(|name| name.as_str().to_owned())
            .collect();
        let state = AuthState {
            issuer_keys: config.issuer_keys,
            wit_validation: WitValidation {
                allowed_algorithms: config.allowed_algorithms,
                expected_issuer: config.expected_issuer,
                clock_skew: config.clock_skew,
            },
            proof_validation,
            other_token_headers: config.other_token_headers,
            replay_cache: ReplayCache::new(config.replay_cache_capacity),
            rejection_status: config.rejection_status,
        };
        Self {
            state: Arc::new(state),
        }
    }
}

impl<S> Layer<S> for WimseAuthLayer {
    type Service = WimseAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseAuthService {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service [`WimseAuthLayer`] wraps around an inner service.
#[derive(Debug, Clone)]
pub struct WimseAuthService<S> {
    inner: S,
    state: Arc<AuthState>,
}

impl<S, B> Service<Request<B>> for WimseAuthService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self
            .state
            .authenticate(request.headers(), SystemTime::now())
        {
            Ok((wit, proof)) => {
                tracing::debug!(subject = %wit.subject, jti = %proof.jti, "authenticated WIMSE request");
                request.extensions_mut().insert(wit);
                request.extensions_mut().insert(proof);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                tracing::info!(%error, path = %request.uri().path(), "rejected WIMSE request");
                Either::Left(ready(Ok(self.state.reject(&error))))
            }
        }
    }
}

impl AuthState {
    fn authenticate(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(Wit, Proof), WimseError> {
        let raw_wit = jwt_header(headers, WIT_HEADER, "Workload-Identity-Token")?;
        let raw_wpt = jwt_header(headers, WPT_HEADER, "Workload-Proof-Token")?;
        let presented = self.presented_tokens(headers)?;
        let keys = self.issuer_keys.load();
        let wit = verify_wit(raw_wit, &keys, &self.wit_validation, now)?;
        let proof = verify_wpt(
            raw_wpt,
            &wit,
            raw_wit,
            &self.proof_validation,
            &presented,
            &self.replay_cache,
            now,
        )?;
        Ok((wit, proof))
    }

    /// Collects the tokens the WPT must bind: a Bearer or DPoP access token from
    /// `Authorization`, a `Txn-Token`, and each configured other token header.
    fn presented_tokens(&self, headers: &HeaderMap) -> Result<BoundTokens, WimseError> {
        let mut presented = BoundTokens::default();
        if let Some(value) = single_header(headers, AUTHORIZATION.as_str(), "Authorization")? {
            // Only the OAuth schemes carry an access token; other schemes such as Basic
            // carry no token that ath could bind.
            if let Some((scheme, token)) = value.split_once(' ')
                && (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
            {
                presented.access_token = Some(token.trim_matches(' ').to_owned());
            }
        }
        presented.transaction_token =
            single_header(headers, TXN_TOKEN_HEADER, "Txn-Token")?.map(str::to_owned);
        for name in &self.other_token_headers {
            if let Some(value) = single_header(headers, name.as_str(), "bound token")? {
                presented
                    .other_tokens
                    .insert(name.as_str().to_owned(), value.to_owned());
            }
        }
        Ok(presented)
    }

    fn reject(&self, error: &WimseError) -> Response {
        let status = match error {
            WimseError::ReplayCacheFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => self.rejection_status,
        };
        let detail = error.reason();
        let problem = json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = Response::new(Body::from(problem.to_string()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // Every reason is a static ASCII string without quotes, so the value is valid.
            if let Ok(value) =
                HeaderValue::from_str(&format!("WIMSE error_description=\"{detail}\""))
            {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// Returns the value of header `name`, `None` when it is absent, and an error when it is
/// repeated or not visible ASCII.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    display: &'static str,
) -> Result<Option<&'a str>, WimseError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(WimseError::RepeatedHeader(display));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| WimseError::InvalidHeaderValue(display))
}

/// Returns the value of header `name`, or an error unless it occurs exactly once and
/// contains one JWT: three base64url segments separated by dots.
fn jwt_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    display: &'static str,
) -> Result<&'a str, WimseError> {
    let value = single_header(headers, name, display)?.ok_or(WimseError::MissingHeader(display))?;
    let well_formed = value.split('.').count() == 3
        && value.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !well_formed {
        return Err(WimseError::InvalidHeaderValue(display));
    }
    Ok(value)
}
