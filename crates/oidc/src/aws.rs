//! The checks AWS IAM applies to an OIDC provider's discovery document and JWK Set.
//!
//! Source: the AWS IAM User Guide, "Create an OpenID Connect (OIDC) identity provider in
//! IAM": the provider URL must begin with `https://`, may contain a path but no query, and
//! should not contain a port. IAM accepts at most 100 keys in the JWK Set.

use std::collections::BTreeSet;

use serde_json::Value;
use url::Url;

/// The maximum number of keys AWS IAM reads from an OIDC provider's JWK Set.
pub const MAX_AWS_KEYS: usize = 100;

/// Lists what in the discovery document `document` and the JWK Set `jwks` (`{"keys":[..]}`)
/// AWS IAM would reject; an empty list means the pair passes.
///
/// Checked: `issuer` is https without port, query, fragment or user info; `jwks_uri` is
/// https; `response_types_supported` is present; `subject_types_supported` is a non-empty
/// array; `id_token_signing_alg_values_supported` equals the set of key `alg`s; every key
/// has `kid`, `kty`, `alg` and `use` = `sig`; kids are unique; and there are 1 to 100 keys.
/// The caller compares `issuer` with the configured URL and the `iss` of its tokens.
pub fn check_aws_requirements(document: &Value, jwks: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    match document.get("issuer").and_then(Value::as_str) {
        Some(issuer) => violations.extend(issuer_violations(issuer)),
        None => violations.push("issuer is missing or not a string".to_owned()),
    }
    match document.get("jwks_uri").and_then(Value::as_str) {
        Some(uri) => match Url::parse(uri) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(_) => violations.push(format!("jwks_uri {uri:?} is not https")),
            Err(error) => violations.push(format!("jwks_uri {uri:?} is not a URL: {error}")),
        },
        None => violations.push("jwks_uri is missing or not a string".to_owned()),
    }
    if document
        .get("response_types_supported")
        .and_then(Value::as_array)
        .is_none()
    {
        violations.push("response_types_supported is missing or not an array".to_owned());
    }
    let subject_types = document
        .get("subject_types_supported")
        .and_then(Value::as_array);
    if subject_types.is_none_or(Vec::is_empty) {
        violations.push("subject_types_supported is missing or empty".to_owned());
    }
    let listed_algorithms = document
        .get("id_token_signing_alg_values_supported")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_str)
                .collect::<BTreeSet<_>>()
        });
    let key_algorithms = check_keys(jwks, &mut violations);
    match listed_algorithms {
        None => violations
            .push("id_token_signing_alg_values_supported is missing or not an array".to_owned()),
        Some(listed) if listed != key_algorithms => violations.push(format!(
            "id_token_signing_alg_values_supported {listed:?} differs from the key algorithms \
             {key_algorithms:?}"
        )),
        Some(_) => {}
    }
    violations
}

/// Checks every key and returns the set of their `alg`s.
fn check_keys<'a>(jwks: &'a Value, violations: &mut Vec<String>) -> BTreeSet<&'a str> {
    let mut algorithms = BTreeSet::new();
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        violations.push("the JWK Set has no keys array".to_owned());
        return algorithms;
    };
    if keys.is_empty() {
        violations.push("the JWK Set is empty".to_owned());
    }
    if keys.len() > MAX_AWS_KEYS {
        violations.push(format!(
            "the JWK Set has {} keys, more than the maximum of {MAX_AWS_KEYS}",
            keys.len()
        ));
    }
    let mut key_ids = BTreeSet::new();
    for (index, key) in keys.iter().enumerate() {
        let member = |name: &str| {
            key.get(name)
                .and_then(Value::as_str)
                .filter(|value| !value.is_empty())
        };
        match member("kid") {
            Some(key_id) if !key_ids.insert(key_id) => {
                violations.push(format!("key {index}: kid {key_id:?} is not unique"));
            }
            Some(_) => {}
            None => violations.push(format!("key {index}: kid is missing")),
        }
        if member("kty").is_none() {
            violations.push(format!("key {index}: kty is missing"));
        }
        match member("alg") {
            Some(alg) => {
                algorithms.insert(alg);
            }
            None => violations.push(format!("key {index}: alg is missing")),
        }
        if member("use") != Some("sig") {
            violations.push(format!("key {index}: use is not \"sig\""));
        }
    }
    algorithms
}

