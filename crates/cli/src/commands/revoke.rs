//! `twid revoke` and `twid revoke list`: withdraw every unexpired credential issued on a basis
//! (a selector, a TCB status or an agent), and show the revocations with the signed list of
//! revoked serials and JWT IDs.

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};
use twid_proto::admin::{
    ListRevocationsRequest, ListRevocationsResponse, Revocation, RevokeRequest, RevokeResponse,
    revoke_request,
};

use super::entry::CommonArgs;
use super::log::escape_control;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    group(ArgGroup::new("basis").args(["selector", "tcb_status", "agent"]))
)]
pub(crate) struct RevokeArgs {
    #[command(subcommand)]
    command: Option<RevokeCommand>,
    /// Revoke credentials issued on this selector (<type>:<value>, for example unix:gid:2000),
    /// and everything obtained through agents attested with it.
    #[arg(long)]
    selector: Option<String>,
    /// Revoke credentials issued on evidence with this TCB status (for example OutOfDate),
    /// and everything obtained through agents attested with it.
    #[arg(long)]
    tcb_status: Option<String>,
    /// Revoke this agent's SVIDs (its SPIFFE ID) and everything obtained through it.
    #[arg(long)]
    agent: Option<String>,
    /// Free-text reason, stored with the revocation.
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RevokeCommand {
    /// List revocations, the unexpired revoked credentials and the signed revocation list.
    List(CommonArgs),
}

pub(crate) async fn run(args: RevokeArgs) -> anyhow::Result<()> {
    if let Some(RevokeCommand::List(common)) = args.command {
        return list(common).await;
    }
    let basis = match (args.selector, args.tcb_status, args.agent) {
        (Some(selector), _, _) => revoke_request::Basis::Selector(selector),
        (None, Some(status), _) => revoke_request::Basis::TcbStatus(status),
        (None, None, Some(agent)) => revoke_request::Basis::AgentId(agent),
        (None, None, None) => anyhow::bail!(
            "missing basis: pass --selector <type>:<value>, --tcb-status <status> or \
             --agent <SPIFFE ID>, or use `twid revoke list`"
        ),
    };
    let mut admin = client::admin(&args.common.socket_path).await?;
    let response = admin
        .revoke(RevokeRequest {
            basis: Some(basis),
            reason: args.reason,
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match args.common.output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&revoke_json(&response))?)
        }
        OutputFormat::Pretty => print_revoke(&response),
    }
    Ok(())
}

async fn list(common: CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let response = admin
        .list_revocations(ListRevocationsRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner();
    match common.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list_json(&response))?),
        OutputFormat::Pretty => print_list(&response),
    }
    Ok(())
}

fn revocation_json(revocation: &Revocation) -> Value {
    json!({
        "id": revocation.id,
        "kind": revocation.kind,
        "value": revocation.value,
        "reason": revocation.reason,
        "created_at": revocation.created_at,
    })
}

fn revoke_json(response: &RevokeResponse) -> Value {
    json!({
        "revocation": response.revocation.as_ref().map(revocation_json),
        "revoked_x509_count": response.revoked_x509_count,
        "revoked_jwt_count": response.revoked_jwt_count,
        "revoked_x509_serials": response.revoked_x509_serials,
        "revoked_jtis": response.revoked_jtis,
        "already_revoked_count": response.already_revoked_count,
    })
}

fn list_json(response: &ListRevocationsResponse) -> Value {
    let credentials: Vec<Value> = response
        .credentials
        .iter()
        .map(|credential| {
            // An absent value is null, as in `twid log show`, not an empty string.
            let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
            json!({
                "revocation_id": credential.revocation_id,
                "kind": credential.kind,
                "serial": text(&credential.serial),
                "jti": text(&credential.jti),
                "spiffe_id": text(&credential.spiffe_id),
                "agent_id": text(&credential.agent_id),
                "expires_at": credential.expires_at,
            })
        })
        .collect();
    json!({
        "revocations": response.revocations.iter().map(revocation_json).collect::<Vec<_>>(),
        "credentials": credentials,
        "signed_list": response.signed_list,
    })
}

fn revocation_line(revocation: &Revocation) -> String {
    let mut line = format!(
        "Revocation {} ({} {}) at {}",
        revocation.id,
        escape_control(&revocation.kind),
        escape_control(&revocation.value),
        output::timestamp(revocation.created_at)
    );
    if !revocation.reason.is_empty() {
        line.push_str(&format!(": {}", escape_control(&revocation.reason)));
    }
    line
}

fn print_revoke(response: &RevokeResponse) {
    if let Some(revocation) = &response.revocation {
        println!("{}", revocation_line(revocation));
    }
    println!(
        "Revoked {} X.509-SVID{} and {} JWT{}",
        response.revoked_x509_count,
        plural(response.revoked_x509_count),
        response.revoked_jwt_count,
        plural(response.revoked_jwt_count)
    );
    for serial in &response.revoked_x509_serials {
        println!("  serial {}", escape_control(serial));
    }
    for jti in &response.revoked_jtis {
        println!("  jti    {}", escape_control(jti));
    }
    if response.already_revoked_count > 0 {
        println!(
            "{} matching credential{} had been revoked by earlier rules already",
            response.already_revoked_count,
            plural(response.already_revoked_count)
        );
    }
    if response.revoked_x509_count == 0
        && response.revoked_jwt_count == 0
        && response.already_revoked_count == 0
    {
        eprintln!(
            "warning: no unexpired credential matched, but the rule still rejects new \
             credentials on this basis and cannot be removed; check the spelling against \
             `twid entry show` and `twid agent list`"
        );
    }
}

fn print_list(response: &ListRevocationsResponse) {
    println!(
        "Found {} revocation{}",
        response.revocations.len(),
        plural(response.revocations.len() as u64)
    );
    for revocation in &response.revocations {
        println!("{}", revocation_line(revocation));
    }
    println!(
        "\n{} unexpired revoked credential{}",
        response.credentials.len(),
        plural(response.credentials.len() as u64)
    );
    for credential in &response.credentials {
        let name = if credential.serial.is_empty() {
            format!("jti {}", credential.jti)
        } else {
            format!("serial {}", credential.serial)
        };
        println!(
            "  {} {} (revocation {}, expires at the latest {})",
            escape_control(&name),
            escape_control(&credential.spiffe_id),
            credential.revocation_id,
            output::timestamp(credential.expires_at)
        );
    }
    println!("\nSigned list:\n{}", response.signed_list);
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}
