//! Registration entries and the rules a new or updated entry must follow.
//!
//! Invariant: an entry accepted by [`NewEntry::validate`] after [`NewEntry::normalize`] names a
//! workload path in the server's trust domain, has at least one selector, and has its
//! selectors sorted without duplicates, so that equal entries compare equal.

use serde::{Deserialize, Serialize};
use twid_spiffe::{SpiffeId, TrustDomain};

use crate::Selector;

/// The maximum length of an entry hint in bytes.
pub const MAX_HINT_LEN: usize = 1024;

/// Maximum number of selectors, and of DNS names, on one entry. Entries travel to agents in
/// every sync, so unbounded lists would let one entry push a sync over the message size limit.
pub const MAX_LIST_LEN: usize = 64;

/// Maximum length in bytes of one selector in its `type:value` form.
pub const MAX_SELECTOR_LEN: usize = 1024;

/// A stored registration entry: which SPIFFE ID a workload (or downstream node) matching the
/// selectors gets, under which parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// The entry ID assigned by the server (a UUID).
    pub id: String,
    /// The SPIFFE ID issued to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent or node alias under which the entry applies.
    pub parent_id: SpiffeId,
    /// The selectors a workload must all have.
    pub selectors: Vec<Selector>,
    /// X.509-SVID lifetime in seconds, where 0 means the server default.
    pub x509_svid_ttl: i64,
    /// JWT-SVID lifetime in seconds, where 0 means the server default.
    pub jwt_svid_ttl: i64,
    /// DNS SANs for the X.509-SVID. SPIRE also puts the first one in the subject CN.
    pub dns_names: Vec<String>,
    /// Foreign trust domains whose bundles the workload also receives.
    pub federates_with: Vec<TrustDomain>,
    /// Whether the workload may call the admin API.
    pub admin: bool,
    /// Whether the workload is a downstream server that may mint its own SVIDs.
    pub downstream: bool,
    /// A free-form label that workloads may use to choose among their SVIDs.
    pub hint: String,
    /// Expiry time in unix seconds, or `None` for an entry that never expires.
    pub expires_at: Option<i64>,
    /// Creation time in unix seconds.
    pub created_at: i64,
    /// Incremented on every update of the entry.
    pub revision_number: i64,
}

/// The fields of an entry that an operator supplies when creating or updating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    /// See [`RegistrationEntry::spiffe_id`].
    pub spiffe_id: SpiffeId,
    /// See [`RegistrationEntry::parent_id`].
    pub parent_id: SpiffeId,
    /// See [`RegistrationEntry::selectors`].
    pub selectors: Vec<Selector>,
    /// See [`RegistrationEntry::x509_svid_ttl`].
    pub x509_svid_ttl: i64,
    /// See [`RegistrationEntry::jwt_svid_ttl`].
    pub jwt_svid_ttl: i64,
    /// See [`RegistrationEntry::dns_names`].
    pub dns_names: Vec<String>,
    /// See [`RegistrationEntry::federates_with`].
    pub federates_with: Vec<TrustDomain>,
    /// See [`RegistrationEntry::admin`].
    pub admin: bool,
    /// See [`RegistrationEntry::downstream`].
    pub downstream: bool,
    /// See [`RegistrationEntry::hint`].
    pub hint: String,
    /// See [`RegistrationEntry::expires_at`].
    pub expires_at: Option<i64>,
}

