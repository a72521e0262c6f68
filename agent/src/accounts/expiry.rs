//! The `expireOn` timestamp of an expiring metadata key, parsed without a date library.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z`, `+HH:MM` or `+HHMM` (so both
//! RFC 3339 and Go's / strftime's `%Y-%m-%dT%H:%M:%S%z`, which is what gcloud writes). `T` and
//! `Z` may be lower case (RFC 3339 allows it). Nothing else: no missing zone, no spaces, no
//! out-of-range field (the 31st of April, hour 24, offset minutes 60). A fraction is dropped
//! (the key expires at the start of that second). A leap second (`:60`) is accepted and counts as
//! the next second.

/// Seconds since the Unix epoch of `text`, or `None` when it is not a timestamp of the accepted
/// forms.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [_, _, b':', _, _] => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                [_, _, _, _] => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// The number made of `len` ASCII digits at `start`.
fn digits(b: &[u8], start: usize, len: usize) -> Option<i64> {
    let field = b.get(start..start + len)?;
    field.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_offsets() {
        // 2026-12-04T20:12:00Z = 1796415120 (date -d '2026-12-04T20:12:00Z' +%s).
        let t = 1_796_415_120;
        for text in [
            "2026-12-04T20:12:00Z",
            "2026-12-04t20:12:00z",
            "2026-12-04T20:12:00+00:00",
            "2026-12-04T20:12:00+0000",
            "2026-12-04T20:12:00-0000",
            "2026-12-04T20:12:00.999Z",
            "2026-12-04T23:42:00+03:30",
            "2026-12-04T23:42:00+0330",
            "2026-12-04T12:12:00-08:00",
            "2026-12-04T12:12:00-0800",
        ] {
            assert_eq!(parse_timestamp(text), Some(t), "{text}");
        }
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_timestamp("2016-12-31T23:59:60Z"), Some(1_483_228_800));
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "",
            "2026-12-04",
            "2026-12-04T20:12:00",
            "2026-12-04 20:12:00Z",
            "2026-12-04T20:12Z",
            "2026-13-04T20:12:00Z",
            "2026-04-31T20:12:00Z",
            "2025-02-29T20:12:00Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T20:60:00Z",
            "2026-12-04T20:12:61Z",
            "2026-12-04T20:12:00+24:00",
            "2026-12-04T20:12:00+00:60",
            "2026-12-04T20:12:00+000",
            "2026-12-04T20:12:00+00000",
            "2026-12-04T20:12:00.Z",
            "2026-12-04T20:12:00ZZ",
            "2026-12-04T20:12:00Z ",
            "+026-12-04T20:12:00Z",
            "2026-12-04T20:12:00 +0000",
            "2026-1２-04T20:12:00Z",
            "1796415120",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text:?}");
        }
    }
}
