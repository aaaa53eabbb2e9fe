//! Credentials the server revoked: the X.509-SVID serial numbers and the JWT `jti` values that
//! the latest Sync listed for this agent.
//!
//! The server lists every revoked credential the agent obtained that has not expired yet, so
//! the latest list is complete and the agent replaces its set at every sync. A credential
//! leaves the list only once it expires, and the agent does not serve expired credentials
//! either, so forgetting it then serves nothing revoked (clock skew between agent and server
//! aside).
//!
//! Sync also lists the trust domain's tainted authorities (see [`TaintedAuthorities`]): the
//! agent replaces X.509-SVIDs that a tainted CA signed and drops JWT-SVIDs that a tainted key
//! signed. A tainted authority stays in the bundle, so its SVIDs are served until replaced.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::cache::CachedSvid;

/// The revoked credentials of one Sync response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Revoked {
    /// Serial numbers as lowercase hex without leading zeros (see [`normalize_serial`]).
    x509_serials: BTreeSet<String>,
    /// `jti` claims of revoked JWT-SVIDs and WITs.
    jtis: BTreeSet<String>,
    /// Key IDs of tainted JWT keys, whose tokens are dropped like revoked ones.
    tainted_jwt_key_ids: BTreeSet<String>,
}

impl Revoked {
    /// Builds the set from the lists of a Sync response.
    pub(crate) fn new(x509_serials: Vec<String>, jtis: Vec<String>) -> Self {
        Self {
            x509_serials: x509_serials
                .iter()
                .map(|serial| normalize_serial(serial))
                .collect(),
            jtis: jtis.into_iter().filter(|jti| !jti.is_empty()).collect(),
            tainted_jwt_key_ids: BTreeSet::new(),
        }
    }

    /// Adds the key IDs of tainted JWT keys, whose tokens [`Self::contains_token`] matches.
    pub(crate) fn with_tainted_jwt_keys(mut self, key_ids: Vec<String>) -> Self {
        self.tainted_jwt_key_ids = key_ids.into_iter().filter(|kid| !kid.is_empty()).collect();
        self
    }

    /// Returns the number of revoked serial numbers.
    pub(crate) fn x509_count(&self) -> usize {
        self.x509_serials.len()
    }

    /// Returns the number of revoked `jti` values.
    pub(crate) fn jti_count(&self) -> usize {
        self.jtis.len()
    }

    /// Returns whether the leaf certificate of `svid` has a revoked serial number. An SVID
    /// whose leaf does not parse counts as revoked when any serial is, because its serial
    /// cannot be checked.
    pub(crate) fn contains_svid(&self, svid: &CachedSvid) -> bool {
        if self.x509_serials.is_empty() {
            return false;
        }
        match svid.chain.first().and_then(|leaf| leaf_serial(leaf)) {
            Some(serial) => self.x509_serials.contains(&serial),
            None => true,
        }
    }

    /// Returns whether the JWT `token` (compact JWS) carries a revoked `jti` or a tainted key's
    /// `kid`. A token whose payload does not decode is not matched, because the agent only
    /// caches tokens the server signed, and those carry a `jti` and a `kid`.
    pub(crate) fn contains_token(&self, token: &str) -> bool {
        let revoked =
            !self.jtis.is_empty() && token_jti(token).is_some_and(|jti| self.jtis.contains(&jti));
        let tainted = !self.tainted_jwt_key_ids.is_empty()
            && token_kid(token).is_some_and(|kid| self.tainted_jwt_key_ids.contains(&kid));
        revoked || tainted
    }
}

/// The tainted X.509 authorities of one Sync response, by subject key identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TaintedAuthorities {
    /// Subject key identifiers in lowercase hex.
    x509_key_ids: BTreeSet<String>,
}

impl TaintedAuthorities {
    /// Builds the set from the hex key identifiers of a Sync response, in any case.
    pub(crate) fn new(x509_key_ids: Vec<String>) -> Self {
        Self {
            x509_key_ids: x509_key_ids
                .iter()
                .map(|id| id.trim().to_ascii_lowercase())
                .filter(|id| !id.is_empty())
                .collect(),
        }
    }

    /// Returns whether the leaf of `chain` (DER, leaf first) names a tainted authority in its
    /// authority key identifier. A leaf that does not parse or has no such extension is not
    /// matched.
    pub(crate) fn signed_chain(&self, chain: &[Vec<u8>]) -> bool {
        if self.x509_key_ids.is_empty() {
            return false;
        }
        chain
            .first()
            .and_then(|leaf| authority_key_id(leaf))
            .is_some_and(|id| self.x509_key_ids.contains(&id))
    }
}

