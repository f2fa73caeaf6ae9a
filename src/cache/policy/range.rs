//! Range requests (RFC 9110 §14) as pure decisions: parsing `Range`, resolving it against
//! a stored representation's length, and evaluating `If-Range` (§13.1.5).
//!
//! Hand-written rather than `http-range-header`: that crate reports a malformed header
//! and an unsatisfiable one with the same error, and refuses overlapping ranges, while a
//! cache must ignore the first (answer 200), answer 416 to the second only when no range
//! overlaps the representation, and may coalesce overlaps (§14.2, §14.3). The grammar
//! (§14.1.1) is a dozen lines.

use std::ops::Range;
use std::time::Duration;

use http::header::{self, HeaderMap};

use super::freshness::http_date;

/// At most this many ranges in one `Range` field; more are ignored as a whole (§14.2
/// lets a server ignore a range set it deems abusive, and a response to many tiny ranges
/// costs more than the whole).
pub(crate) const MAX_RANGES: usize = 16;

/// Ranges closer than this are sent as one part: a multipart part's own headers cost
/// about as much (§14.3 allows coalescing ranges separated by a small gap).
const COALESCE_GAP: u64 = 80;

/// Longest decimal position read: more digits than `u64` holds is no position we could
/// serve anyway, and bounds the work on a hostile field.
const MAX_DIGITS: usize = 19;

/// One `range-spec` of a `bytes` range set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spec {
    /// `first-last` (inclusive) or `first-` (to the end).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// What a `Range` request gets from a representation of a known length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The whole representation, as if no `Range` had been sent.
    Ignore,
    /// These byte ranges (half-open, in the order the request named them, apart from
    /// each other, never empty).
    Ranges(Vec<Range<u64>>),
    /// 416: no range overlaps the representation.
    Unsatisfiable,
}

/// The range set of a request's `Range` field, or `None` when the field must be ignored:
/// absent, repeated (it is a singleton), another unit than `bytes`, malformed, or more
/// than [`MAX_RANGES`] ranges.
pub(crate) fn parse(headers: &HeaderMap) -> Option<Vec<Spec>> {
    let mut values = headers.get_all(header::RANGE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_value(value.to_str().ok()?)
}

/// [`parse`] on one field value.
pub(crate) fn parse_value(value: &str) -> Option<Vec<Spec>> {
    let value = value.trim_matches([' ', '\t']);
    let (unit, set) = value.split_once('=')?;
    // §14.1: range units are case-insensitive.
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // §5.6.1: a list may carry empty elements, which recipients skip (a few of them).
    let mut empty = 0usize;
    for element in set.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            empty += 1;
            if empty > MAX_RANGES {
                return None;
            }
            continue;
        }
        if specs.len() == MAX_RANGES {
            return None;
        }
        specs.push(parse_spec(element)?);
    }
    (!specs.is_empty()).then_some(specs)
}

/// Whether a request's `Range` is one the cache would not answer and the origin ought
/// not to be asked (§14.2, §17.15): a `bytes` range set that is invalid, repeated, has
/// more than [`MAX_RANGES`] ranges, or more than two overlapping ones. Other units are
/// the origin's to judge.
pub(crate) fn abusive(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::RANGE).iter();
    let Some(value) = values.next() else {
        return false;
    };
    if values.next().is_some() {
        return true;
    }
    // Read as bytes first: a value with a byte past ASCII (obs-text) is no valid range
    // set, yet a lenient origin may read its ranges up to that byte. Skipped as "not
    // text", `bytes=0-,0-,…,0-\xff` went to the origin as it came.
    let raw = value.as_bytes();
    let bytes = raw
        .iter()
        .position(|b| *b == b'=')
        // Spaces around the unit too: invalid, yet a lenient origin may read them as bytes.
        .is_some_and(|at| raw[..at].trim_ascii().eq_ignore_ascii_case(b"bytes"));
    bytes
        && value
            .to_str()
            .ok()
            .and_then(parse_value)
            .is_none_or(|specs| piles_up(&specs))
}

