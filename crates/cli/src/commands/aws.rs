//! `twid aws trust-policy` and `twid aws credentials`: AWS IAM federation with JWT-SVIDs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use twid_aws::{AssumeRoleRequest, DEFAULT_STS_ENDPOINT, StsClient, StsError};
use twid_proto::workload::JwtsvidRequest;

use crate::{client, output};

/// The audience AWS STS expects in web identity tokens by default.
const STS_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, Subcommand)]
pub(crate) enum AwsCommand {
    /// Print the IAM role trust policy that lets one SPIFFE ID assume the role.
    TrustPolicy(TrustPolicyArgs),
    /// Exchange a JWT-SVID for temporary AWS credentials and print them as
    /// credential_process JSON.
    Credentials(CredentialsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TrustPolicyArgs {
    /// The 12-digit AWS account ID that owns the role and the IAM OIDC provider.
    #[arg(long)]
    account_id: String,
    /// The IAM OIDC provider: the issuer URL without https://, such as oidc.example.org.
    #[arg(long)]
    provider: String,
    /// The SPIFFE ID allowed to assume the role (the token's sub).
    #[arg(long)]
    spiffe_id: String,
    /// The audience the token must carry (its aud).
    #[arg(long, default_value = STS_AUDIENCE)]
    audience: String,
}

#[derive(Debug, Args)]
pub(crate) struct CredentialsArgs {
    /// The ARN of the role to assume.
    #[arg(long)]
    role_arn: String,
    /// The audience of the JWT-SVID, which must be a client ID of the IAM OIDC provider.
    #[arg(long, default_value = STS_AUDIENCE)]
    audience: String,
    /// The role session name (default: derived from the SPIFFE ID).
    #[arg(long)]
    session_name: Option<String>,
    /// The session duration, from 15m to 12h and at most the role's maximum.
    #[arg(long, default_value = "1h", value_parser = super::parse_ttl)]
    duration: Duration,
    /// The STS endpoint URL.
    #[arg(long, default_value = DEFAULT_STS_ENDPOINT)]
    sts_endpoint: String,
    /// Use the JWT-SVID of this SPIFFE ID when the workload has several.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Workload API socket (default: SPIFFE_ENDPOINT_SOCKET, else the agent's default socket).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// How long each of the Workload API and STS calls may take.
    #[arg(long, default_value = "30s", value_parser = super::parse_ttl)]
    timeout: Duration,
}

pub(crate) async fn run(command: AwsCommand) -> anyhow::Result<()> {
    match command {
        AwsCommand::TrustPolicy(args) => trust_policy(args),
        AwsCommand::Credentials(args) => credentials(args).await,
    }
}

fn trust_policy(args: TrustPolicyArgs) -> anyhow::Result<()> {
    let policy = twid_aws::trust_policy(
        &args.account_id,
        &args.provider,
        &args.spiffe_id,
        &args.audience,
    )?;
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(())
}

async fn credentials(args: CredentialsArgs) -> anyhow::Result<()> {
    let sts = StsClient::new(&args.sts_endpoint)?.with_timeout(args.timeout);
    let (spiffe_id, token) = fetch_jwt_svid(&args).await?;
    let session_name = args
        .session_name
        .clone()
        .unwrap_or_else(|| session_name_for(&spiffe_id));
    let request = AssumeRoleRequest {
        role_arn: args.role_arn.clone(),
        session_name,
        web_identity_token: token,
        duration: Some(args.duration),
    };
    let role = sts
        .assume_role_with_web_identity(&request)
        .await
        .map_err(sts_error)?;
    tracing::debug!(
        assumed_role_arn = %role.assumed_role_arn,
        request_id = %role.request_id,
        "assumed role"
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&role.credentials.credential_process_json())?
    );
    Ok(())
}

async fn fetch_jwt_svid(args: &CredentialsArgs) -> anyhow::Result<(String, String)> {
    let path = client::workload_socket(args.socket_path.clone())?;
    let mut workload = client::workload(&path).await?;
    let request = JwtsvidRequest {
        audience: vec![args.audience.clone()],
        spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
    };
    let response = tokio::time::timeout(args.timeout, workload.fetch_jwtsvid(request))
        .await
        .with_context(|| format!("no JWT-SVID received within {:?}", args.timeout))?
        .map_err(output::status_error)
        .context("failed to fetch a JWT-SVID from the Workload API")?
        .into_inner();
    let svid = response
        .svids
        .into_iter()
        .next()
        .context("the Workload API returned no JWT-SVID")?;
    Ok((svid.spiffe_id, svid.svid))
}

/// Turns an STS failure into one line: the error with its request ID, then what to check.
fn sts_error(error: StsError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => anyhow::anyhow!("{error}; {hint}"),
        None => anyhow::Error::new(error),
    }
}

/// Derives a role session name from a SPIFFE ID: the ID without its scheme, with every
/// character STS does not allow replaced by `-`, cut to the 64-character limit.
fn session_name_for(spiffe_id: &str) -> String {
    let name: String = spiffe_id
        .trim_start_matches("spiffe://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.len() < 2 {
        "twid-workload".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_name_follows_sts_rules() {
        assert_eq!(
            session_name_for("spiffe://example.org/ns/prod/sa/app"),
            "example.org-ns-prod-sa-app"
        );
        let long = format!("spiffe://example.org/{}", "a".repeat(100));
        assert_eq!(session_name_for(&long).len(), 64);
        assert_eq!(session_name_for(""), "twid-workload");
    }
}
