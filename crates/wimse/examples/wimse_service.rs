//! An HTTP service on 127.0.0.1 that authenticates callers with a WIT and a WPT and
//! responds with the caller's SPIFFE ID.
//!
//! ```text
//! cargo run -p twid-wimse --example wimse_service -- \
//!     --jwks issuer-keys.json --trust-domain example.org \
//!     --audience http://127.0.0.1:8080/whoami
//! curl -H "Workload-Identity-Token: $WIT" -H "Workload-Proof-Token: $WPT" \
//!     http://127.0.0.1:8080/whoami
//! ```
//!
//! The WPT `aud` must be one of the `--audience` values; the service never derives its
//! audience from the request's Host header.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use axum::{Extension, Router};
use clap::Parser;
use http::StatusCode;
use twid_spiffe::TrustDomain;
use twid_wimse::{IssuerKeys, WimseAuthConfig, WimseAuthLayer, Wit};

/// Serves GET /whoami behind WIMSE WIT and WPT authentication.
#[derive(Debug, Parser)]
struct Args {
    /// JWK Set file with the Identity Server public keys.
    #[arg(long)]
    jwks: PathBuf,
    /// Trust domain whose WITs the keys in --jwks sign.
    #[arg(long)]
    trust_domain: String,
    /// Accepted WPT audience, such as http://127.0.0.1:8080/whoami; repeat for several.
    #[arg(long, required = true)]
    audience: Vec<String>,
    /// When set, the WIT iss claim must equal this value.
    #[arg(long)]
    issuer: Option<String>,
    /// TCP port to listen on at 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Maximum WPT lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    max_proof_lifetime_secs: u64,
    /// Clock skew tolerated in WIT and WPT time checks, in seconds.
    #[arg(long, default_value_t = 60)]
    clock_skew_secs: u64,
    /// Reject with 401 and WWW-Authenticate instead of the 400 the WIMSE drafts recommend.
    #[arg(long)]
    reject_with_401: bool,
}

async fn whoami(Extension(wit): Extension<Wit>) -> String {
    format!("{}\n", wit.subject)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain {:?}", args.trust_domain))?;
    let jwks = std::fs::read(&args.jwks)
        .with_context(|| format!("cannot read --jwks {}", args.jwks.display()))?;
    let mut keys = IssuerKeys::new();
    keys.add_jwks(trust_domain.clone(), &jwks)
        .with_context(|| format!("invalid JWK Set in {}", args.jwks.display()))?;
    anyhow::ensure!(
        !keys.is_empty(),
        "{} contains no signing key",
        args.jwks.display()
    );

    let mut config = WimseAuthConfig::new(keys, args.audience.clone());
    config.expected_issuer = args.issuer;
    config.max_proof_lifetime = Duration::from_secs(args.max_proof_lifetime_secs);
    config.clock_skew = Duration::from_secs(args.clock_skew_secs);
    if args.reject_with_401 {
        config.rejection_status = StatusCode::UNAUTHORIZED;
    }
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(WimseAuthLayer::new(config));

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(
        %address,
        %trust_domain,
        audiences = ?args.audience,
        "WIMSE service started"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("server failed")?;
    tracing::info!("WIMSE service stopped");
    Ok(())
}