/// Whether some byte lies in more than two of `specs`, whatever the length: ranges to the
/// end and suffixes all hold the last byte; a suffix's other bytes depend on the length
/// and are not counted.
fn piles_up(specs: &[Spec]) -> bool {
    let spans: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| match *spec {
            Spec::From { first, last } => Some((first, last.unwrap_or(u64::MAX))),
            Spec::Suffix(0) => None,
            Spec::Suffix(_) => Some((u64::MAX, u64::MAX)),
        })
        .collect();
    spans.iter().any(|&(at, _)| {
        spans
            .iter()
            .filter(|&&(first, last)| first <= at && at <= last)
            .count()
            > 2
    })
}

fn parse_spec(text: &str) -> Option<Spec> {
    let (first, last) = text.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(position(last)?));
    }
    let first = position(first)?;
    let last = match last {
        "" => None,
        last => Some(position(last)?),
    };
    // §14.1.1: a last position before the first makes the spec (and the set) invalid.
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// `1*DIGIT`, bounded and checked.
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The ranges of `specs` in a representation of `len` bytes (§14.1.2): each clipped to
/// it, those wholly past its end dropped, the rest coalesced when they overlap or nearly
/// touch (§14.3), in the order the request asked for them (§14.6: a multipart response
/// SHOULD send its parts so; a coalesced range takes the place of its first spec).
pub(crate) fn resolve(specs: &[Spec], len: u64) -> Resolved {
    // Each range with the position of its spec in the request.
    let mut ranges: Vec<(Range<u64>, usize)> = Vec::with_capacity(specs.len());
    let mut empty_suffix = false;
    for (asked, spec) in specs.iter().enumerate() {
        match *spec {
            Spec::From { first, last } => {
                if first >= len {
                    continue;
                }
                let end = last.map_or(len, |last| last.saturating_add(1).min(len));
                ranges.push((first..end, asked));
            }
            // A zero-length suffix selects nothing, ever.
            Spec::Suffix(0) => {}
            Spec::Suffix(_) if len == 0 => empty_suffix = true,
            Spec::Suffix(n) => ranges.push((len.saturating_sub(n)..len, asked)),
        }
    }
    if ranges.is_empty() {
        // §14.1.1: of an empty representation, a non-zero suffix is the only satisfiable
        // spec, and it selects nothing: the (empty) whole is the answer.
        return if empty_suffix {
            Resolved::Ignore
        } else {
            Resolved::Unsatisfiable
        };
    }
    ranges.sort_by_key(|(range, _)| range.start);
    let mut merged: Vec<(Range<u64>, usize)> = Vec::with_capacity(ranges.len());
    for (range, asked) in ranges {
        match merged.last_mut() {
            Some((last, first_asked)) if range.start <= last.end.saturating_add(COALESCE_GAP) => {
                last.end = last.end.max(range.end);
                *first_asked = (*first_asked).min(asked);
            }
            _ => merged.push((range, asked)),
        }
    }
    merged.sort_by_key(|(_, asked)| *asked);
    Resolved::Ranges(merged.into_iter().map(|(range, _)| range).collect())
}

