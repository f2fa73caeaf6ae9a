//! Between HTTP responses and stored entries: an entry's metadata from a response, a
//! response (full, 304 or HEAD) from an entry, and an entry refreshed by a 304
//! (RFC 9111 §4.3.4).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::cache::entry::{Entry, EntryMeta};
use crate::cache::policy::conditional::not_modified_headers;
use crate::cache::policy::date::format_http_date;
use crate::cache::policy::freshness::{Freshness, explicit_lifetime, initial_age};
use crate::cache::policy::{
    CacheControl, CacheMode, MAX_DELTA_SECONDS, Policy, answers_credentials, normalized_header,
    same_media_type,
};

/// Milliseconds since the unix epoch.
pub(crate) fn now_ms() -> u64 {
    millis(SystemTime::now())
}

pub(crate) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When an entry's response was received (or last refreshed): what RFC 9111 §4.3.2 compares
/// an `If-Modified-Since` with when the response has neither `Last-Modified` nor `Date`.
pub(crate) fn received_at(meta: &EntryMeta) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(meta.stored_at_ms))
        .unwrap_or(UNIX_EPOCH)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An entry's freshness at `now_ms`.
pub(crate) fn freshness(meta: &EntryMeta, now_ms: u64) -> Freshness {
    let resident = now_ms.saturating_sub(meta.stored_at_ms);
    Freshness {
        lifetime: Duration::from_millis(meta.fresh_for_ms),
        age: Duration::from_millis(meta.initial_age_ms.saturating_add(resident)),
        stale_while_revalidate: Duration::from_millis(meta.stale_while_revalidate_ms),
        stale_if_error: Duration::from_millis(meta.stale_if_error_ms),
        forbids_stale: meta.forbids_stale,
        no_cache: meta.no_cache,
    }
}

/// The longest an entry stays in memcached, however long its HTTP lifetime: 30 days, the
/// longest lifetime memcached takes as relative (longer ones are absolute times, which
/// depend on the server's clock and end in January 2038, see `Lifetime`). Its freshness
/// (`Age`, `Cache-Status` ttl) is the HTTP one all the same; an entry that outlives this
/// is fetched again, once a month at most.
pub(crate) const MAX_BACKEND_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long memcached keeps an entry: the rest of its freshness, then its stale windows,
/// then (when it has a validator) `keep_stale` more so it can still be revalidated, or
/// `stale_if_unreachable` more (when it may be served stale at all); at most
/// [`MAX_BACKEND_TTL`].
pub(crate) fn backend_ttl(
    meta: &EntryMeta,
    keep_stale: Duration,
    stale_if_unreachable: Option<Duration>,
) -> Duration {
    let can_revalidate = meta
        .headers
        .iter()
        .any(|(name, _)| name == header::ETAG || name == header::LAST_MODIFIED);
    let fresh_left = meta.fresh_for_ms.saturating_sub(meta.initial_age_ms);
    let mut stale = meta.stale_while_revalidate_ms.max(meta.stale_if_error_ms);
    // After the windows, not within them: an entry whose `stale-while-revalidate` was as
    // long as `keep_stale` left memcached when its window closed, and was downloaded
    // again rather than revalidated.
    if can_revalidate {
        stale = stale.saturating_add(duration_ms(keep_stale));
    }
    // Kept to stand in for an unreachable origin, unless it may never be served stale.
    if let Some(bound) = stale_if_unreachable.filter(|_| !meta.forbids_stale && !meta.no_cache) {
        stale = stale.max(duration_ms(bound));
    }
    Duration::from_millis(fresh_left.saturating_add(stale)).min(MAX_BACKEND_TTL)
}

/// Whether `meta` was stored for this request: the same canonical key, and the same
/// values of the request headers it varies on, among them every one its stored fields
/// call for.
pub(crate) fn selects(meta: &EntryMeta, canonical: &str, request_headers: &HeaderMap) -> bool {
    meta.canonical_key == canonical
        && super::shared::selects_as_its_fields_call_for(meta)
        && meta
            .vary
            .iter()
            .all(|(name, stored)| normalized_header(request_headers, name) == *stored)
}

