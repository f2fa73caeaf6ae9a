//! `Cache-Control` (RFC 9111 §5.2) and RFC 5861's stale directives, parsed once per
//! message. Unknown directives are ignored, never an error.

use http::header::{self, HeaderMap};

/// The parsed `Cache-Control` directives of a request or a response (all header lines
/// together).
///
/// Where a directive with a value appears more than once, the most restrictive value wins
/// (the smallest `max-age`, the largest `min-fresh`, …). An invalid delta-seconds value
/// (`max-age=abc`) counts as 0, which makes a response stale at once (RFC 9111 §4.2.1); a
/// value over 2^31 counts as 2^31 (§1.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` without field names (in a response: revalidate before every reuse; in a
    /// request: do not answer from the cache without revalidating). A request's
    /// `Pragma: no-cache` counts when it has no `Cache-Control`.
    pub no_cache: bool,
    /// The field names of a response's qualified `no-cache="a, b"`: those fields are not
    /// reused without revalidation (the layer does not store them).
    pub no_cache_fields: Vec<String>,
    /// `private` without field names: a shared cache must not store the response.
    pub private: bool,
    /// The field names of a qualified `private="a, b"`: those fields are not stored.
    pub private_fields: Vec<String>,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage`.
    pub s_maxage: Option<u64>,
    /// A request's `max-stale`: `Some(None)` accepts any staleness, `Some(Some(n))` up to
    /// `n` seconds.
    pub max_stale: Option<Option<u64>>,
    /// A request's `min-fresh`.
    pub min_fresh: Option<u64>,
    /// A request's `only-if-cached`.
    pub only_if_cached: bool,
    /// `no-transform` (the layer never transforms; recorded for completeness).
    pub no_transform: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// RFC 5861 `stale-while-revalidate`.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 `stale-if-error`.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Whether these response directives let a shared cache store a response to a request
    /// with `Authorization` (RFC 9111 §3.5): `public`, `s-maxage` or `must-revalidate`.
    pub(crate) fn allows_authenticated(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }

    /// Adds `other`'s restrictive response directives (`no-store`, `private`, `no-cache`,
    /// `must-revalidate`, `proxy-revalidate`) to these; lifetimes stay as they are. Only
    /// their restrictions: `other`'s `must-revalidate` comes in as `proxy-revalidate`
    /// (the same to a shared cache's stale responses), so it does not also grant what
    /// RFC 9111 §3.5 lets `must-revalidate` grant (storing a response to an authenticated
    /// request); and `other`'s `no-store` holds unless `other`'s own `must-understand`
    /// lifts it (these ones' would lift theirs, not `other`'s).
    pub(crate) fn restrict_by(&mut self, other: &CacheControl) {
        if other.no_store && !other.must_understand {
            // Stored never, whatever the status: `must-understand` has nothing left to
            // refuse or lift.
            self.must_understand = false;
        }
        self.no_store |= other.no_store;
        self.private |= other.private;
        self.no_cache |= other.no_cache;
        self.proxy_revalidate |= other.must_revalidate || other.proxy_revalidate;
    }

    /// Parses every `Cache-Control` line in `headers`.
    ///
    /// A line with bytes outside visible ASCII (obs-text, which RFC 9110 §5.6.4 allows in
    /// a quoted string: `private, community="Zürich"`) is read all the same, bytes that are
    /// not UTF-8 as replacement characters: skipped as unreadable, the line's `private` or
    /// `no-store` was lost and one user's page stored for everyone.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            // Borrowed (no copy) for the usual ASCII line.
            let text = String::from_utf8_lossy(value.as_bytes());
            for directive in split_directives(&text) {
                cc.apply(directive);
            }
            // A quoted string left open swallowed the directives after it (a `private`
            // among them, perhaps): read fail-closed, as `no-store`.
            if text.contains('"') && !quotes_balanced(&text) {
                cc.no_store = true;
            }
        }
        cc
    }

    /// Parses a request's directives: like [`parse`](Self::parse), plus HTTP/1.0's
    /// `Pragma: no-cache` when there is no `Cache-Control` (RFC 9111 §5.4).
    pub(crate) fn parse_request(headers: &HeaderMap) -> Self {
        let mut cc = Self::parse(headers);
        if !headers.contains_key(header::CACHE_CONTROL) {
            cc.no_cache |= headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("no-cache"));
        }
        cc
    }

    fn apply(&mut self, directive: &str) {
        let (name, arg) = match directive.split_once('=') {
            Some((name, arg)) => (name.trim(), Some(unquote(arg.trim()))),
            None => (directive.trim(), None),
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            // A qualified form naming no field (`private=`, `no-cache=""`) is malformed:
            // read fail-closed, as the unqualified directive.
            "no-cache" => match arg.map(field_names).filter(|names| !names.is_empty()) {
                Some(names) => self.no_cache_fields.extend(names),
                None => self.no_cache = true,
            },
            "private" => match arg.map(field_names).filter(|names| !names.is_empty()) {
                Some(names) => self.private_fields.extend(names),
                None => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "no-transform" => self.no_transform = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => self.max_age = Some(smallest(self.max_age, arg)),
            "s-maxage" => self.s_maxage = Some(smallest(self.s_maxage, arg)),
            "stale-while-revalidate" => {
                self.stale_while_revalidate = Some(smallest(self.stale_while_revalidate, arg));
            }
            "stale-if-error" => self.stale_if_error = Some(smallest(self.stale_if_error, arg)),
            "min-fresh" => {
                let value = delta_seconds(arg);
                self.min_fresh = Some(self.min_fresh.map_or(value, |c| c.max(value)));
            }
            "max-stale" => {
                // Without a value any staleness is accepted; a bound is more restrictive,
                // and the smallest bound wins.
                let value = delta_seconds(arg);
                self.max_stale = Some(match (self.max_stale, arg) {
                    (Some(Some(current)), Some(_)) => Some(current.min(value)),
                    (Some(Some(current)), None) => Some(current),
                    (_, Some(_)) => Some(value),
                    (_, None) => None,
                });
            }
            _ => {}
        }
    }

    /// Whether the response forbids serving it stale in a shared cache:
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` (RFC 9111 §5.2.2.2, §5.2.2.8,
    /// §5.2.2.10).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: a cache treats any larger value,
/// and any that overflows, as 2^31). Keeps every duration built from a header far from
/// `Duration`'s and `SystemTime`'s limits.
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Parses delta-seconds (RFC 9111 §1.2.2): digits only, clamped to
/// [`MAX_DELTA_SECONDS`]; `None` when invalid.
pub(crate) fn parse_delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only digits: a parse error can only be an overflow, which means "very long".
    Some(
        text.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |secs| secs.min(MAX_DELTA_SECONDS)),
    )
}

