use super::*;

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("test id must parse")
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").expect("test trust domain must parse")
}

fn sel(text: &str) -> Selector {
    Selector::parse(text).expect("test selector must parse")
}

fn valid() -> NewEntry {
    NewEntry::new(
        id("spiffe://example.org/web"),
        id("spiffe://example.org/spire/agent/join_token/abc"),
        vec![sel("unix:uid:1000")],
    )
}

fn error_of(entry: &NewEntry) -> EntryError {
    entry.validate(&td()).expect_err("entry must be rejected")
}

#[test]
fn accepts_valid_entry() {
    let mut entry = valid();
    entry.dns_names = vec!["web.example.org".into(), "*.svc.local".into(), "a-1".into()];
    entry.federates_with = vec![TrustDomain::new("other.org").expect("td")];
    entry.hint = "h".repeat(MAX_HINT_LEN);
    entry.x509_svid_ttl = 3600;
    assert_eq!(entry.validate(&td()), Ok(()));
}

#[test]
fn rejects_foreign_spiffe_id() {
    let mut entry = valid();
    entry.spiffe_id = id("spiffe://evil.org/web");
    let message = error_of(&entry).to_string();
    assert!(message.contains("spiffe://evil.org/web"), "{message}");
    assert!(message.contains("evil.org"), "{message}");
    assert!(message.contains("example.org"), "{message}");
}

#[test]
fn rejects_foreign_parent_id() {
    let mut entry = valid();
    entry.parent_id = id("spiffe://evil.org/agent");
    assert!(matches!(
        error_of(&entry),
        EntryError::ForeignParentId { .. }
    ));
}

#[test]
fn rejects_empty_path() {
    let mut entry = valid();
    entry.spiffe_id = id("spiffe://example.org");
    assert_eq!(error_of(&entry), EntryError::EmptyPath(entry.spiffe_id));
}

#[test]
fn rejects_own_parent() {
    let mut entry = valid();
    entry.parent_id = entry.spiffe_id.clone();
    assert_eq!(error_of(&entry), EntryError::OwnParent(entry.spiffe_id));
}

#[test]
fn rejects_missing_selectors() {
    let mut entry = valid();
    entry.selectors.clear();
    assert_eq!(error_of(&entry), EntryError::NoSelectors(entry.spiffe_id));
}

#[test]
fn rejects_malformed_selector() {
    for bad in [
        Selector::new("", "x"),
        Selector::new("unix", ""),
        Selector::new("a:b", "c"),
    ] {
        let mut entry = valid();
        entry.selectors = vec![bad.clone()];
        assert_eq!(
            error_of(&entry),
            EntryError::InvalidSelector(bad.to_string())
        );
    }
}

#[test]
fn rejects_negative_ttls() {
    let mut entry = valid();
    entry.jwt_svid_ttl = -1;
    let message = error_of(&entry).to_string();
    assert!(message.contains("jwt_svid_ttl is -1"), "{message}");
    entry.jwt_svid_ttl = 0;
    entry.x509_svid_ttl = -5;
    assert_eq!(
        error_of(&entry),
        EntryError::NegativeTtl {
            field: "x509_svid_ttl",
            value: -5
        }
    );
}

#[test]
fn rejects_invalid_dns_names() {
    let long_label = "a".repeat(64);
    let long_name = ["a".repeat(63).as_str(); 5].join(".");
    for name in [
        "",
        "*.",
        "a..b",
        "-a.org",
        "a-.org",
        "a_b.org",
        "a.*.org",
        "**.org",
        "a b",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        let mut entry = valid();
        entry.dns_names = vec![name.to_owned()];
        let err = error_of(&entry);
        assert!(
            matches!(&err, EntryError::InvalidDnsName { name: n, .. } if n == name),
            "{name:?} gave {err}"
        );
    }
}

#[test]
fn rejects_long_hint() {
    let mut entry = valid();
    entry.hint = "h".repeat(MAX_HINT_LEN + 1);
    assert_eq!(error_of(&entry), EntryError::HintTooLong(1025));
}

#[test]
fn rejects_federation_with_own_domain() {
    let mut entry = valid();
    entry.federates_with = vec![td()];
    assert_eq!(
        error_of(&entry),
        EntryError::FederatesWithOwnTrustDomain(td())
    );
}

#[test]
fn normalize_sorts_and_dedups() {
    let mut entry = valid();
    entry.selectors = vec![sel("unix:uid:2"), sel("unix:gid:1"), sel("unix:uid:2")];
    entry.dns_names = vec!["b".into(), "a".into(), "b".into()];
    entry.normalize();
    assert_eq!(entry.selectors, [sel("unix:gid:1"), sel("unix:uid:2")]);
    assert_eq!(entry.dns_names, ["b", "a"]);
}

#[test]
fn expiry_is_inclusive() {
    let mut entry = RegistrationEntry::from_new("x".into(), valid(), 0, 0);
    assert!(!entry.is_expired(100));
    entry.expires_at = Some(100);
    assert!(entry.is_expired(100));
    assert!(!entry.is_expired(99));
}

#[test]
fn serde_round_trip() {
    let entry = RegistrationEntry::from_new("x".into(), valid(), 7, 1);
    let json = serde_json::to_string(&entry).expect("serialize");
    let back: RegistrationEntry = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, entry);
}

#[test]
fn rejects_reserved_spiffe_ids() {
    for reserved in [
        "spiffe://example.org/spire/server",
        "spiffe://example.org/spire/agent/join_token/abc",
        "spiffe://example.org/spire",
    ] {
        let mut entry = valid();
        entry.spiffe_id = id(reserved);
        entry.parent_id = id("spiffe://example.org/spire/agent/join_token/other");
        assert_eq!(
            error_of(&entry),
            EntryError::ReservedSpiffeId(id(reserved)),
            "{reserved}"
        );
    }
    let mut similar = valid();
    similar.spiffe_id = id("spiffe://example.org/spire-web");
    assert_eq!(similar.validate(&td()), Ok(()));
}

#[test]
fn rejects_oversized_lists_and_selectors() {
    let mut entry = valid();
    entry.selectors = (0..=MAX_LIST_LEN)
        .map(|i| sel(&format!("unix:uid:{i}")))
        .collect();
    assert!(matches!(
        error_of(&entry),
        EntryError::TooMany {
            field: "selectors",
            ..
        }
    ));

    let mut entry = valid();
    entry.selectors = vec![sel(&format!("unix:{}", "x".repeat(MAX_SELECTOR_LEN)))];
    assert!(matches!(error_of(&entry), EntryError::SelectorTooLong(_)));

    let mut entry = valid();
    entry.selectors = vec![sel(&format!("unix:{}", "x".repeat(MAX_SELECTOR_LEN - 5)))];
    assert_eq!(
        entry.validate(&td()),
        Ok(()),
        "a selector of exactly the limit is valid"
    );

    let mut entry = valid();
    entry.dns_names = (0..=MAX_LIST_LEN)
        .map(|i| format!("h{i}.example.org"))
        .collect();
    assert!(matches!(
        error_of(&entry),
        EntryError::TooMany {
            field: "dns names",
            ..
        }
    ));
}