/// The stored headers of an entry as a map (for conditionals and refreshes).
pub(crate) fn header_map(meta: &EntryMeta) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(meta.headers.len());
    for (name, value) in &meta.headers {
        map.append(name.clone(), value.clone());
    }
    map
}

/// Everything the layer decides about a response it is about to store.
pub(crate) struct Admission<'a> {
    pub(crate) policy: &'a Policy,
    /// The route's (or handler's) lifetime.
    pub(crate) chosen: Duration,
    /// The handler chose it for this response.
    pub(crate) handler_override: bool,
    /// Fields the layer itself consumes (tag and lifetime headers, Cache-Status).
    pub(crate) own_fields: &'a [HeaderName],
    pub(crate) request_time: SystemTime,
    pub(crate) response_time: SystemTime,
    /// The response answers a request with `Authorization` (or refreshes an entry that
    /// did): RFC 9111 §3.5.
    pub(crate) authenticated: bool,
}

impl Admission<'_> {
    /// The metadata of an entry for a response with these status and headers; `vary` are
    /// the selecting request header values. Generation and tags are filled in on store.
    pub(crate) fn meta(
        &self,
        canonical_key: String,
        status: StatusCode,
        headers: &HeaderMap,
        vary: Vec<(String, Option<String>)>,
    ) -> EntryMeta {
        // RFC 9213: a targeted field on the policy's list rules instead of Cache-Control
        // and Expires (the entry still keeps all three, for downstream caches).
        let ruling = self.policy.response_directives(headers);
        let mut stored: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(name, _)| {
                !ruling.is_unstored_field(name, headers, self.policy.shares_set_cookie())
            })
            .filter(|(name, _)| !self.own_fields.contains(name))
            .filter(|(name, _)| !answers_credentials(name, self.authenticated))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        // RFC 9110 §6.6.1: a response without `Date` (a server without a clock) is dated
        // when it was received before it is cached. Left out, every hit went out dated
        // when it was answered (the server in front adds the time it sends), beside an
        // `Age` counting from the receipt. (Nested, not a `let` chain: those need Rust
        // 1.88, and the crate's rust-version is 1.85.)
        if !headers.contains_key(header::DATE) {
            if let Some(date) = format_http_date(self.response_time)
                .and_then(|date| HeaderValue::from_str(&date).ok())
            {
                stored.push((header::DATE, date));
            }
        }
        let mut meta = EntryMeta {
            canonical_key,
            status: status.as_u16(),
            headers: stored,
            vary,
            stored_at_ms: 0,
            initial_age_ms: 0,
            fresh_for_ms: 0,
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            forbids_stale: false,
            no_cache: false,
            authenticated: self.authenticated,
            generation: 0,
            tags: Vec::new(),
            judged_by: 0,
        };
        self.set_times(&mut meta, status, &ruling.headers, &ruling.cc);
        meta
    }

    /// Times, lifetimes and revalidation flags from a response's headers.
    fn set_times(
        &self,
        meta: &mut EntryMeta,
        status: StatusCode,
        headers: &HeaderMap,
        cc: &CacheControl,
    ) {
        let age = initial_age(headers, self.request_time, self.response_time);
        let lifetimes = self.policy.lifetimes(
            self.chosen,
            self.handler_override,
            status,
            headers,
            cc,
            self.response_time,
        );
        let mut fresh = match self.policy.mode() {
            // A route's lifetime counts from now: the origin's age only shows in `Age`.
            CacheMode::Routes => age.saturating_add(lifetimes.fresh),
            CacheMode::Origin if self.handler_override => age.saturating_add(lifetimes.fresh),
            CacheMode::Origin => lifetimes.fresh,
        };
        if self.authenticated && !self.handler_override {
            // §3.5: `public`, `s-maxage` or `must-revalidate` let a shared cache store a
            // response to an authenticated request because they keep its reuse under the
            // origin's control. A route's lifetime (or a heuristic) must not undo that: the
            // response is fresh only as long as its own `s-maxage` / `max-age` / `Expires`
            // say, and without any of them only `public` (shareable as it is) lets the
            // route decide; `must-revalidate` alone or `s-maxage=0` revalidate every reuse.
            match explicit_lifetime(cc, headers, self.response_time) {
                Some(own) => fresh = fresh.min(own),
                None if cc.public => {}
                None => fresh = Duration::ZERO,
            }
        }
        meta.stored_at_ms = millis(self.response_time);
        meta.initial_age_ms = duration_ms(age);
        meta.fresh_for_ms = duration_ms(fresh);
        meta.stale_while_revalidate_ms = duration_ms(lifetimes.stale_while_revalidate);
        meta.stale_if_error_ms = duration_ms(lifetimes.stale_if_error);
        meta.forbids_stale = cc.forbids_stale();
        meta.no_cache = cc.no_cache;
    }

    /// The header set of `entry` refreshed by a 304 or a HEAD response (§4.3.4, §4.3.5):
    /// the new response's fields replace the stored ones (except those that describe the
    /// stored bytes, `Content-Length`, `Content-Range`, `Content-Encoding` and a
    /// `Content-Type` naming another media type, and fields never stored). This merged
    /// set is what the admission gate judges.
    ///
    /// A field the stored response's own qualified `private="…"` / `no-cache="…"` kept
    /// out stays out, whatever the update's `Cache-Control` says (fail closed: a 304
    /// that replaced the list but carried the requester's `X-User` stored it as
    /// everyone's), and the merged set keeps naming it, so a later refresh keeps it out
    /// too.
    pub(crate) fn merged_headers(&self, entry: &Entry, update: &HeaderMap) -> HeaderMap {
        let ruling = self.policy.response_directives(update);
        let stored = header_map(&entry.meta);
        let mut headers = stored.clone();
        let stored_ruling = self.policy.response_directives(&stored);
        let (private, no_cache) = stored_ruling.kept_out_fields();
        let kept_out = |name: &HeaderName| {
            private
                .iter()
                .chain(&no_cache)
                .any(|field| *field == name.as_str())
        };
        // `Content-Range` too: it means something only in a 206 or a 416 (RFC 9110 §14.4),
        // never of the stored body, and a stored response may not carry one. And
        // `Content-Encoding`, which says how the stored bytes are coded (RFC 9111 §3.2's
        // own example of a field kept for the stored response's integrity): another
        // coding in the update would label them as bytes they are not. And
        // `Content-Type`, §3.2's other example, but for its parameters: a 304 carries no
        // representation metadata but its validators' (RFC 9110 §15.4.5), yet PHP adds its
        // default `text/html` to a script's bare 304; taken, a stored JSON document
        // holding a user's `<script>` went out to everyone as HTML. The same media type
        // with another `charset` is taken, as §3.2 asks.
        let same_type = same_media_type(update, &stored);
        let updates = update.keys().filter(|name| {
            **name != header::CONTENT_LENGTH
                && **name != header::CONTENT_RANGE
                && **name != header::CONTENT_ENCODING
                && (**name != header::CONTENT_TYPE || same_type)
                && !ruling.is_unstored_field(name, update, self.policy.shares_set_cookie())
                && !self.own_fields.contains(name)
                && !kept_out(name)
        });
        for name in updates {
            headers.remove(name);
            for value in update.get_all(name) {
                // Past the names a `HeaderMap` holds (the stored ones and the update's,
                // each within it) `append` panics; the set is far past `MAX_FIELDS` by
                // then, and is refused.
                if headers.try_append(name.clone(), value.clone()).is_err() {
                    return headers;
                }
            }
        }
        // The stored lists the merged directives no longer name are said again, as a
        // `Cache-Control` line of their own (a targeted field's ruling still reads an
        // overridden `Cache-Control`'s lists): dropped, the next refresh stored the field.
        let merged_ruling = self.policy.response_directives(&headers);
        let share = self.policy.shares_set_cookie();
        let lost = |fields: &[&str]| -> Vec<String> {
            fields
                .iter()
                .filter(|field| {
                    HeaderName::from_bytes(field.as_bytes())
                        .is_ok_and(|name| !merged_ruling.is_unstored_field(&name, &headers, share))
                })
                .map(|field| (*field).to_string())
                .collect()
        };
        let (lost_private, lost_no_cache) = (lost(&private), lost(&no_cache));
        drop(merged_ruling);
        for (directive, fields) in [("private", lost_private), ("no-cache", lost_no_cache)] {
            if fields.is_empty() {
                continue;
            }
            let line = format!("{directive}=\"{}\"", fields.join(", "));
            if let Ok(value) = HeaderValue::from_str(&line) {
                if headers.try_append(header::CACHE_CONTROL, value).is_err() {
                    return headers;
                }
            }
        }
        // The update's Age describes this exchange (it is never stored, only read for
        // times).
        if let Some(age) = update.get(header::AGE) {
            let _ = headers.try_insert(header::AGE, age.clone());
        }
        // RFC 9110 §6.6.1: a response without `Date` (a server without a clock) is dated
        // when it was received. Left out, the stored `Date` stayed, and the refreshed
        // entry's apparent age was the old one: stale again the moment it was refreshed.
        if !update.contains_key(header::DATE) && headers.contains_key(header::DATE) {
            if let Some(date) = format_http_date(self.response_time)
                .and_then(|date| HeaderValue::from_str(&date).ok())
            {
                let _ = headers.try_insert(header::DATE, date);
            }
        }
        headers
    }

    /// `entry` with the `merged` header set and freshness starting again.
    pub(crate) fn refreshed(&self, entry: &Entry, merged: &HeaderMap) -> Entry {
        let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        let canonical = entry.meta.canonical_key.clone();
        let mut meta = self.meta(canonical, status, merged, entry.meta.vary.clone());
        meta.tags = entry.meta.tags.clone();
        Entry {
            meta,
            body: entry.body.clone(),
        }
    }
}

