//! `twid federation create|list|show|update|delete|refresh`: SPIFFE federation relationships
//! with foreign trust domains, with the verbs of SPIRE's `spire-server federation`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use twid_proto::admin::{
    FederationRelationship, FederationRelationshipRequest, ListFederationRelationshipsRequest,
};

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum FederationCommand {
    /// Create a relationship with a foreign trust domain.
    Create(RelationshipArgs),
    /// List every relationship.
    List(CommonArgs),
    /// Show one relationship with the state of its last refresh.
    Show(TrustDomainArgs),
    /// Replace the bundle endpoint URL and profile of a relationship.
    Update(RelationshipArgs),
    /// Delete a relationship; the foreign trust domain's stored bundle stays.
    Delete(TrustDomainArgs),
    /// Fetch the foreign trust domain's bundle from its bundle endpoint now.
    Refresh(TrustDomainArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RelationshipArgs {
    /// The foreign trust domain, such as `example.org`.
    #[arg(long, alias = "id")]
    trust_domain: String,
    /// The `https://` URL of the foreign trust domain's SPIFFE bundle endpoint.
    #[arg(long)]
    bundle_endpoint_url: String,
    /// The profile that authenticates the endpoint: `https_spiffe` (its X.509-SVID, checked against
    /// the foreign trust domain's stored bundle) or `https_web` (the web PKI roots).
    #[arg(long, value_parser = ["https_spiffe", "https_web"])]
    bundle_endpoint_profile: String,
    /// The SPIFFE ID the endpoint presents; required with `https_spiffe`.
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// A file with the foreign trust domain's first bundle (SPIFFE bundle JSON or PEM); only
    /// on create.
    #[arg(long)]
    trust_domain_bundle_path: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TrustDomainArgs {
    /// The foreign trust domain, such as `example.org`.
    #[arg(long, alias = "id")]
    trust_domain: String,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: FederationCommand) -> anyhow::Result<()> {
    match command {
        FederationCommand::Create(args) => create_or_update(args, true).await,
        FederationCommand::Update(args) => create_or_update(args, false).await,
        FederationCommand::List(common) => {
            let mut admin = client::admin(&common.socket_path).await?;
            let response = admin
                .list_federation_relationships(ListFederationRelationshipsRequest {})
                .await
                .map_err(output::status_error)?
                .into_inner();
            match common.output {
                OutputFormat::Json => {
                    let list: Vec<Value> = response
                        .relationships
                        .iter()
                        .map(relationship_json)
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({ "relationships": list }))?
                    );
                }
                OutputFormat::Pretty => {
                    let count = response.relationships.len();
                    println!(
                        "Found {count} relationship{}",
                        if count == 1 { "" } else { "s" }
                    );
                    for relationship in &response.relationships {
                        println!();
                        print!("{}", relationship_text(relationship));
                    }
                }
            }
            Ok(())
        }
        FederationCommand::Show(args) => {
            let mut admin = client::admin(&args.common.socket_path).await?;
            let relationship = admin
                .get_federation_relationship(request(&args))
                .await
                .map_err(output::status_error)?
                .into_inner();
            print_one(&relationship, args.common.output)
        }
        FederationCommand::Delete(args) => {
            let mut admin = client::admin(&args.common.socket_path).await?;
            admin
                .delete_federation_relationship(request(&args))
                .await
                .map_err(output::status_error)?;
            match args.common.output {
                OutputFormat::Json => println!("{}", json!({ "deleted": args.trust_domain })),
                OutputFormat::Pretty => println!("Deleted relationship with {}", args.trust_domain),
            }
            Ok(())
        }
        FederationCommand::Refresh(args) => {
            let mut admin = client::admin(&args.common.socket_path).await?;
            let response = admin
                .refresh_federated_bundle(request(&args))
                .await
                .map_err(output::status_error)?
                .into_inner();
            match args.common.output {
                OutputFormat::Json => println!(
                    "{}",
                    json!({
                        "trust_domain": args.trust_domain,
                        "changed": response.changed,
                        "bundle_sequence": response.bundle_sequence,
                    })
                ),
                OutputFormat::Pretty => {
                    let what = if response.changed {
                        "updated"
                    } else {
                        "unchanged"
                    };
                    println!(
                        "Bundle of {} {what} (sequence {})",
                        args.trust_domain, response.bundle_sequence
                    );
                }
            }
            Ok(())
        }
    }
}

fn request(args: &TrustDomainArgs) -> FederationRelationshipRequest {
    FederationRelationshipRequest {
        trust_domain: args.trust_domain.clone(),
    }
}

async fn create_or_update(args: RelationshipArgs, create: bool) -> anyhow::Result<()> {
    if args.bundle_endpoint_profile == "https_spiffe" && args.endpoint_spiffe_id.is_none() {
        anyhow::bail!(
            "--endpoint-spiffe-id is required with --bundle-endpoint-profile https_spiffe"
        );
    }
    let trust_domain_bundle = match &args.trust_domain_bundle_path {
        Some(_) if !create => {
            anyhow::bail!(
                "--trust-domain-bundle-path applies to create only; use `twid bundle set` to \
                 replace a stored bundle"
            )
        }
        Some(path) => std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("failed to read {}: {error}", path.display()))?,
        None => Vec::new(),
    };
    let relationship = FederationRelationship {
        trust_domain: args.trust_domain.clone(),
        bundle_endpoint_url: args.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: args.bundle_endpoint_profile.clone(),
        endpoint_spiffe_id: args.endpoint_spiffe_id.clone().unwrap_or_default(),
        trust_domain_bundle,
        ..FederationRelationship::default()
    };
    let mut admin = client::admin(&args.common.socket_path).await?;
    let stored = if create {
        admin.create_federation_relationship(relationship).await
    } else {
        admin.update_federation_relationship(relationship).await
    }
    .map_err(output::status_error)?
    .into_inner();
    print_one(&stored, args.common.output)
}

