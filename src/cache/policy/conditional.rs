//! Conditional requests (RFC 9110 §13): answering a client's `If-None-Match` and
//! `If-Modified-Since` from a stored response, and the validators a cache sends when it
//! revalidates one (RFC 9111 §4.3.1).

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::cache_control::split_directives;
use super::date::parse_http_date;
use super::freshness::http_date;

/// The precondition fields a request may carry.
const PRECONDITIONS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// The stored fields a 304 carries (RFC 9110 §15.4.5), plus `Last-Modified` to guide
/// caches downstream.
pub(crate) const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// Removes a client's preconditions from a request the cache sends on its own behalf (a
/// background refresh): its client was answered already, and the refresh asks with the
/// stored validators (RFC 9111 §4.3.1). Left in, a 304 to the client's condition may
/// select no stored response (§4.3.4), and the refresh refreshed nothing.
pub(crate) fn strip_preconditions(headers: &mut HeaderMap) {
    for name in &PRECONDITIONS {
        headers.remove(name);
    }
}

/// Whether the request carries any precondition.
pub(crate) fn has_preconditions(headers: &HeaderMap) -> bool {
    PRECONDITIONS.iter().any(|name| headers.contains_key(name))
}

/// Whether [`not_modified`] may hold for the request: it reads `If-None-Match` and
/// `If-Modified-Since` alone, so a request with neither is answered in full whatever
/// else it carries (two lookups on every hit rather than five).
pub(crate) fn may_be_not_modified(headers: &HeaderMap) -> bool {
    PRECONDITIONS[..2]
        .iter()
        .any(|name| headers.contains_key(name))
}

/// Whether the request carries a precondition the cache cannot answer itself (`If-Match`,
/// `If-Unmodified-Since`); such requests go to the origin. (`If-Range` only decides
/// whether a `Range` applies, which the cache answers from a stored response: see
/// `policy::range`.)
pub(crate) fn has_origin_preconditions(headers: &HeaderMap) -> bool {
    PRECONDITIONS[2..4]
        .iter()
        .any(|name| headers.contains_key(name))
}

/// Weak comparison of two entity tags (RFC 9110 §8.8.3.2): equal opaque tags, whether or
/// not either is weak.
pub(crate) fn weak_match(a: &[u8], b: &[u8]) -> bool {
    fn opaque(tag: &[u8]) -> &[u8] {
        let tag = tag.trim_ascii();
        tag.strip_prefix(b"W/").unwrap_or(tag)
    }
    let (a, b) = (opaque(a), opaque(b));
    a.len() >= 2 && a.first() == Some(&b'"') && a == b
}

/// Whether a client's `If-None-Match` / `If-Modified-Since` is satisfied by a stored 200
/// response with these headers, received at `received`, so the answer is 304 Not Modified
/// (RFC 9110 §13.1.2, §13.1.3, §13.2.2: `If-None-Match` wins, `*` matching the stored
/// response whether or not it has an `ETag`; `If-Modified-Since` compares with
/// `Last-Modified`, else, as RFC 9111 §4.3.2 asks of a cache, the stored `Date`, else
/// the time the response was received). An `If-Modified-Since` that is not a date is
/// ignored (§13.1.3), so the full response is sent.
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap, received: SystemTime) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let etag = stored.get(header::ETAG);
        // `*` is false when a current representation exists (§13.1.2): the stored 200
        // is one, tagged or not (the origin answers such a page 304 too).
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_directives)
            .any(|tag| {
                tag == "*" || etag.is_some_and(|etag| weak_match(tag.as_bytes(), etag.as_bytes()))
            });
    }
    let Some(since) = if_modified_since(request) else {
        return false;
    };
    let modified = http_date(stored, &header::LAST_MODIFIED)
        .or_else(|| http_date(stored, &header::DATE))
        .unwrap_or(received);
    modified <= since
}