/// A response answered from an entry: the stored status, headers and body (none for HEAD),
/// or, given the stored headers as `not_modified`, a 304 with the stored validators. `age`
/// is the entry's current age (§4.2.3); `headers` is an empty map to hold the fields (a
/// request's, emptied, has room already).
pub(crate) fn response<B>(
    entry: &Entry,
    is_head: bool,
    not_modified: Option<&HeaderMap>,
    age: Duration,
    readers: Readers,
    headers: HeaderMap,
) -> Response<ResponseBody<B>> {
    let meta = &entry.meta;
    let send_body = !is_head && not_modified.is_none();
    let mut response = Response::new(if send_body {
        ResponseBody::cached(readers.body(&entry.body))
    } else {
        ResponseBody::empty()
    });
    // An empty map, perhaps with room already (see `service::Fields`).
    *response.headers_mut() = headers;
    // The version stays the default: it belongs to the client's connection, and an
    // origin's HTTP/1.0 replayed to HTTP/1.1 clients would close their connections.
    if let Some(stored) = not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified_headers(stored);
    } else {
        *response.status_mut() = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        headers.reserve(meta.headers.len() + 3);
        // The length sent is the stored body's, never a stored field that disagrees
        // with it (an origin that sent one beside `Transfer-Encoding`, whose body is the
        // chunked one): it would frame every hit short, and the rest of the body would be
        // read by the client as the next response on its connection. For HEAD, the GET's
        // body length still describes the resource. A field that agrees is sent as it is
        // (formatting the length would cost every hit an allocation). A 204 has none at
        // all (RFC 9110 §8.6: a server MUST NOT send one), whatever its origin sent.
        let has_length = meta.status != StatusCode::NO_CONTENT.as_u16();
        let (mut length_sent, mut length_dropped) = (false, false);
        for (name, value) in &meta.headers {
            if name == header::CONTENT_LENGTH {
                let agrees = parse_decimal(value.as_bytes())
                    .is_some_and(|length| length == entry.body.len() as u64);
                if length_sent || !agrees || !has_length {
                    length_dropped = true;
                    continue;
                }
                length_sent = true;
            }
            headers.append(name.clone(), readers.value(value));
        }
        if has_length && (is_head || length_dropped) && !length_sent {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        }
    }
    // RFC 9111 §1.2.2: an age past 2^31 s (a `Date` a century behind) is written as
    // 2^31, delta-seconds' "infinity": a recipient reading `Age` into 32 bits would wrap
    // a larger one to a young (or negative) age.
    let secs = age.as_secs().min(MAX_DELTA_SECONDS);
    response.headers_mut().insert(header::AGE, age_value(secs));
    response
}

