//! JSON objects that reject duplicate member names, which serde_json would otherwise
//! resolve silently by keeping the last value.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as one JSON object whose top-level member names are unique.
///
/// Nested objects are not checked.
pub(crate) fn parse_unique_object(bytes: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_slice::<UniqueObject>(bytes).map(|o| o.0)
}

struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate member {key:?}")));
            }
            map.insert(key, value);
        }
        Ok(UniqueObject(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicate_members() {
        let err = parse_unique_object(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate member \"a\""), "{err}");
    }

    #[test]
    fn rejects_non_objects_and_trailing_data() {
        assert!(parse_unique_object(b"[]").is_err());
        assert!(parse_unique_object(b"{} {}").is_err());
        assert_eq!(parse_unique_object(br#"{"a":{"b":1}}"#).unwrap().len(), 1);
    }
}
