//! Segment file names: the UTC time the segment was opened,
//! `YYYYMMDD-HHMMSS.fffffffff`, followed by the per-record `suffix`.
//!
//! The writer produces them and the reader parses them back to order the
//! segments of one stream and to skip segments older than `--since`. The
//! fixed-width time prefix makes lexical order equal time order.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc};

/// Length of the time prefix: `20230311-033705.123456789`.
pub const TIME_PREFIX_LEN: usize = 25;

/// The time prefix for a segment opened at `when`.
pub fn format_segment_time(when: DateTime<Utc>) -> String {
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}.{:09}",
        when.year(),
        when.month(),
        when.day(),
        when.hour(),
        when.minute(),
        when.second(),
        when.nanosecond().min(999_999_999)
    )
}

/// Split a file name into its opening time and suffix; `None` when the
/// name is not a segment name.
pub fn parse_segment_name(name: &str) -> Option<(DateTime<Utc>, &str)> {
    let prefix = name.get(..TIME_PREFIX_LEN)?;
    let bytes = prefix.as_bytes();
    let digits_ok = bytes
        .iter()
        .enumerate()
        .all(|(i, b)| matches!(i, 8 | 15) || b.is_ascii_digit());
    if !digits_ok || bytes[8] != b'-' || bytes[15] != b'.' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> { prefix.get(range)?.parse().ok() };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
    let time = date.and_hms_nano_opt(num(9..11)?, num(11..13)?, num(13..15)?, num(16..25)?)?;
    Some((Utc.from_utc_datetime(&time), &name[TIME_PREFIX_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let when = Utc.timestamp_opt(1678505825, 123_456_789).unwrap();
        let text = format_segment_time(when);
        assert_eq!(text, "20230311-033705.123456789");
        let name = format!("{text}_recv");
        assert_eq!(parse_segment_name(&name), Some((when, "_recv")));
        assert_eq!(parse_segment_name(&text), Some((when, "")));
    }

    #[test]
    fn other_names_are_not_segments() {
        for name in [
            "",
            "notes.txt",
            "20230311-033705",
            "20230311_033705.123456789",
            "20231311-033705.123456789",
            "2023031a-033705.123456789",
        ] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
    }
}
