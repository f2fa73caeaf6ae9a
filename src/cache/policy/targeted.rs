//! Targeted cache-control fields (RFC 9213): `CDN-Cache-Control` and the other response
//! fields on the layer's *target list*. The first field of the list that a response
//! carries with a valid, non-empty value rules this cache's storing and freshness
//! decisions for that response *instead of* its `Cache-Control` and `Expires` (§2.2);
//! without one, `Cache-Control` and `Expires` rule as usual.
//!
//! A targeted field is an RFC 8941 Dictionary (§2.1), parsed by `sfv` with its strict
//! error handling: a field that does not parse (`max-age =60`, `MaX-aGe=60`, `max-age=1,`)
//! is ignored as if absent, and so is an empty one. A known directive whose value has
//! another type than the one RFC 9213 §2.1 infers for it (`max-age="60"`, `max-age=1.5`,
//! `max-age=-1`, `private=x`) is not consumed (§2.1: implementations "SHOULD NOT consume
//! values that violate these inferred constraints"), but the field is valid and still
//! rules. Such a field is a mistake of the origin's, and the cache fails closed on both
//! sides of it: a restrictive directive with such a value still restricts, and the
//! restrictive directives of the `Cache-Control` it sets aside (`no-store`, `private`,
//! `no-cache`, `must-revalidate`, `proxy-revalidate`) apply too, as restrictions only (its
//! `must-revalidate` grants no §3.5 permission, its `no-store` is not lifted by the
//! targeted field's `must-understand`), so that neither a mistyped
//! `CDN-Cache-Control: private=x` nor `Cache-Control: private` beside a mistyped
//! `CDN-Cache-Control: max-age="60"` lets one user's response be stored for everyone.
//! Lifetimes are still the targeted field's (its valid members'). `?0` is simply false,
//! and no mistake. Unknown directives and parameters are ignored, but a field that names
//! no directive the cache knows (`maxage=60`, misspelt) is taken for such a mistake too.
//! A repeated directive (two lines from two middlewares, or a client's value an origin
//! reflects as a line of its own) counts the most restrictive way, as `Cache-Control`'s
//! do, not as RFC 8941's last value: `private, private=?0` is `private`.
//!
//! Targeted fields are response fields only: a request's are never read.
//!
//! Forwarding: the field is stored and forwarded downstream unchanged. RFC 9213 §3 says
//! CDN caches using `CDN-Cache-Control` "will typically forward this header so that
//! downstream CDN caches can use it as well" (they MAY remove it when it is known to be
//! unused downstream), and §2.2 says fields *not* on a cache's target list "MUST be
//! passed through".

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderMap, HeaderName};
use sfv::visitor::{DictionaryVisitor, EntryVisitor};
use sfv::{BareItem, Dictionary, KeyRef, ListEntry, Parser, Version};

use super::cache_control::{CacheControl, MAX_DELTA_SECONDS};
use super::{Policy, is_tchar, is_unstored_field};

/// The longest targeted field (all its lines joined) the cache parses; a longer one is
/// ignored like an invalid one. Real ones are a few dozen bytes.
pub(crate) const MAX_FIELD_LEN: usize = 4096;

/// The directives that rule a response in this cache, and its headers as the freshness
/// rules must see them.
#[derive(Debug)]
pub(crate) struct ResponseDirectives<'h> {
    /// The ruling directives: the targeted field's, or the response's `Cache-Control`.
    pub(crate) cc: CacheControl,
    /// The response's headers without `Expires` when a targeted field rules (RFC 9213
    /// §2.2: the cache "MUST ignore the Cache-Control and Expires header fields"); the
    /// response's own headers otherwise. Borrowed unless there was an `Expires` to drop.
    pub(crate) headers: Cow<'h, HeaderMap>,
    /// The targeted field that rules; `None` when `Cache-Control` does.
    pub(crate) target: Option<HeaderName>,
    /// The response's own `Cache-Control` when a targeted field overrides it: the fields
    /// its qualified `private="…"` / `no-cache="…"` name are still not stored (keeping a
    /// field out of shared caches is never wrong, and the origin asked for it).
    overridden: Option<CacheControl>,
    /// The cache's target list: fields it decides by, which an origin's `Connection` may
    /// not drop from the entry (see [`is_unstored_field`]).
    targets: &'h [HeaderName],
}

