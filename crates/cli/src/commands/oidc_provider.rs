//! `twid oidc-provider`: the OIDC discovery endpoint as a standalone process, for operators
//! who expose it on another host than the server.
//!
//! It publishes every JWT authority of the trust domain, read from a server's admin API
//! (`GetBundle`, polled) or an agent's Workload API (`FetchJWTBundles`, streamed). Unlike the
//! server's built-in endpoint, which publishes only the keys of one `jwt_issuer`, it cannot
//! tell which keys belong to which issuer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use serde_json::Value;
use twid_oidc::{KeySource, OidcConfig};
use twid_proto::admin::GetBundleRequest;
use twid_proto::workload::JwtBundlesRequest;
use twid_spiffe::TrustDomain;
use twid_spiffe::jwt::{JwtAuthority, JwtBundle};
use twid_telemetry::Health;

use crate::client;
use crate::commands::run::shutdown_signal;
use crate::output;

/// The pause before reconnecting to an agent whose JWT bundle stream ended or failed.
const AGENT_RETRY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["server_socket", "agent_socket"])))]
pub(crate) struct OidcProviderArgs {
    /// Read the trust domain's JWT keys from this server admin API socket (GetBundle).
    #[arg(long)]
    server_socket: Option<PathBuf>,
    /// Read the trust domain's JWT keys from this agent Workload API socket (FetchJWTBundles);
    /// the process must then be a registered workload of that agent.
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    /// The trust domain whose keys to publish when the agent returns bundles for several
    /// (its own and federated ones); for example `example.org`.
    #[arg(long, requires = "agent_socket")]
    trust_domain: Option<String>,
    /// Issuer URL to publish: the `iss` claim of the tokens, for example
    /// `https://oidc.example.org`.
    #[arg(long)]
    issuer: String,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    bind: SocketAddr,
    /// PEM certificate chain for HTTPS, reloaded when the file changes. Without it the
    /// endpoint serves plain HTTP for a TLS-terminating proxy.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert, reloaded when the file changes.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Origin allowed by CORS. Repeat the flag for several origins; `*` allows every origin.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// How often to poll the server for keys, as a duration (`30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = super::parse_ttl)]
    refresh_interval: Duration,
    /// Log level: DEBUG, INFO, WARN or ERROR.
    #[arg(long, default_value = "INFO")]
    log_level: String,
}

/// The trust domain's JWT keys as last fetched, shared with the HTTP handlers.
struct TrustDomainKeys {
    issuer: String,
    keys: RwLock<Vec<Value>>,
}

