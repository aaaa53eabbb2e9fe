//! SPIFFE IDs and trust domain names.
//!
//! Choices where the SPIFFE ID standard leaves room:
//! - An uppercase letter in the trust domain is rejected, as go-spiffe does. The standard says the
//!   trust domain MUST be lowercase, so `spiffe://Example.org/a` is invalid rather than silently
//!   becoming a second spelling of `spiffe://example.org/a`. The path keeps its case and compares
//!   case-sensitively.
//! - IDs longer than 2048 bytes are rejected; 2048 bytes are accepted. Trust domains longer than
//!   255 bytes are rejected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The maximum length of a SPIFFE ID in bytes, scheme and trust domain included.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// A reason a SPIFFE ID or trust domain name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is empty.
    #[error("is empty")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("scheme is missing or is not spiffe")]
    WrongScheme,
    /// The trust domain part is empty.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character that trust domain names may not contain.
    #[error(
        "trust domain contains {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// A character that path segments may not contain.
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    /// A `//` in the path.
    #[error("path contains an empty segment")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path has a trailing slash")]
    TrailingSlash,
    /// The whole ID is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("is {0} bytes long; the maximum is 2048")]
    TooLong(usize),
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {0} bytes long; the maximum is 255")]
    TrustDomainTooLong(usize),
    /// The path is not empty where only a trust domain ID is allowed.
    #[error("has a path, but a trust domain ID may not have one")]
    UnexpectedPath,
}

/// A trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`).
    ///
    /// # Errors
    /// Returns the rule the input breaks.
    pub fn new(input: &str) -> Result<Self, IdError> {
        if input.contains(":/") {
            let id = SpiffeId::new(input)?;
            if !id.path().is_empty() {
                return Err(IdError::UnexpectedPath);
            }
            return Ok(id.trust_domain);
        }
        validate_trust_domain(input)?;
        Ok(Self(input.to_owned()))
    }

    /// Returns the bare name, for example `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Returns the trust domain's own SPIFFE ID, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// Builds the SPIFFE ID `spiffe://<name><path>`.
    ///
    /// # Errors
    /// Returns the rule the path breaks; the path must be empty or start with `/`.
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::new(&format!("{SCHEME_PREFIX}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// Equality, ordering and hashing compare the whole string, which is canonical because
/// uppercase trust domains are rejected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// # Errors
    /// Returns the first rule of the SPIFFE ID standard the input breaks.
    pub fn new(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong(input.len()));
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            id: input.to_owned(),
            trust_domain: TrustDomain(td.to_owned()),
        })
    }

    /// Returns the trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Returns the path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME_PREFIX.len() + self.trust_domain.0.len()..]
    }

    /// Returns whether this ID is a member of `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        &self.trust_domain == trust_domain
    }

    /// Returns the ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    // The character rule alone rejects userinfo ('@'), ports (':'), percent-encoding ('%'),
    // IPv6 literals ('[', ':'), queries ('?') and fragments ('#').
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(IdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split element is the empty string before it.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                IdError::TrailingSlash
            } else {
                IdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for input in [
            "spiffe://example.org",
            "spiffe://example.org/a",
            "spiffe://example.org/a/b_c-d.e",
            "spiffe://10.0.0.1/a",
            "spiffe://-a_b/x",
            "spiffe://1.2.3.4.5/x",
            "spiffe://td/...",
            "spiffe://td/.a",
            "spiffe://td/UPPER",
        ] {
            assert!(SpiffeId::new(input).is_ok(), "{input} should be valid");
        }
    }

    #[test]
    fn rejects_each_rule() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("https://example.org/a", IdError::WrongScheme),
            ("spiffe2://example.org/a", IdError::WrongScheme),
            ("example.org/a", IdError::WrongScheme),
            ("SPIFFE://example.org/a", IdError::WrongScheme),
            ("spiffe:///a", IdError::MissingTrustDomain),
            ("spiffe://", IdError::MissingTrustDomain),
            ("spiffe://td/a?", IdError::BadPathChar('?')),
            ("spiffe://td?x", IdError::BadTrustDomainChar('?')),
            ("spiffe://td/a#", IdError::BadPathChar('#')),
            ("spiffe://u@td/a", IdError::BadTrustDomainChar('@')),
            ("spiffe://td:443/a", IdError::BadTrustDomainChar(':')),
            ("spiffe://td:/a", IdError::BadTrustDomainChar(':')),
            ("spiffe://Example.org/a", IdError::BadTrustDomainChar('E')),
            ("spiffe://ex ample/a", IdError::BadTrustDomainChar(' ')),
            ("spiffe://ex%61mple.org/a", IdError::BadTrustDomainChar('%')),
            ("spiffe://[::1]/a", IdError::BadTrustDomainChar('[')),
            ("spiffe://td/a%20b", IdError::BadPathChar('%')),
            ("spiffe://td//a", IdError::EmptySegment),
            ("spiffe://td/a/../b", IdError::DotSegment),
            ("spiffe://td/./b", IdError::DotSegment),
            ("spiffe://td/a/", IdError::TrailingSlash),
            ("spiffe://td/", IdError::TrailingSlash),
            ("spiffe://td/a:b", IdError::BadPathChar(':')),
            ("spiffe://td/a@b", IdError::BadPathChar('@')),
            ("spiffe://td/é", IdError::BadPathChar('é')),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SpiffeId::new(input).as_ref().err(),
                Some(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn length_boundaries() {
        let prefix = "spiffe://td/";
        let ok = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(ok.len(), 2048);
        assert!(SpiffeId::new(&ok).is_ok());
        let long = format!("{ok}a");
        assert_eq!(SpiffeId::new(&long), Err(IdError::TooLong(2049)));

        let td255 = "a".repeat(255);
        assert!(TrustDomain::new(&td255).is_ok());
        let td256 = "a".repeat(256);
        assert_eq!(
            TrustDomain::new(&td256),
            Err(IdError::TrustDomainTooLong(256))
        );
    }

    #[test]
    fn path_case_is_significant() {
        let upper = SpiffeId::new("spiffe://td/A").unwrap();
        let lower = SpiffeId::new("spiffe://td/a").unwrap();
        assert_ne!(upper, lower);
        assert_eq!(upper.path(), "/A");
        assert_eq!(upper.trust_domain().name(), "td");
    }

    #[test]
    fn trust_domain_accepts_name_or_id() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/a"),
            Err(IdError::UnexpectedPath)
        );
        assert_eq!(TrustDomain::new(""), Err(IdError::MissingTrustDomain));
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(
            td.id_with_path("/w").unwrap().as_str(),
            "spiffe://example.org/w"
        );
    }
}
