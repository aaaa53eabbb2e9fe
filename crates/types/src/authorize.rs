//! Which registration entries an agent may obtain SVIDs for, and the well-known server and
//! agent IDs that rule depends on.

use std::collections::{HashMap, HashSet};

use twid_spiffe::{IdError, SpiffeId, TrustDomain};

use crate::{RegistrationEntry, Selector, selectors_match};

/// Returns the server's SPIFFE ID, `spiffe://<td>/spire/server`.
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    td.id_with_path("/spire/server")
        .expect("a fixed, valid path appended to a valid trust domain must parse")
}

/// Returns the ID of an agent attested with a join token,
/// `spiffe://<td>/spire/agent/join_token/<token>`.
///
/// # Errors
/// Returns the SPIFFE ID rule the token breaks, for example a character other than a letter,
/// digit, `.`, `-` or `_`.
pub fn agent_id_for_join_token(td: &TrustDomain, token: &str) -> Result<SpiffeId, IdError> {
    td.id_with_path(&format!("/spire/agent/join_token/{token}"))
}

/// Selector types of hardware evidence claims, as `twid_evidence::Verified::selectors()`
/// produces them: SGX, TDX, SEV-SNP, Nitro Enclaves and TPM.
///
/// A workload entry with any selector of these types is issued only through direct workload
/// attestation, where the server verifies the evidence itself. An agent cannot prove such
/// claims about a workload, so [`authorized_entries`] never returns these entries. Node alias
/// entries may still use these types to select agents.
pub const EVIDENCE_SELECTOR_TYPES: [&str; 5] = ["sgx", "tdx", "snp", "nitro", "tpm"];

/// Returns whether any of `selectors` is of a type in [`EVIDENCE_SELECTOR_TYPES`].
pub fn has_evidence_selector(selectors: &[Selector]) -> bool {
    selectors
        .iter()
        .any(|selector| EVIDENCE_SELECTOR_TYPES.contains(&selector.kind.as_str()))
}

/// Returns the SPIFFE IDs of the node alias entries an agent belongs to, in the order of
/// `entries`: entries whose parent is `server_id`, unexpired at `now` (unix seconds), whose
/// selectors all are among `agent_selectors`.
pub fn node_alias_ids<'a>(
    agent_selectors: &[Selector],
    entries: &'a [RegistrationEntry],
    server_id: &SpiffeId,
    now: i64,
) -> Vec<&'a SpiffeId> {
    entries
        .iter()
        .filter(|entry| !entry.is_expired(now))
        .filter(|entry| &entry.parent_id == server_id)
        .filter(|entry| selectors_match(&entry.selectors, agent_selectors))
        .map(|entry| &entry.spiffe_id)
        .collect()
}

