//! `twid localauthority x509|jwt show|prepare|activate|taint|revoke`: manual rotation of the
//! trust domain's X.509 authorities and JWT keys, with the verbs and rules of SPIRE's
//! `spire-server localauthority`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use twid_proto::admin::{
    ListLocalAuthoritiesRequest, LocalAuthority, LocalAuthorityKind, LocalAuthorityRequest,
    PrepareLocalAuthorityRequest, UpstreamAuthority,
};

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum LocalAuthorityCommand {
    /// Manage the X.509 authorities (CAs). An authority ID is a subject key identifier in hex.
    #[command(subcommand)]
    X509(StepCommand),
    /// Manage the JWT signing keys. An authority ID is a key ID (`kid`).
    #[command(subcommand)]
    Jwt(StepCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum StepCommand {
    /// Show the active, prepared and old authorities, and for x509 the upstream CA that signs
    /// them when `UpstreamAuthority "disk"` is configured.
    Show(CommonArgs),
    /// Create a new prepared authority: published in the bundle, not signing yet. It replaces
    /// an existing prepared authority.
    Prepare(CommonArgs),
    /// Make the prepared authority active. The active one becomes old and stays in the bundle.
    Activate(AuthorityArgs),
    /// Mark the old authority tainted: agents replace every SVID it signed.
    Taint(AuthorityArgs),
    /// Remove a tainted authority from the bundle. Under an upstream CA the bundle contains
    /// the upstream roots instead, so it stays the same and the output says so.
    Revoke(AuthorityArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AuthorityArgs {
    /// The authority ID, as `show` prints it.
    #[arg(long)]
    authority_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: LocalAuthorityCommand) -> anyhow::Result<()> {
    let (kind, step) = match command {
        LocalAuthorityCommand::X509(step) => (LocalAuthorityKind::X509, step),
        LocalAuthorityCommand::Jwt(step) => (LocalAuthorityKind::Jwt, step),
    };
    match step {
        StepCommand::Show(common) => show(kind, &common).await,
        StepCommand::Prepare(common) => {
            let mut admin = client::admin(&common.socket_path).await?;
            let response = admin
                .prepare_local_authority(PrepareLocalAuthorityRequest { kind: kind.into() })
                .await
                .map_err(output::status_error)?
                .into_inner();
            print_changed(
                kind,
                "Prepared",
                response.authority.as_ref(),
                &response.notice,
                common.output,
            )
        }
        StepCommand::Activate(args) => step_call(kind, Verb::Activate, args).await,
        StepCommand::Taint(args) => step_call(kind, Verb::Taint, args).await,
        StepCommand::Revoke(args) => step_call(kind, Verb::Revoke, args).await,
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Activate,
    Taint,
    Revoke,
}

async fn step_call(
    kind: LocalAuthorityKind,
    verb: Verb,
    args: AuthorityArgs,
) -> anyhow::Result<()> {
    let mut admin = client::admin(&args.common.socket_path).await?;
    let request = LocalAuthorityRequest {
        kind: kind.into(),
        authority_id: args.authority_id,
    };
    let (call, heading) = match verb {
        Verb::Activate => (admin.activate_local_authority(request).await, "Activated"),
        Verb::Taint => (admin.taint_local_authority(request).await, "Tainted"),
        Verb::Revoke => (admin.revoke_local_authority(request).await, "Revoked"),
    };
    let response = call.map_err(output::status_error)?.into_inner();
    print_changed(
        kind,
        heading,
        response.authority.as_ref(),
        &response.notice,
        args.common.output,
    )
}

async fn show(kind: LocalAuthorityKind, common: &CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let response = admin
        .list_local_authorities(ListLocalAuthoritiesRequest { kind: kind.into() })
        .await
        .map_err(output::status_error)?
        .into_inner();
    let authorities = &response.authorities;
    match common.output {
        OutputFormat::Json => {
            let json = json!({
                "instance_id": response.instance_id,
                "upstream": response.upstream.as_ref().map(upstream_json),
                "active": by_state(authorities, "active"),
                "prepared": by_state(authorities, "prepared"),
                "old": by_state(authorities, "old"),
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        OutputFormat::Pretty => {
            println!("Server instance: {}", response.instance_id);
            if let Some(upstream) = &response.upstream {
                println!("{}", upstream_line(upstream));
            }
            println!();
            for (heading, state) in [
                ("Active", "active"),
                ("Prepared", "prepared"),
                ("Old", "old"),
            ] {
                println!("{heading} {}:", noun(kind));
                let matching: Vec<&LocalAuthority> = authorities
                    .iter()
                    .filter(|authority| authority.state == state)
                    .collect();
                if matching.is_empty() {
                    println!("  No {state} {} found", noun(kind));
                }
                for authority in matching {
                    print_authority(authority);
                }
                println!();
            }
        }
    }
    Ok(())
}

fn by_state(authorities: &[LocalAuthority], state: &str) -> Vec<Value> {
    authorities
        .iter()
        .filter(|authority| authority.state == state)
        .map(authority_json)
        .collect()
}

fn authority_json(authority: &LocalAuthority) -> Value {
    json!({
        "authority_id": authority.authority_id,
        "state": authority.state,
        "expires_at": authority.expires_at,
        "tainted": authority.tainted,
    })
}

fn upstream_json(upstream: &UpstreamAuthority) -> Value {
    json!({
        "authority_id": upstream.authority_id,
        "subject": upstream.subject,
        "expires_at": upstream.expires_at,
        "roots": upstream.roots,
        "cert_file_path": upstream.cert_file_path,
    })
}

/// Formats the upstream CA as one line: the X.509 authorities above are intermediates under
/// it, and the bundle contains its roots.
fn upstream_line(upstream: &UpstreamAuthority) -> String {
    format!(
        "Upstream authority: {} ({}; expires at {}; {} root(s) in the bundle; from {})",
        upstream.authority_id,
        upstream.subject,
        output::timestamp(upstream.expires_at),
        upstream.roots,
        upstream.cert_file_path
    )
}

fn print_authority(authority: &LocalAuthority) {
    println!("  Authority ID: {}", authority.authority_id);
    println!("  Expires at: {}", output::timestamp(authority.expires_at));
    println!("  Tainted: {}", authority.tainted);
}

fn print_changed(
    kind: LocalAuthorityKind,
    heading: &str,
    authority: Option<&LocalAuthority>,
    notice: &str,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let authority = authority.ok_or_else(|| anyhow::anyhow!("the server returned no authority"))?;
    match format {
        OutputFormat::Json => {
            let mut json = authority_json(authority);
            if !notice.is_empty() {
                json["notice"] = Value::from(notice);
            }
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        OutputFormat::Pretty => {
            println!("{heading} {}:", noun(kind));
            print_authority(authority);
            if !notice.is_empty() {
                println!();
                println!("Note: {notice}");
            }
        }
    }
    Ok(())
}

fn noun(kind: LocalAuthorityKind) -> &'static str {
    match kind {
        LocalAuthorityKind::Jwt => "JWT authority",
        _ => "X.509 authority",
    }
}
