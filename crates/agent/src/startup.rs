//! The start sequence up to the first sync: the stored identity or a new attestation, the
//! mutual TLS connection to the server, and the first sync round.

use std::sync::Arc;

use rustls::ClientConfig;
use twid_proto::node::node_client::NodeClient;
use twid_tls::{Authorizer, SvidSource};

use crate::AgentError;
use crate::bootstrap::{self, AttestationMethod};
use crate::cache::Cache;
use crate::node::{self, ServerConnection};
use crate::reattest::Reattestation;
use crate::settings::AgentSettings;
use crate::state::{self, AgentState};
use crate::sync::{RevokedRetry, Syncer, unix_now};

/// Extra time for an evidence attestation, for the collector to run.
const EVIDENCE_COLLECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(35);

/// The source of the agent's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The data directory, from an earlier run.
    Stored,
    /// A join token or evidence attestation just now.
    Attested,
}

/// Obtains the agent's identity and runs the first sync round.
///
/// Returns the syncer and the outcome of that round. Only a rejection of the agent is an
/// error here, because the sync loop retries an unreachable server. When the server rejects a
/// stored SVID (the agent was evicted, or its SVID was superseded), the agent attests again if
/// `join_token` or an evidence attestor is set and fails with [`AgentError::Rejected`]
/// otherwise.
pub(crate) async fn establish(
    settings: &AgentSettings,
    cache: &Cache,
    health: &twid_telemetry::Health,
) -> Result<(Syncer, Result<(), AgentError>), AgentError> {
    let (agent, origin) = load_or_attest(settings).await?;
    let mut syncer = new_syncer(settings, agent, cache, health).await?;
    let first = syncer.sync_once().await;
    let rejection = match first {
        Err(error) if error.is_agent_rejected() => error,
        other => return Ok((syncer, other)),
    };
    if origin == Origin::Attested {
        return Err(rejection);
    }
    let message = match &rejection {
        AgentError::Rpc { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let Some(method) = attestation_method(settings) else {
        return Err(AgentError::Rejected { message });
    };
    tracing::warn!(
        reason = %message,
        attestor = method.attestor(),
        "the server rejected the stored agent SVID; attesting again"
    );
    let stored_bundle = std::mem::take(&mut syncer.agent.bundle);
    let agent = attest_with(settings, Some(stored_bundle), &method).await?;
    let mut syncer = new_syncer(settings, agent, cache, health).await?;
    let first = syncer.sync_once().await;
    match first {
        Err(error) if error.is_agent_rejected() => Err(error),
        other => Ok((syncer, other)),
    }
}

/// The agent state found in the data directory.
enum Stored {
    /// An SVID of the configured trust domain that has not expired, with a bundle.
    Usable(AgentState),
    /// An expired SVID; its bundle can still authenticate the server for a new attestation.
    Expired { bundle: Vec<Vec<u8>> },
}

/// Re-uses a stored SVID that is still valid; otherwise attests with the evidence attestor or
/// the join token.
///
/// Unusable stored state (unreadable, key not matching the SVID, another trust domain) is
/// replaced by a new attestation when either is set, and an error otherwise.
async fn load_or_attest(settings: &AgentSettings) -> Result<(AgentState, Origin), AgentError> {
    let stored = state::load(&settings.data_dir).and_then(|stored| {
        stored
            .map(|stored| check_stored(settings, stored))
            .transpose()
    });
    let method = attestation_method(settings);
    let stored_bundle = match stored {
        Ok(Some(Stored::Usable(agent))) => {
            if settings.join_token.is_some() {
                tracing::info!(
                    data_dir = %settings.data_dir.display(),
                    "join_token is set, but the agent uses its stored SVID while the server \
                     accepts it; to attest with the token now, start with an empty data_dir"
                );
            }
            return Ok((agent, Origin::Stored));
        }
        Ok(Some(Stored::Expired { bundle })) => Some(bundle),
        Ok(None) => None,
        Err(error) if method.is_some() => {
            tracing::warn!(%error, "ignoring the unusable stored agent state; attesting again");
            None
        }
        Err(error) => return Err(error),
    };
    let method = method.ok_or(AgentError::MissingJoinToken)?;
    let agent = attest_with(settings, stored_bundle, &method).await?;
    Ok((agent, Origin::Attested))
}

/// Returns how the agent attests: with its evidence attestor when one is configured, else
/// with the join token, else `None`.
fn attestation_method(settings: &AgentSettings) -> Option<AttestationMethod> {
    if let Some(evidence) = &settings.evidence {
        return Some(AttestationMethod::Evidence {
            attestor: evidence.attestor.clone(),
            collector: Arc::clone(&evidence.collector),
        });
    }
    settings
        .join_token
        .clone()
        .map(AttestationMethod::JoinToken)
}

fn check_stored(settings: &AgentSettings, mut stored: AgentState) -> Result<Stored, AgentError> {
    let spiffe_id = stored.check()?;
    if spiffe_id.trust_domain() != &settings.trust_domain {
        return Err(AgentError::InvalidSvid(format!(
            "the stored agent SVID {spiffe_id} is not in the configured trust domain {}",
            settings.trust_domain
        )));
    }
    let (_, not_after) = stored.validity()?;
    if not_after <= unix_now() {
        tracing::warn!(
            spiffe_id = %spiffe_id,
            expired_at = not_after,
            "the stored agent SVID has expired; attesting again"
        );
        return Ok(Stored::Expired {
            bundle: stored.bundle,
        });
    }
    if stored.bundle.is_empty() {
        stored.bundle = configured_bundle(settings)?.ok_or(AgentError::NoBootstrapTrust)?;
    }
    tracing::info!(
        spiffe_id = %spiffe_id,
        expires_at = not_after,
        "re-using the stored agent SVID"
    );
    Ok(Stored::Usable(stored))
}

/// Attests with `method` over a connection that trusts `stored_bundle`, the configured
/// bundle file, or (with insecure_bootstrap) any server, and stores the new identity.
async fn attest_with(
    settings: &AgentSettings,
    stored_bundle: Option<Vec<Vec<u8>>>,
    method: &AttestationMethod,
) -> Result<AgentState, AgentError> {
    // Limit: each server address is tried once. When every address fails, the start fails,
    // and the process supervisor is expected to restart the agent.
    let tls = bootstrap_tls(settings, stored_bundle)?;
    let addresses = node::resolve_all(&settings.server_addresses).await;
    let mut attempts = addresses.iter().peekable();
    while let Some(address) = attempts.next() {
        let attested = attest_over(
            &address.host,
            address.port,
            Arc::clone(&tls),
            &settings.trust_domain,
            method,
        )
        .await;
        let agent = match attested {
            Ok(agent) => agent,
            Err(error) if is_unreachable(&error) && attempts.peek().is_some() => {
                tracing::warn!(
                    server = %address,
                    %error,
                    "attestation with the server failed; trying the next server address"
                );
                continue;
            }
            Err(error) => return Err(error),
        };
        state::save(&settings.data_dir, &agent)?;
        return Ok(agent);
    }
    Err(AgentError::Config(
        "no server address to attest to: set server_address or experimental { server_addresses }"
            .to_owned(),
    ))
}

/// Returns whether an attestation failed because the server could not be reached, so that
/// another server address may succeed.
fn is_unreachable(error: &AgentError) -> bool {
    matches!(
        error,
        AgentError::Attestation {
            code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded,
            ..
        }
    ) || error.is_connection_failure()
}

/// Attests with `method` to the server at `host:port` over a new connection with `tls` and a
/// new key, and returns the new state without storing it. Both the start and the
/// re-attestation of an evidence-attested agent go through here. At the start `tls` has no
/// client certificate. A re-attestation presents the current SVID while it is valid, because
/// the server replaces the record of an agent ID with an unexpired SVID only for its holder.
///
/// # Errors
/// Fails as [`bootstrap::attest`] does, and with DeadlineExceeded when the attestation takes
/// longer than the node API call limit (plus the collection time for evidence).
pub(crate) async fn attest_over(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    trust_domain: &twid_spiffe::TrustDomain,
    method: &AttestationMethod,
) -> Result<AgentState, AgentError> {
    let channel = twid_tls::connect_channel_lazy(host, port, tls)?;
    let key = state::generate_key()?;
    let client = NodeClient::new(channel);
    let attestation = bootstrap::attest(client, trust_domain, method, key);
    // Evidence collection may take as long as the collector's own timeout (30 s for exec).
    let timeout = match method {
        AttestationMethod::JoinToken(_) => node::RPC_TIMEOUT,
        AttestationMethod::Evidence { .. } => node::RPC_TIMEOUT + EVIDENCE_COLLECTION_TIMEOUT,
    };
    match tokio::time::timeout(timeout, attestation).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::Attestation {
            code: tonic::Code::DeadlineExceeded,
            message: format!(
                "the attestation with the server at {host}:{port} did not finish within {}s",
                timeout.as_secs()
            ),
        }),
    }
}

