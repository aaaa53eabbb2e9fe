//! Routes, CORS and the connection loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service as _;
use twid_telemetry::Health;

use crate::document::{Issuer, discovery_document, public_jwks};
use crate::tls::ReloadingTls;
use crate::{KeySource, MAX_AWS_KEYS, RevocationSource};

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const KEYS_PATH: &str = "/keys";
const LIVE_PATH: &str = "/live";
const READY_PATH: &str = "/ready";
const REVOCATIONS_PATH: &str = "/revocations";
/// `Cache-Control` of the revocation list, which changes with every revocation.
const CACHE_CONTROL_REVOCATIONS: &str = "no-cache";

/// `Cache-Control` of the discovery document and the keys. A key published at least five
/// minutes before it signs anything reaches every cache in time.
const CACHE_CONTROL_PUBLIC: &str = "public, max-age=300";
const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";
/// How long browsers may cache a CORS preflight result, in seconds.
const PREFLIGHT_MAX_AGE: &str = "86400";
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed `accept`, such as running out of file descriptors.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The origins CORS allows.
#[derive(Debug)]
enum Cors {
    Any,
    Origins(Vec<HeaderValue>),
}

pub(crate) struct AppState {
    issuer: Issuer,
    keys: Arc<dyn KeySource>,
    revocations: Option<Arc<dyn RevocationSource>>,
    health: Health,
    cors: Cors,
    /// Set once the "more than 100 keys" warning was logged, so it is logged once per listener.
    truncation_logged: AtomicBool,
}

impl AppState {
    pub(crate) fn new(
        issuer: Issuer,
        keys: Arc<dyn KeySource>,
        revocations: Option<Arc<dyn RevocationSource>>,
        health: Health,
        cors_origins: &[String],
    ) -> Arc<Self> {
        let cors = if cors_origins.iter().any(|origin| origin == "*") {
            Cors::Any
        } else {
            Cors::Origins(
                cors_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok())
                    .collect(),
            )
        };
        Arc::new(Self {
            issuer,
            keys,
            revocations,
            health,
            cors,
            truncation_logged: AtomicBool::new(false),
        })
    }

    /// Returns the published keys: at most [`MAX_AWS_KEYS`], the first ones of the source.
    fn published_keys(&self) -> Vec<Value> {
        let mut keys = public_jwks(&self.keys.jwks());
        if keys.len() > MAX_AWS_KEYS {
            if !self.truncation_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    keys = keys.len(),
                    max = MAX_AWS_KEYS,
                    issuer = self.issuer.as_str(),
                    "the issuer has more keys than relying parties read; publishing the first ones"
                );
            }
            keys.truncate(MAX_AWS_KEYS);
        }
        keys
    }

    /// Returns the `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    fn allowed_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.cors {
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::Origins(allowed) => {
                let origin = origin?;
                allowed.contains(origin).then(|| origin.clone())
            }
        }
    }
}

/// The routes together with what runs before routing: the issuer path prefix, `OPTIONS`
/// and CORS.
pub(crate) struct App {
    state: Arc<AppState>,
    router: Router,
}

impl App {
    pub(crate) fn new(state: Arc<AppState>) -> Arc<Self> {
        let mut router = Router::new()
            .route(DISCOVERY_PATH, get(discovery))
            .route(KEYS_PATH, get(keys))
            .route(LIVE_PATH, get(live))
            .route(READY_PATH, get(ready));
        if state.revocations.is_some() {
            router = router.route(REVOCATIONS_PATH, get(revocations));
        }
        let router = router.with_state(state.clone());
        Arc::new(Self { state, router })
    }

    /// Handles one request. The GET routes also serve HEAD, without a body.
    pub(crate) async fn handle<B>(&self, mut request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.strip_issuer_prefix(request.uri_mut());
        let origin = request.headers().get(ORIGIN).cloned();
        let mut response = if request.method() == Method::OPTIONS {
            self.options(request.uri().path(), origin.as_ref())
        } else {
            let response = match self.router.clone().call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            response.into_response()
        };
        self.add_cors_headers(response.headers_mut(), origin.as_ref());
        response
    }

