//! Printing results and errors for people and for scripts.

use std::fmt::Write as _;

use clap::ValueEnum;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use twid_proto::types::{Entry, Selector};

/// Output format of commands that print records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Human-readable text.
    #[default]
    Pretty,
    /// One JSON document.
    Json,
}

/// Formats an error and its causes on one line, skipping causes whose text the previous
/// message already contains.
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Turns a gRPC status into an error that shows only its message, which our servers write
/// for people. A status without a message comes from the gRPC layer, most often because the
/// socket serves another API, so the error names the code and, for that case, the fix.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    if !status.message().is_empty() {
        return anyhow::anyhow!("{}", status.message());
    }
    match status.code() {
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "the socket does not serve this call (gRPC status Unimplemented): admin commands \
             need the server's admin socket, and `twid api` commands the agent's Workload API \
             socket"
        ),
        code => anyhow::anyhow!("the call failed with gRPC status {code:?} and no message"),
    }
}

/// Formats Unix seconds as RFC 3339, or `never` for 0.
pub(crate) fn timestamp(seconds: i64) -> String {
    if seconds == 0 {
        return "never".to_owned();
    }
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| seconds.to_string())
}

fn selector_text(selector: &Selector) -> String {
    format!("{}:{}", selector.r#type, selector.value)
}

/// Formats an entry as SPIRE's `entry show` does.
pub(crate) fn entry_text(entry: &Entry) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "Entry ID         : {}", entry.id);
    let _ = writeln!(text, "SPIFFE ID        : {}", entry.spiffe_id);
    let _ = writeln!(text, "Parent ID        : {}", entry.parent_id);
    let _ = writeln!(text, "Revision         : {}", entry.revision_number);
    let _ = writeln!(text, "X509-SVID TTL    : {}", ttl_text(entry.x509_svid_ttl));
    let _ = writeln!(text, "JWT-SVID TTL     : {}", ttl_text(entry.jwt_svid_ttl));
    let _ = writeln!(text, "Expiration time  : {}", timestamp(entry.expires_at));
    for selector in &entry.selectors {
        let _ = writeln!(text, "Selector         : {}", selector_text(selector));
    }
    for dns in &entry.dns_names {
        let _ = writeln!(text, "DNS name         : {dns}");
    }
    for td in &entry.federates_with {
        let _ = writeln!(text, "FederatesWith    : {td}");
    }
    if entry.admin {
        let _ = writeln!(text, "Admin            : true");
    }
    if entry.downstream {
        let _ = writeln!(text, "Downstream       : true");
    }
    if !entry.hint.is_empty() {
        let _ = writeln!(text, "Hint             : {}", entry.hint);
    }
    text
}

fn ttl_text(seconds: i64) -> String {
    if seconds == 0 {
        "default".to_owned()
    } else {
        seconds.to_string()
    }
}

/// Converts an entry to the JSON layout of `--output json`.
pub(crate) fn entry_json(entry: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": entry.selectors.iter().map(|s| serde_json::json!({
            "type": s.r#type, "value": s.value,
        })).collect::<Vec<_>>(),
        "x509_svid_ttl": entry.x509_svid_ttl,
        "jwt_svid_ttl": entry.jwt_svid_ttl,
        "dns_names": entry.dns_names,
        "federates_with": entry.federates_with,
        "admin": entry.admin,
        "downstream": entry.downstream,
        "hint": entry.hint,
        "expires_at": entry.expires_at,
        "created_at": entry.created_at,
        "revision_number": entry.revision_number,
    })
}

/// Prints entries in the chosen format.
pub(crate) fn print_entries(entries: &[Entry], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            let list: Vec<_> = entries.iter().map(entry_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "entries": list }))?
            );
        }
        OutputFormat::Pretty => {
            println!(
                "Found {} entr{}",
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" }
            );
            for entry in entries {
                println!("{}", entry_text(entry));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_error_keeps_message() {
        let error = super::status_error(tonic::Status::permission_denied("no identity for uid 7"));
        assert_eq!(error.to_string(), "no identity for uid 7");
    }

    #[test]
    fn status_error_explains_unimplemented() {
        let error = super::status_error(tonic::Status::unimplemented(""));
        let text = error.to_string();
        assert!(text.contains("gRPC status Unimplemented"), "{text}");
        assert!(text.contains("admin socket"), "{text}");
    }

    #[test]
    fn status_error_names_code_without_message() {
        let error = super::status_error(tonic::Status::unavailable(""));
        assert_eq!(
            error.to_string(),
            "the call failed with gRPC status Unavailable and no message"
        );
    }
}