/// A directive's delta-seconds argument; a missing or invalid one counts as 0 (stale at
/// once, RFC 9111 §4.2.1).
fn delta_seconds(arg: Option<&str>) -> u64 {
    arg.and_then(parse_delta_seconds).unwrap_or(0)
}

fn smallest(current: Option<u64>, arg: Option<&str>) -> u64 {
    let parsed = delta_seconds(arg);
    current.map_or(parsed, |c| c.min(parsed))
}

fn unquote(arg: &str) -> &str {
    arg.strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .unwrap_or(arg)
}

/// The field names of a qualified directive's list, lower-cased. A quoted-pair (`\-`)
/// stands for its character (RFC 9110 §5.6.4): kept, `private="x\-user"` would not name
/// `X-User`, and the field would be stored. A list with a member that is no field name
/// (`"X-Token X-User"`, `"X-User;"`) is malformed and names nothing (so the directive
/// reads unqualified): taken as written, it matched no field, and every field it meant
/// to keep out was stored for everyone.
fn field_names(list: &str) -> Vec<String> {
    let names: Vec<String> = list
        .split(',')
        .map(|name| {
            let mut unescaped = String::with_capacity(name.len());
            let mut escaped = false;
            for c in name.trim().chars() {
                if c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                unescaped.push(c.to_ascii_lowercase());
            }
            unescaped
        })
        .filter(|name| !name.is_empty())
        .collect();
    if names.iter().all(|name| name.bytes().all(super::is_tchar)) {
        names
    } else {
        Vec::new()
    }
}