/// Who else reads an entry's bytes while a response is built from it. Threads answering a
/// near-tier entry at once would all add to the same reference counts, and that cache line
/// passing between cores costs more than a copy of a few hundred bytes: their responses
/// copy small header values and bodies instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readers {
    /// This request alone (an entry decoded from a memcached reply): shared, not copied.
    One,
    /// Every thread's hits (a near-tier entry): small values copied.
    Threads,
}

/// Header values up to this length are copied from a near-tier entry.
const COPIED_VALUE: usize = 256;
/// Bodies up to this length are copied from a near-tier entry.
const COPIED_BODY: usize = 2048;

impl Readers {
    fn value(self, value: &HeaderValue) -> HeaderValue {
        if self == Self::Threads && value.len() <= COPIED_VALUE {
            // Valid already (it is one); the check is a pass over a few bytes.
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                return copy;
            }
        }
        value.clone()
    }

    fn body(self, body: &Bytes) -> Bytes {
        if self == Self::Threads && body.len() <= COPIED_BODY {
            Bytes::copy_from_slice(body)
        } else {
            body.clone()
        }
    }
}

/// `Age` values below this are written once per process and shared (static bytes: no
/// allocation and no reference count per hit); older ones are formatted per response.
const SHARED_AGES: u64 = 1024;