/// Whether a request's `If-Range` lets its `Range` apply to a stored response with these
/// headers (§13.1.5): an entity tag equal by strong comparison to a strong stored `ETag`,
/// or a date equal to a strong stored `Last-Modified` (one at least 60 seconds before the
/// stored `Date`, as §8.8.2.2 asks of a cache). Without `If-Range`, true.
pub(crate) fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut values = request.get_all(header::IF_RANGE).iter();
    let Some(value) = values.next() else {
        return true;
    };
    if values.next().is_some() {
        return false;
    }
    let value = value.as_bytes().trim_ascii();
    if value.first() == Some(&b'"') || value.starts_with(b"W/") {
        // A weak tag never matches a strong comparison.
        return value.len() >= 2
            && value.first() == Some(&b'"')
            && value.last() == Some(&b'"')
            && stored
                .get(header::ETAG)
                .is_some_and(|etag| etag.as_bytes().trim_ascii() == value);
    }
    let (Some(since), Some(modified)) = (
        http_date(request, &header::IF_RANGE),
        http_date(stored, &header::LAST_MODIFIED),
    ) else {
        return false;
    };
    // RFC 9110 §8.8.2.2: for a cache, at least 60 s before the entry's `Date`. One
    // second held for the origin's own clock; a `Date` the cache stamped when it received
    // a response without one (RFC 9110 §6.6.1) is another clock's, and a version written
    // in the same second as another passed for strong.
    let strong = http_date(stored, &header::DATE)
        .and_then(|date| date.duration_since(modified).ok())
        .is_some_and(|gap| gap >= Duration::from_secs(60));
    strong && since == modified
}

