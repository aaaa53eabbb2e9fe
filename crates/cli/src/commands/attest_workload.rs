//! `twid attest workload`: attest this workload with its own TEE evidence through the agent's
//! Workload API socket, and write the key, X.509-SVID, bundle, WIT and JWT-SVID it receives.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use twid_attestation::node::evidence::Collector as _;
use twid_attestation::node::evidence::exec::ExecCollector;
use twid_evidence::{Kind, binding};
use twid_proto::workload_attestation::GetNonceRequest;
use twid_proto::workload_attestation::workload_attestation_client::WorkloadAttestationClient;
use twid_proto::workload_attestation::{AttestRequest, AttestResponse};

use crate::client::{WorkloadHeader, unix_channel, workload_socket};
use crate::commands::api::to_pem;
use crate::commands::write_dir::{PRIVATE, PUBLIC, write_file};

/// Largest message accepted from the agent: an SVID chain, a bundle, a WIT and a JWT-SVID.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The evidence collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CollectorKind {
    /// Runs `--command` with the report data (128 hex digits) in `TWID_REPORT_DATA`. The
    /// program must print one evidence envelope (JSON) on standard output.
    Exec,
}

#[derive(Debug, Args)]
pub(crate) struct WorkloadArgs {
    /// The agent's Workload API socket: a path or a unix: address. Defaults to
    /// `SPIFFE_ENDPOINT_SOCKET`, then /tmp/twid-agent/public/api.sock.
    #[arg(long = "socket", visible_alias = "socket-path")]
    socket: Option<PathBuf>,
    /// Evidence kind the collector produces: sgx-dcap, sgx-ias, tdx, snp, nitro or tpm.
    #[arg(long, value_parser = parse_kind)]
    kind: Kind,
    /// Evidence collector.
    #[arg(long, value_enum, default_value = "exec")]
    collector: CollectorKind,
    /// The collector program and its arguments (no shell). Give this option last, because every
    /// argument after `--command` goes to the program.
    #[arg(long, required = true, num_args = 1.., allow_hyphen_values = true)]
    command: Vec<String>,
    /// Seconds the collector program may run before it is killed.
    #[arg(long, default_value_t = 30)]
    collector_timeout: u64,
    /// Output file for the new private key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    key_out: PathBuf,
    /// Output file for the X.509-SVID chain (PEM, leaf first).
    #[arg(long)]
    svid_out: PathBuf,
    /// Output file for the trust bundle (PEM CA certificates).
    #[arg(long)]
    bundle_out: Option<PathBuf>,
    /// Output file for the WIT (compact JWS, mode 0600). Without it no WIT is requested.
    #[arg(long)]
    wit_out: Option<PathBuf>,
    /// Audience of a JWT-SVID to request; repeat for several audiences. Without it no JWT-SVID
    /// is requested.
    #[arg(long = "audience", value_name = "AUDIENCE")]
    audiences: Vec<String>,
    /// Output file for the JWT-SVID (compact JWS, mode 0600). Defaults to `jwt_svid.token` in
    /// the folder of `--svid-out`. Requires `--audience`.
    #[arg(long, requires = "audiences")]
    jwt_svid_out: Option<PathBuf>,
}

/// The file name of the JWT-SVID when `--jwt-svid-out` is not given.
const JWT_SVID_FILE: &str = "jwt_svid.token";

impl WorkloadArgs {
    /// Returns where the JWT-SVID goes, or `None` when no audience was requested.
    fn jwt_svid_path(&self) -> Option<PathBuf> {
        if self.audiences.is_empty() {
            return None;
        }
        if let Some(path) = &self.jwt_svid_out {
            return Some(path.clone());
        }
        Some(self.svid_out.with_file_name(JWT_SVID_FILE))
    }
}

