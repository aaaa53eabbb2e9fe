//! The OpenID Connect discovery endpoint of a JWT-SVID issuer: the discovery document at
//! `/.well-known/openid-configuration`, the issuer's public keys at `/keys`, and `/live` and
//! `/ready`, over plain HTTP or HTTPS.
//!
//! Relying parties such as AWS IAM find the keys of an issuer from its `iss` URL alone: they
//! fetch `<iss>/.well-known/openid-configuration`, then the JWK Set at its `jwks_uri`. This
//! crate serves both from a [`KeySource`] and does not depend on where the keys come from.

#![forbid(unsafe_code)]

mod aws;
mod document;
mod error;
mod http;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twid_telemetry::Health;

pub use aws::{MAX_AWS_KEYS, check_aws_requirements};
pub use document::{discovery_document, jwks_uri, public_jwks};
pub use error::OidcError;

/// The public keys of one issuer, read on every request.
pub trait KeySource: Send + Sync + 'static {
    /// Returns the issuer URL (the `iss` claim) these keys sign for.
    fn issuer(&self) -> String;

    /// Returns the issuer's public keys as JWK objects: `kid`, `kty` and `crv`/`x`/`y` or
    /// `n`/`e`, optionally `alg` and `use`.
    ///
    /// The endpoint publishes only the public members, sets `use` to `sig`, fills in `alg`
    /// from the key type when it is missing, and drops keys without a `kid` or of another
    /// key type. Only the first [`MAX_AWS_KEYS`] valid keys are published, so the current and
    /// next keys should come first. It should be cheap, because every `/keys`, discovery
    /// and `/ready` request calls it.
    fn jwks(&self) -> Vec<serde_json::Value>;
}

/// The signed revocation list of a trust domain, served at `/revocations` when given to
/// [`serve_with_revocations`]. The endpoint does not parse or check the list.
pub trait RevocationSource: Send + Sync + 'static {
    /// Returns the current list as a compact JWS, or a message for the log when it cannot be
    /// built. The endpoint then responds with 503. The endpoint requires no authentication
    /// and has no rate limit, so a source should return a cached list rather than build one
    /// per call; [`axum::body::Bytes`] lets it hand out the cached bytes without copying.
    fn signed_list(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<axum::body::Bytes, String>> + Send + '_>>;
}

/// Settings of the discovery listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The address to listen on.
    pub bind: SocketAddr,
    /// The issuer URL, published as `issuer` and as the base of `jwks_uri`. It must equal the
    /// `iss` of the tokens and the [`KeySource::issuer`].
    pub issuer: String,
    /// The PEM certificate chain file and PEM private key file for HTTPS, reloaded when
    /// either changes on disk. `None` serves plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Origins allowed by CORS (`Access-Control-Allow-Origin`); `"*"` allows every origin.
    pub cors_origins: Vec<String>,
}

/// A running discovery listener.
///
/// Dropping the handle leaves the listener running; call [`OidcHandle::shutdown`] to stop it.
#[derive(Debug)]
pub struct OidcHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OidcHandle {
    /// Returns the bound address, with the real port when the configured port was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, closes open ones and waits for the listener task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "OIDC discovery listener task failed");
        }
    }
}

/// Binds the listener and serves the discovery document and keys of `keys` until
/// [`OidcHandle::shutdown`].
///
/// `/ready` returns 200 only while `health` is ready and `keys` returns at least one key.
/// An issuer that AWS IAM would not accept (not https, a port) is logged as a warning but
/// served, so that tests and setups behind a rewriting proxy work.
///
/// # Errors
/// Returns [`OidcError::InvalidIssuer`] for an issuer that is not an http(s) URL with a
/// host and without query, fragment or user info, [`OidcError::IssuerMismatch`] when
/// `keys` belongs to another issuer, [`OidcError::Tls`] when the certificate or key file
/// cannot be loaded, and [`OidcError::Bind`] when the address cannot be bound.
pub async fn serve(
    config: OidcConfig,
    keys: Arc<dyn KeySource>,
    health: Health,
) -> Result<OidcHandle, OidcError> {
    serve_with_revocations(config, keys, None, health).await
}

/// Starts the listener as [`serve`] does, and also serves the signed revocation list of
/// `revocations` at `/revocations` when it is given.
///
/// # Errors
/// Returns the errors of [`serve`].
pub async fn serve_with_revocations(
    config: OidcConfig,
    keys: Arc<dyn KeySource>,
    revocations: Option<Arc<dyn RevocationSource>>,
    health: Health,
) -> Result<OidcHandle, OidcError> {
    let issuer = document::Issuer::parse(&config.issuer)?;
    let source_issuer = keys.issuer();
    if source_issuer != config.issuer {
        return Err(OidcError::IssuerMismatch {
            configured: config.issuer,
            key_issuer: source_issuer,
        });
    }
    for problem in aws::issuer_violations(&config.issuer) {
        tracing::warn!(issuer = %config.issuer, problem, "AWS IAM will not accept this OIDC issuer");
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(Arc::new(tls::ReloadingTls::load(cert, key).await?)),
        None => None,
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| OidcError::Bind {
            addr: config.bind,
            source,
        })?;
    let local_addr = listener.local_addr().unwrap_or(config.bind);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %local_addr,
        scheme,
        issuer = %config.issuer,
        jwks_uri = %issuer.jwks_uri(),
        "OIDC discovery listener bound"
    );
    if tls.is_none() {
        tracing::info!(
            addr = %local_addr,
            "OIDC discovery serves plain HTTP; put a TLS-terminating proxy in front, AWS requires HTTPS"
        );
    }
    let app = http::App::new(http::AppState::new(
        issuer,
        keys,
        revocations,
        health,
        &config.cors_origins,
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(http::accept_loop(listener, app, tls, shutdown_rx));
    Ok(OidcHandle {
        local_addr,
        shutdown,
        task,
    })
}
