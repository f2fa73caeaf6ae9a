//! `Vary`: the request fields a response lists, and their values normalised for matching
//! (RFC 9111 §4.1): byte for byte, lines apart, credentials as digests, and the
//! negotiation lists RFC 9111 lets a cache read by meaning in canonical form.

use std::fmt::Write as _;

use http::header::{self, HeaderMap};

use super::is_tchar;

/// The lower-cased field names a response's `Vary` lists. A line that is not visible
/// ASCII names no field a cache can read (field names are tokens) and counts as `*`:
/// skipped, `Vary: Cookie, X-\xfc` stored one user's page as everyone's. So does a
/// member that is no token (`Cookie X-User`, `Cookie;`, `"Cookie"`): no request carries
/// a field by that name, every request matched the stored absence, and the page that
/// varied by Alice's cookie was Bob's too.
pub(crate) fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .map(|name| {
            let name = name.trim();
            if name.bytes().all(is_tchar) {
                name.to_ascii_lowercase()
            } else {
                "*".to_string()
            }
        })
        .filter(|name| !name.is_empty())
}

/// A request header's value normalised for `Vary` matching: each line as it is, byte for
/// byte (white space is compared: the layer does not know where a field's syntax allows
/// it, and a client sends its own value the same way every time); lines kept apart by
/// [`LINE_BREAK`]. `None` when absent.
///
/// Not even a line's ends are trimmed: an HTTP/1 server trims them before the handler
/// sees the value, but HTTP/2 carries `fr ` as sent (RFC 9113 §8.2.1 calls it malformed;
/// neither `h2` nor hyper refuses it), and a handler comparing it with `fr` answered it
/// apart. Trimmed, that answer was stored as the variant of `fr`, for every client.
///
/// Lines are not joined into one list (RFC 9111 §4.1 allows it, but only a list-based
/// field means the same either way): `User-Agent` and `Cookie` are no comma lists, and an
/// origin reads a repeated singleton field by one of its lines, HTTP/2 cookie crumbs as
/// `; `-joined. Joined with `, `, the two lines `(KHTML` and `like Gecko) Chrome/…`
/// selected the variant of the one line `(KHTML, like Gecko) Chrome/…`, which the origin
/// answers differently: one client's page stored for another's request.
///
/// The normalisation is lossless for the bytes that remain: bytes outside ASCII are
/// written `\xNN` and a backslash `\\`, so two values that differ in any byte (say
/// `J\xfcrgen` and `J\xf6rgen`, which a lossy UTF-8 decoding would merge) never select
/// each other's variant.
///
/// `Accept-Encoding` and `Accept-Charset` go further, as RFC 9111 §4.1 allows for values
/// "known to have identical semantics": see [`SORTED_LISTS`] and
/// [`normalized_preferences`].
pub(crate) fn normalized_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let all = headers.get_all(name);
    let mut values = all.iter().peekable();
    let first = *values.peek()?;
    if SORTED_LISTS
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name))
    {
        // One line only. An origin that reads a field by its first line (axum's
        // `headers.get`, Go's `Header.Get`) sees only that line's members, so a list
        // split in two, merged, selected the variant of the whole list with an answer
        // to part of it. No client splits these fields.
        let single = all.iter().nth(1).is_none();
        if let Some(normalized) = single.then(|| normalized_preferences(first)).flatten() {
            return Some(normalized);
        }
    }
    let credential = CREDENTIAL_FIELDS
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name));
    // One pass into one string: this runs for every varied header of every hit.
    let mut normalized = String::new();
    for (line, value) in values.enumerate() {
        if line > 0 {
            normalized.push(LINE_BREAK);
        }
        // As the handler sees it (see above): white space may be text (in a `User-Agent`
        // comment, a quoted string), and an origin that compares the value answers `a,b`
        // and `a, b` apart, and `fr ` and `fr`.
        push_escaped(&mut normalized, value.as_bytes());
    }
    if credential {
        return Some(credential_digest(&normalized));
    }
    Some(normalized)
}

