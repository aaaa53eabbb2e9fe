//! Conversions from HCL literal expressions to setting values. Each returns the reason on
//! failure; the caller adds the file, line, key and value.
//!
//! Only literals are accepted: expressions, function calls and `${...}` interpolation are not
//! evaluated. Ports, integers and booleans may also be written as strings (`bind_port = "8081"`)
//! because SPIRE's own sample files do so.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hcl_edit::expr::{Expression, UnaryOperator};

use crate::ConfigError;

/// Error reason for an invalid port, shared by every port key.
pub(crate) const INVALID_PORT: &str = "invalid port, expected an integer 1-65535";

pub(crate) fn string(expr: &Expression) -> Result<String, String> {
    match expr {
        Expression::String(text) => Ok(text.as_str().to_owned()),
        Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => Err(
            "expected a plain quoted string; ${...} interpolation and heredocs are not evaluated \
             (load with expand_env, the --expand-env flag, to substitute environment variables)"
                .to_owned(),
        ),
        _ => Err("expected a quoted string".to_owned()),
    }
}

pub(crate) fn non_empty_string(expr: &Expression) -> Result<String, String> {
    let text = string(expr)?;
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(text)
}

pub(crate) fn path(expr: &Expression) -> Result<PathBuf, String> {
    non_empty_string(expr).map(PathBuf::from)
}

pub(crate) fn port(expr: &Expression) -> Result<u16, String> {
    integer(expr)
        .ok()
        .and_then(|value| u16::try_from(value).ok())
        .filter(|value| *value != 0)
        .ok_or_else(|| INVALID_PORT.to_owned())
}

/// Reads an integer written as a number (`-1`, `4096`) or as a string (`"4096"`).
pub(crate) fn integer(expr: &Expression) -> Result<i64, String> {
    const EXPECTED: &str = "expected an integer";
    match expr {
        Expression::Number(number) => number.value().as_i64().ok_or_else(|| EXPECTED.to_owned()),
        Expression::UnaryOp(op) if *op.operator.value() == UnaryOperator::Neg => match &op.expr {
            Expression::Number(number) => number
                .value()
                .as_i64()
                .and_then(i64::checked_neg)
                .ok_or_else(|| EXPECTED.to_owned()),
            _ => Err(EXPECTED.to_owned()),
        },
        Expression::String(text) => text.trim().parse().map_err(|_| EXPECTED.to_owned()),
        _ => Err(EXPECTED.to_owned()),
    }
}