impl<'h> ResponseDirectives<'h> {
    /// The directives of a response with `headers`, for a cache whose target list is
    /// `targets` (most applicable first).
    pub(crate) fn of(targets: &'h [HeaderName], headers: &'h HeaderMap) -> Self {
        for name in targets {
            let Some(Targeted { mut cc, mistyped }) = parse_field(headers, name) else {
                continue;
            };
            tracing::trace!(field = %name, "targeted cache-control rules this response");
            let overridden = CacheControl::parse(headers);
            if mistyped {
                report_mistake(name);
                cc.restrict_by(&overridden);
            }
            let view = if headers.contains_key(header::EXPIRES) {
                let mut without = headers.clone();
                without.remove(header::EXPIRES);
                Cow::Owned(without)
            } else {
                Cow::Borrowed(headers)
            };
            return Self {
                cc,
                headers: view,
                target: Some(name.clone()),
                overridden: Some(overridden),
                targets,
            };
        }
        Self {
            cc: CacheControl::parse(headers),
            headers: Cow::Borrowed(headers),
            target: None,
            overridden: None,
            targets,
        }
    }

    /// Whether the response field `name` is kept out of the entry: see
    /// [`is_unstored_field`], for the ruling directives and for an overridden
    /// `Cache-Control`'s field names.
    pub(crate) fn is_unstored_field(
        &self,
        name: &HeaderName,
        headers: &HeaderMap,
        share_set_cookie: bool,
    ) -> bool {
        // A field on the target list decides as `Cache-Control` does: named by the
        // origin's `Connection`, it stays all the same (as the proxy keeps it), or the
        // entry, and a 304 merged into it, was judged without it (review SH).
        let targeted = self.targets.contains(name);
        is_unstored_field(name, headers, &self.cc, share_set_cookie, targeted)
            || self
                .overridden
                .as_ref()
                .is_some_and(|cc| is_unstored_field(name, headers, cc, share_set_cookie, targeted))
    }

    /// The field names the response's qualified `private="…"` and `no-cache="…"` keep
    /// out of shared caches (the ruling directives' and an overridden `Cache-Control`'s),
    /// each list as `(private, no_cache)`.
    pub(crate) fn kept_out_fields(&self) -> (Vec<&str>, Vec<&str>) {
        let all = std::iter::once(&self.cc).chain(self.overridden.as_ref());
        let private = all.clone().flat_map(|cc| &cc.private_fields);
        let no_cache = all.flat_map(|cc| &cc.no_cache_fields);
        (
            private.map(String::as_str).collect(),
            no_cache.map(String::as_str).collect(),
        )
    }
}

/// Says once per process, as a warning, that an origin sends a targeted field with a
/// mistake in it (then at debug level): the operator sees why such responses are cached
/// less than the field meant (`Cache-Control`'s restrictions apply too), and the origin's
/// every response cannot flood the log.
fn report_mistake(field: &HeaderName) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(%field, "targeted cache-control field with a mistyped member or no known directive: Cache-Control's restrictions apply too");
        return;
    }
    tracing::warn!(
        %field,
        "a response's targeted cache-control field has a member of the wrong type or names \
         no directive the cache knows; Cache-Control's no-store, private, no-cache and \
         must-revalidate apply beside it (further ones are logged at debug level)"
    );
}

impl Policy {
    /// Sets the target list (RFC 9213 §2.2): the targeted cache-control fields this cache
    /// obeys, most applicable first. Empty (the default) turns targeted fields off.
    pub(crate) fn set_targets(&mut self, targets: impl IntoIterator<Item = HeaderName>) {
        let mut list: Vec<HeaderName> = Vec::new();
        for name in targets {
            // A repeated name would only be looked up twice.
            if !list.contains(&name) {
                list.push(name);
            }
        }
        self.targets = list;
    }

    /// The directives that rule a response with `headers` in this cache.
    pub(crate) fn response_directives<'h>(
        &'h self,
        headers: &'h HeaderMap,
    ) -> ResponseDirectives<'h> {
        ResponseDirectives::of(&self.targets, headers)
    }
}

/// A valid targeted field, read.
#[derive(Debug, PartialEq)]
pub(crate) struct Targeted {
    /// Its directives (the members of the right type, and restrictive ones of any).
    pub(crate) cc: CacheControl,
    /// Whether a known directive had a value of another type than RFC 9213 §2.1 infers,
    /// or the field named no directive the cache knows (`maxage=60`): a mistake of the
    /// origin's, most likely, on which the cache fails closed.
    pub(crate) mistyped: bool,
}

