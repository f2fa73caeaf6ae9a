//! HTTP dates as a cache reads them (RFC 9110 §5.6.7, RFC 9111 §4.2): all three formats
//! (IMF-fixdate, the obsolete RFC 850 and asctime forms), names matched without regard to
//! case, and nothing else.
//!
//! Hand-written because the `httpdate` crate (and the other HTTP date crates) match day and
//! month names and `GMT` case-sensitively, as RFC 9110 asks of origin servers, while RFC
//! 9111 §4.2 asks a cache to match them case-insensitively; and `httpdate` reads RFC 850's
//! two-digit years with a fixed pivot instead of RFC 9110's "not more than 50 years in the
//! future". The grammar is otherwise kept exactly: a zone other than `GMT`, a one-digit
//! hour, a missing comma or doubled spaces make the date invalid (an invalid `Expires`
//! means already expired), since being lenient there would turn an origin's mistake into
//! a long lifetime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The three-letter day names of IMF-fixdate and asctime, Monday first.
const DAYS: [&[u8]; 7] = [b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun"];

/// RFC 850's full day names.
const LONG_DAYS: [&[u8]; 7] = [
    b"monday",
    b"tuesday",
    b"wednesday",
    b"thursday",
    b"friday",
    b"saturday",
    b"sunday",
];

const MONTHS: [&[u8]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

/// Parses an HTTP-date in any of its three formats, ignoring the case of names and the
/// white space around the value. `now` decides the century of an RFC 850 two-digit year
/// (RFC 9110 §5.6.7: a year more than 50 years ahead of `now` is the most recent past year
/// with those digits). The day name must be one, but need not match the date (robust
/// parsing; only the date is used). A leap second (`:60`) counts as `:59`, the nearest
/// earlier time (RFC 9111 §4.2). `None` when the text is none of the three.
pub(crate) fn parse_http_date(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim_matches([' ', '\t']).as_bytes();
    let fields = imf_fixdate(text)
        .or_else(|| rfc850_date(text, now))
        .or_else(|| asctime_date(text))?;
    fields.to_system_time()
}

/// A calendar date and time of day, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    year: i64,
    /// 1..=12.
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Fields {
    fn to_system_time(self) -> Option<SystemTime> {
        let valid = (1..=days_in_month(self.year, self.month)).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second <= 60;
        if !valid {
            return None;
        }
        let second = self.second.min(59);
        let secs = days_from_civil(self.year, self.month, self.day)
            .checked_mul(DAY)?
            .checked_add(i64::from(self.hour * 3600 + self.minute * 60 + second))?;
        let offset = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            UNIX_EPOCH.checked_add(offset)
        } else {
            UNIX_EPOCH.checked_sub(offset)
        }
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(s: &[u8]) -> Option<Fields> {
    if s.len() != 29 || &s[3..5] != b", " || s[7] != b' ' || s[11] != b' ' || s[16] != b' ' {
        return None;
    }
    name_index(&DAYS, &s[..3])?;
    let (hour, minute, second) = time_of_day(&s[17..25])?;
    gmt(&s[25..])?;
    Some(Fields {
        year: i64::from(digits(&s[12..16])?),
        month: month(&s[8..11])?,
        day: digits(&s[5..7])?,
        hour,
        minute,
        second,
    })
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`.
fn rfc850_date(s: &[u8], now: SystemTime) -> Option<Fields> {
    let comma = s.iter().position(|b| *b == b',')?;
    name_index(&LONG_DAYS, &s[..comma])?;
    let s = s.get(comma..)?;
    // ", 06-Nov-94 08:49:37 GMT"
    if s.len() != 24 || s[1] != b' ' || s[4] != b'-' || s[8] != b'-' || s[11] != b' ' {
        return None;
    }
    let (hour, minute, second) = time_of_day(&s[12..20])?;
    gmt(&s[20..])?;
    Some(Fields {
        year: two_digit_year(digits(&s[9..11])?, now),
        month: month(&s[5..8])?,
        day: digits(&s[2..4])?,
        hour,
        minute,
        second,
    })
}

/// `Sun Nov  6 08:49:37 1994` (the day padded with a space, or two digits).
fn asctime_date(s: &[u8]) -> Option<Fields> {
    if s.len() != 24 || s[3] != b' ' || s[7] != b' ' || s[10] != b' ' || s[19] != b' ' {
        return None;
    }
    name_index(&DAYS, &s[..3])?;
    let day = match s[8] {
        b' ' => digits(&s[9..10])?,
        _ => digits(&s[8..10])?,
    };
    let (hour, minute, second) = time_of_day(&s[11..19])?;
    Some(Fields {
        year: i64::from(digits(&s[20..24])?),
        month: month(&s[4..7])?,
        day,
        hour,
        minute,
        second,
    })
}

/// `HH:MM:SS`, two digits each.
fn time_of_day(s: &[u8]) -> Option<(u32, u32, u32)> {
    if s.len() != 8 || s[2] != b':' || s[5] != b':' {
        return None;
    }
    Some((digits(&s[..2])?, digits(&s[3..5])?, digits(&s[6..8])?))
}

/// ` GMT`, in any case.
fn gmt(s: &[u8]) -> Option<()> {
    s.eq_ignore_ascii_case(b" GMT").then_some(())
}

fn month(s: &[u8]) -> Option<u32> {
    name_index(&MONTHS, s).and_then(|i| u32::try_from(i + 1).ok())
}

fn name_index(names: &[&[u8]], s: &[u8]) -> Option<usize> {
    names.iter().position(|name| name.eq_ignore_ascii_case(s))
}

/// A run of ASCII digits (at most four, so no overflow) as a number.
fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// RFC 9110 §5.6.7: a two-digit year that would be more than 50 years after `now`'s year
/// is the most recent past year with the same last two digits.
fn two_digit_year(yy: u32, now: SystemTime) -> i64 {
    let current = year_of(now);
    let candidate = current - current.rem_euclid(100) + i64::from(yy);
    if candidate > current + 50 {
        candidate - 100
    } else {
        candidate
    }
}

/// The (proleptic Gregorian, UTC) year `time` falls in.
fn year_of(time: SystemTime) -> i64 {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    civil_year(secs.div_euclid(DAY))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`); `month` is
/// 1..=12 and `year` at most four digits here, so nothing overflows.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let march_based = i64::from((month + 9) % 12);
    let day_of_year = (153 * march_based + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The year of a day counted from 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_year(days: i64) -> i64 {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based = (5 * day_of_year + 2) / 153;
    let year = year_of_era.saturating_add(era.saturating_mul(400));
    // January and February belong to the next civil year in a March-based year.
    if march_based >= 10 { year + 1 } else { year }
}

/// The last second an IMF-fixdate can write (9999-12-31T23:59:59Z).
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// `time` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the fraction of a second
/// dropped; `None` before 1970 or after 9999, which only a broken clock gives (`httpdate`
/// panics on those).
pub(crate) fn format_http_date(time: SystemTime) -> Option<String> {
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs <= LAST_HTTP_DATE).then(|| httpdate::fmt_http_date(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formatted_dates_read_back_and_out_of_range_times_are_none() {
        assert_eq!(
            format_http_date(UNIX_EPOCH + Duration::new(784_111_777, 999_999_999)).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        for secs in [
            0,
            1,
            784_111_777,
            951_782_400,
            1_780_272_000,
            LAST_HTTP_DATE,
        ] {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            let text = format_http_date(time).unwrap();
            assert_eq!(parse_http_date(&text, time), Some(time));
        }
        // httpdate panics on these; a broken clock must not panic a refresh.
        assert_eq!(
            format_http_date(UNIX_EPOCH + Duration::from_secs(LAST_HTTP_DATE + 1)),
            None
        );
        assert_eq!(format_http_date(UNIX_EPOCH - Duration::from_secs(1)), None);
    }

    /// 2026-06-01, the reference "now" for two-digit years.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_780_272_000)
    }

    fn parse(text: &str) -> Option<SystemTime> {
        parse_http_date(text, now())
    }

    const SUNDAY: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn rfc9110_5_6_7_all_three_formats() {
        let expected = Some(UNIX_EPOCH + Duration::from_secs(SUNDAY));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(parse("Sun Nov 06 08:49:37 1994"), expected);
        assert_eq!(parse("  Sun, 06 Nov 1994 08:49:37 GMT\t"), expected);
    }

    #[test]
    fn rfc9111_4_2_names_match_in_any_case() {
        let expected = parse("Thu, 18 Aug 2050 02:01:18 GMT");
        assert!(expected.is_some());
        for text in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
            "thu, 18 aug 2050 02:01:18 gmt",
            "THURSDAY, 18-aug-50 02:01:18 Gmt",
            "tHU aUG 18 02:01:18 2050",
        ] {
            assert_eq!(parse(text), expected, "{text}");
        }
    }

    #[test]
    fn rfc9110_5_6_7_two_digit_years_within_50_years() {
        let year = |yy: &str| {
            let text = format!("Monday, 01-Jan-{yy} 00:00:00 GMT");
            parse(&text).map(year_of)
        };
        // From 2026: up to 2076 is ahead, anything later is the past century.
        assert_eq!(year("26"), Some(2026));
        assert_eq!(year("76"), Some(2076));
        assert_eq!(year("77"), Some(1977));
        assert_eq!(year("94"), Some(1994));
        assert_eq!(year("00"), Some(2000));
    }

    #[test]
    fn far_future_and_far_past_dates() {
        let at = |text: &str| parse(text).map(|t| t.duration_since(UNIX_EPOCH).ok());
        assert_eq!(
            at("Tue, 19 Jan 2038 03:14:08 GMT"),
            Some(Some(Duration::from_secs(1 << 31)))
        );
        assert!(parse("Sun, 21 Nov 2286 04:00:00 GMT").is_some());
        assert_eq!(
            at("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(Some(Duration::from_secs(253_402_300_799)))
        );
        assert_eq!(
            parse("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH),
            "the epoch"
        );
        assert_eq!(
            parse("Wed, 31 Dec 1969 23:59:59 GMT"),
            UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        // A leap second is the second before it.
        assert_eq!(
            parse("Sat, 31 Dec 2016 23:59:60 GMT"),
            parse("Sat, 31 Dec 2016 23:59:59 GMT")
        );
    }

    #[test]
    fn everything_else_is_invalid() {
        for text in [
            "0",
            "",
            "-1",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 +0000",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 18 Aug 2050 24:00:00 GMT",
            "Thu, 18 Aug 2050 23:60:00 GMT",
            "Thu, 30 Feb 2050 00:00:00 GMT",
            "Thu, 29 Feb 2100 00:00:00 GMT",
            "Thu, 00 Aug 2050 00:00:00 GMT",
            "Xyz, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Abc 2050 02:01:18 GMT",
            "Thursday, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 50",
            "Thu, 18 Aug 2050 02:01:18 GMT extra",
            "Thu, 18 Aug +050 02:01:18 GMT",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert!(
            parse("Tue, 29 Feb 2000 00:00:00 GMT").is_some(),
            "leap year"
        );
    }

    #[test]
    fn year_of_matches_the_calendar() {
        assert_eq!(year_of(UNIX_EPOCH), 1970);
        assert_eq!(year_of(now()), 2026);
        let last_second_of_1999 = UNIX_EPOCH + Duration::from_secs(946_684_799);
        assert_eq!(year_of(last_second_of_1999), 1999);
        assert_eq!(year_of(last_second_of_1999 + Duration::from_secs(1)), 2000);
        assert_eq!(year_of(UNIX_EPOCH - Duration::from_secs(1)), 1969);
    }

    /// Unix seconds of every date IMF-fixdate can write from 1970 on.
    const MAX_HTTP_DATE: u64 = 253_402_300_799;

    // Default config: 256 cases unless PROPTEST_CASES says otherwise.
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Whatever httpdate writes, in any case, reads back as the same time, in all
        /// three formats.
        #[test]
        fn formatted_dates_read_back(secs in 0..=MAX_HTTP_DATE, flips in any::<u32>()) {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            let imf = httpdate::fmt_http_date(time);
            let flipped: String = imf
                .chars()
                .enumerate()
                .map(|(i, c)| if flips >> (i % 32) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            prop_assert_eq!(parse(&imf), Some(time));
            prop_assert_eq!(parse(&flipped), Some(time));
            // asctime from the same fields: "Sun Nov  6 08:49:37 1994".
            let b = imf.as_bytes();
            let day: u32 = imf[5..7].parse().unwrap();
            let asctime = format!(
                "{} {} {day:>2} {} {}",
                &imf[..3], &imf[8..11], &imf[17..25], &imf[12..16]
            );
            prop_assert_eq!(parse(&asctime), Some(time));
            prop_assert_eq!(b.len(), 29);
            // RFC 850 when the two-digit year reads back as the same century.
            let year: i64 = imf[12..16].parse().unwrap();
            if (1977..=2076).contains(&year) {
                let long = LONG_DAYS[name_index(&DAYS, &b[..3]).unwrap()];
                let long = std::str::from_utf8(long).unwrap();
                let rfc850 = format!(
                    "{long}, {}-{}-{} {} GMT",
                    &imf[5..7], &imf[8..11], &imf[14..16], &imf[17..25]
                );
                prop_assert_eq!(parse(&rfc850), Some(time));
            }
        }

        /// Any text: no panic, and whatever parses is within the four-digit years.
        #[test]
        fn any_text_parses_without_panic(
            text in prop_oneof![
                "[ -~]{0,40}",
                "[A-Za-z]{3,9}, [0-9 ]{2}[ -][A-Za-z]{3}[ -][0-9]{2,4} [0-9:]{8} [A-Za-z]{3}",
                "[A-Za-z]{3} [A-Za-z]{3} [0-9 ]{2} [0-9:]{8} [0-9]{4}",
            ],
            now_secs in any::<i64>(),
        ) {
            let offset = Duration::from_secs(now_secs.unsigned_abs());
            let now = if now_secs >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) }
                .unwrap_or(UNIX_EPOCH);
            if let Some(time) = parse_http_date(&text, now) {
                let year = year_of(time);
                prop_assert!((0..=9999).contains(&year) || text.contains('-'), "{text:?} -> {year}");
            }
        }
    }
}
