//! IAM role trust policies for an OIDC provider that serves a trust domain's JWT-SVID keys.

use serde_json::{Value, json};
use twid_spiffe::SpiffeId;

/// A reason [`trust_policy`] rejects its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The AWS account ID is not 12 digits.
    #[error("invalid AWS account ID {0:?}: expected 12 digits")]
    InvalidAccountId(String),
    /// The provider is not a host name with an optional path.
    #[error(
        "invalid OIDC provider {0:?}: expected the issuer URL without https://, such as \
         oidc.example.org"
    )]
    InvalidProvider(String),
    /// The SPIFFE ID is invalid.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The value given.
        id: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The audience is empty.
    #[error("the audience must not be empty")]
    EmptyAudience,
}

/// Builds the trust policy of an IAM role that workloads with `spiffe_id` may assume with a
/// JWT-SVID for `audience` issued by the OIDC provider `provider`.
///
/// `provider` is the issuer URL as IAM names the provider: host and optional path, without
/// the scheme (a leading `https://` and a trailing `/` are removed). The policy allows
/// `sts:AssumeRoleWithWebIdentity` for the federated principal
/// `arn:aws:iam::<account_id>:oidc-provider/<provider>` under `StringEquals` conditions on
/// `<provider>:sub` and `<provider>:aud`.
///
/// # Errors
/// Returns [`PolicyError`] for an account ID that is not 12 digits, a provider with a
/// scheme other than https, a port, a query, a fragment or whitespace, an invalid SPIFFE
/// ID, or an empty audience.
pub fn trust_policy(
    account_id: &str,
    provider: &str,
    spiffe_id: &str,
    audience: &str,
) -> Result<Value, PolicyError> {
    if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::InvalidAccountId(account_id.to_owned()));
    }
    let provider_name = provider_name(provider)?;
    let id = SpiffeId::new(spiffe_id).map_err(|error| PolicyError::InvalidSpiffeId {
        id: spiffe_id.to_owned(),
        reason: error.to_string(),
    })?;
    if audience.is_empty() {
        return Err(PolicyError::EmptyAudience);
    }
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {
                "Federated": format!("arn:aws:iam::{account_id}:oidc-provider/{provider_name}"),
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    format!("{provider_name}:sub"): id.as_str(),
                    format!("{provider_name}:aud"): audience,
                },
            },
        }],
    }))
}

/// Returns the provider as IAM names it: the issuer URL without `https://` and trailing `/`.
fn provider_name(provider: &str) -> Result<String, PolicyError> {
    let invalid = || PolicyError::InvalidProvider(provider.to_owned());
    let without_scheme = match provider.split_once("://") {
        Some(("https", rest)) => rest,
        Some(_) => return Err(invalid()),
        None => provider,
    };
    let name = without_scheme.trim_end_matches('/');
    let host = name.split('/').next().unwrap_or_default();
    let bad_char = |c: char| c.is_whitespace() || matches!(c, '?' | '#' | '@' | ':' | '"');
    if host.is_empty() || name.contains(bad_char) || name.contains("//") {
        return Err(invalid());
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://example.org/workload/app";

    #[test]
    fn policy_pins_sub_and_aud() {
        let policy = trust_policy(
            "123456789012",
            "spire-oidc.example.org",
            ID,
            "sts.amazonaws.com",
        )
        .unwrap();
        let statement = &policy["Statement"][0];
        assert_eq!(policy["Version"], "2012-10-17");
        assert_eq!(statement["Effect"], "Allow");
        assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(
            statement["Principal"]["Federated"],
            "arn:aws:iam::123456789012:oidc-provider/spire-oidc.example.org"
        );
        let equals = &statement["Condition"]["StringEquals"];
        assert_eq!(equals["spire-oidc.example.org:sub"], ID);
        assert_eq!(equals["spire-oidc.example.org:aud"], "sts.amazonaws.com");
        assert_eq!(equals.as_object().unwrap().len(), 2);
    }

    #[test]
    fn provider_scheme_and_slash_removed() {
        let policy = trust_policy("123456789012", "https://oidc.example.org/td/", ID, "a").unwrap();
        let equals = &policy["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(equals["oidc.example.org/td:sub"], ID);
        assert_eq!(
            policy["Statement"][0]["Principal"]["Federated"],
            "arn:aws:iam::123456789012:oidc-provider/oidc.example.org/td"
        );
    }

    #[test]
    fn invalid_inputs_rejected() {
        let ok = |account: &str, provider: &str, id: &str, aud: &str| {
            trust_policy(account, provider, id, aud)
        };
        assert!(matches!(
            ok("12345678901", "h.example", ID, "a"),
            Err(PolicyError::InvalidAccountId(_))
        ));
        assert!(matches!(
            ok("12345678901a", "h.example", ID, "a"),
            Err(PolicyError::InvalidAccountId(_))
        ));
        for provider in [
            "",
            "http://h.example",
            "h.example:443",
            "h.example?x=1",
            "h.example#f",
            "h example",
            "https://",
        ] {
            assert!(
                matches!(
                    ok("123456789012", provider, ID, "a"),
                    Err(PolicyError::InvalidProvider(_))
                ),
                "{provider:?} accepted"
            );
        }
        assert!(matches!(
            ok("123456789012", "h.example", "spiffe://Example.org/x", "a"),
            Err(PolicyError::InvalidSpiffeId { .. })
        ));
        assert!(matches!(
            ok("123456789012", "h.example", ID, ""),
            Err(PolicyError::EmptyAudience)
        ));
    }
}
