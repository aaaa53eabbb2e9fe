//! Conversions between the wire messages of the node and admin APIs and the domain types.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;
use twid_proto::types as pb;
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{AttestedAgent, NewEntry, RegistrationEntry, Selector};

/// Returns the current time in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// Converts a time to Unix seconds, clamping times before 1970 to 0.
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 in UTC for messages, or as the number when out of range.
pub(crate) fn expiry_text(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} (Unix seconds)"))
}

pub(crate) fn selector_to_pb(selector: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: selector.kind.clone(),
        value: selector.value.clone(),
    }
}

pub(crate) fn selector_from_pb(selector: &pb::Selector) -> Result<Selector, Status> {
    if selector.r#type.is_empty() || selector.value.is_empty() || selector.r#type.contains(':') {
        return Err(Status::invalid_argument(format!(
            "invalid selector {:?}: expected <type>:<value>, for example unix:uid:1000",
            format!("{}:{}", selector.r#type, selector.value)
        )));
    }
    Ok(Selector::new(
        selector.r#type.clone(),
        selector.value.clone(),
    ))
}

pub(crate) fn entry_to_pb(entry: &RegistrationEntry) -> pb::Entry {
    pb::Entry {
        id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.to_string(),
        parent_id: entry.parent_id.to_string(),
        selectors: entry.selectors.iter().map(selector_to_pb).collect(),
        x509_svid_ttl: entry.x509_svid_ttl,
        jwt_svid_ttl: entry.jwt_svid_ttl,
        dns_names: entry.dns_names.clone(),
        federates_with: entry
            .federates_with
            .iter()
            .map(|td| td.name().to_owned())
            .collect(),
        admin: entry.admin,
        downstream: entry.downstream,
        hint: entry.hint.clone(),
        expires_at: entry.expires_at.unwrap_or(0),
        created_at: entry.created_at,
        revision_number: entry.revision_number,
    }
}

fn parse_id(field: &str, value: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(value)
        .map_err(|error| Status::invalid_argument(format!("invalid {field} {value:?}: {error}")))
}

/// Converts a requested entry to a validated, normalized [`NewEntry`] of `trust_domain`.
pub(crate) fn new_entry_from_pb(
    entry: &pb::Entry,
    trust_domain: &TrustDomain,
) -> Result<NewEntry, Status> {
    let selectors = entry
        .selectors
        .iter()
        .map(selector_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let federates_with = entry
        .federates_with
        .iter()
        .map(|name| {
            TrustDomain::new(name).map_err(|error| {
                Status::invalid_argument(format!("invalid federates_with {name:?}: {error}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut new = NewEntry::new(
        parse_id("spiffe_id", &entry.spiffe_id)?,
        parse_id("parent_id", &entry.parent_id)?,
        selectors,
    );
    new.x509_svid_ttl = entry.x509_svid_ttl;
    new.jwt_svid_ttl = entry.jwt_svid_ttl;
    new.dns_names = entry.dns_names.clone();
    new.federates_with = federates_with;
    new.admin = entry.admin;
    new.downstream = entry.downstream;
    new.hint = entry.hint.clone();
    new.expires_at = (entry.expires_at != 0).then_some(entry.expires_at);
    new.normalize();
    new.validate(trust_domain)
        .map_err(|error| Status::invalid_argument(error.to_string()))?;
    Ok(new)
}

pub(crate) fn agent_to_pb(agent: &AttestedAgent) -> pb::Agent {
    pb::Agent {
        spiffe_id: agent.spiffe_id.to_string(),
        attestation_type: agent.attestation_type.clone(),
        x509_svid_serial: agent.x509_svid_serial.clone(),
        x509_svid_expires_at: agent.x509_svid_expires_at,
        selectors: agent.selectors.iter().map(selector_to_pb).collect(),
        banned: agent.banned,
        attested_at: agent.attested_at,
    }
}

#[cfg(test)]
mod tests {
    use super::expiry_text;

    #[test]
    fn expiry_text_formats_rfc3339() {
        assert_eq!(expiry_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(expiry_text(1_800_000_000), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn expiry_text_out_of_range() {
        assert_eq!(
            expiry_text(i64::MAX),
            format!("{} (Unix seconds)", i64::MAX)
        );
    }
}
