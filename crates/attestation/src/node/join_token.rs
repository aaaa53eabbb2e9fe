//! Join tokens: single-use secrets an operator hands to an agent to admit its node.
//!
//! A token is a random UUID version 4 in its hyphenated lowercase form, as SPIRE generates
//! them. An agent admitted with token `t` gets the ID `spiffe://<td>/spire/agent/join_token/t`
//! (see `twid_types::agent_id_for_join_token`).

/// Attestation type name stored for agents admitted by a join token, as SPIRE names it.
pub const ATTESTATION_TYPE: &str = "join_token";

/// Generates a new join token: a random UUID version 4, for example
/// `4f6b3c2a-9d1e-4b7f-8a2c-0e5d6f7a8b9c`.
///
/// The 122 random bits come from the operating system's random number generator.
pub fn generate_token() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn token_is_uuid_v4() {
        let token = generate_token();
        assert_eq!(token.len(), 36, "{token}");
        let parsed = uuid::Uuid::parse_str(&token).expect("token must parse as a UUID");
        assert_eq!(parsed.get_version_num(), 4, "{token}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{token}");
        assert_eq!(token, token.to_lowercase());
        let hyphens: Vec<usize> = token.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(hyphens, [8, 13, 18, 23], "{token}");
    }

    #[test]
    fn tokens_are_distinct() {
        let tokens: HashSet<String> = (0..1000).map(|_| generate_token()).collect();
        assert_eq!(tokens.len(), 1000);
    }
}