/// The `Age` header value for `secs`.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
        let digits: String = (0..SHARED_AGES).map(|age| age.to_string()).collect();
        // Once per process, a few KiB: static bytes are what a header value can share
        // without a reference count.
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        (0..SHARED_AGES)
            .map(|age| {
                let len = age.checked_ilog10().map_or(1, |log| log as usize + 1);
                let value = HeaderValue::from_static(&digits[start..start + len]);
                start += len;
                value
            })
            .collect()
    });
    usize::try_from(secs)
        .ok()
        .and_then(|index| AGES.get(index))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// 504 Gateway Timeout, generated by the cache (`only-if-cached` without a usable entry,
/// or `must-revalidate` with an unreachable origin; RFC 9111 §5.2.1.7, §5.2.2.2).
pub(crate) fn gateway_timeout<B>(is_head: bool) -> Response<ResponseBody<B>> {
    generated(
        StatusCode::GATEWAY_TIMEOUT,
        b"504 Gateway Timeout: no usable cached response\n",
        is_head,
    )
}

/// The layer's 502 for an origin answer it cannot pass on (RFC 9110 §15.6.3: "received an
/// invalid response from an inbound server").
pub(crate) fn bad_gateway<B>(is_head: bool) -> Response<ResponseBody<B>> {
    generated(
        StatusCode::BAD_GATEWAY,
        b"502 Bad Gateway: the origin's answer contradicts the cache's request\n",
        is_head,
    )
}

