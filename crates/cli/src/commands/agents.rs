//! `twid agent run` and `twid agent list|show|evict|ban`.

use clap::{Args, Subcommand};
use twid_proto::admin::{BanAgentRequest, EvictAgentRequest, GetAgentRequest, ListAgentsRequest};
use twid_proto::types::Agent;

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Run the agent.
    Run(super::run::RunArgs),
    /// List attested agents.
    List(CommonArgs),
    /// Show one attested agent.
    Show(AgentIdArgs),
    /// Delete an agent's attestation; it must attest again to get an SVID.
    Evict(AgentIdArgs),
    /// Ban an agent: it cannot renew its SVID or attest again with the same ID.
    Ban(AgentIdArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AgentIdArgs {
    /// The agent's SPIFFE ID.
    #[arg(long)]
    spiffe_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Run(args) => super::run::agent(args).await,
        AgentCommand::List(common) => list(common).await,
        AgentCommand::Show(args) => show(args).await,
        AgentCommand::Evict(args) => evict(args).await,
        AgentCommand::Ban(args) => ban(args).await,
    }
}

fn agent_json(agent: &Agent) -> serde_json::Value {
    serde_json::json!({
        "spiffe_id": agent.spiffe_id,
        "attestation_type": agent.attestation_type,
        "x509_svid_serial": agent.x509_svid_serial,
        "x509_svid_expires_at": agent.x509_svid_expires_at,
        "selectors": agent.selectors.iter()
            .map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        "banned": agent.banned,
        "attested_at": agent.attested_at,
    })
}

fn print_agent(agent: &Agent) {
    println!("SPIFFE ID         : {}", agent.spiffe_id);
    println!("Attestation type  : {}", agent.attestation_type);
    println!(
        "Expiration time   : {}",
        output::timestamp(agent.x509_svid_expires_at)
    );
    println!("Serial number     : {}", agent.x509_svid_serial);
    println!("Banned            : {}", agent.banned);
    for selector in &agent.selectors {
        println!("Selector          : {}:{}", selector.r#type, selector.value);
    }
    println!();
}

fn check_id(id: &str) -> anyhow::Result<()> {
    twid_spiffe::SpiffeId::new(id)
        .map(|_| ())
        .map_err(|error| anyhow::anyhow!("invalid --spiffe-id {id:?}: {error}"))
}

async fn list(common: CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner()
        .agents;
    match common.output {
        OutputFormat::Json => {
            let list: Vec<_> = agents.iter().map(agent_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "agents": list }))?
            );
        }
        OutputFormat::Pretty => {
            println!(
                "Found {} attested agent{}:\n",
                agents.len(),
                if agents.len() == 1 { "" } else { "s" }
            );
            agents.iter().for_each(print_agent);
        }
    }
    Ok(())
}

async fn show(args: AgentIdArgs) -> anyhow::Result<()> {
    check_id(&args.spiffe_id)?;
    let mut admin = client::admin(&args.common.socket_path).await?;
    let agent = admin
        .get_agent(GetAgentRequest {
            spiffe_id: args.spiffe_id,
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match args.common.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&agent_json(&agent))?),
        OutputFormat::Pretty => print_agent(&agent),
    }
    Ok(())
}

async fn evict(args: AgentIdArgs) -> anyhow::Result<()> {
    check_id(&args.spiffe_id)?;
    let mut admin = client::admin(&args.common.socket_path).await?;
    admin
        .evict_agent(EvictAgentRequest {
            spiffe_id: args.spiffe_id.clone(),
        })
        .await
        .map_err(output::status_error)?;
    println!("Agent evicted: {}", args.spiffe_id);
    Ok(())
}

async fn ban(args: AgentIdArgs) -> anyhow::Result<()> {
    check_id(&args.spiffe_id)?;
    let mut admin = client::admin(&args.common.socket_path).await?;
    admin
        .ban_agent(BanAgentRequest {
            spiffe_id: args.spiffe_id.clone(),
        })
        .await
        .map_err(output::status_error)?;
    println!("Agent banned: {}", args.spiffe_id);
    Ok(())
}