/// Returns the entries an agent is authorized for, in the order of `entries`.
///
/// The starting set is the agent's ID plus the IDs from [`node_alias_ids`]. Every entry whose
/// parent is in the set is authorized, and its SPIFFE ID joins the set, until nothing changes.
/// Alias entries themselves are returned only when reached that way. Entries that expired at
/// `now` (unix seconds) are ignored throughout, and so are entries with a selector of a type in
/// [`EVIDENCE_SELECTOR_TYPES`], so nothing below them is reached through them either. Runs in
/// time linear in `entries`.
pub fn authorized_entries<'a>(
    agent_id: &SpiffeId,
    agent_selectors: &[Selector],
    entries: &'a [RegistrationEntry],
    server_id: &SpiffeId,
    now: i64,
) -> Vec<&'a RegistrationEntry> {
    let mut by_parent: HashMap<&SpiffeId, Vec<usize>> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if !entry.is_expired(now) && !has_evidence_selector(&entry.selectors) {
            by_parent.entry(&entry.parent_id).or_default().push(index);
        }
    }

    let mut pending: Vec<&SpiffeId> = vec![agent_id];
    pending.extend(node_alias_ids(agent_selectors, entries, server_id, now));

    // `visited` contains every ID already expanded, so a cycle of parents ends the walk.
    let mut visited: HashSet<&SpiffeId> = HashSet::new();
    let mut found: Vec<usize> = Vec::new();
    while let Some(id) = pending.pop() {
        if !visited.insert(id) {
            continue;
        }
        for &index in by_parent.get(id).map(Vec::as_slice).unwrap_or_default() {
            found.push(index);
            pending.push(&entries[index].spiffe_id);
        }
    }
    found.sort_unstable();
    found.into_iter().map(|index| &entries[index]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewEntry;

    const NOW: i64 = 1_000;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).expect("test id must parse")
    }

    fn sel(text: &str) -> Selector {
        Selector::parse(text).expect("test selector must parse")
    }

    fn entry(name: &str, spiffe_id: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        let new = NewEntry::new(
            id(spiffe_id),
            id(parent),
            selectors.iter().map(|s| sel(s)).collect(),
        );
        RegistrationEntry::from_new(name.to_owned(), new, 0, 0)
    }

    fn td() -> TrustDomain {
        TrustDomain::new("td").expect("td")
    }

    fn names(found: &[&RegistrationEntry]) -> Vec<String> {
        found.iter().map(|e| e.id.clone()).collect()
    }

    const AGENT: &str = "spiffe://td/spire/agent/join_token/t1";

    #[test]
    fn well_known_ids() {
        assert_eq!(server_id(&td()).as_str(), "spiffe://td/spire/server");
        let agent = agent_id_for_join_token(&td(), "t1").expect("valid token");
        assert_eq!(agent.as_str(), AGENT);
        assert!(agent_id_for_join_token(&td(), "a/b?").is_err());
        assert!(agent_id_for_join_token(&td(), "").is_err());
    }

    #[test]
    fn follows_parents_transitively() {
        let entries = vec![
            entry("direct", "spiffe://td/a", AGENT, &["unix:uid:1"]),
            entry("child", "spiffe://td/b", "spiffe://td/a", &["unix:uid:2"]),
            entry(
                "grandchild",
                "spiffe://td/c",
                "spiffe://td/b",
                &["unix:uid:3"],
            ),
            entry(
                "other",
                "spiffe://td/x",
                "spiffe://td/spire/agent/o",
                &["u:1"],
            ),
        ];
        let found = authorized_entries(&id(AGENT), &[], &entries, &server_id(&td()), NOW);
        assert_eq!(names(&found), ["direct", "child", "grandchild"]);
    }

    #[test]
    fn includes_entries_under_matching_alias() {
        let server = "spiffe://td/spire/server";
        let entries = vec![
            entry("alias", "spiffe://td/nodes/a", server, &["jt:group:a"]),
            entry("alias-no", "spiffe://td/nodes/b", server, &["jt:group:b"]),
            entry(
                "via-alias",
                "spiffe://td/w1",
                "spiffe://td/nodes/a",
                &["u:1"],
            ),
            entry(
                "via-other",
                "spiffe://td/w2",
                "spiffe://td/nodes/b",
                &["u:1"],
            ),
        ];
        let agent_selectors = [sel("jt:group:a"), sel("jt:x:y")];
        let found = authorized_entries(
            &id(AGENT),
            &agent_selectors,
            &entries,
            &server_id(&td()),
            NOW,
        );
        assert_eq!(names(&found), ["via-alias"]);
    }

    #[test]
    fn excludes_evidence_selector_entries() {
        let server = "spiffe://td/spire/server";
        let entries = vec![
            entry("unix", "spiffe://td/a", AGENT, &["unix:uid:1"]),
            entry("tee", "spiffe://td/tee", AGENT, &["tdx:mrtd:00"]),
            entry(
                "mixed",
                "spiffe://td/mixed",
                AGENT,
                &["unix:uid:1", "sgx:mrenclave:00"],
            ),
            entry(
                "below-tee",
                "spiffe://td/below",
                "spiffe://td/tee",
                &["unix:uid:2"],
            ),
            entry(
                "alias",
                "spiffe://td/nodes/tee",
                server,
                &["tpm:pub_hash:ab"],
            ),
            entry(
                "tee-via-alias",
                "spiffe://td/tee2",
                "spiffe://td/nodes/tee",
                &["snp:measurement:00"],
            ),
            entry(
                "unix-via-alias",
                "spiffe://td/w",
                "spiffe://td/nodes/tee",
                &["unix:uid:3"],
            ),
        ];
        let agent_selectors = [sel("tpm:pub_hash:ab")];
        let found = authorized_entries(
            &id(AGENT),
            &agent_selectors,
            &entries,
            &server_id(&td()),
            NOW,
        );
        assert_eq!(names(&found), ["unix", "unix-via-alias"]);
    }

    #[test]
    fn evidence_selector_types_detected() {
        for kind in EVIDENCE_SELECTOR_TYPES {
            let selector = Selector::new(kind, "x:1");
            assert!(has_evidence_selector(&[selector]), "{kind}");
        }
        assert!(!has_evidence_selector(&[
            sel("unix:uid:1"),
            sel("k8s:ns:a")
        ]));
        assert!(!has_evidence_selector(&[]));
        assert!(has_evidence_selector(&[
            sel("unix:uid:1"),
            sel("nitro:pcr0:00")
        ]));
    }

    #[test]
    fn node_alias_ids_match_selectors() {
        let server = "spiffe://td/spire/server";
        let mut expired = entry("expired", "spiffe://td/nodes/old", server, &["jt:g:a"]);
        expired.expires_at = Some(NOW);
        let entries = vec![
            entry("alias-a", "spiffe://td/nodes/a", server, &["jt:g:a"]),
            entry("alias-b", "spiffe://td/nodes/b", server, &["jt:g:b"]),
            entry(
                "alias-ab",
                "spiffe://td/nodes/ab",
                server,
                &["jt:g:a", "jt:g:b"],
            ),
            entry("empty", "spiffe://td/nodes/empty", server, &[]),
            entry("workload", "spiffe://td/w", AGENT, &["jt:g:a"]),
            expired,
        ];
        let ids = node_alias_ids(&[sel("jt:g:a")], &entries, &server_id(&td()), NOW);
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        assert_eq!(ids, ["spiffe://td/nodes/a"]);
    }

    #[test]
    fn skips_expired_entries() {
        let mut expired = entry("expired", "spiffe://td/a", AGENT, &["u:1"]);
        expired.expires_at = Some(NOW);
        let mut live = entry("live", "spiffe://td/b", AGENT, &["u:1"]);
        live.expires_at = Some(NOW + 1);
        let below_expired = entry("below", "spiffe://td/c", "spiffe://td/a", &["u:1"]);
        let entries = vec![expired, live, below_expired];
        let found = authorized_entries(&id(AGENT), &[], &entries, &server_id(&td()), NOW);
        assert_eq!(names(&found), ["live"]);
    }

    #[test]
    fn survives_parent_cycles() {
        let entries = vec![
            entry("a", "spiffe://td/a", AGENT, &["u:1"]),
            entry("b", "spiffe://td/b", "spiffe://td/a", &["u:1"]),
            entry("a-again", "spiffe://td/a", "spiffe://td/b", &["u:2"]),
            entry("loop", AGENT, "spiffe://td/b", &["u:3"]),
        ];
        let found = authorized_entries(&id(AGENT), &[], &entries, &server_id(&td()), NOW);
        assert_eq!(names(&found), ["a", "b", "a-again", "loop"]);
    }

    #[test]
    fn handles_many_entries() {
        // A chain 100,000 deep would overflow a recursive walk, so the walk uses an explicit stack.
        let mut entries = Vec::new();
        let mut parent = AGENT.to_owned();
        for i in 0..100_000 {
            let child = format!("spiffe://td/w{i}");
            entries.push(entry(&i.to_string(), &child, &parent, &["u:1"]));
            parent = child;
        }
        let found = authorized_entries(&id(AGENT), &[], &entries, &server_id(&td()), NOW);
        assert_eq!(found.len(), 100_000);
        let unrelated = id("spiffe://td/spire/agent/join_token/t2");
        assert!(authorized_entries(&unrelated, &[], &entries, &server_id(&td()), NOW).is_empty());
    }
}
