//! `twid token generate`: single-use join tokens for agent attestation.

use std::time::Duration;

use clap::{Args, Subcommand};
use twid_proto::admin::CreateJoinTokenRequest;

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Generate a join token; an agent can attest with it once, before it expires.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Make this SPIFFE ID an alias of the agent that attests with the token, so that
    /// workload entries can name it as their parent.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Token lifetime, in seconds or as a duration (10m).
    #[arg(long, default_value = "600", value_parser = super::parse_ttl)]
    ttl: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Generate(args) = command;
    if let Some(id) = &args.spiffe_id {
        twid_spiffe::SpiffeId::new(id)
            .map_err(|error| anyhow::anyhow!("invalid --spiffe-id {id:?}: {error}"))?;
    }
    if args.ttl.is_zero() {
        anyhow::bail!("invalid --ttl 0: a join token needs a lifetime of at least one second");
    }
    let mut admin = client::admin(&args.common.socket_path).await?;
    let response = admin
        .create_join_token(CreateJoinTokenRequest {
            ttl: i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX),
            spiffe_id: args.spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match args.common.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({ "token": response.token, "expires_at": response.expires_at })
        ),
        OutputFormat::Pretty => println!("Token: {}", response.token),
    }
    Ok(())
}
