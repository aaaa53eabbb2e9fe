//! Conversions between `SystemTime`, Unix seconds and the X.509 time encodings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::der::DerWriter;

const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// Returns whole Unix seconds, rounding toward the past.
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            if before.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    }
}

/// Returns the `SystemTime` of a Unix second.
pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Formats a time as RFC 3339 for messages, or as Unix seconds when out of range.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let seconds = unix_seconds(time);
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{seconds} (Unix seconds)"))
}

/// Writes a certificate validity time as RFC 5280 section 4.1.2.5 requires: UTCTime for the
/// years 1950 to 2049 and GeneralizedTime otherwise, both in UTC with whole seconds.
///
/// Returns `None`, writing nothing, for a time before year 0 or after year 9999.
pub(crate) fn write_x509_time(writer: &mut DerWriter, unix: i64) -> Option<()> {
    let time = OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let year = u32::try_from(time.year()).ok()?;
    if year > 9999 {
        return None;
    }
    let mut text = [0u8; 15];
    let mut len = 0;
    let mut push_two = |value: u32| {
        text[len] = b'0' + (value / 10 % 10) as u8;
        text[len + 1] = b'0' + (value % 10) as u8;
        len += 2;
    };
    let tag = if (1950..2050).contains(&year) {
        push_two(year % 100);
        TAG_UTC_TIME
    } else {
        push_two(year / 100);
        push_two(year % 100);
        TAG_GENERALIZED_TIME
    };
    push_two(u32::from(u8::from(time.month())));
    push_two(u32::from(time.day()));
    push_two(u32::from(time.hour()));
    push_two(u32::from(time.minute()));
    push_two(u32::from(time.second()));
    text[len] = b'Z';
    writer.tlv(tag, &text[..=len]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(unix: i64) -> Option<Vec<u8>> {
        let mut writer = DerWriter::with_capacity(32);
        write_x509_time(&mut writer, unix)?;
        Some(writer.into_vec())
    }

    #[test]
    fn utc_time_before_2050() {
        // 2049-12-31T23:59:59Z
        let der = encode(2_524_607_999).unwrap();
        assert_eq!(der[0], TAG_UTC_TIME);
        assert_eq!(&der[2..], b"491231235959Z");
    }

    #[test]
    fn generalized_time_from_2050() {
        // 2050-01-01T00:00:00Z
        let der = encode(2_524_608_000).unwrap();
        assert_eq!(der[0], TAG_GENERALIZED_TIME);
        assert_eq!(&der[2..], b"20500101000000Z");
    }

    #[test]
    fn generalized_time_before_1950() {
        // 1949-12-31T23:59:59Z
        let der = encode(-631_152_001).unwrap();
        assert_eq!(der[0], TAG_GENERALIZED_TIME);
        assert_eq!(&der[2..], b"19491231235959Z");
    }

    #[test]
    fn rejects_years_past_9999() {
        // 10000-01-01T00:00:00Z is out of range for the time crate or for X.509.
        assert_eq!(encode(253_402_300_800), None);
    }

    #[test]
    fn unix_seconds_round_toward_past() {
        let before_epoch = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(unix_seconds(before_epoch), -2);
        let after_epoch = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(unix_seconds(after_epoch), 1);
        assert_eq!(from_unix_seconds(-2), UNIX_EPOCH - Duration::from_secs(2));
    }
}