#[cfg(test)]
// A one-range set is what these tests mean.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::headers;
    use proptest::prelude::*;

    fn ranges(value: &str, len: u64) -> Resolved {
        parse_value(value).map_or(Resolved::Ignore, |specs| resolve(&specs, len))
    }

    #[test]
    fn rfc9110_14_1_1_range_grammar() {
        assert_eq!(
            parse_value("bytes=0-499"),
            Some(vec![Spec::From {
                first: 0,
                last: Some(499)
            }])
        );
        assert_eq!(
            parse_value("BYTES= 5- , ,-7"),
            Some(vec![
                Spec::From {
                    first: 5,
                    last: None
                },
                Spec::Suffix(7)
            ])
        );
        for malformed in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes=1-0",
            "bytes=a-1",
            "bytes=-",
            "bytes=--1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=0-1;x",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(parse_value(malformed), None, "{malformed:?}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse_value(&many), None);
        let two = headers(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
        assert_eq!(parse(&two), None);
    }

    #[test]
    fn rfc9110_14_1_2_resolving_against_a_length() {
        assert_eq!(ranges("bytes=0-4", 10), Resolved::Ranges(vec![0..5]));
        assert_eq!(ranges("bytes=5-", 10), Resolved::Ranges(vec![5..10]));
        assert_eq!(ranges("bytes=-5", 10), Resolved::Ranges(vec![5..10]));
        assert_eq!(ranges("bytes=-50", 10), Resolved::Ranges(vec![0..10]));
        assert_eq!(ranges("bytes=8-50", 10), Resolved::Ranges(vec![8..10]));
        assert_eq!(ranges("bytes=10-", 10), Resolved::Unsatisfiable);
        assert_eq!(ranges("bytes=-0", 10), Resolved::Unsatisfiable);
        assert_eq!(ranges("bytes=0-", 0), Resolved::Unsatisfiable);
        assert_eq!(ranges("bytes=-5", 0), Resolved::Ignore);
        // One satisfiable range is enough; the others are dropped.
        assert_eq!(ranges("bytes=20-30,0-1", 10), Resolved::Ranges(vec![0..2]));
    }

    #[test]
    fn rfc9110_17_15_abusive_range_sets() {
        let abusive = |value: &str| super::abusive(&headers(&[("range", value)]));
        assert!(!super::abusive(&HeaderMap::new()));
        // What the cache answers itself, and other units, are not.
        assert!(!abusive("bytes=0-99"));
        assert!(!abusive("bytes=0-99,50-149,150-199"));
        assert!(!abusive("bytes=0-,-500"));
        assert!(!abusive("items=0-1,0-1,0-1"));
        // Three ranges holding one byte: two to the end and a suffix, or three spans.
        assert!(abusive("bytes=0-,10-,-5"));
        assert!(abusive("bytes=0-99,50-149,60-60"));
        assert!(abusive("BYTES=0-,0-,0-"));
        assert!(abusive("bytes=5-1"));
        assert!(abusive("bytes =0-,0-,0-"));
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert!(abusive(&many));
        assert!(super::abusive(&headers(&[
            ("range", "bytes=0-1"),
            ("range", "bytes=2-3")
        ])));
    }

    #[test]
    fn rfc9110_14_3_overlapping_ranges_are_coalesced() {
        assert_eq!(
            ranges("bytes=0-9,5-14,0-0", 1000),
            Resolved::Ranges(vec![0..15])
        );
        assert_eq!(
            ranges("bytes=0-9,20-29", 1000),
            Resolved::Ranges(vec![0..30])
        );
    }

    #[test]
    fn rfc9110_14_6_parts_in_the_order_asked() {
        assert_eq!(
            ranges("bytes=500-599,0-9", 1000),
            Resolved::Ranges(vec![500..600, 0..10])
        );
        assert_eq!(
            ranges("bytes=-10,0-9,300-399", 1000),
            Resolved::Ranges(vec![990..1000, 0..10, 300..400])
        );
        // A coalesced range takes the place of the first spec it holds.
        assert_eq!(
            ranges("bytes=700-799,100-199,150-249,0-9", 1000),
            Resolved::Ranges(vec![700..800, 100..250, 0..10])
        );
        assert_eq!(
            ranges("bytes=700-799,150-249,100-199", 1000),
            Resolved::Ranges(vec![700..800, 100..250])
        );
    }

    #[test]
    fn rfc9110_13_1_5_if_range() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", lm),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        let ask = |value: &'static str| headers(&[("if-range", value)]);
        assert!(if_range_holds(&HeaderMap::new(), &stored));
        assert!(if_range_holds(&ask("\"v1\""), &stored));
        assert!(!if_range_holds(&ask("\"v2\""), &stored));
        assert!(!if_range_holds(&ask("W/\"v1\""), &stored));
        assert!(if_range_holds(&ask(lm), &stored));
        assert!(!if_range_holds(
            &ask("Sun, 06 Nov 1994 08:49:38 GMT"),
            &stored
        ));
        assert!(!if_range_holds(&ask("garbage"), &stored));
        // A weak stored tag never matches; a Last-Modified equal to Date is weak.
        let weak = headers(&[("etag", "W/\"v1\""), ("last-modified", lm), ("date", lm)]);
        assert!(!if_range_holds(&ask("W/\"v1\""), &weak));
        assert!(!if_range_holds(&ask(lm), &weak));
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn any_range_field_parses_without_panic_and_bounded(
            value in prop_oneof![
                ".{0,64}",
                "(?i:bytes)=([ ,]{0,2}([0-9]{0,21})?-?([0-9]{0,21})?){0,24}",
            ],
            len in prop_oneof![Just(0u64), 0u64..2000, Just(u64::MAX)],
        ) {
            if let Some(specs) = parse_value(&value) {
                prop_assert!(!specs.is_empty() && specs.len() <= MAX_RANGES);
                match resolve(&specs, len) {
                    Resolved::Ranges(ranges) => {
                        prop_assert!(ranges.len() <= specs.len());
                        // Answered in the order the request named them (`33394d0`): apart
                        // from each other in any order, not only as listed.
                        let mut sorted = ranges.clone();
                        sorted.sort_by_key(|range| range.start);
                        for pair in sorted.windows(2) {
                            prop_assert!(pair[0].end < pair[1].start);
                        }
                        for range in &ranges {
                            prop_assert!(range.start < range.end && range.end <= len);
                        }
                    }
                    Resolved::Ignore => prop_assert!(len == 0),
                    Resolved::Unsatisfiable => {}
                }
            }
        }

        #[test]
        fn any_if_range_is_judged_without_panic(
            value in proptest::collection::vec(any::<u8>(), 0..48),
            etag in "(W/)?\"[a-z0-9]{0,4}\"",
        ) {
            let mut request = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                request.insert(header::IF_RANGE, value);
            }
            let mut stored = HeaderMap::new();
            if let Ok(etag) = http::HeaderValue::from_str(&etag) {
                stored.insert(header::ETAG, etag);
            }
            let _ = if_range_holds(&request, &stored);
        }
    }
}