    /// Serves `<issuer path>/keys` and `<issuer path>/.well-known/openid-configuration` as
    /// `/keys` and the discovery path, because relying parties derive both from the issuer.
    fn strip_issuer_prefix(&self, uri: &mut Uri) {
        let prefix = self.state.issuer.path_prefix();
        if prefix.is_empty() {
            return;
        }
        let Some(rest) = uri.path().strip_prefix(prefix) else {
            return;
        };
        if rest != DISCOVERY_PATH && rest != KEYS_PATH {
            return;
        }
        if let Ok(stripped) = Uri::builder().path_and_query(rest).build() {
            *uri = stripped;
        }
    }

    fn options(&self, path: &str, origin: Option<&HeaderValue>) -> Response<Body> {
        let known = [DISCOVERY_PATH, KEYS_PATH, LIVE_PATH, READY_PATH].contains(&path)
            || (path == REVOCATIONS_PATH && self.state.revocations.is_some());
        let status = if known {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::NOT_FOUND
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        if known {
            let headers = response.headers_mut();
            headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            if self.state.allowed_origin(origin).is_some() {
                headers.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOWED_METHODS),
                );
                headers.insert(
                    ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(PREFLIGHT_MAX_AGE),
                );
            }
        }
        response
    }

    fn add_cors_headers(&self, headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
        if let Some(allowed) = self.state.allowed_origin(origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        }
        // The response depends on the Origin whenever only listed origins are allowed.
        if matches!(self.state.cors, Cors::Origins(_)) {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

fn json_response(status: StatusCode, cache_control: &'static str, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}

async fn discovery(State(state): State<Arc<AppState>>) -> Response<Body> {
    let keys = state.published_keys();
    let document = discovery_document(state.issuer.as_str(), &keys);
    json_response(StatusCode::OK, CACHE_CONTROL_PUBLIC, &document)
}

async fn keys(State(state): State<Arc<AppState>>) -> Response<Body> {
    let keys = state.published_keys();
    json_response(
        StatusCode::OK,
        CACHE_CONTROL_PUBLIC,
        &json!({ "keys": keys }),
    )
}

async fn revocations(State(state): State<Arc<AppState>>) -> Response<Body> {
    let Some(source) = &state.revocations else {
        return json_response(StatusCode::NOT_FOUND, "no-store", &json!({}));
    };
    match source.signed_list().await {
        Ok(jws) => {
            let mut response = Response::new(Body::from(jws));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/jwt"));
            headers.insert(
                CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL_REVOCATIONS),
            );
            response
        }
        Err(error) => {
            tracing::warn!(error = %error, "the revocation list is unavailable");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-store",
                &json!({ "error": "the revocation list is unavailable; retry later" }),
            )
        }
    }
}

async fn live(State(state): State<Arc<AppState>>) -> Response<Body> {
    let live = state.health.is_live();
    json_response(status_for(live), "no-store", &json!({ "live": live }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response<Body> {
    let reason = if !state.health.is_ready() {
        Some(
            state
                .health
                .reason()
                .unwrap_or_else(|| "not ready".to_owned()),
        )
    } else if state.published_keys().is_empty() {
        Some("no signing keys to publish".to_owned())
    } else {
        None
    };
    let body = match &reason {
        Some(reason) => json!({ "ready": false, "reason": reason }),
        None => json!({ "ready": true }),
    };
    json_response(status_for(reason.is_none()), "no-store", &body)
}

fn status_for(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Accepts connections until `shutdown` turns true, then aborts the open ones.
///
/// When the handle is dropped without a shutdown, the sender is gone and the listener keeps
/// running.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<ReloadingTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stop);
    // Limit: concurrent connections are not capped; expose the endpoint to the internet
    // through a proxy or load balancer that limits them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, app.clone(), tls.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "OIDC discovery listener failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    tracing::info!("OIDC discovery listener stopped");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    tls: Option<Arc<ReloadingTls>>,
) {
    let Some(tls) = tls else {
        serve_http(stream, peer, app).await;
        return;
    };
    let acceptor = tls.acceptor().await;
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(stream, peer, app).await,
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_http<S>(stream: S, peer: SocketAddr, app: Arc<App>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "OIDC discovery connection ended with an error");
    }
}