fn print_one(relationship: &FederationRelationship, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&relationship_json(relationship))?
        ),
        OutputFormat::Pretty => print!("{}", relationship_text(relationship)),
    }
    Ok(())
}

fn relationship_json(relationship: &FederationRelationship) -> Value {
    json!({
        "trust_domain": relationship.trust_domain,
        "bundle_endpoint_url": relationship.bundle_endpoint_url,
        "bundle_endpoint_profile": relationship.bundle_endpoint_profile,
        "endpoint_spiffe_id": relationship.endpoint_spiffe_id,
        "created_at": relationship.created_at,
        "updated_at": relationship.updated_at,
        "bundle_sequence": relationship.bundle_sequence,
        "last_refresh": relationship.last_refresh,
        "last_error": relationship.last_error,
        "next_refresh": relationship.next_refresh,
    })
}

fn relationship_text(relationship: &FederationRelationship) -> String {
    let mut text = format!(
        "Trust domain              : {}\nBundle endpoint URL       : {}\n\
         Bundle endpoint profile   : {}\n",
        relationship.trust_domain,
        relationship.bundle_endpoint_url,
        relationship.bundle_endpoint_profile
    );
    if !relationship.endpoint_spiffe_id.is_empty() {
        text.push_str(&format!(
            "Endpoint SPIFFE ID        : {}\n",
            relationship.endpoint_spiffe_id
        ));
    }
    let sequence = match relationship.bundle_sequence {
        0 => "none stored".to_owned(),
        sequence => sequence.to_string(),
    };
    text.push_str(&format!("Bundle sequence           : {sequence}\n"));
    if relationship.last_refresh > 0 {
        text.push_str(&format!(
            "Last refresh              : {}\n",
            output::timestamp(relationship.last_refresh)
        ));
    }
    if !relationship.last_error.is_empty() {
        text.push_str(&format!(
            "Last error                : {}\n",
            relationship.last_error
        ));
    }
    if relationship.next_refresh > 0 {
        text.push_str(&format!(
            "Next refresh              : {}\n",
            output::timestamp(relationship.next_refresh)
        ));
    }
    text
}