/// A targeted field's directives; `None` when the response does not carry it, or carries
/// it empty, too large or invalid (RFC 9213 §2.1: then "that field MUST be ignored").
pub(crate) fn parse_field(headers: &HeaderMap, name: &HeaderName) -> Option<Targeted> {
    let mut lines = headers
        .get_all(name)
        .iter()
        .map(|value| value.as_bytes().trim_ascii())
        .filter(|line| !line.is_empty())
        .peekable();
    lines.peek()?;
    // RFC 8941 §4.2: several lines parse as one, joined by commas.
    let mut joined = Vec::new();
    for line in lines {
        let separator = if joined.is_empty() { 0 } else { 2 };
        if joined
            .len()
            .saturating_add(separator)
            .saturating_add(line.len())
            > MAX_FIELD_LEN
        {
            tracing::debug!(field = %name, limit = MAX_FIELD_LEN, "targeted cache-control field too large; ignored");
            return None;
        }
        if separator > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line);
    }
    // RFC 9213 §2.1 refers to RFC 8941, which has no Dates or Display Strings.
    let parsed = Parser::new(&joined)
        .with_version(Version::Rfc8941)
        .parse_dictionary_with_visitor(Members::default());
    let members = match parsed {
        Ok(members) if !members.is_empty() => members,
        Ok(_) => return None,
        Err(error) => {
            tracing::debug!(field = %name, %error, "targeted cache-control field is not a structured dictionary; ignored");
            return None;
        }
    };
    directives(&members)
}

/// A dictionary's members in order, a repeated key's every value kept, each in a
/// one-member [`Dictionary`]. sfv's `Dictionary` keeps a key's last value only (RFC 8941
/// §4.2.2), so a line a middleware appends, or a client's value an origin reflects as a
/// line of its own (`private=?0`, `private="x-trace"`, `max-age=31536000`), replaced the
/// origin's `private` or lifetime; read member by member, every restriction any of them
/// states holds (see [`directives`]).
#[derive(Default)]
struct Members {
    done: Vec<Dictionary>,
    current: Dictionary,
}

impl<'de> DictionaryVisitor<'de> for Members {
    type Out = Vec<Dictionary>;
    type Error = Infallible;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Self::Error> {
        if !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
        DictionaryVisitor::entry(&mut self.current, key)
    }

    fn finish(mut self) -> Result<Self::Out, Self::Error> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        Ok(self.done)
    }
}

/// The response directives of a parsed dictionary's members. A member whose value has the
/// wrong type is not consumed (RFC 9213 §2.1) and the others still rule, failing closed: a
/// restrictive directive (`no-store`, `private`, `no-cache`, `must-revalidate`,
/// `proxy-revalidate`) with any value but `?0` still restricts, so one mistyped member
/// cannot turn a targeted `private` into a shared response. A repeated key counts as
/// `Cache-Control`'s do, the most restrictive way (RFC 9111 §4.2.1 never takes a later
/// value over the first): a restriction any of its members states holds, its field lists
/// add up, its lifetimes count by the smallest, and `public` / `must-understand` hold only
/// if every member says so. (RFC 8941 §4.2.2 would keep the last value: a line appended
/// after the origin's own then lifted its `private`.)
fn directives(members: &[Dictionary]) -> Option<Targeted> {
    let mut cc = CacheControl::default();
    let (mut mistyped, mut known) = (false, false);
    // `public` and `must-understand` members that did not say true.
    let (mut not_public, mut not_understood, mut ignored) = (false, false, false);
    for (key, entry) in members.iter().flatten() {
        // Parameters are ignored (§2.1); an inner list is no directive's type.
        let value = match entry {
            ListEntry::Item(item) => Some(&item.bare_item),
            ListEntry::InnerList(_) => None,
        };
        let valid = match key.as_str() {
            "no-store" => restrictive(value, &mut cc.no_store),
            "public" => flag(value, &mut cc.public, &mut not_public),
            "must-revalidate" => restrictive(value, &mut cc.must_revalidate),
            "proxy-revalidate" => restrictive(value, &mut cc.proxy_revalidate),
            "no-transform" => flag(value, &mut cc.no_transform, &mut ignored),
            "must-understand" => flag(value, &mut cc.must_understand, &mut not_understood),
            "no-cache" => flag_or_fields(value, &mut cc.no_cache, &mut cc.no_cache_fields),
            "private" => flag_or_fields(value, &mut cc.private, &mut cc.private_fields),
            "max-age" => seconds(value, &mut cc.max_age),
            "s-maxage" => seconds(value, &mut cc.s_maxage),
            "stale-while-revalidate" => seconds(value, &mut cc.stale_while_revalidate),
            "stale-if-error" => seconds(value, &mut cc.stale_if_error),
            // Unknown and request-only directives: ignored whatever their value.
            _ => continue,
        };
        known = true;
        if !valid {
            mistyped = true;
            tracing::debug!(
                directive = key.as_str(),
                "targeted cache-control directive with a value of the wrong type; not consumed"
            );
        }
    }
    cc.public &= !not_public;
    cc.must_understand &= !not_understood;
    if !known {
        // A misspelt key (`maxage=60`) more likely than a field of extensions alone: it
        // would set `Cache-Control` aside to say nothing.
        tracing::debug!("targeted cache-control field names no directive this cache knows");
        mistyped = true;
    }
    Some(Targeted { cc, mistyped })
}

