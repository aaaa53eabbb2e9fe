//! JWT authorities from the node API in the forms the Workload API needs: JWK Set documents for
//! FetchJWTBundles and bundle sets for ValidateJWTSVID.

use serde_json::{Value, json};
use twid_proto::types::JwtAuthority;
use twid_spiffe::{JwtBundle, TrustDomain};

/// Converts authorities, leaving out (and logging at debug) keys that are not valid EC or RSA
/// public keys with a `kid`.
fn authorities(authorities: &[JwtAuthority]) -> Vec<twid_spiffe::JwtAuthority> {
    authorities
        .iter()
        .filter_map(|authority| {
            match twid_spiffe::JwtAuthority::from_spki_der(&authority.key_id, &authority.public_key)
            {
                Ok(converted) => Some(converted),
                Err(error) => {
                    tracing::debug!(kid = %authority.key_id, %error, "skipping JWT authority");
                    None
                }
            }
        })
        .collect()
}

/// Builds `{"keys":[...]}` with one public JWK per authority, each with `kid` and
/// `use: jwt-svid`.
pub(crate) fn jwks_json(jwt_authorities: &[JwtAuthority]) -> Vec<u8> {
    let keys: Vec<Value> = authorities(jwt_authorities)
        .iter()
        .map(|authority| authority.to_jwk(Some("jwt-svid")))
        .collect();
    json!({ "keys": keys }).to_string().into_bytes()
}

/// Builds the JWT bundle of `trust_domain` for token validation.
pub(crate) fn jwt_bundle(trust_domain: TrustDomain, jwt_authorities: &[JwtAuthority]) -> JwtBundle {
    let mut bundle = JwtBundle::new(trust_domain);
    for authority in authorities(jwt_authorities) {
        bundle.add_authority(authority);
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(kid: &str) -> JwtAuthority {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("P-256 key generation");
        JwtAuthority {
            key_id: kid.to_owned(),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            expires_at: 0,
        }
    }

    #[test]
    fn ec_key_becomes_jwk_with_kid_and_use() {
        let document: Value =
            serde_json::from_slice(&jwks_json(&[authority("kid-1")])).expect("JWKS must be JSON");
        let first = &document["keys"][0];
        assert_eq!(first["kid"], "kid-1");
        assert_eq!(first["use"], "jwt-svid");
        assert_eq!(first["kty"], "EC");
        assert_eq!(first["crv"], "P-256");
        assert_eq!(first["x"].as_str().map(str::len), Some(43));
        assert!(first.get("d").is_none());
    }

    #[test]
    fn document_parses_as_jwt_bundle() {
        let trust_domain = TrustDomain::new("example.org").expect("trust domain");
        let document = jwks_json(&[authority("a"), authority("b")]);
        let parsed = JwtBundle::parse_jwks(trust_domain, &document).expect("valid JWKS");
        assert!(parsed.get("a").is_some());
        assert!(parsed.get("b").is_some());
    }

    #[test]
    fn garbage_and_unnamed_keys_are_left_out() {
        let garbage = JwtAuthority {
            key_id: "bad".to_owned(),
            public_key: vec![1, 2, 3],
            expires_at: 0,
        };
        let unnamed = authority("");
        assert_eq!(jwks_json(&[garbage, unnamed]), br#"{"keys":[]}"#);
    }
}
