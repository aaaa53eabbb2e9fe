//! The discovery document and the published JWK Set.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use url::Url;

use crate::OidcError;

/// A validated issuer URL and the paths derived from it.
#[derive(Debug, Clone)]
pub(crate) struct Issuer {
    issuer: String,
    /// The issuer's URL path without a trailing `/`; empty for an issuer without a path.
    path_prefix: String,
}

impl Issuer {
    /// Checks that `issuer` is an http(s) URL with a host and no query, fragment or user info.
    pub(crate) fn parse(issuer: &str) -> Result<Self, OidcError> {
        let invalid = |reason: &str| OidcError::InvalidIssuer {
            issuer: issuer.to_owned(),
            reason: reason.to_owned(),
        };
        let url = Url::parse(issuer).map_err(|error| invalid(&error.to_string()))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid("the scheme must be https (or http behind a proxy)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        if url.query().is_some() {
            return Err(invalid("an issuer URL may not contain a query"));
        }
        if url.fragment().is_some() {
            return Err(invalid("an issuer URL may not contain a fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("an issuer URL may not contain user info"));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            path_prefix: url.path().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.issuer
    }

    pub(crate) fn jwks_uri(&self) -> String {
        jwks_uri(&self.issuer)
    }

    /// Returns the issuer's path without a trailing `/`, so that a request for
    /// `<prefix>/keys` can be served as `/keys`.
    pub(crate) fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

/// Returns the `jwks_uri` published for `issuer`: the issuer URL followed by `/keys`.
pub fn jwks_uri(issuer: &str) -> String {
    format!("{}/keys", issuer.trim_end_matches('/'))
}

/// Builds the OpenID Connect discovery document for `issuer` and the published keys `jwks`
/// (the output of [`public_jwks`]).
///
/// `id_token_signing_alg_values_supported` lists the `alg` of every key, sorted, so it is
/// empty when there are no keys. There is no `authorization_endpoint`, because the issuer
/// has no interactive login; AWS IAM does not require one.
pub fn discovery_document(issuer: &str, jwks: &[Value]) -> Value {
    let algorithms: BTreeSet<&str> = jwks
        .iter()
        .filter_map(|key| key.get("alg").and_then(Value::as_str))
        .collect();
    json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri(issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
    })
}

/// Turns source JWKs into the published ones: public members only, `use` set to `sig`, and
/// `alg` filled in from the key type when missing.
///
/// A key is dropped, with a debug log, when it has no `kid`, repeats an earlier `kid`, is
/// neither `EC` (P-256, P-384, P-521) nor `RSA`, misses a key member, or names an `alg`
/// that does not fit its key type. An RSA key without `alg` gets `RS256`, the algorithm the
/// twid CA signs with.
pub fn public_jwks(keys: &[Value]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut published = Vec::with_capacity(keys.len());
    for key in keys {
        match public_jwk(key) {
            Ok(jwk) => {
                let key_id = jwk["kid"].as_str().unwrap_or_default().to_owned();
                if seen.insert(key_id.clone()) {
                    published.push(jwk);
                } else {
                    tracing::debug!(key_id, "key dropped from the JWKS: duplicate kid");
                }
            }
            Err(reason) => {
                let key_id = key.get("kid").and_then(Value::as_str).unwrap_or_default();
                tracing::debug!(key_id, reason, "key dropped from the JWKS");
            }
        }
    }
    published
}

fn public_jwk(key: &Value) -> Result<Value, &'static str> {
    let object = key.as_object().ok_or("not a JSON object")?;
    let member = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
    };
    let key_id = member("kid").ok_or("missing kid")?;
    let declared_alg = member("alg");
    let mut jwk = Map::new();
    jwk.insert("kid".into(), key_id.into());
    let algorithm = match member("kty").ok_or("missing kty")? {
        "EC" => {
            let curve = member("crv").ok_or("missing crv")?;
            let curve_alg = match curve {
                "P-256" => "ES256",
                "P-384" => "ES384",
                "P-521" => "ES512",
                _ => return Err("unsupported EC curve"),
            };
            if declared_alg.is_some_and(|alg| alg != curve_alg) {
                return Err("alg does not fit the curve");
            }
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), curve.into());
            jwk.insert("x".into(), member("x").ok_or("missing x")?.into());
            jwk.insert("y".into(), member("y").ok_or("missing y")?.into());
            curve_alg
        }
        "RSA" => {
            let alg = declared_alg.unwrap_or("RS256");
            if !matches!(
                alg,
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
            ) {
                return Err("alg does not fit an RSA key");
            }
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("n".into(), member("n").ok_or("missing n")?.into());
            jwk.insert("e".into(), member("e").ok_or("missing e")?.into());
            alg
        }
        _ => return Err("unsupported kty"),
    };
    jwk.insert("alg".into(), algorithm.into());
    jwk.insert("use".into(), "sig".into());
    Ok(Value::Object(jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_key(kid: &str, crv: &str) -> Value {
        json!({"kty": "EC", "kid": kid, "crv": crv, "x": "eA", "y": "eQ", "use": "jwt-svid"})
    }

    #[test]
    fn public_jwks_sets_use_and_alg() {
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "bg", "e": "AQAB"});
        let keys = public_jwks(&[ec_key("a", "P-256"), ec_key("b", "P-384"), rsa]);
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0]["alg"], "ES256");
        assert_eq!(keys[1]["alg"], "ES384");
        assert_eq!(keys[2]["alg"], "RS256");
        for key in &keys {
            assert_eq!(key["use"], "sig", "{key}");
        }
    }

    #[test]
    fn public_jwks_drops_private_members() {
        let mut key = ec_key("a", "P-256");
        key["d"] = "secret".into();
        key["x5c"] = json!(["AAAA"]);
        let keys = public_jwks(&[key]);
        assert_eq!(keys.len(), 1);
        assert!(keys[0].get("d").is_none());
        assert!(keys[0].get("x5c").is_none());
    }

    #[test]
    fn public_jwks_drops_invalid_keys() {
        let keys = public_jwks(&[
            json!({"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ"}),
            json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "eA"}),
            json!({"kty": "EC", "kid": "k1", "crv": "P-256", "x": "eA"}),
            json!({"kty": "EC", "kid": "k2", "crv": "P-256", "x": "eA", "y": "eQ", "alg": "ES384"}),
            json!({"kty": "RSA", "kid": "k3", "n": "bg", "e": "AQAB", "alg": "HS256"}),
            json!({"kty": "oct", "kid": "k4", "k": "c2VjcmV0"}),
            json!("not an object"),
        ]);
        assert_eq!(keys, Vec::<Value>::new());
    }

    #[test]
    fn public_jwks_keeps_first_of_duplicate_kid() {
        let keys = public_jwks(&[ec_key("a", "P-256"), ec_key("a", "P-384")]);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["crv"], "P-256");
    }

    #[test]
    fn discovery_document_lists_key_algorithms() {
        let keys = public_jwks(&[
            ec_key("a", "P-384"),
            ec_key("b", "P-256"),
            ec_key("c", "P-256"),
        ]);
        let document = discovery_document("https://oidc.example.org", &keys);
        assert_eq!(document["issuer"], "https://oidc.example.org");
        assert_eq!(document["jwks_uri"], "https://oidc.example.org/keys");
        assert_eq!(
            document["id_token_signing_alg_values_supported"],
            json!(["ES256", "ES384"])
        );
        assert_eq!(document["response_types_supported"], json!(["id_token"]));
        assert_eq!(document["subject_types_supported"], json!(["public"]));
    }

    #[test]
    fn jwks_uri_joins_path_issuers() {
        assert_eq!(jwks_uri("https://h.example/a/"), "https://h.example/a/keys");
        assert_eq!(jwks_uri("https://h.example"), "https://h.example/keys");
    }

    #[test]
    fn issuer_parse_rejects_bad_urls() {
        for issuer in [
            "not a url",
            "ftp://h.example",
            "https://h.example/?a=b",
            "https://h.example/#f",
            "https://user:pw@h.example",
        ] {
            assert!(Issuer::parse(issuer).is_err(), "{issuer} was accepted");
        }
    }

    #[test]
    fn issuer_parse_keeps_path_prefix() {
        let issuer = Issuer::parse("https://h.example/tenant/").unwrap();
        assert_eq!(issuer.path_prefix(), "/tenant");
        assert_eq!(
            Issuer::parse("https://h.example").unwrap().path_prefix(),
            ""
        );
    }
}
