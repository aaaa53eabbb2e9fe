//! The server's data model: registration entries, selectors and attested agents, the rules
//! an entry must follow, and which entries an agent is authorized for. No I/O.

#![forbid(unsafe_code)]

mod agent;
mod authorize;
mod digest;
mod entry;
mod selector;

pub use agent::AttestedAgent;
pub use authorize::{
    EVIDENCE_SELECTOR_TYPES, agent_id_for_join_token, authorized_entries, has_evidence_selector,
    node_alias_ids, server_id,
};
pub use digest::EntriesDigest;
pub use entry::{
    EntryError, MAX_HINT_LEN, MAX_LIST_LEN, MAX_SELECTOR_LEN, NewEntry, RegistrationEntry,
};
pub use selector::{Selector, SelectorError, selectors_match};
