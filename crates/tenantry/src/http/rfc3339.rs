//! Timestamps in JSON bodies: RFC 3339 in UTC, byte for byte what chrono's own serde support
//! writes (`2026-11-29T08:07:03.123456Z`: fraction digits 0, 3, 6 or 9, `Z`), without going
//! through `core::fmt`. chrono formats through `collect_str` and its formatting machinery, a
//! large part of a response's cost when every resource carries two timestamps.
//!
//! Use as `#[serde(serialize_with = "tenantry::http::serialize_timestamp")]`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest form written here.
const MAX_LEN: usize = 30;

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match write(t, &mut buf) {
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
        // Years outside 0..=9999 and leap seconds: chrono's own (rarer) forms.
        None => t.serialize(s),
    }
}

/// `t` as a JSON string, for [`super::json_writer`].
pub(crate) fn write_json(t: &DateTime<Utc>, out: &mut Vec<u8>) {
    let mut buf = [0u8; MAX_LEN];
    match write(t, &mut buf) {
        Some(n) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..n]);
            out.push(b'"');
        }
        // chrono's own forms, through serde_json, which cannot fail for a timestamp into a
        // Vec; `null` would only stand in for an impossible error rather than a broken body.
        None => match serde_json::to_vec(t) {
            Ok(json) => out.extend_from_slice(&json),
            Err(_) => out.extend_from_slice(b"null"),
        },
    }
}

/// Writes `t` into `buf`; `None` for what only chrono's general formatter writes.
fn write(t: &DateTime<Utc>, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    // The naive UTC value once: `DateTime`'s own accessors each re-derive the local time
    // (adding a zero offset with overflow checks, for every field).
    let t = t.naive_utc();
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nano = t.nanosecond();
    if nano >= 1_000_000_000 {
        return None;
    }
    two(buf, 0, year / 100);
    two(buf, 2, year % 100);
    buf[4] = b'-';
    two(buf, 5, t.month());
    buf[7] = b'-';
    two(buf, 8, t.day());
    buf[10] = b'T';
    two(buf, 11, t.hour());
    buf[13] = b':';
    two(buf, 14, t.minute());
    buf[16] = b':';
    two(buf, 17, t.second());
    let mut n = 19;
    let (digits, mut frac) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (3, nano / 1_000_000)
    } else if nano % 1_000 == 0 {
        (6, nano / 1_000)
    } else {
        (9, nano)
    };
    if digits > 0 {
        buf[n] = b'.';
        for i in (0..digits).rev() {
            buf[n + 1 + i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        n += 1 + digits;
    }
    buf[n] = b'Z';
    Some(n + 1)
}

fn two(buf: &mut [u8], at: usize, v: u32) {
    buf[at] = b'0' + (v / 10) as u8;
    buf[at + 1] = b'0' + (v % 10) as u8;
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn same_as_chrono(t: DateTime<Utc>) {
        assert_eq!(
            serde_json::to_string(&Ours(t)).unwrap(),
            serde_json::to_string(&t).unwrap(),
            "{t:?}"
        );
    }

    #[test]
    fn every_fraction_form_and_the_edges() {
        let base = Utc.with_ymd_and_hms(2026, 11, 29, 8, 7, 3).unwrap();
        for nanos in [
            0,
            5_000_000,
            123_000_000,
            123_456_000,
            1_000,
            123_456_789,
            7,
        ] {
            same_as_chrono(base + chrono::Duration::nanoseconds(nanos));
        }
        same_as_chrono(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap());
        same_as_chrono(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap());
        // chrono's own forms: a year past 9999 and before 0, a leap second.
        same_as_chrono(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        same_as_chrono(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        same_as_chrono(leap);
    }

    proptest! {
        #[test]
        fn matches_chrono(secs in -62_167_219_200i64..253_402_300_800i64, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            same_as_chrono(t);
            // PostgreSQL keeps microseconds: the common case.
            same_as_chrono(DateTime::from_timestamp(secs, nanos / 1000 * 1000).unwrap());
        }
    }
}
