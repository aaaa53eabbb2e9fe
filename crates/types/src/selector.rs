//! Selectors: `type:value` pairs that describe a workload or a node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A property of a workload or node, such as `unix:uid:1000` (type `unix`, value `uid:1000`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// The selector type, usually the attestor name (`unix`, `k8s`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The value, which may itself contain `:` (`uid:1000`).
    pub value: String,
}

/// A selector string that is not of the form `<type>:<value>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {reason}; expected <type>:<value>, for example unix:uid:1000")]
#[non_exhaustive]
pub struct SelectorError {
    /// The rejected input.
    pub input: String,
    /// The part of the syntax the input lacks.
    pub reason: &'static str,
}

impl Selector {
    /// Builds a selector from its type and value without checking them.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Parses SPIRE's CLI syntax: the type ends at the first `:` and the rest is the value.
    ///
    /// # Errors
    /// Returns [`SelectorError`] when there is no `:` or either side of it is empty.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let fail = |reason| SelectorError {
            input: input.to_owned(),
            reason,
        };
        let (kind, value) = input.split_once(':').ok_or_else(|| fail("missing ':'"))?;
        if kind.is_empty() {
            return Err(fail("empty type"));
        }
        if value.is_empty() {
            return Err(fail("empty value"));
        }
        Ok(Self::new(kind, value))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Returns whether an entry with `entry_selectors` applies to a workload with
/// `workload_selectors`: the entry needs at least one selector, and every one of them must be
/// among the workload's (SPIRE's subset rule).
pub fn selectors_match(entry_selectors: &[Selector], workload_selectors: &[Selector]) -> bool {
    !entry_selectors.is_empty()
        && entry_selectors
            .iter()
            .all(|wanted| workload_selectors.contains(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(text: &str) -> Selector {
        Selector::parse(text).expect("test selector must parse")
    }

    #[test]
    fn parse_splits_at_first_colon() {
        let s = sel("unix:uid:1000");
        assert_eq!(s.kind, "unix");
        assert_eq!(s.value, "uid:1000");
        assert_eq!(s.to_string(), "unix:uid:1000");
    }

    #[test]
    fn parse_rejects_malformed_input() {
        for (input, reason) in [
            ("unix", "missing ':'"),
            (":uid:1", "empty type"),
            ("unix:", "empty value"),
            ("", "missing ':'"),
        ] {
            let err = Selector::parse(input).expect_err(input);
            assert_eq!(err.reason, reason, "{input}");
            let message = err.to_string();
            assert!(message.contains(&format!("{input:?}")), "{message}");
            assert!(message.contains("<type>:<value>, for example unix:uid:1000"));
        }
    }

    #[test]
    fn serde_uses_type_field() {
        let json = serde_json::to_string(&sel("k8s:ns:default")).expect("serialize");
        assert_eq!(json, r#"{"type":"k8s","value":"ns:default"}"#);
        let back: Selector = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, sel("k8s:ns:default"));
    }

    #[test]
    fn ordering_is_type_then_value() {
        let mut list = [sel("unix:uid:2"), sel("k8s:ns:a"), sel("unix:gid:1")];
        list.sort();
        let texts: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["k8s:ns:a", "unix:gid:1", "unix:uid:2"]);
    }

    #[test]
    fn match_requires_subset() {
        let workload = [sel("unix:uid:1000"), sel("unix:gid:1000")];
        assert!(selectors_match(&[sel("unix:uid:1000")], &workload));
        assert!(selectors_match(&workload, &workload));
        assert!(!selectors_match(
            &[sel("unix:uid:1000"), sel("unix:gid:0")],
            &workload
        ));
        assert!(!selectors_match(&[sel("unix:uid:0")], &workload));
    }

    #[test]
    fn match_rejects_entry_without_selectors() {
        assert!(!selectors_match(&[], &[sel("unix:uid:1")]));
        assert!(!selectors_match(&[], &[]));
    }
}
