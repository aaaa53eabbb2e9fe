//! Durations in Go's `time.ParseDuration` syntax, which SPIRE configuration files use.

use std::time::Duration;

use crate::ConfigError;

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MINUTE: u128 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u128 = 60 * NANOS_PER_MINUTE;

/// Fraction digits past this many are ignored, because they are below a nanosecond for every
/// unit.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Parses a duration such as `"1h"`, `"5m"`, `"90s"`, `"1h30m"`, `"1.5h"` or `"500ms"`.
///
/// The syntax is Go's `time.ParseDuration`: one or more decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`). A bare `"0"` is also accepted.
/// Unlike Go, negative durations are rejected because no setting can use one.
///
/// # Errors
/// Returns [`ConfigError::InvalidDuration`] naming the input and what is wrong with it.
pub fn parse_duration(input: &str) -> Result<Duration, ConfigError> {
    parse_nanos(input)
        .and_then(|nanos| {
            u64::try_from(nanos)
                .map(Duration::from_nanos)
                .map_err(|_| "too large, the maximum is about 584 years".to_owned())
        })
        .map_err(|reason| ConfigError::InvalidDuration {
            input: input.to_owned(),
            reason,
        })
}

fn parse_nanos(input: &str) -> Result<u128, String> {
    const EXPECTED: &str =
        "expected a number and a unit (ns, us, ms, s, m, h), such as \"90s\" or \"1h30m\"";
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, fraction, after_number) = split_number(rest).ok_or(EXPECTED)?;
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let nanos_per_unit = unit_nanos(unit).ok_or_else(|| {
            if unit.is_empty() {
                format!("missing unit after \"{whole}\"; {EXPECTED}")
            } else {
                format!("unknown unit {unit:?}; {EXPECTED}")
            }
        })?;
        total = component_nanos(whole, fraction, nanos_per_unit)
            .and_then(|nanos| total.checked_add(nanos))
            .ok_or("too large, the maximum is about 584 years")?;
        rest = after_unit;
    }
    Ok(total)
}

/// Splits `12.5ms` into `("12", "5", "ms")`. Returns `None` when no digit precedes the unit.
fn split_number(text: &str) -> Option<(&str, &str, &str)> {
    let whole_len = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (whole, after_whole) = text.split_at(whole_len);
    let (fraction, rest) = match after_whole.strip_prefix('.') {
        Some(after_dot) => {
            let fraction_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            after_dot.split_at(fraction_len)
        }
        None => ("", after_whole),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    Some((whole, fraction, rest))
}

fn unit_nanos(unit: &str) -> Option<u128> {
    match unit {
        "ns" => Some(1),
        // U+00B5 (micro sign) and U+03BC (Greek mu), as Go accepts both.
        "us" | "\u{00b5}s" | "\u{03bc}s" => Some(NANOS_PER_MICRO),
        "ms" => Some(NANOS_PER_MILLI),
        "s" => Some(NANOS_PER_SECOND),
        "m" => Some(NANOS_PER_MINUTE),
        "h" => Some(NANOS_PER_HOUR),
        _ => None,
    }
}

/// Returns `whole.fraction * nanos_per_unit`, truncated to whole nanoseconds, or `None` on
/// overflow.
fn component_nanos(whole: &str, fraction: &str, nanos_per_unit: u128) -> Option<u128> {
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole_value.checked_mul(nanos_per_unit)?;
    let significant = fraction
        .get(..MAX_FRACTION_DIGITS as usize)
        .unwrap_or(fraction);
    if !significant.is_empty() {
        let fraction_value: u128 = significant.parse().ok()?;
        let scale = 10u128.pow(u32::try_from(significant.len()).ok()?);
        nanos = nanos.checked_add(fraction_value * nanos_per_unit / scale)?;
    }
    Some(nanos)
}

/// Formats a duration in the syntax [`parse_duration`] reads, with zero components left out:
/// `1h30m`, `5m`, `90s` prints as `1m30s`, `500ms`, and zero prints as `0s`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let nanos = duration.as_nanos();
    let components = [
        (nanos / NANOS_PER_HOUR, "h"),
        (nanos % NANOS_PER_HOUR / NANOS_PER_MINUTE, "m"),
        (nanos % NANOS_PER_MINUTE / NANOS_PER_SECOND, "s"),
        (nanos % NANOS_PER_SECOND / NANOS_PER_MILLI, "ms"),
        (nanos % NANOS_PER_MILLI / NANOS_PER_MICRO, "us"),
        (nanos % NANOS_PER_MICRO, "ns"),
    ];
    let mut text = String::new();
    for (value, unit) in components {
        if value > 0 {
            text.push_str(&value.to_string());
            text.push_str(unit);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn parse_valid_table() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1h", secs(3600)),
            ("5m", secs(300)),
            ("90s", secs(90)),
            ("1h30m", secs(5400)),
            ("2h45m30s", secs(2 * 3600 + 45 * 60 + 30)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", secs(1)),
            ("+10s", secs(10)),
            ("100us", Duration::from_micros(100)),
            ("100\u{00b5}s", Duration::from_micros(100)),
            ("100\u{03bc}s", Duration::from_micros(100)),
            ("42ns", Duration::from_nanos(42)),
            ("1m1m", secs(120)),
            ("1s500ms", Duration::from_millis(1500)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
            ("720h", secs(720 * 3600)),
        ];
        for (input, expected) in cases {
            let parsed = parse_duration(input);
            assert_eq!(parsed.ok(), Some(expected), "input {input:?}");
        }
    }

    #[test]
    fn parse_invalid_table() {
        let cases = [
            ("", "expected a number and a unit"),
            ("1", "missing unit after \"1\""),
            ("10", "missing unit"),
            ("h", "expected a number and a unit"),
            ("1d", "unknown unit \"d\""),
            ("1 h", "unknown unit \" h\""),
            (" 1h", "expected a number and a unit"),
            ("1hour", "unknown unit \"hour\""),
            ("1H", "unknown unit \"H\""),
            ("-1h", "negative durations are not allowed"),
            (".s", "expected a number and a unit"),
            ("1h-5m", "unknown unit \"h-\""),
            ("abc", "expected a number and a unit"),
            ("99999999999999999999999h", "too large"),
            ("600000000h", "too large"),
        ];
        for (input, expected_reason) in cases {
            let error = parse_duration(input).expect_err(input);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid duration {input:?}: ")),
                "input {input:?}: {message}"
            );
            assert!(
                message.contains(expected_reason),
                "input {input:?}: {message}"
            );
        }
    }

    #[test]
    fn format_table() {
        let cases = [
            (Duration::ZERO, "0s"),
            (secs(3600), "1h"),
            (secs(300), "5m"),
            (secs(90), "1m30s"),
            (secs(5400), "1h30m"),
            (secs(86400), "24h"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_nanos(3_600_000_000_001), "1h1ns"),
            (Duration::from_micros(1_250), "1ms250us"),
        ];
        for (duration, expected) in cases {
            assert_eq!(format_duration(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn format_round_trips() {
        let samples = [
            Duration::from_nanos(1),
            Duration::from_nanos(987_654_321),
            secs(1),
            secs(59),
            secs(3599),
            secs(3601),
            Duration::new(100_000, 123_456_789),
        ];
        for duration in samples {
            let text = format_duration(duration);
            assert_eq!(parse_duration(&text).ok(), Some(duration), "{text}");
        }
    }
}
