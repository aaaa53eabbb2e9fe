//! `twid log show` and `twid log verify`: read and check the server's issuance log, the
//! hash-chained record of every SVID the server issued and every request it rejected.

use std::borrow::Cow;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use twid_proto::admin::{
    GetIssuanceRecordRequest, IssuanceRecord, ListIssuanceRecordsRequest, VerifyIssuanceLogRequest,
    VerifyIssuanceLogResponse, get_issuance_record_request,
};

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Show issuance log records: one by X.509 serial number or JWT ID, or a range by
    /// position.
    Show(ShowArgs),
    /// Check every record's hash chain and every checkpoint signature. Exits with status 1
    /// when the log was altered.
    Verify(CommonArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Show the newest record of the X.509-SVID with this serial number, in hex with or
    /// without colons.
    #[arg(long, conflicts_with_all = ["jti", "from", "limit"])]
    serial: Option<String>,
    /// Show the newest record of the JWT-SVID with this `jti` claim.
    #[arg(long, conflicts_with_all = ["from", "limit"])]
    jti: Option<String>,
    /// Show records from this position on, where 0 is the first record.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Maximum number of records to show from --from, at least 1. The server returns at most
    /// 1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Show(args) => show(args).await,
        LogCommand::Verify(common) => verify(common).await,
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let key = match (&args.serial, &args.jti) {
        (Some(serial), _) => Some(get_issuance_record_request::Key::Serial(
            serial.replace(':', ""),
        )),
        (None, Some(jti)) => Some(get_issuance_record_request::Key::Jti(jti.clone())),
        (None, None) => None,
    };
    let mut admin = client::admin(&args.common.socket_path).await?;
    let Some(key) = key else {
        let records = admin
            .list_issuance_records(ListIssuanceRecordsRequest {
                from_seq: args.from,
                limit: args.limit,
            })
            .await
            .map_err(output::status_error)?
            .into_inner()
            .records;
        return print_records(&records, &args);
    };
    let record = admin
        .get_issuance_record(GetIssuanceRecordRequest { key: Some(key) })
        .await
        .map_err(output::status_error)?
        .into_inner();
    match args.common.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&record_json(&record))?),
        OutputFormat::Pretty => print_record(&record),
    }
    Ok(())
}

/// Prints one page of records. In the pretty layout a full page ends with the `--from` value
/// of the next page, because more records may follow.
fn print_records(records: &[IssuanceRecord], args: &ShowArgs) -> anyhow::Result<()> {
    match args.common.output {
        OutputFormat::Json => {
            let list: Vec<_> = records.iter().map(record_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "records": list }))?
            );
        }
        OutputFormat::Pretty => {
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                println!("No records at position {} or later", args.from);
                return Ok(());
            };
            let count = records.len();
            let plural = if count == 1 { "" } else { "s" };
            println!(
                "Showing {count} record{plural}, positions {} to {}\n",
                first.seq, last.seq
            );
            records.iter().for_each(print_record);
            if u32::try_from(count).is_ok_and(|count| count >= args.limit) {
                println!(
                    "More records may follow: pass --from {} for the next page",
                    last.seq.saturating_add(1)
                );
            }
        }
    }
    Ok(())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC with exactly three fraction