impl TrustDomainKeys {
    fn replace(&self, keys: Vec<Value>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

impl KeySource for TrustDomainKeys {
    fn issuer(&self) -> String {
        self.issuer.clone()
    }

    fn jwks(&self) -> Vec<Value> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) async fn run(args: OidcProviderArgs) -> anyhow::Result<()> {
    let _log_guard =
        twid_telemetry::init_logging(&args.log_level, twid_telemetry::LogFormat::Text)?;
    let trust_domain = args
        .trust_domain
        .as_deref()
        .map(TrustDomain::new)
        .transpose()
        .context("invalid --trust-domain")?;
    let keys = Arc::new(TrustDomainKeys {
        issuer: args.issuer.clone(),
        keys: RwLock::new(Vec::new()),
    });
    let health = Health::new();
    let config = OidcConfig {
        bind: args.bind,
        issuer: args.issuer,
        tls: args.tls_cert.zip(args.tls_key),
        cors_origins: args.cors_origins,
    };
    let handle = twid_oidc::serve(config, keys.clone(), health.clone()).await?;
    let refresh = match (args.server_socket, args.agent_socket) {
        (Some(socket), _) => tokio::spawn(poll_server(socket, keys, health, args.refresh_interval)),
        (None, Some(socket)) => tokio::spawn(watch_agent(socket, trust_domain, keys, health)),
        (None, None) => anyhow::bail!("pass --server-socket or --agent-socket"),
    };
    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    refresh.abort();
    handle.shutdown().await;
    Ok(())
}

/// Fetches the bundle from the server every `interval`. After a failure the last keys stay
/// published; readiness drops only while no keys were ever fetched.
async fn poll_server(
    socket: PathBuf,
    keys: Arc<TrustDomainKeys>,
    health: Health,
    interval: Duration,
) {
    loop {
        match fetch_server_keys(&socket).await {
            Ok(jwks) => {
                tracing::debug!(keys = jwks.len(), "fetched JWT keys from the server");
                keys.replace(jwks);
                health.set_ready(true);
            }
            Err(error) => {
                let error = output::error_chain(&error);
                tracing::warn!(%error, socket = %socket.display(), "failed to fetch the bundle from the server");
                if keys.is_empty() {
                    health.set_not_ready(format!("no keys fetched yet: {error}"));
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn fetch_server_keys(socket: &Path) -> anyhow::Result<Vec<Value>> {
    let mut admin = client::admin(socket).await?;
    let bundle = admin
        .get_bundle(GetBundleRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner();
    let mut jwks = Vec::with_capacity(bundle.jwt_authorities.len());
    for key in &bundle.jwt_authorities {
        match JwtAuthority::from_spki_der(&key.key_id, &key.public_key) {
            Ok(authority) => jwks.push(authority.to_jwk(None)),
            Err(error) => {
                tracing::warn!(key_id = key.key_id, %error, "skipping an unusable JWT authority");
            }
        }
    }
    Ok(jwks)
}

/// Follows the agent's JWT bundle stream, reconnecting after [`AGENT_RETRY_INTERVAL`] when
/// it ends or fails.
async fn watch_agent(
    socket: PathBuf,
    trust_domain: Option<TrustDomain>,
    keys: Arc<TrustDomainKeys>,
    health: Health,
) {
    loop {
        let error = match stream_agent_keys(&socket, trust_domain.as_ref(), &keys, &health).await {
            Ok(()) => "the agent closed the JWT bundle stream".to_owned(),
            Err(error) => output::error_chain(&error),
        };
        tracing::warn!(%error, socket = %socket.display(), "JWT bundle stream from the agent ended; reconnecting");
        if keys.is_empty() {
            health.set_not_ready(format!("no keys fetched yet: {error}"));
        }
        tokio::time::sleep(AGENT_RETRY_INTERVAL).await;
    }
}

async fn stream_agent_keys(
    socket: &Path,
    trust_domain: Option<&TrustDomain>,
    keys: &TrustDomainKeys,
    health: &Health,
) -> anyhow::Result<()> {
    let mut workload = client::workload(socket).await?;
    let mut stream = workload
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner();
    while let Some(response) = stream.message().await.map_err(output::status_error)? {
        let jwks = select_bundle(&response.bundles, trust_domain)?;
        tracing::debug!(keys = jwks.len(), "received JWT keys from the agent");
        keys.replace(jwks);
        health.set_ready(true);
    }
    Ok(())
}

/// Picks the JWK Set of `trust_domain`, or of the only trust domain present when none is
/// given, and returns its keys.
fn select_bundle(
    bundles: &std::collections::HashMap<String, Vec<u8>>,
    trust_domain: Option<&TrustDomain>,
) -> anyhow::Result<Vec<Value>> {
    let (id, jwks) = match trust_domain {
        Some(trust_domain) => {
            let id = trust_domain.id_string();
            let jwks = bundles
                .get(&id)
                .with_context(|| format!("the agent returned no JWT bundle for {id}"))?;
            (id, jwks)
        }
        None => {
            let mut entries = bundles.iter();
            match (entries.next(), entries.next()) {
                (Some((id, jwks)), None) => (id.clone(), jwks),
                (None, _) => anyhow::bail!("the agent returned no JWT bundle"),
                (Some(_), Some(_)) => {
                    let mut ids: Vec<&str> = bundles.keys().map(String::as_str).collect();
                    ids.sort_unstable();
                    anyhow::bail!(
                        "the agent returned JWT bundles for several trust domains ({}); \
                         pass --trust-domain",
                        ids.join(", ")
                    )
                }
            }
        }
    };
    let trust_domain =
        TrustDomain::new(&id).with_context(|| format!("invalid trust domain ID {id:?}"))?;
    let bundle = JwtBundle::parse_jwks(trust_domain, jwks)
        .with_context(|| format!("invalid JWT bundle for {id}"))?;
    Ok(bundle
        .authorities()
        .values()
        .map(|authority| authority.to_jwk(None))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn jwks(key_id: &str) -> Vec<u8> {
        let key = twid_ca::JwtKey::generate(
            twid_ca::KeyType::EcP256,
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let jwk = JwtAuthority::from_spki_der(key_id, &key.public_key_spki_der())
            .unwrap()
            .to_jwk(None);
        serde_json::json!({ "keys": [jwk] })
            .to_string()
            .into_bytes()
    }

    fn bundles() -> HashMap<String, Vec<u8>> {
        HashMap::from([
            ("spiffe://example.org".to_owned(), jwks("own")),
            ("spiffe://partner.test".to_owned(), jwks("partner")),
        ])
    }

    #[test]
    fn select_bundle_by_trust_domain() {
        let trust_domain = TrustDomain::new("partner.test").unwrap();
        let keys = select_bundle(&bundles(), Some(&trust_domain)).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], "partner");
    }

    #[test]
    fn select_bundle_takes_only_bundle() {
        let mut bundles = bundles();
        bundles.remove("spiffe://partner.test");
        let keys = select_bundle(&bundles, None).unwrap();
        assert_eq!(keys[0]["kid"], "own");
    }

    #[test]
    fn select_bundle_ambiguous_needs_flag() {
        let error = select_bundle(&bundles(), None).unwrap_err().to_string();
        assert!(error.contains("--trust-domain"), "{error}");
        assert!(error.contains("spiffe://partner.test"), "{error}");
    }

    #[test]
    fn select_bundle_missing_trust_domain() {
        let trust_domain = TrustDomain::new("other.test").unwrap();
        let error = select_bundle(&bundles(), Some(&trust_domain))
            .unwrap_err()
            .to_string();
        assert!(error.contains("spiffe://other.test"), "{error}");
    }
}