/// Generates a key, obtains a nonce, collects evidence bound to both and sends it. Prints the
/// SPIFFE ID, entry and attestation claims as JSON.
pub(crate) async fn run(args: WorkloadArgs) -> anyhow::Result<()> {
    if let Some(audience) = args
        .audiences
        .iter()
        .find(|audience| audience.trim().is_empty())
    {
        bail!("--audience {audience:?} is empty; name the relying party that accepts the JWT-SVID");
    }
    let socket = workload_socket(args.socket.clone())?;
    let key = twid_ca::PrivateKey::generate(twid_ca::KeyType::EcP256)
        .context("failed to generate an ECDSA P-256 key")?;
    let public_key = key.public_key_spki_der();
    let csr = twid_ca::build_csr(&key).context("failed to build the CSR")?;

    let channel = unix_channel(&socket).await?;
    let mut client = WorkloadAttestationClient::with_interceptor(channel, WorkloadHeader)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let nonce = client
        .get_nonce(GetNonceRequest {})
        .await
        .map_err(|status| rpc_error("GetNonce", &status))?
        .into_inner()
        .nonce;

    let report_data = binding::report_data(&nonce, &public_key);
    let envelope = match args.collector {
        CollectorKind::Exec => {
            let collector = ExecCollector::new(args.kind, args.command.clone())
                .with_timeout(std::time::Duration::from_secs(args.collector_timeout));
            tokio::task::spawn_blocking(move || collector.collect(&report_data))
                .await
                .context("the collector task stopped unexpectedly")?
                .context("failed to collect evidence")?
        }
    };
    if envelope.kind != args.kind {
        bail!(
            "the collector printed {} evidence, but --kind is {}",
            envelope.kind,
            args.kind
        );
    }

    let request = AttestRequest {
        nonce,
        evidence_envelope: envelope.to_json(),
        public_key,
        csr,
        skip_wit: args.wit_out.is_none(),
        jwt_audiences: args.audiences.clone(),
    };
    let response = client
        .attest(request)
        .await
        .map_err(|status| rpc_error("Attest", &status))?
        .into_inner();
    if response.svid_chain.is_empty() {
        bail!("the server returned no X.509-SVID");
    }

    write_outputs(&args, &key, &response)?;

    let claims: Value = serde_json::from_slice(&response.attestation_claims)
        .unwrap_or_else(|_| Value::String("invalid JSON".to_owned()));
    let mut summary = json!({
        "spiffe_id": response.spiffe_id,
        "entry_id": response.entry_id,
        "other_entry_ids": response.other_entry_ids,
        "expires_at": response.expires_at,
        "attestation_claims": claims,
    });
    if let Some(path) = args.jwt_svid_path() {
        summary["jwt_svid_path"] = Value::from(path.display().to_string());
        summary["jwt_svid_expires_at"] = Value::from(response.jwt_svid_expires_at);
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Writes the key, SVID chain, bundle, WIT and JWT-SVID to the files the arguments name.
fn write_outputs(
    args: &WorkloadArgs,
    key: &twid_ca::PrivateKey,
    response: &AttestResponse,
) -> anyhow::Result<()> {
    write_private(
        &args.key_out,
        to_pem("PRIVATE KEY", key.pkcs8_der()).as_bytes(),
    )?;
    write_public(&args.svid_out, &certificates_pem(&response.svid_chain))?;
    if let Some(path) = &args.bundle_out {
        write_public(path, &certificates_pem(&response.bundle))?;
    }
    if let Some(path) = &args.wit_out {
        if response.wit.is_empty() {
            bail!("the server returned no WIT");
        }
        write_private(path, response.wit.as_bytes())?;
    }
    if let Some(path) = args.jwt_svid_path() {
        if response.jwt_svid.is_empty() {
            bail!(
                "the server returned no JWT-SVID for audiences {:?}",
                args.audiences
            );
        }
        write_private(&path, response.jwt_svid.as_bytes())?;
    }
    Ok(())
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    text.parse()
}

fn rpc_error(method: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{method} failed with {:?}: {}",
        status.code(),
        status.message()
    )
}

fn certificates_pem(certificates: &[Vec<u8>]) -> String {
    certificates
        .iter()
        .map(|der| to_pem("CERTIFICATE", der))
        .collect()
}

/// Writes a certificate file with mode 0644, replacing any previous file atomically.
fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_file(path, contents.as_bytes(), PUBLIC)
}

/// Writes a file readable only by its owner, replacing any previous file atomically.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_file(path, contents, PRIVATE)
}