/// Reads `true`/`false`, also as the strings `"true"`/`"false"`.
pub(crate) fn boolean(expr: &Expression) -> Result<bool, String> {
    match expr {
        Expression::Bool(value) => Ok(*value.value()),
        Expression::String(text) if text.as_str() == "true" => Ok(true),
        Expression::String(text) if text.as_str() == "false" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// Reads a duration string in Go syntax that is greater than zero.
pub(crate) fn positive_duration(expr: &Expression) -> Result<Duration, String> {
    let text = string(expr)
        .map_err(|_| "expected a duration string such as \"1h\", \"5m\" or \"90s\"".to_owned())?;
    let duration = crate::parse_duration(&text).map_err(|error| match error {
        ConfigError::InvalidDuration { reason, .. } => format!("invalid duration: {reason}"),
        other => other.to_string(),
    })?;
    if duration.is_zero() {
        return Err("invalid duration: must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// Reads a list of strings: `["US", "CA"]`.
pub(crate) fn string_list(expr: &Expression) -> Result<Vec<String>, String> {
    let Expression::Array(array) = expr else {
        return Err("expected a list of strings, such as [\"a\", \"b\"]".to_owned());
    };
    array
        .iter()
        .enumerate()
        .map(|(index, item)| {
            string(item).map_err(|reason| format!("item {index} of the list: {reason}"))
        })
        .collect()
}

/// Reads an IP literal or `localhost` (which means 127.0.0.1) without any DNS lookup.
pub(crate) fn ip_address(expr: &Expression) -> Result<IpAddr, String> {
    resolve_ip(&string(expr)?)
}

/// Accepts `localhost`, IPv4 and IPv6 literals, the latter also in brackets (`[::1]`).
pub(crate) fn resolve_ip(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed.parse().map_err(|_| {
        "expected an IP address or \"localhost\" (host names are not resolved)".to_owned()
    })
}

/// Reads an HTTP path such as `/live`.
pub(crate) fn http_path(expr: &Expression) -> Result<String, String> {
    let text = string(expr)?;
    if !text.starts_with('/') {
        return Err("expected a path starting with \"/\"".to_owned());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> Expression {
        hcl_edit::parser::parse_expr(text).unwrap()
    }

    #[test]
    fn port_table() {
        let cases = [
            ("8081", Some(8081)),
            ("\"8081\"", Some(8081)),
            ("\" 80 \"", Some(80)),
            ("1", Some(1)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("-1", None),
            ("\"abc\"", None),
            ("80.5", None),
            ("true", None),
            ("[80]", None),
        ];
        for (input, expected) in cases {
            let result = port(&expr(input));
            assert_eq!(result.clone().ok(), expected, "{input}");
            if expected.is_none() {
                assert_eq!(result.unwrap_err(), INVALID_PORT, "{input}");
            }
        }
    }

    #[test]
    fn integer_table() {
        let cases = [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("\"-5\"", Some(-5)),
            ("1048576", Some(1_048_576)),
            ("1.5", None),
            ("\"x\"", None),
            ("- \"1\"", None),
        ];
        for (input, expected) in cases {
            assert_eq!(integer(&expr(input)).ok(), expected, "{input}");
        }
    }

    #[test]
    fn boolean_table() {
        let cases = [
            ("true", Some(true)),
            ("false", Some(false)),
            ("\"true\"", Some(true)),
            ("\"false\"", Some(false)),
            ("\"yes\"", None),
            ("1", None),
        ];
        for (input, expected) in cases {
            assert_eq!(boolean(&expr(input)).ok(), expected, "{input}");
        }
    }

    #[test]
    fn string_rejects_interpolation() {
        let reason = string(&expr("\"${HOME}/x\"")).unwrap_err();
        assert!(reason.contains("expand_env"), "{reason}");
        assert_eq!(string(&expr("42")).unwrap_err(), "expected a quoted string");
    }

    #[test]
    fn string_list_reports_item() {
        assert_eq!(
            string_list(&expr("[\"US\", \"CA\"]")).unwrap(),
            vec!["US".to_owned(), "CA".to_owned()]
        );
        assert_eq!(string_list(&expr("[]")).unwrap(), Vec::<String>::new());
        let reason = string_list(&expr("[\"US\", 5]")).unwrap_err();
        assert_eq!(reason, "item 1 of the list: expected a quoted string");
        assert!(string_list(&expr("\"US\"")).is_err());
    }

    #[test]
    fn resolve_ip_table() {
        let cases = [
            ("localhost", Some("127.0.0.1")),
            ("LOCALHOST", Some("127.0.0.1")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("::1", Some("::1")),
            ("[::1]", Some("::1")),
            ("example.org", None),
            ("", None),
            ("127.0.0.1:80", None),
        ];
        for (input, expected) in cases {
            let expected = expected.map(|text| text.parse::<IpAddr>().unwrap());
            assert_eq!(resolve_ip(input).ok(), expected, "{input}");
        }
    }

    #[test]
    fn positive_duration_rejects_zero_and_numbers() {
        assert_eq!(
            positive_duration(&expr("\"1h30m\"")).unwrap(),
            Duration::from_secs(5400)
        );
        assert!(
            positive_duration(&expr("\"0s\""))
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(
            positive_duration(&expr("3600"))
                .unwrap_err()
                .contains("duration string")
        );
        assert!(
            positive_duration(&expr("\"1d\""))
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
