//! Credentials the server revoked: the X.509-SVID serial numbers and the JWT `jti` values that
//! the latest Sync listed for this agent.
//!
//! The server lists every revoked credential the agent obtained that has not expired yet, so
//! the latest list is complete and the agent replaces its set at every sync. A credential
//! leaves the list only once it expires, and the agent does not serve expired credentials
//! either, so forgetting it then serves nothing revoked (clock skew between agent and server
//! aside).

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
        }
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

    /// Returns whether the JWT `token` (compact JWS) carries a revoked `jti`. A token whose
    /// payload does not decode is not matched, because the agent only caches tokens the
    /// server signed, and those carry a `jti`.
    pub(crate) fn contains_token(&self, token: &str) -> bool {
        if self.jtis.is_empty() {
            return false;
        }
        token_jti(token).is_some_and(|jti| self.jtis.contains(&jti))
    }
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
}