/// Reads the configured trust bundle file, if there is one.
fn configured_bundle(settings: &AgentSettings) -> Result<Option<Vec<Vec<u8>>>, AgentError> {
    settings
        .trust_bundle
        .as_ref()
        .map(|(path, format)| bootstrap::read_bundle_file(&settings.trust_domain, path, *format))
        .transpose()
}

/// Chooses what to trust for an attestation: a stored bundle, the operator's bundle file, or
/// (with a warning) nothing at all.
fn bootstrap_tls(
    settings: &AgentSettings,
    stored_bundle: Option<Vec<Vec<u8>>>,
) -> Result<Arc<ClientConfig>, AgentError> {
    let server = Authorizer::Exact(twid_types::server_id(&settings.trust_domain));
    let bundle = match stored_bundle.filter(|bundle| !bundle.is_empty()) {
        Some(bundle) => Some(bundle),
        None => configured_bundle(settings)?,
    };
    if let Some(bundle) = bundle {
        let trust = bootstrap::trust_source(&settings.trust_domain, &bundle)?;
        return Ok(twid_tls::client_config(None, trust, server)?);
    }
    if settings.insecure_bootstrap {
        tracing::warn!(
            "insecure_bootstrap is set: the server is not authenticated for this attestation"
        );
        return Ok(twid_tls::insecure_client_config(None, server)?);
    }
    Err(AgentError::NoBootstrapTrust)
}