/// digits, so that times in a list line up. The `time` crate's RFC 3339 format drops trailing
/// zeros of the fraction.
fn timestamp_ms(ms: i64) -> String {
    let millis = ms.rem_euclid(1000);
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .and_then(|text| {
            text.strip_suffix('Z')
                .map(|seconds| format!("{seconds}.{millis:03}Z"))
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Returns `text` with every control character (C0, DEL, C1) and every bidirectional
/// formatting character replaced by its `\u{..}` escape, so that printing it cannot move the
/// cursor, clear the terminal or reorder the text around it.
pub(crate) fn escape_control(text: &str) -> Cow<'_, str> {
    let needs_escape = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// Prints a record in the pretty layout. Every text field comes from the server and may
/// contain caller-chosen text, so each is escaped.
fn print_record(record: &IssuanceRecord) {
    let optional = |label: &str, value: &str| {
        if !value.is_empty() {
            println!("{label:<19}: {}", escape_control(value));
        }
    };
    println!("{:<19}: {}", "Position", record.seq);
    println!("{:<19}: {}", "Kind", escape_control(&record.kind));
    println!("{:<19}: {}", "Time", timestamp_ms(record.time_unix_ms));
    optional("Serial number", &record.serial);
    optional("JWT ID", &record.jti);
    optional("SPIFFE ID", &record.spiffe_id);
    optional("Entry ID", &record.entry_id);
    optional("Agent ID", &record.agent_id);
    for selector in &record.selectors {
        println!(
            "{:<19}: {}:{}",
            "Selector",
            escape_control(&selector.r#type),
            escape_control(&selector.value)
        );
    }
    optional("Key fingerprint", &hex::encode(&record.key_fingerprint));
    optional("Evidence digest", &hex::encode(&record.evidence_digest));
    optional("Attestation result", &record.attestation_result);
    optional("Policy version", &record.policy_version);
    optional("Refusal reason", &record.refusal_reason);
    println!("{:<19}: {}", "Hash", hex::encode(&record.hash));
    println!(
        "{:<19}: {}",
        "Previous hash",
        hex::encode(&record.prev_hash)
    );
    println!();
}

/// Converts a record to the JSON layout of `--output json`, with null for absent fields.
fn record_json(record: &IssuanceRecord) -> Value {
    let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    let digest = |value: &[u8]| (!value.is_empty()).then(|| hex::encode(value));
    let attestation_result = text(&record.attestation_result)
        .map(|text| serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)));
    json!({
        "seq": record.seq,
        "kind": record.kind,
        "time_unix_ms": record.time_unix_ms,
        "time": timestamp_ms(record.time_unix_ms),
        "serial": text(&record.serial),
        "jti": text(&record.jti),
        "spiffe_id": text(&record.spiffe_id),
        "entry_id": text(&record.entry_id),
        "agent_id": text(&record.agent_id),
        "selectors": record.selectors.iter().map(|s| json!({
            "type": s.r#type, "value": s.value,
        })).collect::<Vec<_>>(),
        "key_fingerprint": digest(&record.key_fingerprint),
        "evidence_digest": digest(&record.evidence_digest),
        "attestation_result": attestation_result,
        "policy_version": text(&record.policy_version),
        "refusal_reason": text(&record.refusal_reason),
        "hash": hex::encode(&record.hash),
        "prev_hash": hex::encode(&record.prev_hash),
    })
}

async fn verify(common: CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let report = admin
        .verify_issuance_log(VerifyIssuanceLogRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner();
    match common.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report_json(&report))?),
        OutputFormat::Pretty if report.alteration.is_none() => {
            println!("Issuance log intact: {}", intact_summary(&report));
        }
        OutputFormat::Pretty => {}
    }
    if let Some(alteration) = &report.alteration {
        bail!(
            "issuance log altered at position {}: {}: {}",
            alteration.seq,
            escape_control(&alteration.kind),
            escape_control(&alteration.detail)
        );
    }
    Ok(())
}

/// Describes an intact log's records and checkpoints. A young log has no checkpoint yet, and
/// then the summary claims no verified signatures.
fn intact_summary(report: &VerifyIssuanceLogResponse) -> String {
    let checkpoints = match (report.checkpoints, report.signatures_checked) {
        (0, _) => "no checkpoints".to_owned(),
        (1, true) => "1 checkpoint with a verified signature".to_owned(),
        (1, false) => "1 checkpoint, signature not checked".to_owned(),
        (count, true) => format!("{count} checkpoints with verified signatures"),
        (count, false) => format!("{count} checkpoints, signatures not checked"),
    };
    format!("{} records, {checkpoints}", report.records)
}

fn report_json(report: &VerifyIssuanceLogResponse) -> Value {
    let alteration = report.alteration.as_ref().map(|alteration| {
        json!({
            "seq": alteration.seq,
            "kind": alteration.kind,
            "original_seq": (alteration.kind == "reordered").then_some(alteration.original_seq),
            "detail": alteration.detail,
        })
    });
    json!({
        "intact": report.alteration.is_none(),
        // Before an alteration, only the records and checkpoints ahead of it count as intact.
        "intact_records": report.records,
        "intact_checkpoints": report.checkpoints,
        "signatures_checked": report.signatures_checked,
        "alteration": alteration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_control_replaces_escapes() {
        assert_eq!(
            escape_control("a\u{1b}[2J\r\n\u{7f}\u{85}\u{202e}é"),
            "a\\u{1b}[2J\\u{d}\\u{a}\\u{7f}\\u{85}\\u{202e}é"
        );
    }

    #[test]
    fn timestamp_ms_keeps_three_digits() {
        assert_eq!(timestamp_ms(1_700_000_000_360), "2023-11-14T22:13:20.360Z");
        assert_eq!(timestamp_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(timestamp_ms(1_700_000_000_007), "2023-11-14T22:13:20.007Z");
        assert_eq!(timestamp_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn intact_summary_counts_checkpoints() {
        let report = |checkpoints, signatures_checked| VerifyIssuanceLogResponse {
            records: 2000,
            checkpoints,
            signatures_checked,
            alteration: None,
        };
        let cases = [
            (0, true, "2000 records, no checkpoints"),
            (
                2,
                true,
                "2000 records, 2 checkpoints with verified signatures",
            ),
            (
                1,
                true,
                "2000 records, 1 checkpoint with a verified signature",
            ),
            (
                1,
                false,
                "2000 records, 1 checkpoint, signature not checked",
            ),
            (
                2,
                false,
                "2000 records, 2 checkpoints, signatures not checked",
            ),
        ];
        for (checkpoints, signatures_checked, expected) in cases {
            assert_eq!(
                intact_summary(&report(checkpoints, signatures_checked)),
                expected
            );
        }
    }

    #[test]
    fn escape_control_borrows_plain_text() {
        assert!(matches!(
            escape_control("spiffe://example.org/w"),
            Cow::Borrowed(_)
        ));
    }
}