/// Returns the authority key identifier of a DER certificate in lowercase hex.
pub(crate) fn authority_key_id(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|id| id.0.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Normalizes a hex serial number for comparison: lowercase, without leading zeros. The node
/// API sends the DER INTEGER content octets, which keep a leading `00` octet when the first
/// magnitude bit is set, so `0080` and `80` name the same serial.
pub(crate) fn normalize_serial(serial: &str) -> String {
    let lower = serial.trim().to_ascii_lowercase();
    let trimmed = lower.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Returns the normalized serial number of a DER certificate, or `None` if it does not parse.
pub(crate) fn leaf_serial(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Some(normalize_serial(&hex))
}

/// Returns the `jti` claim of a compact JWS without verifying it.
pub(crate) fn token_jti(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

/// Returns the `kid` header parameter of a compact JWS without verifying it.
pub(crate) fn token_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.c2ln")
    }

    #[test]
    fn serials_compare_without_leading_zeros() {
        assert_eq!(normalize_serial("0080"), "80");
        assert_eq!(normalize_serial("00AB"), "ab");
        assert_eq!(normalize_serial("00"), "0");
        let revoked = Revoked::new(vec!["00ff01".to_owned()], Vec::new());
        assert!(revoked.x509_serials.contains("ff01"));
    }

    #[test]
    fn svid_matches_by_leaf_serial() {
        let ca = crate::test_support::TestCa::new("example.org");
        let key = crate::state::generate_key().expect("key");
        let leaf = ca.leaf(&key, "spiffe://example.org/workload");
        let serial = leaf_serial(&leaf).expect("serial");
        let svid = CachedSvid {
            chain: vec![leaf],
            key_pkcs8: Vec::new(),
            not_before: 0,
            not_after: 1,
        };
        let other = Revoked::new(vec!["01".to_owned()], Vec::new());
        assert!(!other.contains_svid(&svid));
        let matching = Revoked::new(vec![format!("00{}", serial.to_uppercase())], Vec::new());
        assert!(matching.contains_svid(&svid));
        assert!(!Revoked::default().contains_svid(&svid));
    }

    #[test]
    fn unparsable_leaf_counts_as_revoked() {
        let svid = CachedSvid {
            chain: vec![vec![1, 2, 3]],
            key_pkcs8: Vec::new(),
            not_before: 0,
            not_after: 1,
        };
        assert!(Revoked::new(vec!["01".to_owned()], Vec::new()).contains_svid(&svid));
        assert!(!Revoked::default().contains_svid(&svid));
    }

    #[test]
    fn token_matches_by_jti() {
        let revoked = Revoked::new(Vec::new(), vec!["abc".to_owned(), String::new()]);
        assert_eq!(revoked.jti_count(), 1);
        assert!(revoked.contains_token(&token(&serde_json::json!({"jti": "abc"}))));
        assert!(!revoked.contains_token(&token(&serde_json::json!({"jti": "abd"}))));
        assert!(!revoked.contains_token(&token(&serde_json::json!({"sub": "x"}))));
        assert!(!revoked.contains_token("not-a-jwt"));
    }

    #[test]
    fn token_matches_by_tainted_kid() {
        let signed_by = |kid: &str| {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#));
            let payload = URL_SAFE_NO_PAD.encode(r#"{"jti":"j1"}"#);
            format!("{header}.{payload}.c2ln")
        };
        let tainted = Revoked::default().with_tainted_jwt_keys(vec!["old".to_owned()]);
        assert!(tainted.contains_token(&signed_by("old")));
        assert!(!tainted.contains_token(&signed_by("new")));
        assert!(!Revoked::default().contains_token(&signed_by("old")));
        assert_ne!(tainted, Revoked::default());
    }

    #[test]
    fn chain_matches_by_authority_key_id() {
        let ca = crate::test_support::TestCa::new("example.org");
        let key = crate::state::generate_key().expect("key");
        let leaf = ca.leaf(&key, "spiffe://example.org/workload");
        let issuer = authority_key_id(&leaf).expect("leaf has an authority key identifier");
        let chain = vec![leaf];
        let tainted = TaintedAuthorities::new(vec![issuer.to_uppercase()]);
        assert!(tainted.signed_chain(&chain));
        assert!(!TaintedAuthorities::new(vec!["00ff".to_owned()]).signed_chain(&chain));
        assert!(!TaintedAuthorities::default().signed_chain(&chain));
        assert!(!tainted.signed_chain(&[vec![1, 2, 3]]));
    }
}