/// Request fields that carry credentials. A response that varies on one is selected by
/// a digest of the value, not the value: the entry (in memcached, which has no access
/// control, and shared by every client of it) would keep each user's session cookie or
/// token in the clear for as long as the page lives.
const CREDENTIAL_FIELDS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The digest a credential field's normalised value is selected by. Its leading NUL is
/// in no normalised text ([`push_escaped`] writes control bytes out), so an entry stored
/// with a value in the clear (before digests) selects no request.
fn credential_digest(normalized: &str) -> String {
    let mut digest = String::from("\0md5:");
    digest.push_str(&crate::key::md5_hex(&[normalized.as_bytes()]));
    digest
}

/// What stands between two lines of one field in a normalised value: a byte no line's
/// normalised text holds (a field value holds no line feed, and [`push_escaped`] writes
/// every control byte out as `\xNN`).
const LINE_BREAK: char = '\n';

/// The request fields of proactive negotiation (RFC 9110 §12.5) normalised by meaning:
/// the encodings and charsets a client lists are all ones it reads, so whatever an origin
/// picks from another spelling of its list, it can read. `Accept` and `Accept-Language`
/// are compared as sent, as other fields: what they choose shows (a page's format, its
/// language), handlers choose by them in ways of their own (by the first member, by tags
/// compared as written, splitting `;q=` off, keeping the last of equal weights), and a
/// browser sends its list the same way every time (review DD).
const SORTED_LISTS: [&str; 2] = ["accept-charset", "accept-encoding"];

/// The most members of a negotiation field that are sorted; a longer list (no browser
/// sends one) is compared as it is.
const MAX_PREFERENCES: usize = 64;