/// Whether every quoted string of a line is closed (quoted-pairs counted).
fn quotes_balanced(text: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// Splits on commas outside quoted strings (`no-cache="a, b"` is one directive).
pub(super) fn split_directives(text: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn cc(lines: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(header::CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn malformed_directives_read_fail_closed() {
        // A qualified form naming nothing is the unqualified directive.
        assert!(cc(&["private="]).private);
        assert!(cc(&["private=\"\", max-age=60"]).private);
        assert!(cc(&["no-cache=\" , \""]).no_cache);
        // A quoted string left open swallows what follows: not stored.
        let open = cc(&["no-cache=\"Set-Cookie, private", "max-age=60"]);
        assert!(open.no_store, "{open:?}");
        assert!(!cc(&["no-cache=\"Set-Cookie\", max-age=60"]).no_store);
        assert!(
            !cc(&["private=\"a\\\"b\""]).no_store,
            "an escaped quote is no end"
        );
        // A quoted-pair stands for its character.
        assert_eq!(cc(&["private=\"X\\-User\""]).private_fields, ["x-user"]);
        // A list that is no list of field names names nothing: unqualified.
        for malformed in [
            "private=\"X-A X-B\"",
            "private=X-A;",
            "private=\"X-A, X/B\"",
        ] {
            let parsed = cc(&[malformed]);
            assert!(
                parsed.private && parsed.private_fields.is_empty(),
                "{malformed}"
            );
        }
        assert!(cc(&["no-cache=\"X-A X-B\""]).no_cache);
    }

    #[test]
    fn rfc9111_5_2_qualified_forms_and_conflicts() {
        let parsed = cc(&[
            "no-cache=\"set-cookie, X-A\", max-age=10",
            "MAX-AGE=5, s-maxage=abc, private",
        ]);
        assert!(!parsed.no_cache, "qualified no-cache only names fields");
        assert_eq!(parsed.no_cache_fields, ["set-cookie", "x-a"]);
        assert!(parsed.private);
        assert_eq!(parsed.max_age, Some(5), "most restrictive wins");
        assert_eq!(parsed.s_maxage, Some(0), "invalid means stale");
        assert!(
            parsed.forbids_stale(),
            "s-maxage forbids stale in a shared cache"
        );
    }

    #[test]
    fn rfc9111_5_2_1_request_directives() {
        let parsed = cc(&["max-stale, min-fresh=5, min-fresh=9, only-if-cached"]);
        assert_eq!(parsed.max_stale, Some(None));
        assert_eq!(parsed.min_fresh, Some(9));
        assert!(parsed.only_if_cached);
        let bounded = cc(&["max-stale=30", "max-stale=10", "max-stale"]);
        assert_eq!(bounded.max_stale, Some(Some(10)));
        let mut pragma = HeaderMap::new();
        pragma.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(CacheControl::parse_request(&pragma).no_cache);
        pragma.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(
            !CacheControl::parse_request(&pragma).no_cache,
            "Cache-Control wins over Pragma"
        );
    }

    #[test]
    fn rfc5861_stale_directives_and_unknown_ones() {
        let parsed = cc(&["stale-while-revalidate=30, stale-if-error=\"60\", x-foo=\"a,b\", bar"]);
        assert_eq!(parsed.stale_while_revalidate, Some(30));
        assert_eq!(parsed.stale_if_error, Some(60));
        assert_eq!(
            cc(&["max-age=99999999999999999999999"]).max_age,
            Some(MAX_DELTA_SECONDS),
            "RFC 9111 §1.2.2: overflow means 2^31"
        );
    }

    /// Every numeric directive of a parsed message, request or response.
    fn numbers(cc: &CacheControl) -> Vec<u64> {
        [
            cc.max_age,
            cc.s_maxage,
            cc.min_fresh,
            cc.max_stale.flatten(),
            cc.stale_while_revalidate,
            cc.stale_if_error,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    #[test]
    fn rfc9111_1_2_2_delta_seconds_clamp_at_2_pow_31() {
        assert_eq!(parse_delta_seconds("2147483647"), Some(2_147_483_647));
        assert_eq!(parse_delta_seconds("2147483649"), Some(MAX_DELTA_SECONDS));
        assert_eq!(
            parse_delta_seconds(&u64::MAX.to_string()),
            Some(MAX_DELTA_SECONDS)
        );
        for invalid in ["", "+5", "-1", "1.5", " 1", "0x10"] {
            assert_eq!(parse_delta_seconds(invalid), None, "{invalid:?}");
        }
        let huge = cc(&["max-age=18446744073709551615, stale-if-error=18446744073709551615"]);
        assert_eq!(huge.max_age, Some(MAX_DELTA_SECONDS));
        assert_eq!(huge.stale_if_error, Some(MAX_DELTA_SECONDS));
    }

    // Default config: 256 cases unless PROPTEST_CASES says otherwise (`with_cases` would
    // ignore it).
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn any_header_bytes_parse_without_panic(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
            pragma in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    headers.append(header::CACHE_CONTROL, value);
                }
            }
            if let Ok(value) = HeaderValue::from_bytes(&pragma) {
                headers.append(header::PRAGMA, value);
            }
            for parsed in [CacheControl::parse(&headers), CacheControl::parse_request(&headers)] {
                prop_assert!(numbers(&parsed).iter().all(|n| *n <= MAX_DELTA_SECONDS));
            }
        }

        #[test]
        fn directive_soup_parses_without_panic(text in r#"([a-zA-Z-]{0,24}(=("[^"]{0,12}"?|[0-9]{0,30}))?[ ,"\\]{0,3}){0,8}"#) {
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, value);
            let parsed = CacheControl::parse_request(&headers);
            prop_assert!(numbers(&parsed).iter().all(|n| *n <= MAX_DELTA_SECONDS));
        }

        #[test]
        fn numeric_directives_saturate(
            name in prop::sample::select(vec![
                "max-age", "s-maxage", "min-fresh", "max-stale",
                "stale-while-revalidate", "stale-if-error",
            ]),
            value in any::<u128>(),
            quoted in any::<bool>(),
        ) {
            let text = if quoted { format!("{name}=\"{value}\"") } else { format!("{name}={value}") };
            let parsed = cc(&[&text]);
            let expected = u64::try_from(value).unwrap_or(u64::MAX).min(MAX_DELTA_SECONDS);
            prop_assert_eq!(numbers(&parsed), vec![expected]);
        }
    }
}

/// The examples these items once carried in their docs, kept as tests now that the
/// module is internal.
#[cfg(test)]
mod doc_examples {
    #[test]
    fn example_1() {
        use crate::cache::policy::CacheControl;
        use http::{HeaderMap, HeaderValue, header::CACHE_CONTROL};

        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60, private=\"x-user\", x-unknown"),
        );
        let cc = CacheControl::parse(&headers);
        assert!(cc.public);
        assert_eq!(cc.max_age, Some(60));
        assert!(!cc.private, "the qualified form only names fields");
        assert_eq!(cc.private_fields, ["x-user"]);
    }
}