/// Adds the stored validators to a request the cache sends to revalidate a stored response
/// (RFC 9111 §4.3.1): `If-None-Match` with its `ETag`, `If-Modified-Since` with its
/// `Last-Modified`. Returns whether any was added.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    let mut added = false;
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
        added = true;
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
        added = true;
    }
    added
}

/// Whether a 304 or a HEAD response describes the same representation as the stored one
/// (RFC 9111 §4.3.3, §4.3.5): its strong `ETag` if both have one, else `Last-Modified`
/// (the same date in any of its formats); a response with neither validator matches only
/// a stored response with neither.
pub(crate) fn same_representation(fresh: &HeaderMap, stored: &HeaderMap) -> bool {
    match (fresh.get(header::ETAG), stored.get(header::ETAG)) {
        (Some(a), Some(b)) => return a.as_bytes().trim_ascii() == b.as_bytes().trim_ascii(),
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (
        fresh.contains_key(header::LAST_MODIFIED),
        stored.contains_key(header::LAST_MODIFIED),
    ) {
        (false, false) => true,
        (true, true) => same_last_modified(fresh, stored),
        _ => false,
    }
}

/// Whether a 304 names a representation other than the stored one (RFC 9111 §4.3.4: a
/// strong validator selects the stored responses with the same strong validator, a weak
/// one those it corresponds to; "If none of the stored responses contain the same strong
/// validator, then the cache MUST NOT use the new response to update any stored
/// responses"). By its `ETag` when it sends one, else by its `Last-Modified`, which must
/// be the stored one's (the same date in any of its formats). A 304 with neither names
/// none: it answers the validators the cache sent.
pub(crate) fn names_another_representation(fresh: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(tag) = fresh.get(header::ETAG) else {
        return fresh.contains_key(header::LAST_MODIFIED) && !same_last_modified(fresh, stored);
    };
    let Some(stored) = stored.get(header::ETAG) else {
        return true;
    };
    let (tag, stored) = (tag.as_bytes().trim_ascii(), stored.as_bytes().trim_ascii());
    if tag.starts_with(b"W/") {
        !weak_match(tag, stored)
    } else {
        tag != stored
    }
}

/// Whether a 304 answering a client's own conditional request selects the stored
/// response for update (RFC 9111 §4.3.4): by its `ETag` (a strong one only the same
/// strong one, a weak one any it weakly matches), else by its `Last-Modified`, which
/// must be the stored one's; a 304 with neither validator selects a stored response
/// with none either, and only when the client's condition vouches for it: an
/// `If-Modified-Since` (not overruled by `If-None-Match`, RFC 9110 §13.1.3) no later
/// than the stored response's `Date`. "Not modified since" a date before the stored
/// response was made covers it; `If-None-Match: *` says only that some representation
/// exists (§13.1.2), and a later date nothing of what came between, so such a 304
/// would date an old body anew. A condition of several lines vouches for nothing
/// (§13.1.3: a recipient ignores it): the origin may have read another of them, a
/// later date (PHP behind FastCGI keeps the last).
pub(crate) fn selects_for_update(
    fresh: &HeaderMap,
    stored: &HeaderMap,
    request: &HeaderMap,
) -> bool {
    if has_validators(fresh) {
        return !names_another_representation(fresh, stored);
    }
    if has_validators(stored) || request.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    match (if_modified_since(request), http_date(stored, &header::DATE)) {
        (Some(since), Some(made)) => since <= made,
        _ => false,
    }
}

/// The request's `If-Modified-Since` date, if it has exactly one line and that line is a
/// date. Several lines are a list of several members, which a recipient ignores (RFC 9110
/// §13.1.3): the origin may read another of them (PHP behind FastCGI keeps the last), so
/// neither the cache's own 304 nor a refresh may rest on the first.
fn if_modified_since(request: &HeaderMap) -> Option<SystemTime> {
    let mut lines = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    parse_http_date(first.to_str().ok()?, SystemTime::now())
}

/// Whether both carry the same `Last-Modified`: the same date, or, where either is not a
/// date, the same bytes.
fn same_last_modified(fresh: &HeaderMap, stored: &HeaderMap) -> bool {
    match (
        http_date(fresh, &header::LAST_MODIFIED),
        http_date(stored, &header::LAST_MODIFIED),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => match (
            fresh.get(header::LAST_MODIFIED),
            stored.get(header::LAST_MODIFIED),
        ) {
            (Some(a), Some(b)) => a.as_bytes().trim_ascii() == b.as_bytes().trim_ascii(),
            _ => false,
        },
    }
}

/// Whether a stored response has a validator the cache can revalidate it with.
pub(crate) fn has_validators(stored: &HeaderMap) -> bool {
    stored.contains_key(header::ETAG) || stored.contains_key(header::LAST_MODIFIED)
}

/// The headers of a 304 answered from a stored response.
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in NOT_MODIFIED_FIELDS {
        for value in stored.get_all(&name) {
            headers.append(name.clone(), HeaderValue::clone(value));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::freshness::tests::{date_field, with};
    use crate::cache::policy::tests::headers;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// When the stored responses of these tests were received, unless they say.
    const RECEIVED: SystemTime = UNIX_EPOCH;

    fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
        super::not_modified(request, stored, RECEIVED)
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_weak_comparison() {
        let stored = headers(&[("etag", "W/\"v1\"")]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &stored));
        // `*` matches any current representation, tagged or not (§13.1.2).
        let untagged = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &untagged));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &untagged
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        let both = headers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 2094 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, &stored));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"a,b\"")]),
            &headers(&[("etag", "\"a\"")])
        ));
    }

    #[test]
    fn only_if_none_match_and_if_modified_since_can_make_a_304() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let later = "Sun, 06 Nov 2094 08:49:37 GMT";
        for (name, value) in [
            ("if-match", "\"v1\""),
            ("if-unmodified-since", later),
            ("if-range", "\"v1\""),
        ] {
            let request = headers(&[(name, value)]);
            assert!(!may_be_not_modified(&request) && !not_modified(&request, &stored));
        }
        for (name, value) in [("if-none-match", "\"v1\""), ("if-modified-since", later)] {
            let request = headers(&[(name, value)]);
            assert!(may_be_not_modified(&request) && not_modified(&request, &stored));
        }
    }

    #[test]
    fn rfc9111_4_3_4_a_304_selects_by_its_validator() {
        let stored = headers(&[("etag", "\"v1\"")]);
        let names = |tag: &str| names_another_representation(&headers(&[("etag", tag)]), &stored);
        assert!(!names("\"v1\""));
        assert!(!names(" \"v1\" "));
        assert!(!names("W/\"v1\""), "a weak validator corresponds");
        assert!(names("\"v2\""));
        assert!(names("W/\"v2\""));
        assert!(!names_another_representation(&HeaderMap::new(), &stored));
        let weak = headers(&[("etag", "W/\"v1\"")]);
        assert!(
            names_another_representation(&headers(&[("etag", "\"v1\"")]), &weak),
            "a strong validator selects only the same strong validator"
        );
        assert!(names_another_representation(
            &headers(&[("etag", "\"v1\"")]),
            &HeaderMap::new()
        ));
    }

    #[test]
    fn rfc9111_4_3_4_a_304_to_a_clients_condition_selects_what_it_vouches_for() {
        const MADE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        let bare = headers(&[("date", MADE)]);
        let asked = |fields: &[(&'static str, &'static str)]| headers(fields);
        let none = HeaderMap::new();
        // No validator on either side: only a date the stored response was made after.
        for (condition, selected) in [
            (&[("if-modified-since", MADE)][..], true),
            (
                &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")][..],
                true,
            ),
            (
                &[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")][..],
                false,
            ),
            (&[("if-modified-since", "not a date")][..], false),
            (&[("if-none-match", "*")][..], false),
            // Several lines: the origin may have read a later one (review RE).
            (
                &[
                    ("if-modified-since", MADE),
                    ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
                ][..],
                false,
            ),
            (
                &[("if-none-match", "*"), ("if-modified-since", MADE)][..],
                false,
            ),
            (&[][..], false),
        ] {
            let request = asked(condition);
            assert_eq!(
                selects_for_update(&none, &bare, &request),
                selected,
                "{condition:?}"
            );
        }
        // A stored validator the 304 does not repeat: nothing selected.
        let tagged = headers(&[("date", MADE), ("etag", "\"v1\"")]);
        let request = asked(&[("if-modified-since", MADE)]);
        assert!(!selects_for_update(&none, &tagged, &request));
        // With validators: by them, whatever the request asked.
        let with = |fields| selects_for_update(&headers(fields), &tagged, &none);
        assert!(with(&[("etag", "\"v1\"")]));
        assert!(with(&[("etag", "W/\"v1\"")]));
        assert!(!with(&[("etag", "\"v2\"")]));
        let dated = headers(&[("etag", "\"v1\""), ("last-modified", MADE)]);
        assert!(selects_for_update(
            &headers(&[("last-modified", MADE)]),
            &dated,
            &none
        ));
        assert!(!selects_for_update(
            &headers(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &dated,
            &none
        ));
    }

    #[test]
    fn rfc9111_4_3_5_a_head_response_with_the_same_date_in_another_format_is_the_same() {
        let stored = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let same = |fields: &[(&'static str, &'static str)]| {
            same_representation(&headers(fields), &stored)
        };
        assert!(same(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]));
        assert!(same(&[("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")]));
        assert!(same(&[("last-modified", "Sun Nov  6 08:49:37 1994")]));
        assert!(!same(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]));
        assert!(!same(&[]), "a response without the stored validator");
        assert!(same_representation(&HeaderMap::new(), &HeaderMap::new()));
        assert!(!same_representation(
            &headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &HeaderMap::new()
        ));
    }

    #[test]
    fn rfc9111_4_3_4_a_304_without_etag_selects_by_its_last_modified() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let names = |fields: &[(&'static str, &'static str)]| {
            names_another_representation(&headers(fields), &stored)
        };
        assert!(!names(&[(
            "last-modified",
            "Sun, 06 Nov 1994 08:49:37 GMT"
        )]));
        assert!(
            !names(&[("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")]),
            "the same date in another format"
        );
        assert!(names(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]));
        assert!(names(&[("last-modified", "yesterday")]));
        assert!(!names(&[]), "a 304 with no validator answers the cache's");
        assert!(
            !names(&[
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")
            ]),
            "a strong entity tag selects, whatever the date"
        );
        let tag_only = headers(&[("etag", "\"v1\"")]);
        assert!(
            names_another_representation(
                &headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]),
                &tag_only
            ),
            "a date the stored response does not have corresponds to nothing stored"
        );
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since() {
        let stored = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let ask = |date: &'static str| headers(&[("if-modified-since", date)]);
        assert!(not_modified(&ask("Sun, 06 Nov 1994 08:49:37 GMT"), &stored));
        assert!(!not_modified(
            &ask("Sun, 06 Nov 1994 08:49:36 GMT"),
            &stored
        ));
        assert!(!not_modified(&ask("not a date"), &stored));
        // Obsolete formats and names in any case are dates all the same.
        assert!(not_modified(
            &ask("Sunday, 06-Nov-94 08:49:37 GMT"),
            &stored
        ));
        assert!(not_modified(&ask("sun nov  6 08:49:37 1994"), &stored));
    }

    /// Two `If-Modified-Since` lines are a list of two members, which a recipient ignores
    /// (RFC 9110 §13.1.3): an origin may read the other one, so the cache's own 304 must
    /// not rest on the first (a client could otherwise learn of, or keep, a page "not
    /// modified" by a date the origin never judged).
    #[test]
    fn rfc9110_13_1_3_several_if_modified_since_lines_are_ignored() {
        let stored = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let mut both = headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        both.append(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT"),
        );
        assert!(!not_modified(&both, &stored));
        let mut same_twice = headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        same_twice.append(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert!(!not_modified(&same_twice, &stored));
    }

    #[test]
    fn rfc9111_4_3_2_if_modified_since_without_last_modified() {
        let ask = |date: &'static str| headers(&[("if-modified-since", date)]);
        // The stored Date stands for the modification time...
        let dated = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&ask("Sun, 06 Nov 1994 08:49:37 GMT"), &dated));
        assert!(not_modified(&ask("Sun, 06 Nov 1994 09:00:00 GMT"), &dated));
        assert!(!not_modified(&ask("Sun, 06 Nov 1994 08:49:36 GMT"), &dated));
        // ... and without a Date, the time the response was received.
        let undated = HeaderMap::new();
        let received = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let at = |date| super::not_modified(&ask(date), &undated, received);
        assert!(at("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!at("Sun, 06 Nov 1994 08:49:36 GMT"));
        let later = received + Duration::from_secs(3600);
        assert!(!super::not_modified(
            &ask("Sun, 06 Nov 1994 08:49:37 GMT"),
            &undated,
            later
        ));
    }

    #[test]
    fn rfc9111_4_3_1_validators_and_4_3_5_representation_checks() {
        let stored = headers(&[
            ("etag", "\"1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let mut request = HeaderMap::new();
        assert!(add_validators(&mut request, &stored));
        assert_eq!(request["if-none-match"], "\"1\"");
        assert!(request.contains_key("if-modified-since"));
        assert!(same_representation(&headers(&[("etag", "\"1\"")]), &stored));
        assert!(!same_representation(
            &headers(&[("etag", "\"2\"")]),
            &stored
        ));
        assert!(!has_validators(&HeaderMap::new()));
        let not_modified = not_modified_headers(&headers(&[
            ("etag", "\"1\""),
            ("content-type", "text/plain"),
        ]));
        assert!(not_modified.contains_key("etag") && !not_modified.contains_key("content-type"));
    }

    /// A field value: any bytes, a date, or entity tags.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            date_field().prop_map(String::into_bytes),
            r#"(\*|(W/)?"[!#-~\x80-\xff]{0,6}"?|[ ,]){0,6}"#.prop_map(String::into_bytes),
        ]
    }

    // Default config: 256 cases unless PROPTEST_CASES says otherwise.
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn preconditions_on_any_bytes_never_panic(
            (if_none_match, if_modified_since) in (proptest::option::of(field()), proptest::option::of(field())),
            (etag, last_modified, date) in (
                proptest::option::of(field()),
                proptest::option::of(field()),
                proptest::option::of(field()),
            ),
        ) {
            let request = with(&[
                ("if-none-match", if_none_match.as_ref()),
                ("if-modified-since", if_modified_since.as_ref()),
            ]);
            let stored = with(&[
                ("etag", etag.as_ref()),
                ("last-modified", last_modified.as_ref()),
                ("date", date.as_ref()),
            ]);
            let _ = (not_modified(&request, &stored), has_preconditions(&request));
            prop_assert!(may_be_not_modified(&request) || !not_modified(&request, &stored));
            let _ = (same_representation(&request, &stored), not_modified_headers(&stored));
            let mut revalidation = request.clone();
            prop_assert_eq!(add_validators(&mut revalidation, &stored), has_validators(&stored));
        }

        #[test]
        fn weak_match_is_symmetric(a in field(), b in field()) {
            prop_assert_eq!(weak_match(&a, &b), weak_match(&b, &a));
            prop_assert!(!weak_match(&a, &b) || weak_match(&a, &a));
        }
    }
}

/// The examples these items once carried in their docs, kept as tests now that the
/// module is internal.
#[cfg(test)]
mod doc_examples {
    #[test]
    fn example_1() {
        use crate::cache::policy::conditional::weak_match;

        assert!(weak_match(b"W/\"1\"", b"\"1\""));
        assert!(!weak_match(b"\"1\"", b"\"2\""));
    }
}