/// Builds the mutual TLS connection and the syncer for `agent`.
async fn new_syncer(
    settings: &AgentSettings,
    agent: AgentState,
    cache: &Cache,
    health: &twid_telemetry::Health,
) -> Result<Syncer, AgentError> {
    let svid_source = SvidSource::new(agent.certificates(), agent.private_key_der())?;
    let trust = bootstrap::trust_source(&settings.trust_domain, &agent.bundle)?;
    let server = Authorizer::Exact(twid_types::server_id(&settings.trust_domain));
    let tls = twid_tls::client_config(Some(svid_source.clone()), trust.clone(), server)?;
    let connection = ServerConnection::new(&settings.server_addresses, tls).await?;
    Ok(Syncer {
        connection: Arc::new(connection),
        cache: cache.clone(),
        agent,
        svid_source,
        trust,
        trust_domain: settings.trust_domain.clone(),
        data_dir: settings.data_dir.clone(),
        health: health.clone(),
        failing_entries: std::collections::HashSet::new(),
        reattestation: reattestation(settings),
        revoked_retry: RevokedRetry::new(settings.sync_interval),
        taint_batch_size: settings.taint_batch_size,
        taint_batch_interval: settings.taint_batch_interval,
        taint_batch_at: None,
        tainted_pending: false,
        x509_svid_cache_max_size: settings.x509_svid_cache_max_size,
        signing_incomplete: false,
        round_generation: 0,
        entries_revision: 0,
    })
}

/// Returns the re-attestation schedule for an agent with an evidence attestor, or `None` for a
/// join token agent, which renews its SVID instead.
fn reattestation(settings: &AgentSettings) -> Option<Reattestation> {
    match attestation_method(settings)? {
        method @ AttestationMethod::Evidence { .. } => Some(Reattestation::new(method)),
        AttestationMethod::JoinToken(_) => None,
    }
}