/// A line of one of the [`SORTED_LISTS`] in canonical form (RFC 9110 §12.4, §12.5;
/// RFC 9111 §4.1): white space dropped, weights written `q=0.xyz` (none when 1), members
/// sorted by descending weight, then by name, names and parameter names lower-cased. So
/// `gzip, br`, `br,gzip` and `BR, gzip;q=1.0` share a variant, while `gzip;q=0.5, br`
/// (another preference) and `gzip;q=0` (gzip refused) do not share one with `br, gzip`:
/// members with weight 0 are kept, since a refusal can change what the origin sends.
///
/// Parameter values keep their case (they may be case-sensitive), and a weight is spelled
/// `q` (a handler that splits `;q=` off reads `Q=0.5` as no weight); anything outside the
/// fields' grammar (a bad weight, a second one or a
/// parameter after it, white space around `=`, quoted text, bytes outside visible ASCII,
/// more than [`MAX_PREFERENCES`] members), and an empty element, gives `None`, and the
/// caller falls back to the byte-exact normalisation: origins read such values in ways of
/// their own, and merged with the plain list, the answer one of them chose was stored for
/// every client sending that list.
fn normalized_preferences(value: &http::HeaderValue) -> Option<String> {
    let mut members: Vec<(u16, String)> = Vec::new();
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    // Quoted strings (in media-type parameters) may hold commas and semicolons, and a
    // backslash is in no token: both are left to the byte-exact comparison.
    let plain = |b: u8| b == b'\t' || ((0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if !text.bytes().all(plain) {
        return None;
    }
    for member in text.split(',') {
        let mut parts = member.split(';').map(|part| part.trim_matches([' ', '\t']));
        let name = parts.next().unwrap_or("");
        // An empty element (`, gzip`): RFC 9110 §5.6.1 skips it, but parsers differ (in
        // an `Accept-Language`, Django's finds no preference at all). No client sends one,
        // so it is compared as it is rather than as the list without it.
        if name.is_empty() || name.contains([' ', '\t']) || members.len() == MAX_PREFERENCES {
            return None;
        }
        let mut canonical = name.to_ascii_lowercase();
        let mut weight = None;
        for parameter in parts {
            // `name=value`, no white space around `=` (RFC 9110 §5.6.6); and nothing
            // after the weight, which ends a member (§12.4.2, §12.5.1). Origins read
            // such a value in different ways (a second weight, RFC 7231's
            // `accept-ext`, or no preference at all): merged with the plain member,
            // the variant one of them chose was stored for everyone.
            let (key, value) = parameter.split_once('=')?;
            if weight.is_some()
                || key == "Q"
                || key.is_empty()
                || value.is_empty()
                || key.contains([' ', '\t'])
                || value.contains([' ', '\t'])
            {
                return None;
            }
            if key == "q" {
                weight = Some(qvalue(value)?);
            } else {
                canonical.push(';');
                canonical.push_str(&key.to_ascii_lowercase());
                canonical.push('=');
                canonical.push_str(value);
            }
        }
        members.push((weight.unwrap_or(1000), canonical));
    }
    members.sort_by(|(wa, a), (wb, b)| wb.cmp(wa).then_with(|| a.cmp(b)));
    let mut normalized = String::new();
    for (index, (weight, member)) in members.iter().enumerate() {
        if index > 0 {
            normalized.push_str(", ");
        }
        normalized.push_str(member);
        if *weight < 1000 {
            // Writing to a String cannot fail.
            let _ = write!(normalized, ";q=0.{weight:03}");
        }
    }
    Some(normalized)
}

/// A weight (RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Appends `bytes` with every byte outside printable ASCII as `\xNN` and `\` doubled.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        match byte {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                out.push_str("\\x");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::headers;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn vary_values_are_normalised() {
        let map = headers(&[("accept-encoding", "gzip,   br, deflate ")]);
        assert_eq!(
            normalized_header(&map, "accept-encoding").as_deref(),
            Some("br, deflate, gzip"),
            "a negotiation field: sorted"
        );
        // On two lines, a negotiation field's lines stay apart too (an origin may read
        // the first only).
        let lines = headers(&[
            ("accept-encoding", "gzip,   br"),
            ("accept-encoding", " deflate "),
        ]);
        assert_eq!(
            normalized_header(&lines, "accept-encoding").as_deref(),
            Some("gzip,   br\n deflate ")
        );
        assert_eq!(normalized_header(&map, "accept"), None);
        // Other fields: white space kept, inside (review DD) and at the ends (review QK:
        // HTTP/2 hands a handler `fr ` as sent).
        let odd = headers(&[("x", " a,,\tb  c "), ("x", ""), ("y", "")]);
        assert_eq!(
            normalized_header(&odd, "x").as_deref(),
            Some(" a,,\\x09b  c \n")
        );
        for (one, other) in [
            ("a,b", "a, b"),
            ("a b", "a  b"),
            ("a b", "a\tb"),
            ("fr", "fr "),
            ("fr", "\tfr"),
            ("", " "),
        ] {
            assert_ne!(
                normalized_header(&headers(&[("x", one)]), "x"),
                normalized_header(&headers(&[("x", other)]), "x"),
                "{one:?} {other:?}"
            );
        }
        // Lines stay lines: `a` and `b` are not the one line `a, b` (whose meaning they
        // share only in a list-based field).
        let two = headers(&[("x", "a"), ("x", "b")]);
        let one = headers(&[("x", "a, b")]);
        assert_ne!(normalized_header(&two, "x"), normalized_header(&one, "x"));
        assert_eq!(normalized_header(&odd, "y").as_deref(), Some(""));
        // Non-UTF-8 bytes stay apart (a lossy decoding made both "J\u{fffd}rgen").
        let user = |value: &[u8]| {
            let mut map = HeaderMap::new();
            map.insert("x-user", http::HeaderValue::from_bytes(value).unwrap());
            normalized_header(&map, "x-user")
        };
        assert_ne!(user(b"J\xfcrgen"), user(b"J\xf6rgen"));
        assert_eq!(user(b"J\xfcrgen").as_deref(), Some("J\\xfcrgen"));
        // The escape itself cannot be forged by a client writing it out.
        assert_ne!(user(b"J\\xfcrgen"), user(b"J\xfcrgen"));
        let names: Vec<_> = vary_names(&headers(&[("vary", "Accept-Encoding, ACCEPT")])).collect();
        assert_eq!(names, ["accept-encoding", "accept"]);
        // A member that is no field name can select nothing: `*`.
        let names: Vec<_> =
            vary_names(&headers(&[("vary", "Cookie X-User, Accept, \"Cookie\"")])).collect();
        assert_eq!(names, ["*", "accept", "*"]);
    }

    #[test]
    fn accept_and_accept_language_are_compared_as_sent() {
        let norm = |name: &'static str, value: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            normalized_header(&map, name)
        };
        // A handler that takes the first member, compares types or tags as written,
        // splits `;q=` off or keeps the last of equal weights answers each of these
        // otherwise (review DD); a browser sends its list the same way every time.
        for (one, other) in [
            ("text/html, application/json", "application/json, text/html"),
            ("text/html,application/json", "text/html, application/json"),
            ("Text/HTML", "text/html"),
            ("text/html", "text/html;q=1"),
        ] {
            assert_ne!(norm("accept", one), norm("accept", other), "{one} {other}");
        }
        for (one, other) in [
            ("en, de", "de, en"),
            ("en;q=0.5, de", "de, en;q=0.5"),
            ("DE-de, en;q=0.5", "de-DE, en;q=0.5"),
            ("de, en; q=0.5", "de, en;q=0.5"),
            ("de, en;q=0.5", "de, en;q=0.50"),
        ] {
            assert_ne!(
                norm("accept-language", one),
                norm("accept-language", other),
                "{one} {other}"
            );
        }
        // White space at the ends too: an HTTP/1 server trims it before a handler sees
        // the value, HTTP/2 does not (review QK).
        assert_ne!(
            norm("accept-language", " de-DE,de;q=0.9 "),
            norm("accept-language", "de-DE,de;q=0.9")
        );
    }

    #[test]
    fn rfc9111_4_1_encoding_lists_are_normalised() {
        let norm = |name: &str, lines: &[&str]| {
            let mut map = HeaderMap::new();
            for line in lines {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(line).unwrap(),
                );
            }
            normalized_header(&map, name)
        };
        let encoding = |lines: &[&str]| norm("accept-encoding", lines);
        // Order among equal weights, case, white space, `q=1`.
        let br_gzip = encoding(&["gzip, br"]);
        assert_eq!(br_gzip.as_deref(), Some("br, gzip"));
        for same in [
            &["br, gzip"][..],
            &["GZIP,br"],
            &[" br , Gzip;q=1.000 "],
            &["gzip;q=1, br"],
            &["gzip; q=1 ,br"],
        ] {
            assert_eq!(encoding(same), br_gzip, "{same:?}");
        }
        // Not two lines, an empty element, a second weight, a parameter after the weight,
        // a weight in capitals or white space around `=`: origins read those in ways of
        // their own (review DD).
        for odd in [
            &["gzip", "br"][..],
            &["br", "gzip"],
            &["gzip,, br"],
            &[", br, gzip"],
            &["br, gzip,"],
            &["br;q=0;q=1, gzip"],
            &["br;q =1, gzip"],
            &["br;q=1;x=y, gzip"],
            &["br;Q=1, gzip"],
        ] {
            assert_ne!(encoding(odd), br_gzip, "{odd:?}");
        }
        // Weights order the list, and change what is asked for.
        assert_eq!(
            encoding(&["gzip;q=0.5, br"]).as_deref(),
            Some("br, gzip;q=0.500")
        );
        assert_eq!(
            encoding(&["br, gzip;q=0.50"]),
            encoding(&["gzip;q=0.5 ,br"])
        );
        assert_ne!(encoding(&["gzip;q=0.5, br"]), br_gzip);
        assert_ne!(encoding(&["gzip;q=0.5, br"]), encoding(&["br;q=0.5, gzip"]));
        // A refusal (q=0) is kept.
        assert_ne!(encoding(&["br, gzip, zstd;q=0"]), br_gzip);
        assert_eq!(
            encoding(&["br, gzip, zstd;q=0"]).as_deref(),
            Some("br, gzip, zstd;q=0.000")
        );
        // Parameter names fold, their values keep their case.
        assert_eq!(
            encoding(&["Gzip;Level=A, *;q=0.1"]).as_deref(),
            Some("gzip;level=A, *;q=0.100")
        );
        assert_ne!(encoding(&["gzip;level=A"]), encoding(&["gzip;level=a"]));
        assert_eq!(
            norm("accept-charset", &["utf-8, ISO-8859-1"]).as_deref(),
            Some("iso-8859-1, utf-8")
        );
        // Outside the grammar: compared byte for byte as other fields are.
        for odd in [
            "gzip;q=2",
            "gzip;Q=0.5",
            "gzip;q=0.5000",
            "gzip;q",
            "gzip;a=\"x,y\"",
            "gzip br",
            ";q=1",
        ] {
            assert_eq!(
                encoding(&[odd]),
                norm("x-other", &[odd]),
                "{odd:?} falls back"
            );
        }
        // Other fields keep their order and case.
        assert_ne!(norm("x-other", &["en, de"]), norm("x-other", &["de, en"]));
    }

    #[test]
    fn qvalues() {
        for (text, expected) in [
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1.001", None),
            ("0.1234", None),
            ("2", None),
            ("", None),
            ("-0", None),
            ("0.x", None),
            (".5", None),
        ] {
            assert_eq!(qvalue(text), expected, "{text:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A byte of a header value that is neither white space nor a list separator.
        fn word_byte() -> impl Strategy<Value = u8> {
            let bytes: Vec<u8> = (0x21..=0xff).filter(|b| *b != 0x7f && *b != b',').collect();
            proptest::sample::select(bytes)
        }

        proptest! {
            #![proptest_config(ProptestConfig::default())]

            /// Two values that differ other than in white space at their ends never
            /// normalise alike, whatever their bytes (no lossy decoding).
            #[test]
            fn distinct_words_stay_distinct(
                a in proptest::collection::vec(word_byte(), 1..12),
                b in proptest::collection::vec(word_byte(), 1..12),
            ) {
                prop_assume!(a != b);
                let normalise = |value: &[u8]| {
                    let mut map = HeaderMap::new();
                    map.insert("x", http::HeaderValue::from_bytes(value).unwrap());
                    normalized_header(&map, "x")
                };
                prop_assert_ne!(normalise(&a), normalise(&b));
            }

            /// Lists of encodings: the same members in any order, case and spacing
            /// normalise alike; any bytes at all normalise without panic; and two lists
            /// with different sets of (lower-cased name, weight) never share a variant.
            #[test]
            fn preferences_normalise_by_meaning(
                members in proptest::collection::vec(("[a-zA-Z*]{1,8}(-[a-zA-Z0-9]{1,8})?", proptest::option::of(0..=1000u16)), 1..8),
                rotation in 0..8usize,
                noise in proptest::collection::vec(any::<u8>(), 0..48),
                other in proptest::collection::vec(("[a-z]{1,3}", proptest::option::of(0..=1000u16)), 1..4),
            ) {
                let render = |list: &[(String, Option<u16>)], upper: bool| {
                    list.iter()
                        .map(|(name, weight)| {
                            let name = if upper { name.to_ascii_uppercase() } else { name.clone() };
                            match weight {
                                Some(w) => format!("{name} ; q={}.{:03}", w / 1000, w % 1000),
                                None => name,
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ,")
                };
                let normalise = |text: &str| {
                    let mut map = HeaderMap::new();
                    map.insert("accept-encoding", http::HeaderValue::from_str(text).unwrap());
                    normalized_header(&map, "accept-encoding")
                };
                let mut rotated = members.clone();
                let len = rotated.len();
                rotated.rotate_left(rotation % len);
                prop_assert_eq!(normalise(&render(&members, false)), normalise(&render(&rotated, true)));
                if let Ok(value) = http::HeaderValue::from_bytes(&noise) {
                    let mut map = HeaderMap::new();
                    map.insert("accept", value);
                    let _ = normalized_header(&map, "accept");
                }
                let meaning = |list: &[(String, Option<u16>)]| {
                    let mut set: Vec<_> = list.iter().map(|(n, w)| (n.to_ascii_lowercase(), w.unwrap_or(1000))).collect();
                    set.sort();
                    set
                };
                if meaning(&members) != meaning(&other) {
                    prop_assert_ne!(normalise(&render(&members, false)), normalise(&render(&other, false)));
                }
            }
        }
    }
}