// Each of the following reads one directive's value into `to` and says whether the value
// had the directive's type: a Boolean (`?0`, false, is valid and sets nothing), or the
// String some take.

/// A restrictive directive: a Boolean; any other value is of the wrong type, yet still
/// restricts (fail closed).
fn restrictive(value: Option<&BareItem>, to: &mut bool) -> bool {
    *to |= !matches!(value, Some(BareItem::Boolean(false)));
    matches!(value, Some(BareItem::Boolean(_)))
}

/// A directive without a value: Boolean true. A member that says otherwise (`?0`, or a
/// value of the wrong type) sets `withdrawn`: these directives grant (`public` a §3.5
/// permission, `must-understand` storing despite `no-store`), so a repeat that withholds
/// them wins.
fn flag(value: Option<&BareItem>, to: &mut bool, withdrawn: &mut bool) -> bool {
    let said_true = matches!(value, Some(BareItem::Boolean(true)));
    *to |= said_true;
    *withdrawn |= !said_true;
    matches!(value, Some(BareItem::Boolean(_)))
}

/// `no-cache` and `private`: Boolean true, or a String listing field names.
fn flag_or_fields(value: Option<&BareItem>, to: &mut bool, fields: &mut Vec<String>) -> bool {
    match value {
        Some(BareItem::Boolean(true)) => *to = true,
        Some(BareItem::String(names)) => {
            let names: Vec<String> = names
                .as_str()
                .split(',')
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect();
            // A list naming no field (`""`) or with a member that is no field name
            // (`"X-Token X-User"`) keeps nothing out as written: read as the unqualified
            // directive, as `Cache-Control`'s is.
            if names.is_empty() || !names.iter().all(|name| name.bytes().all(is_tchar)) {
                *to = true;
            } else {
                fields.extend(names);
            }
        }
        Some(BareItem::Boolean(false)) => {}
        // Of the wrong type: not consumed, but restrictive (fail closed).
        _ => {
            *to = true;
            return false;
        }
    }
    true
}

