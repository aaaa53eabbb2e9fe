//! `twid entry create|show|update|delete|count`: registration entries through the admin API.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use twid_proto::admin::{
    CountEntriesRequest, CreateEntryRequest, DeleteEntryRequest, GetEntryRequest,
    ListEntriesRequest, UpdateEntryRequest,
};
use twid_proto::types::{Entry, Selector};

use crate::client::{self, DEFAULT_SERVER_SOCKET};
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum EntryCommand {
    /// Create a registration entry.
    Create(EntryFields),
    /// Show entries, all of them or those matching the filters.
    Show(ShowArgs),
    /// Replace every field of an existing entry.
    Update(UpdateArgs),
    /// Delete an entry.
    Delete(DeleteArgs),
    /// Print the number of entries.
    Count(CommonArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Path of the server's admin API socket.
    #[arg(long, default_value = DEFAULT_SERVER_SOCKET)]
    pub socket_path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct EntryFields {
    /// The SPIFFE ID that workloads matching this entry receive.
    #[arg(long)]
    spiffe_id: String,
    /// The SPIFFE ID of the agent (or alias) that may issue this entry's SVIDs.
    #[arg(long)]
    parent_id: String,
    /// A selector as <type>:<value>, for example unix:uid:1000; repeat for several.
    #[arg(long = "selector", required = true)]
    selectors: Vec<String>,
    /// X.509-SVID lifetime in seconds or as a duration (1h); 0 uses the server default.
    #[arg(long, value_parser = super::parse_ttl)]
    x509_svid_ttl: Option<std::time::Duration>,
    /// JWT-SVID lifetime in seconds or as a duration (5m); 0 uses the server default.
    #[arg(long, value_parser = super::parse_ttl)]
    jwt_svid_ttl: Option<std::time::Duration>,
    /// A DNS name for the X.509-SVID; repeat for several.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// A trust domain whose bundle this entry's workloads receive; repeat for several.
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// Grant the workload admin rights on the server APIs.
    #[arg(long)]
    admin: bool,
    /// Mark the entry as a downstream (nested) server.
    #[arg(long)]
    downstream: bool,
    /// A label that lets a workload tell its SVIDs apart.
    #[arg(long, default_value = "")]
    hint: String,
    /// Expiry of the entry itself, in Unix seconds; 0 means never.
    #[arg(long, default_value_t = 0)]
    entry_expiry: i64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Show only the entry with this ID.
    #[arg(long)]
    entry_id: Option<String>,
    /// Show only entries with this SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Show only entries with this parent ID.
    #[arg(long)]
    parent_id: Option<String>,
    /// Show only entries that have this selector; repeat to require several.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// ID of the entry to replace.
    #[arg(long)]
    entry_id: String,
    #[command(flatten)]
    fields: EntryFields,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// ID of the entry to delete.
    #[arg(long)]
    entry_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: EntryCommand) -> anyhow::Result<()> {
    match command {
        EntryCommand::Create(fields) => create(fields).await,
        EntryCommand::Show(args) => show(args).await,
        EntryCommand::Update(args) => update(args).await,
        EntryCommand::Delete(args) => delete(args).await,
        EntryCommand::Count(common) => count(common).await,
    }
}

/// Parses selectors locally so a typo fails before anything reaches the server.
fn parse_selectors(texts: &[String]) -> anyhow::Result<Vec<Selector>> {
    texts
        .iter()
        .map(|text| {
            let selector = twid_types::Selector::parse(text)?;
            Ok(Selector {
                r#type: selector.kind,
                value: selector.value,
            })
        })
        .collect()
}

fn entry_from_fields(fields: &EntryFields, id: String) -> anyhow::Result<Entry> {
    twid_spiffe::SpiffeId::new(&fields.spiffe_id)
        .with_context(|| format!("invalid --spiffe-id {:?}", fields.spiffe_id))?;
    twid_spiffe::SpiffeId::new(&fields.parent_id)
        .with_context(|| format!("invalid --parent-id {:?}", fields.parent_id))?;
    Ok(Entry {
        id,
        spiffe_id: fields.spiffe_id.clone(),
        parent_id: fields.parent_id.clone(),
        selectors: parse_selectors(&fields.selectors)?,
        x509_svid_ttl: seconds(fields.x509_svid_ttl),
        jwt_svid_ttl: seconds(fields.jwt_svid_ttl),
        dns_names: fields.dns_names.clone(),
        federates_with: fields.federates_with.clone(),
        admin: fields.admin,
        downstream: fields.downstream,
        hint: fields.hint.clone(),
        expires_at: fields.entry_expiry,
        created_at: 0,
        revision_number: 0,
    })
}

fn seconds(ttl: Option<std::time::Duration>) -> i64 {
    ttl.map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

async fn create(fields: EntryFields) -> anyhow::Result<()> {
    let entry = entry_from_fields(&fields, String::new())?;
    let mut admin = client::admin(&fields.common.socket_path).await?;
    let created = admin
        .create_entry(CreateEntryRequest { entry: Some(entry) })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match fields.common.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&output::entry_json(&created))?
        ),
        OutputFormat::Pretty => println!("{}", output::entry_text(&created)),
    }
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&args.common.socket_path).await?;
    let entries = if let Some(id) = args.entry_id {
        let entry = admin
            .get_entry(GetEntryRequest { id })
            .await
            .map_err(output::status_error)?
            .into_inner();
        vec![entry]
    } else {
        let request = ListEntriesRequest {
            spiffe_id: args.spiffe_id.unwrap_or_default(),
            parent_id: args.parent_id.unwrap_or_default(),
            selectors: parse_selectors(&args.selectors)?,
        };
        admin
            .list_entries(request)
            .await
            .map_err(output::status_error)?
            .into_inner()
            .entries
    };
    output::print_entries(&entries, args.common.output)
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let entry = entry_from_fields(&args.fields, args.entry_id)?;
    let mut admin = client::admin(&args.fields.common.socket_path).await?;
    let updated = admin
        .update_entry(UpdateEntryRequest { entry: Some(entry) })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match args.fields.common.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&output::entry_json(&updated))?
        ),
        OutputFormat::Pretty => println!("{}", output::entry_text(&updated)),
    }
    Ok(())
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&args.common.socket_path).await?;
    admin
        .delete_entry(DeleteEntryRequest {
            id: args.entry_id.clone(),
        })
        .await
        .map_err(output::status_error)?;
    match args.common.output {
        OutputFormat::Json => println!("{}", serde_json::json!({ "deleted": args.entry_id })),
        OutputFormat::Pretty => println!("Deleted entry with ID: {}", args.entry_id),
    }
    Ok(())
}

async fn count(common: CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let count = admin
        .count_entries(CountEntriesRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner()
        .count;
    match common.output {
        OutputFormat::Json => println!("{}", serde_json::json!({ "count": count })),
        OutputFormat::Pretty => println!("{count} registration entries"),
    }
    Ok(())
}