/// A plain-text response the layer makes itself. To HEAD, without content (RFC 9110
/// §9.3.2), its `Content-Length` the GET's, as a stored answer to HEAD has it.
fn generated<B>(
    status: StatusCode,
    text: &'static [u8],
    is_head: bool,
) -> Response<ResponseBody<B>> {
    let body = if is_head {
        Bytes::new()
    } else {
        Bytes::from_static(text)
    };
    let mut response = Response::new(ResponseBody::cached(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    }
    response
}

/// A non-empty run of ASCII digits as a `u64` (what `str::parse` accepts, less a leading
/// `+`, which no writer of ours puts there); read on every lookup and hit, so no UTF-8 pass first.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    // Nineteen digits cannot overflow: no overflow checks per digit for the numbers every
    // lookup parses (a namespace generation is a clock in nanoseconds).
    if digits.len() <= 19 {
        return digits.iter().try_fold(0u64, |n, &b| {
            let digit = b.wrapping_sub(b'0');
            (digit < 10).then(|| n * 10 + u64::from(digit))
        });
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimals_parse_up_to_the_largest_u64_and_no_further() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"99999999999999999999"), None);
        assert_eq!(parse_decimal(b"0000000000000000000000042"), Some(42));
        for not_a_number in [&b""[..], b"-1", b"+1", b"1 ", b"12a", b"1/", b"1:"] {
            assert_eq!(parse_decimal(not_a_number), None, "{not_a_number:?}");
        }
    }

    proptest! {
        #[test]
        fn decimals_parse_as_the_standard_library_does(text in "[0-9]{1,24}|[0-9/:a+-]{0,6}") {
            prop_assert_eq!(parse_decimal(text.as_bytes()), text.parse::<u64>().ok().filter(|_| !text.starts_with('+')));
        }
    }

    #[test]
    fn age_values_are_the_decimal_seconds() {
        for secs in [
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            SHARED_AGES - 1,
            SHARED_AGES,
            86_400,
        ] {
            assert_eq!(
                age_value(secs).to_str().ok(),
                Some(secs.to_string().as_str())
            );
        }
        assert_eq!(age_value(u64::MAX), HeaderValue::from(u64::MAX));
    }

    #[test]
    fn near_tier_answers_copy_small_values_and_share_big_ones() {
        let mut secret = HeaderValue::from_bytes(b"sid=1").unwrap();
        secret.set_sensitive(true);
        let copied = Readers::Threads.value(&secret);
        assert_eq!(copied, secret);
        assert!(copied.is_sensitive());
        assert_ne!(copied.as_bytes().as_ptr(), secret.as_bytes().as_ptr());
        let shared = Readers::One.value(&secret);
        assert_eq!(shared.as_bytes().as_ptr(), secret.as_bytes().as_ptr());
        let long = HeaderValue::from_bytes(&[b'a'; COPIED_VALUE + 1]).unwrap();
        let kept = Readers::Threads.value(&long);
        assert_eq!(kept.as_bytes().as_ptr(), long.as_bytes().as_ptr());

        let small = Bytes::from(vec![7u8; COPIED_BODY]);
        let big = Bytes::from(vec![7u8; COPIED_BODY + 1]);
        let copied = Readers::Threads.body(&small);
        assert_eq!(copied, small);
        assert_ne!(copied.as_ptr(), small.as_ptr());
        assert_eq!(Readers::Threads.body(&big).as_ptr(), big.as_ptr());
        assert_eq!(Readers::One.body(&small).as_ptr(), small.as_ptr());
    }

    #[test]
    fn a_hit_sends_one_content_length_the_stored_bodys() {
        let entry = |lengths: &[&'static str]| Entry {
            meta: EntryMeta {
                canonical_key: "GET http://h/".into(),
                status: 200,
                headers: lengths
                    .iter()
                    .map(|length| (header::CONTENT_LENGTH, HeaderValue::from_static(length)))
                    .collect(),
                vary: Vec::new(),
                stored_at_ms: 0,
                initial_age_ms: 0,
                fresh_for_ms: 0,
                stale_while_revalidate_ms: 0,
                stale_if_error_ms: 0,
                forbids_stale: false,
                no_cache: false,
                authenticated: false,
                generation: 0,
                tags: Vec::new(),
                judged_by: 0,
            },
            body: Bytes::from_static(b"12345"),
        };
        let lengths = |stored: &[&'static str], is_head: bool| -> Vec<String> {
            let response: Response<ResponseBody<()>> = response(
                &entry(stored),
                is_head,
                None,
                Duration::ZERO,
                Readers::One,
                HeaderMap::new(),
            );
            response
                .headers()
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|value| value.to_str().unwrap().to_string())
                .collect()
        };
        // An agreeing field is sent as stored; none stays none (hyper derives it for GET).
        assert_eq!(lengths(&["5"], false), ["5"]);
        assert_eq!(lengths(&[], false), Vec::<String>::new());
        // One that disagrees, a repeat, or a non-number never frames the body.
        assert_eq!(lengths(&["3"], false), ["5"]);
        assert_eq!(lengths(&["5", "5"], false), ["5"]);
        assert_eq!(lengths(&["3", "5"], false), ["5"]);
        assert_eq!(lengths(&["+5"], false), ["5"]);
        // HEAD: the GET's length, always.
        assert_eq!(lengths(&[], true), ["5"]);
        assert_eq!(lengths(&["9"], true), ["5"]);
    }
}