/// A rule of [`NewEntry::validate`] that an entry breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The SPIFFE ID is in another trust domain than the server's.
    #[error(
        "spiffe id {id} is in trust domain {id_trust_domain}, not in the server's trust domain {server_trust_domain}"
    )]
    ForeignSpiffeId {
        /// The rejected ID.
        id: SpiffeId,
        /// The trust domain the ID names.
        id_trust_domain: TrustDomain,
        /// The server's trust domain.
        server_trust_domain: TrustDomain,
    },
    /// The parent ID is in another trust domain than the server's.
    #[error(
        "parent id {id} is in trust domain {id_trust_domain}, not in the server's trust domain {server_trust_domain}"
    )]
    ForeignParentId {
        /// The rejected ID.
        id: SpiffeId,
        /// The trust domain the ID names.
        id_trust_domain: TrustDomain,
        /// The server's trust domain.
        server_trust_domain: TrustDomain,
    },
    /// The SPIFFE ID is a bare trust domain ID.
    #[error("spiffe id {0} has no path; give the workload a path such as {0}/workload")]
    EmptyPath(SpiffeId),
    /// The SPIFFE ID is in the `/spire` namespace, which holds server and agent IDs.
    #[error(
        "spiffe id {0} is in the reserved /spire namespace of server and agent IDs; choose \
         another path"
    )]
    ReservedSpiffeId(SpiffeId),
    /// A selector is longer than [`MAX_SELECTOR_LEN`]; the value is its first 64 characters.
    #[error("selector {0:?}... is longer than {max} bytes", max = MAX_SELECTOR_LEN)]
    SelectorTooLong(String),
    /// A list field has more than [`MAX_LIST_LEN`] items.
    #[error("entry has {count} {field}; at most {max} are allowed", max = MAX_LIST_LEN)]
    TooMany {
        /// The field name.
        field: &'static str,
        /// How many were given.
        count: usize,
    },
    /// The SPIFFE ID equals the parent ID.
    #[error("spiffe id {0} is also the parent id; an entry cannot be its own parent")]
    OwnParent(SpiffeId),
    /// The entry has no selectors.
    #[error("entry for {0} has no selectors; at least one is required")]
    NoSelectors(SpiffeId),
    /// A selector with an empty part or a `:` in its type.
    #[error(
        "invalid selector {0:?}; expected <type>:<value> with a non-empty type without ':' and a non-empty value"
    )]
    InvalidSelector(String),
    /// A negative TTL.
    #[error("{field} is {value}; it must be 0 (server default) or a positive number of seconds")]
    NegativeTtl {
        /// `x509_svid_ttl` or `jwt_svid_ttl`.
        field: &'static str,
        /// The rejected value.
        value: i64,
    },
    /// A DNS name that is not a valid host name.
    #[error("invalid dns name {name:?}: {reason}")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The hint is longer than [`MAX_HINT_LEN`].
    #[error("hint is {0} bytes long; the maximum is 1024")]
    HintTooLong(usize),
    /// `federates_with` lists the server's own trust domain.
    #[error(
        "federates_with lists the server's own trust domain {0}; list only foreign trust domains"
    )]
    FederatesWithOwnTrustDomain(TrustDomain),
}