/// Lists why AWS IAM would reject `issuer` as an OIDC provider URL.
pub(crate) fn issuer_violations(issuer: &str) -> Vec<String> {
    let url = match Url::parse(issuer) {
        Ok(url) => url,
        Err(error) => return vec![format!("issuer {issuer:?} is not a URL: {error}")],
    };
    let mut violations = Vec::new();
    if url.scheme() != "https" {
        violations.push(format!("issuer {issuer:?} is not https"));
    }
    if url.port().is_some() {
        violations.push(format!("issuer {issuer:?} contains a port"));
    }
    if url.query().is_some() {
        violations.push(format!("issuer {issuer:?} contains a query"));
    }
    if url.fragment().is_some() {
        violations.push(format!("issuer {issuer:?} contains a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        violations.push(format!("issuer {issuer:?} contains user info"));
    }
    violations
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{discovery_document, public_jwks};

    fn keys() -> Vec<Value> {
        public_jwks(&[
            json!({"kty": "EC", "kid": "a", "crv": "P-256", "x": "eA", "y": "eQ"}),
            json!({"kty": "RSA", "kid": "b", "n": "bg", "e": "AQAB"}),
        ])
    }

    fn pair(issuer: &str) -> (Value, Value) {
        let keys = keys();
        (discovery_document(issuer, &keys), json!({ "keys": keys }))
    }

    #[test]
    fn generated_document_passes() {
        let (document, jwks) = pair("https://oidc.example.org");
        assert_eq!(
            check_aws_requirements(&document, &jwks),
            Vec::<String>::new()
        );
    }

    #[test]
    fn issuer_scheme_and_port_flagged() {
        let (document, jwks) = pair("http://oidc.example.org:8443");
        let violations = check_aws_requirements(&document, &jwks);
        assert!(
            violations.iter().any(|v| v.contains("is not https")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.contains("contains a port")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.starts_with("jwks_uri")),
            "{violations:?}"
        );
    }

    #[test]
    fn issuer_query_flagged() {
        let (mut document, jwks) = pair("https://oidc.example.org");
        document["issuer"] = "https://oidc.example.org/?tenant=1".into();
        let violations = check_aws_requirements(&document, &jwks);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("query"), "{violations:?}");
    }

    #[test]
    fn missing_fields_flagged() {
        let (mut document, jwks) = pair("https://oidc.example.org");
        let object = document.as_object_mut().unwrap();
        object.remove("jwks_uri");
        object.remove("response_types_supported");
        object.insert("subject_types_supported".into(), json!([]));
        let violations = check_aws_requirements(&document, &jwks);
        assert_eq!(violations.len(), 3, "{violations:?}");
    }

    #[test]
    fn algorithm_list_must_match_keys() {
        let (mut document, jwks) = pair("https://oidc.example.org");
        document["id_token_signing_alg_values_supported"] = json!(["ES256"]);
        let violations = check_aws_requirements(&document, &jwks);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("differs"), "{violations:?}");
    }

    #[test]
    fn key_members_checked() {
        let (document, _) = pair("https://oidc.example.org");
        let jwks = json!({"keys": [
            {"kty": "EC", "kid": "a", "crv": "P-256", "x": "eA", "y": "eQ", "alg": "ES256", "use": "jwt-svid"},
            {"kty": "RSA", "n": "bg", "e": "AQAB", "alg": "RS256", "use": "sig"},
        ]});
        let violations = check_aws_requirements(&document, &jwks);
        assert!(
            violations.iter().any(|v| v == "key 0: use is not \"sig\""),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v == "key 1: kid is missing"),
            "{violations:?}"
        );
    }

    #[test]
    fn more_than_max_keys_flagged() {
        let many: Vec<Value> = (0..=MAX_AWS_KEYS)
            .map(|i| json!({"kty": "EC", "kid": format!("k{i}"), "crv": "P-256", "x": "eA", "y": "eQ"}))
            .collect();
        let keys = public_jwks(&many);
        let document = discovery_document("https://oidc.example.org", &keys);
        let violations = check_aws_requirements(&document, &json!({ "keys": keys }));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("101 keys"), "{violations:?}");
    }

    #[test]
    fn empty_key_set_flagged() {
        let document = discovery_document("https://oidc.example.org", &[]);
        let violations = check_aws_requirements(&document, &json!({"keys": []}));
        assert_eq!(violations, vec!["the JWK Set is empty".to_owned()]);
    }
}