/// delta-seconds: a non-negative Integer, clamped like `Cache-Control`'s (RFC 9111
/// §1.2.2).
fn seconds(value: Option<&BareItem>, to: &mut Option<u64>) -> bool {
    let Some(BareItem::Integer(n)) = value else {
        return false;
    };
    let Ok(secs) = u64::try_from(i64::from(*n)) else {
        return false;
    };
    // A repeated lifetime counts by its smallest value, as in `Cache-Control`.
    let secs = secs.min(MAX_DELTA_SECONDS);
    *to = Some(to.map_or(secs, |current| current.min(secs)));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::headers;
    use http::HeaderValue;
    use proptest::prelude::*;

    const CDN: HeaderName = HeaderName::from_static("cdn-cache-control");
    const OURS: HeaderName = HeaderName::from_static("tower-memcache-cache-control");

    fn field(value: &str) -> Option<CacheControl> {
        targeted(value).map(|parsed| parsed.cc)
    }

    fn targeted(value: &str) -> Option<Targeted> {
        parse_field(&headers(&[("cdn-cache-control", value)]), &CDN)
    }

    #[test]
    fn rfc9213_2_1_directives_map_from_structured_types() {
        let cc = field("max-age=60, s-maxage=30, no-cache=\"Set-Cookie, x-a\", private, must-revalidate, stale-if-error=5;p=1, foo=(a b), bar=?0").unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
        assert!(!cc.no_cache, "the string form only names fields");
        assert_eq!(cc.no_cache_fields, ["set-cookie", "x-a"]);
        assert!(cc.private && cc.must_revalidate);
        assert_eq!(cc.stale_if_error, Some(5), "parameters are ignored");
        assert_eq!(
            field("max-age=999999999999999").unwrap().max_age,
            Some(MAX_DELTA_SECONDS)
        );
        assert_eq!(
            field("max-age=9, max-age=1").unwrap().max_age,
            Some(1),
            "a repeated lifetime counts by its smallest"
        );
        assert_eq!(field("max-age=1, max-age=9").unwrap().max_age, Some(1));
        let repeated = field("private, no-store, private=?0, no-store=?0, public, public=?0, must-understand, must-understand=?0, no-cache=\"x-a\", no-cache=\"x-b\"").unwrap();
        assert!(repeated.private && repeated.no_store, "a restriction stays");
        assert!(
            !repeated.public && !repeated.must_understand,
            "a grant withheld"
        );
        assert_eq!(repeated.no_cache_fields, ["x-a", "x-b"], "lists add up");
        let listed = field("private, private=\"x-a\"").unwrap();
        assert!(
            listed.private,
            "a field list does not replace the bare directive"
        );
        let lines = headers(&[
            ("cdn-cache-control", "max-age=60"),
            ("cdn-cache-control", ""),
            ("cdn-cache-control", "no-store"),
        ]);
        let cc = parse_field(&lines, &CDN).unwrap().cc;
        assert!(cc.no_store && cc.max_age == Some(60), "lines join");
    }

    #[test]
    fn rfc9213_2_1_invalid_or_empty_fields_are_ignored() {
        for invalid in [
            "",
            "max-age =60",
            "max-age= 60",
            "MaX-aGe=60",
            "max-age=60, &&&",
            "max-age=60,",
            "max-age=9999999999999999",
            "max-age=@1659578233",
        ] {
            assert_eq!(field(invalid), None, "{invalid:?}");
        }
        // Valid dictionaries with a mistyped member: the member is not consumed; a
        // restrictive one still restricts.
        for mistyped in [
            "max-age=\"60\"",
            "max-age=1.5",
            "max-age=-1",
            "max-age=(1 2)",
        ] {
            let cc = field(mistyped).expect(mistyped);
            assert_eq!(cc.max_age, None, "{mistyped:?}");
        }
        assert!(!field("no-store=?0").unwrap().no_store);
        assert!(!field("no-cache=?0").unwrap().no_cache);
        assert!(field("no-store=1").unwrap().no_store, "fail closed");
        assert!(field("private=x-a").unwrap().private, "fail closed");
        let mixed = field("private, max-age=\"60\"").unwrap();
        assert!(mixed.private, "one mistyped member voids nothing else");
        assert!(
            field("none").is_some(),
            "an unknown directive is still a value"
        );
        let huge = format!("max-age=1, x=\"{}\"", "a".repeat(MAX_FIELD_LEN));
        assert_eq!(field(&huge), None, "bounded");
        let mut map = HeaderMap::new();
        map.insert(
            &CDN,
            HeaderValue::from_bytes(b"max-age=1, x=\"\xff\"").unwrap(),
        );
        assert_eq!(parse_field(&map, &CDN), None);
    }

    #[test]
    fn rfc9213_2_2_first_valid_field_of_the_list_rules_and_expires_is_ignored() {
        let response = headers(&[
            ("cache-control", "max-age=5, private=\"x-user\""),
            ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ("tower-memcache-cache-control", "max-age=600, &&"),
            ("cdn-cache-control", "max-age=600"),
            ("x-user", "u"),
        ]);
        let mut policy = Policy::default();
        let plain = policy.response_directives(&response);
        assert_eq!(plain.target, None, "off by default");
        assert_eq!(plain.cc.max_age, Some(5));
        assert!(plain.headers.contains_key(header::EXPIRES));
        policy.set_targets([OURS, CDN, CDN]);
        assert_eq!(policy.targets, [OURS, CDN], "repeats dropped");
        let targeted = policy.response_directives(&response);
        assert_eq!(
            targeted.target,
            Some(CDN),
            "the invalid first field is skipped"
        );
        assert_eq!(targeted.cc.max_age, Some(600));
        assert!(!targeted.headers.contains_key(header::EXPIRES));
        assert!(
            response.contains_key(header::EXPIRES),
            "only the view drops it"
        );
        let x_user = HeaderName::from_static("x-user");
        assert!(targeted.is_unstored_field(&x_user, &response, false));
        let mut ours = response.clone();
        ours.insert(&OURS, HeaderValue::from_static("no-store"));
        let first = policy.response_directives(&ours);
        assert_eq!(first.target, Some(OURS));
        assert!(first.cc.no_store && first.cc.max_age.is_none());
    }

    #[test]
    fn a_mistyped_member_is_marked_and_a_false_boolean_is_none() {
        for mistyped in [
            "max-age=\"60\"",
            "max-age=60, s-maxage=1.5",
            "private=1",
            "no-store=x",
            "public=\"yes\"",
            "stale-if-error=(1)",
            // No directive the cache knows: a misspelt key, most likely.
            "maxage=60",
            "foo",
        ] {
            assert!(targeted(mistyped).unwrap().mistyped, "{mistyped:?}");
        }
        for fine in [
            "max-age=60",
            "no-store=?0, no-cache=?0, private=?0, public=?0, must-revalidate=?0",
            "private=\"x-user\", foo=\"anything\", bar=1.5",
            "foobar, max-age=3600",
        ] {
            assert!(!targeted(fine).unwrap().mistyped, "{fine:?}");
        }
    }

    /// Review AA's question: a targeted field that rules with a mistyped member no longer
    /// sets aside `Cache-Control`'s restrictions, so `Cache-Control: private` beside a
    /// `CDN-Cache-Control` whose lifetime was written as a string keeps the response out
    /// of the shared cache (it was stored with heuristic freshness, for everyone).
    #[test]
    fn a_mistyped_targeted_field_keeps_cache_controls_restrictions() {
        let mut policy = Policy::default();
        policy.set_targets([CDN]);
        let directives = |cc: &str, cdn: &str| {
            let response = headers(&[("cache-control", cc), ("cdn-cache-control", cdn)]);
            let ruling = policy.response_directives(&response);
            assert_eq!(ruling.target, Some(CDN), "{cc:?} / {cdn:?}");
            ruling.cc
        };
        let cc = directives(
            "private, no-cache, must-revalidate, proxy-revalidate, no-store, max-age=5",
            "max-age=\"60\", s-maxage=600",
        );
        assert!(cc.private && cc.no_cache && cc.proxy_revalidate && cc.forbids_stale());
        assert!(cc.no_store);
        // `must-revalidate` restricts stale reuse, but is not the targeted field's
        // permission to store a response to an authenticated request (RFC 9111 §3.5).
        assert!(!cc.must_revalidate);
        assert_eq!(
            (cc.max_age, cc.s_maxage),
            (None, Some(600)),
            "lifetimes are still the targeted field's"
        );
        // A well-typed targeted field still sets `Cache-Control` aside (RFC 9213 §2.2).
        let cc = directives("private, no-store", "max-age=60, no-cache=?0");
        assert!(!cc.private && !cc.no_store && !cc.no_cache);
        assert_eq!(cc.max_age, Some(60));
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn any_field_bytes_parse_without_panic(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
        ) {
            let mut map = HeaderMap::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    map.append(CDN, value);
                }
            }
            if let Some(Targeted { cc, .. }) = parse_field(&map, &CDN) {
                let numbers = [cc.max_age, cc.s_maxage, cc.stale_while_revalidate, cc.stale_if_error];
                prop_assert!(numbers.into_iter().flatten().all(|n| n <= MAX_DELTA_SECONDS));
            }
        }

        #[test]
        fn directive_soup_parses_without_panic(text in r#"([a-zA-Z*-]{0,12}(=("[^"]{0,8}"?|-?[0-9]{0,18}(\.[0-9]{0,4})?|\?[01]|\([a-z ]{0,6}\)))?(;[a-z]{1,3}(=[0-9]{1,3})?)?[ ,]{0,2}){0,6}"#) {
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut map = HeaderMap::new();
            map.insert(CDN, value);
            let _ = parse_field(&map, &CDN);
        }
    }
}