impl NewEntry {
    /// Builds an entry with the given IDs and selectors and defaults for everything else.
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: Vec::new(),
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: None,
        }
    }

    /// Sorts and deduplicates the selectors and `federates_with`, and removes repeated DNS
    /// names while keeping their order (the first DNS name is significant).
    pub fn normalize(&mut self) {
        self.selectors.sort();
        self.selectors.dedup();
        self.federates_with.sort();
        self.federates_with.dedup();
        let mut seen = std::collections::HashSet::new();
        self.dns_names.retain(|name| seen.insert(name.clone()));
    }

    /// Checks the entry against the rules the server enforces before storing it.
    ///
    /// # Errors
    /// Returns the first rule broken, naming the offending value.
    pub fn validate(&self, server_trust_domain: &TrustDomain) -> Result<(), EntryError> {
        self.validate_ids(server_trust_domain)?;
        self.validate_selectors()?;
        validate_ttl("x509_svid_ttl", self.x509_svid_ttl)?;
        validate_ttl("jwt_svid_ttl", self.jwt_svid_ttl)?;
        if self.dns_names.len() > MAX_LIST_LEN {
            return Err(EntryError::TooMany {
                field: "dns names",
                count: self.dns_names.len(),
            });
        }
        for name in &self.dns_names {
            validate_dns_name(name)?;
        }
        if self.federates_with.len() > MAX_LIST_LEN {
            return Err(EntryError::TooMany {
                field: "federated trust domains",
                count: self.federates_with.len(),
            });
        }
        if self.hint.len() > MAX_HINT_LEN {
            return Err(EntryError::HintTooLong(self.hint.len()));
        }
        if let Some(own) = self
            .federates_with
            .iter()
            .find(|td| *td == server_trust_domain)
        {
            return Err(EntryError::FederatesWithOwnTrustDomain(own.clone()));
        }
        Ok(())
    }

    fn validate_ids(&self, server_td: &TrustDomain) -> Result<(), EntryError> {
        if !self.spiffe_id.is_member_of(server_td) {
            return Err(EntryError::ForeignSpiffeId {
                id: self.spiffe_id.clone(),
                id_trust_domain: self.spiffe_id.trust_domain().clone(),
                server_trust_domain: server_td.clone(),
            });
        }
        if self.spiffe_id.path().is_empty() {
            return Err(EntryError::EmptyPath(self.spiffe_id.clone()));
        }
        // As in SPIRE, only the server names IDs under /spire. An entry for the server's own
        // ID would let a workload impersonate the server to agents, and one under
        // /spire/agent would let it pose as an agent.
        let path = self.spiffe_id.path();
        if path == "/spire" || path.starts_with("/spire/") {
            return Err(EntryError::ReservedSpiffeId(self.spiffe_id.clone()));
        }
        if !self.parent_id.is_member_of(server_td) {
            return Err(EntryError::ForeignParentId {
                id: self.parent_id.clone(),
                id_trust_domain: self.parent_id.trust_domain().clone(),
                server_trust_domain: server_td.clone(),
            });
        }
        if self.spiffe_id == self.parent_id {
            return Err(EntryError::OwnParent(self.spiffe_id.clone()));
        }
        Ok(())
    }

    fn validate_selectors(&self) -> Result<(), EntryError> {
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors(self.spiffe_id.clone()));
        }
        if self.selectors.len() > MAX_LIST_LEN {
            return Err(EntryError::TooMany {
                field: "selectors",
                count: self.selectors.len(),
            });
        }
        if let Some(long) = self
            .selectors
            .iter()
            .find(|s| s.kind.len() + 1 + s.value.len() > MAX_SELECTOR_LEN)
        {
            let start: String = long.to_string().chars().take(64).collect();
            return Err(EntryError::SelectorTooLong(start));
        }
        // A ':' in the type would make the `type:value` text form parse back differently.
        let bad = self
            .selectors
            .iter()
            .find(|s| s.kind.is_empty() || s.value.is_empty() || s.kind.contains(':'));
        match bad {
            Some(s) => Err(EntryError::InvalidSelector(s.to_string())),
            None => Ok(()),
        }
    }
}

impl RegistrationEntry {
    /// Builds a stored entry from operator input and the fields the server assigns.
    pub fn from_new(id: String, new: NewEntry, created_at: i64, revision_number: i64) -> Self {
        Self {
            id,
            spiffe_id: new.spiffe_id,
            parent_id: new.parent_id,
            selectors: new.selectors,
            x509_svid_ttl: new.x509_svid_ttl,
            jwt_svid_ttl: new.jwt_svid_ttl,
            dns_names: new.dns_names,
            federates_with: new.federates_with,
            admin: new.admin,
            downstream: new.downstream,
            hint: new.hint,
            expires_at: new.expires_at,
            created_at,
            revision_number,
        }
    }

    /// Returns whether the entry has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

fn validate_ttl(field: &'static str, value: i64) -> Result<(), EntryError> {
    if value < 0 {
        return Err(EntryError::NegativeTtl { field, value });
    }
    Ok(())
}

/// Checks a DNS name against RFC 1123 host name syntax, allowing one leading `*.` label.
fn validate_dns_name(name: &str) -> Result<(), EntryError> {
    let fail = |reason| {
        Err(EntryError::InvalidDnsName {
            name: name.to_owned(),
            reason,
        })
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() {
        return fail("empty name");
    }
    if name.len() > 253 {
        return fail("longer than 253 bytes");
    }
    for label in host.split('.') {
        if let Err(reason) = check_label(label) {
            return fail(reason);
        }
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > 63 {
        return Err("label longer than 63 bytes");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("label contains a character other than a letter, digit or '-'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("label starts or ends with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
