//! Freshness (RFC 9111 §4.2) and stale serving (§4.2.4, RFC 5861): how long a response is
//! fresh, how old it is, and whether a stored response may answer a request without the
//! origin. Pure arithmetic over headers and times.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};

use super::CacheControl;
use super::cache_control::parse_delta_seconds;
use super::date::parse_http_date;

/// The statuses RFC 9110 §15.1 calls heuristically cacheable.
pub(crate) const HEURISTIC_STATUSES: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Heuristic freshness (RFC 9111 §4.2.2) for responses with `Last-Modified` and no explicit
/// lifetime: a fraction of the time since the last modification, capped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Heuristic {
    /// The fraction of `Date − Last-Modified`; `0.0` turns heuristic freshness off.
    pub fraction: f64,
    /// The longest heuristic lifetime.
    pub max: Duration,
}

impl Default for Heuristic {
    /// A tenth of the time since the last modification, at most a day.
    fn default() -> Self {
        Self {
            fraction: 0.1,
            max: Duration::from_secs(24 * 3600),
        }
    }
}

/// Parses an HTTP date field (IMF-fixdate and the two obsolete forms, names in any case:
/// see [`parse_http_date`]).
pub(crate) fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    parse_http_date(value, SystemTime::now())
}

/// The explicit freshness lifetime a shared cache gives a response (§4.2.1): `s-maxage`,
/// else `max-age`, else `Expires − Date`. An invalid `Expires` means already expired. `None`
/// when the response says nothing.
pub(crate) fn explicit_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(secs));
    }
    if !headers.contains_key(header::EXPIRES) {
        return None;
    }
    let Some(expires) = http_date(headers, &header::EXPIRES) else {
        return Some(Duration::ZERO); // "Expires: 0" and friends: already expired
    };
    let date = http_date(headers, &header::DATE).unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The heuristic lifetime (§4.2.2): only for heuristically cacheable statuses (or a
/// `public` response) with a `Last-Modified` in the past.
pub(crate) fn heuristic_lifetime(
    status: u16,
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
    heuristic: &Heuristic,
) -> Option<Duration> {
    if heuristic.fraction.is_nan()
        || heuristic.fraction <= 0.0
        || !(HEURISTIC_STATUSES.contains(&status) || cc.public)
    {
        return None;
    }
    let last_modified = http_date(headers, &header::LAST_MODIFIED)?;
    let date = http_date(headers, &header::DATE).unwrap_or(response_time);
    let since = date.duration_since(last_modified).ok()?;
    // `mul_f64` panics when the product overflows a Duration (a huge configured fraction):
    // anything that large is over the cap anyway.
    let lifetime = Duration::try_from_secs_f64(since.as_secs_f64() * heuristic.fraction)
        .unwrap_or(Duration::MAX);
    Some(lifetime.min(heuristic.max))
}

/// The corrected initial age of a response (§4.2.3): the larger of its apparent age
/// (`response_time − Date`) and its `Age` plus the time the request took.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let age_value = age_header(headers).map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = http_date(headers, &header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    // Saturating: `Age` is clamped to 2^31 s, but the request's own delay is a clock
    // difference, and a panic here would drop the client's connection.
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// The `Age` field in seconds (RFC 9111 §5.1: delta-seconds, so clamped to 2^31); `None`
/// when absent or invalid, which is ignored like a missing one. A list (`Age: 7200, 0`, or
/// several `Age` lines, which are one list) counts by its first member, as §5.1 asks: the
/// later members are discarded, not a reason to ignore the field.
fn age_header(headers: &HeaderMap) -> Option<u64> {
    // The first non-empty member (RFC 9110 §5.6.1: empty list elements do not count).
    let first = headers
        .get_all(header::AGE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .find(|member| !member.is_empty())?;
    parse_delta_seconds(std::str::from_utf8(first).ok()?)
}

/// What a stored response knows about its own freshness, as the layer keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// How long it is fresh, counted from age zero.
    pub lifetime: Duration,
    /// Its current age.
    pub age: Duration,
    /// RFC 5861 `stale-while-revalidate` window.
    pub stale_while_revalidate: Duration,
    /// RFC 5861 `stale-if-error` window.
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub forbids_stale: bool,
    /// `no-cache`: revalidated before every reuse.
    pub no_cache: bool,
}

/// Whether a stored response may answer a request, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Fresh enough for this request: answer from the cache.
    Fresh,
    /// Stale, but the request's `max-stale` accepts it: answer from the cache.
    StaleAccepted,
    /// Stale inside its `stale-while-revalidate` window: answer from the cache now and
    /// revalidate in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin first.
    Validate,
}

impl Freshness {
    /// How long past its lifetime the response is (zero while fresh).
    pub(crate) fn staleness(&self) -> Duration {
        self.age.saturating_sub(self.lifetime)
    }

    /// Its remaining freshness lifetime in whole seconds, as RFC 9211 §2.4's `ttl` says
    /// it: positive while fresh, negative once stale. Rounded down, so that a response
    /// stale by less than a second says `-1`, never `-0` (which reads as zero, fresh to
    /// the last instant), and one fresh for less than a second says `0`. Within a
    /// Structured Field integer's 15 digits.
    pub(crate) fn ttl(&self) -> i64 {
        const SF_INTEGER_MAX: u64 = 999_999_999_999_999;
        if self.is_fresh() {
            let remaining = self.lifetime.saturating_sub(self.age).as_secs();
            // At most SF_INTEGER_MAX, which fits.
            i64::try_from(remaining.min(SF_INTEGER_MAX)).unwrap_or(i64::MAX)
        } else {
            let stale = self.staleness();
            let secs = stale
                .as_secs()
                .saturating_add(u64::from(stale.subsec_nanos() > 0));
            -i64::try_from(secs.min(SF_INTEGER_MAX)).unwrap_or(i64::MAX)
        }
    }

    /// Whether the response is fresh.
    pub(crate) fn is_fresh(&self) -> bool {
        self.age < self.lifetime
    }

    /// Decides reuse for a request with directives `request` (§4.2, §4.2.4, §5.2.1).
    pub(crate) fn reuse(&self, request: &CacheControl) -> Reuse {
        if self.no_cache || request.no_cache {
            return Reuse::Validate;
        }
        let secs = |s: u64| Duration::from_secs(s);
        if request.max_age.is_some_and(|max| self.age > secs(max)) || request.max_age == Some(0) {
            return Reuse::Validate;
        }
        let remaining = self.lifetime.saturating_sub(self.age);
        let fresh_enough =
            self.is_fresh() && request.min_fresh.is_none_or(|min| remaining >= secs(min));
        if fresh_enough {
            return Reuse::Fresh;
        }
        if self.forbids_stale || self.is_fresh() {
            // Fresh but not fresh enough for min-fresh is not "stale": validate.
            return Reuse::Validate;
        }
        let staleness = self.staleness();
        match request.max_stale {
            Some(None) => return Reuse::StaleAccepted,
            Some(Some(max)) if staleness <= secs(max) => return Reuse::StaleAccepted,
            _ => {}
        }
        // RFC 5861 §3: within N seconds *after* it became stale; with no window (none given,
        // or 0) never, not even in the millisecond where its age equals its lifetime, which
        // served a `max-age=0` response stale to requests arriving as it was stored.
        if !self.stale_while_revalidate.is_zero() && staleness <= self.stale_while_revalidate {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Validate
    }

    /// Whether the response may be served stale, at most `bound` past its lifetime, because
    /// the origin could not be reached (RFC 9111 §4.2.4: a disconnected cache may, unless
    /// the response forbids it with `must-revalidate`, `proxy-revalidate`, `s-maxage` or
    /// `no-cache`, or the request asks for the origin with `no-cache`).
    pub(crate) fn usable_when_unreachable(&self, request: &CacheControl, bound: Duration) -> bool {
        !(self.forbids_stale || self.no_cache || request.no_cache) && self.staleness() <= bound
    }

    /// Whether the response may be served stale because the origin failed (RFC 5861 §4,
    /// in the response's window or the request's `stale-if-error`). A request with
    /// `no-cache` asked for the origin's word (RFC 9111 §5.2.1.4): only its own
    /// `stale-if-error` lets a stale response answer it, as `usable_when_unreachable`
    /// and a fresh response stored meanwhile do not.
    pub(crate) fn usable_on_error(&self, request: &CacheControl) -> bool {
        if self.forbids_stale || self.no_cache {
            return false;
        }
        let request_window = request
            .stale_if_error
            .map_or(Duration::ZERO, Duration::from_secs);
        let window = if request.no_cache {
            request_window
        } else {
            self.stale_if_error.max(request_window)
        };
        // As for `stale-while-revalidate`: no window (none given, or 0) is no stale
        // response, not even where its age equals its lifetime.
        !window.is_zero() && self.staleness() <= window
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::policy::cache_control::MAX_DELTA_SECONDS;
    use crate::cache::policy::tests::headers;
    use crate::cache::policy::{CacheMode, Policy};
    use http::{HeaderValue, StatusCode};
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn at(date: &str) -> SystemTime {
        httpdate::parse_http_date(date).unwrap()
    }

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    /// RFC 9211 §2.4: `ttl` is the remaining freshness, rounded down: never `-0`.
    #[test]
    fn rfc9211_ttl_is_the_remaining_freshness_rounded_down() {
        let ms = Duration::from_millis;
        let ttl = |lifetime, age| {
            Freshness {
                lifetime,
                age,
                ..Freshness::default()
            }
            .ttl()
        };
        assert_eq!(ttl(ms(600_000), ms(1_500)), 598);
        assert_eq!(ttl(ms(10_000), ms(9_600)), 0);
        assert_eq!(ttl(ms(10_000), ms(10_000)), 0);
        assert_eq!(ttl(ms(10_000), ms(10_300)), -1);
        assert_eq!(ttl(ms(10_000), ms(15_000)), -5);
        assert_eq!(ttl(Duration::MAX, Duration::ZERO), 999_999_999_999_999);
        assert_eq!(ttl(Duration::ZERO, Duration::MAX), -999_999_999_999_999);
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_then_max_age_then_expires() {
        let now = at(DATE);
        let map = headers(&[
            ("cache-control", "max-age=10, s-maxage=20"),
            ("expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
            ("date", DATE),
        ]);
        let lifetime = |map: &HeaderMap| explicit_lifetime(&CacheControl::parse(map), map, now);
        assert_eq!(lifetime(&map), Some(Duration::from_secs(20)));
        let map = headers(&[("cache-control", "max-age=10"), ("expires", DATE)]);
        assert_eq!(lifetime(&map), Some(Duration::from_secs(10)));
        let map = headers(&[("expires", "Sun, 06 Nov 1994 09:49:37 GMT"), ("date", DATE)]);
        assert_eq!(lifetime(&map), Some(Duration::from_secs(3600)));
        let map = headers(&[("expires", "0"), ("date", DATE)]);
        assert_eq!(lifetime(&map), Some(Duration::ZERO), "invalid Expires");
        assert_eq!(lifetime(&headers(&[("date", DATE)])), None);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_only_for_cacheable_statuses() {
        let now = at(DATE);
        let map = headers(&[
            ("date", DATE),
            ("last-modified", "Sun, 06 Nov 1994 07:49:37 GMT"),
        ]);
        let cc = CacheControl::parse(&map);
        let h = Heuristic::default();
        assert_eq!(
            heuristic_lifetime(200, &cc, &map, now, &h),
            Some(Duration::from_secs(360))
        );
        assert_eq!(heuristic_lifetime(500, &cc, &map, now, &h), None);
        let capped = Heuristic {
            fraction: 0.5,
            max: Duration::from_secs(100),
        };
        assert_eq!(
            heuristic_lifetime(200, &cc, &map, now, &capped),
            Some(Duration::from_secs(100))
        );
        let no_lm = headers(&[("date", DATE)]);
        assert_eq!(heuristic_lifetime(200, &cc, &no_lm, now, &h), None);
    }

    #[test]
    fn rfc9111_4_2_3_age_calculation() {
        let request_time = at(DATE);
        let response_time = request_time + Duration::from_secs(2);
        // Apparent age 0 (Date = request time … 2 s ago), Age 10 + 2 s delay.
        let map = headers(&[("date", DATE), ("age", "10")]);
        assert_eq!(
            initial_age(&map, request_time, response_time),
            Duration::from_secs(12)
        );
        // A Date far in the past wins over a small Age.
        let old = headers(&[("date", "Sun, 06 Nov 1994 07:49:37 GMT"), ("age", "1")]);
        assert_eq!(
            initial_age(&old, request_time, response_time),
            Duration::from_secs(3602)
        );
    }

    #[test]
    fn rfc9111_4_2_4_and_rfc5861_reuse_decisions() {
        let secs = Duration::from_secs;
        let base = Freshness {
            lifetime: secs(60),
            age: secs(30),
            stale_while_revalidate: secs(30),
            stale_if_error: secs(300),
            ..Freshness::default()
        };
        let req = |text: &'static str| CacheControl::parse(&headers(&[("cache-control", text)]));
        let none = CacheControl::default();
        assert_eq!(base.reuse(&none), Reuse::Fresh);
        assert_eq!(base.reuse(&req("max-age=10")), Reuse::Validate);
        assert_eq!(base.reuse(&req("max-age=0")), Reuse::Validate);
        assert_eq!(base.reuse(&req("no-cache")), Reuse::Validate);
        assert_eq!(base.reuse(&req("min-fresh=40")), Reuse::Validate);
        assert_eq!(base.reuse(&req("min-fresh=20")), Reuse::Fresh);
        let stale = Freshness {
            age: secs(80),
            ..base
        };
        assert_eq!(stale.reuse(&none), Reuse::StaleWhileRevalidate);
        assert_eq!(stale.reuse(&req("max-stale=30")), Reuse::StaleAccepted);
        assert_eq!(
            stale.reuse(&req("max-stale=10")),
            Reuse::StaleWhileRevalidate
        );
        let very_stale = Freshness {
            age: secs(200),
            ..base
        };
        assert_eq!(very_stale.reuse(&none), Reuse::Validate);
        assert!(very_stale.usable_on_error(&none));
        let strict = Freshness {
            forbids_stale: true,
            ..stale
        };
        assert_eq!(strict.reuse(&req("max-stale")), Reuse::Validate);
        assert!(!strict.usable_on_error(&none));
        let no_cache = Freshness {
            no_cache: true,
            ..base
        };
        assert_eq!(no_cache.reuse(&none), Reuse::Validate);
        let no_window = Freshness {
            stale_if_error: Duration::ZERO,
            ..very_stale
        };
        assert!(!no_window.usable_on_error(&none));
        assert!(no_window.usable_on_error(&req("stale-if-error=600")));
        // The request's `no-cache` wants the origin's word: only its own window lets a
        // stale response stand in.
        assert!(!very_stale.usable_on_error(&req("no-cache")));
        assert!(very_stale.usable_on_error(&req("no-cache, stale-if-error=600")));
        assert!(!very_stale.usable_on_error(&req("no-cache, stale-if-error=1")));
    }

    const SECS_2_POW_31: Duration = Duration::from_secs(MAX_DELTA_SECONDS);

    #[test]
    fn defect_6_huge_age_with_a_one_second_exchange() {
        // The reported values: `Age: u64::MAX`, the response a second after the request.
        let request_time = at(DATE);
        let response_time = request_time + Duration::from_secs(1);
        let map = headers(&[("date", DATE), ("age", "18446744073709551615")]);
        let age = initial_age(&map, request_time, response_time);
        assert_eq!(age, SECS_2_POW_31 + Duration::from_secs(1));
        // An Age too large even for u64 is "very long" too, not ignored (RFC 9111 §1.2.2).
        let larger = headers(&[("age", "99999999999999999999999")]);
        assert_eq!(
            initial_age(&larger, request_time, response_time),
            SECS_2_POW_31 + Duration::from_secs(1)
        );
        // Both modes' lifetimes for that response, the handler choosing the largest
        // lifetime header value (the layer's `x-memcache-lifetime: 18446744073709551615`).
        let huge_lifetime = Duration::from_secs(u64::MAX);
        let cc = CacheControl::parse(&map);
        for mode in [CacheMode::Routes, CacheMode::Origin] {
            let mut policy = Policy::default();
            policy.set_mode(mode);
            for handler_override in [true, false] {
                let lifetimes = policy.lifetimes(
                    huge_lifetime,
                    handler_override,
                    StatusCode::OK,
                    &map,
                    &cc,
                    response_time,
                );
                // The layer stores `age + fresh` in routes mode and for a handler's override:
                // a plain `+` there overflows (src/cache/stored.rs must saturate).
                let chosen = mode == CacheMode::Routes || handler_override;
                assert_eq!(age.checked_add(lifetimes.fresh).is_none(), chosen);
                assert_eq!(
                    lifetimes.fresh,
                    if chosen {
                        huge_lifetime
                    } else {
                        Duration::ZERO
                    }
                );
            }
        }
    }

    #[test]
    fn defect_6_huge_lifetime_with_an_old_date() {
        // An old Date makes the apparent age large; the lifetime header adds u64::MAX s.
        let now = SystemTime::now();
        let map = headers(&[("date", "Thu, 01 Jan 1970 00:00:00 GMT")]);
        let age = initial_age(&map, now - Duration::from_secs(1), now);
        assert!(age >= Duration::from_secs(1_700_000_000));
        assert!(age.checked_add(Duration::from_secs(u64::MAX)).is_none());
    }

    #[test]
    fn heuristic_survives_odd_fractions() {
        let now = at(DATE);
        let map = headers(&[
            ("date", DATE),
            ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ]);
        let cc = CacheControl::parse(&map);
        for fraction in [f64::NAN, -1.0, 0.0] {
            let h = Heuristic {
                fraction,
                max: Duration::MAX,
            };
            assert_eq!(
                heuristic_lifetime(200, &cc, &map, now, &h),
                None,
                "{fraction}"
            );
        }
        for fraction in [f64::INFINITY, f64::MAX, 1e300] {
            let h = Heuristic {
                fraction,
                max: Duration::MAX,
            };
            assert_eq!(
                heuristic_lifetime(200, &cc, &map, now, &h),
                Some(Duration::MAX)
            );
        }
    }

    /// A time `secs` (negative: before) from the epoch, or the epoch past `SystemTime`'s range.
    fn time(secs: i64, nanos: u32) -> SystemTime {
        let offset = Duration::new(secs.unsigned_abs(), nanos % 1_000_000_000);
        if secs >= 0 {
            UNIX_EPOCH.checked_add(offset)
        } else {
            UNIX_EPOCH.checked_sub(offset)
        }
        .unwrap_or(UNIX_EPOCH)
    }

    /// Any time `SystemTime` holds (bar the extremes), including before the epoch.
    fn any_time() -> impl Strategy<Value = SystemTime> {
        (any::<i64>(), any::<u32>()).prop_map(|(secs, nanos)| time(secs, nanos))
    }

    /// An HTTP date field value: a formattable date, or any text.
    pub(crate) fn date_field() -> impl Strategy<Value = String> {
        // The last second of 9999, the last one IMF-fixdate can say.
        const MAX_HTTP_DATE: i64 = 253_402_300_799;
        prop_oneof![
            (0..=MAX_HTTP_DATE).prop_map(|secs| httpdate::fmt_http_date(time(secs, 0))),
            "[ -~]{0,40}",
        ]
    }

    /// An `Age` (or any delta-seconds) field value: numbers of any size, or any text.
    fn seconds_field() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            "[0-9]{0,30}",
            "[ -~]{0,12}",
        ]
    }

    /// A header map of the pairs whose value is present and valid.
    pub(crate) fn with<V: AsRef<[u8]>>(pairs: &[(&'static str, Option<V>)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Some(value) = value
                .as_ref()
                .and_then(|v| HeaderValue::from_bytes(v.as_ref()).ok())
            {
                map.append(*name, value);
            }
        }
        map
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::MAX),
            (0..100_000u64).prop_map(Duration::from_secs),
        ]
    }

    fn any_request_cc() -> impl Strategy<Value = CacheControl> {
        let number = || proptest::option::of(prop_oneof![any::<u64>(), 0..1000u64]);
        (
            (number(), number(), number()),
            (proptest::option::of(number()), any::<bool>()),
        )
            .prop_map(
                |((max_age, min_fresh, stale_if_error), (max_stale, no_cache))| {
                    let mut cc = CacheControl::default();
                    (cc.max_age, cc.min_fresh, cc.stale_if_error) =
                        (max_age, min_fresh, stale_if_error);
                    (cc.max_stale, cc.no_cache) = (max_stale, no_cache);
                    cc
                },
            )
    }

    // Default config: 256 cases unless PROPTEST_CASES says otherwise.
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn initial_age_never_panics_and_grows_with_age(
            date in proptest::option::of(date_field()),
            (a, b) in (any::<u64>(), any::<u64>()),
            request_time in any_time(),
            response_time in any_time(),
            delay in any_duration(),
            text in seconds_field(),
        ) {
            let (small, large) = (a.min(b), a.max(b));
            let age = |age: &str, response_time| {
                let map = with(&[("date", date.as_deref()), ("age", Some(age))]);
                initial_age(&map, request_time, response_time)
            };
            let younger = age(&small.to_string(), response_time);
            let older = age(&large.to_string(), response_time);
            prop_assert!(younger <= older, "larger Age gave a smaller age");
            prop_assert!(younger >= Duration::from_secs(small.min(MAX_DELTA_SECONDS)));
            let _ = age(&text, response_time);
            // A response far after its request (and SystemTime's largest steps).
            if let Some(later) = request_time.checked_add(delay) {
                let _ = age(&large.to_string(), later);
            }
        }

        #[test]
        fn explicit_lifetime_never_panics_and_is_clamped(
            directive in prop::sample::select(vec!["max-age", "s-maxage", "x-other"]),
            seconds in seconds_field(),
            expires in proptest::option::of(date_field()),
            date in proptest::option::of(date_field()),
            response_time in any_time(),
        ) {
            let cache_control = format!("{directive}={seconds}");
            let map = with(&[
                ("cache-control", Some(cache_control.as_str())),
                ("expires", expires.as_deref()),
                ("date", date.as_deref()),
            ]);
            let lifetime = explicit_lifetime(&CacheControl::parse(&map), &map, response_time);
            if directive != "x-other" {
                prop_assert!(lifetime.is_some_and(|l| l <= SECS_2_POW_31));
            }
        }

        #[test]
        fn heuristic_lifetime_never_panics_is_capped_and_grows_with_age(
            fraction in prop_oneof![any::<f64>(), 0.0..10.0f64, Just(f64::NAN), Just(f64::INFINITY)],
            max in any_duration(),
            (a, b) in (date_field(), date_field()),
            date in proptest::option::of(date_field()),
            response_time in any_time(),
            status in 100..600u16,
        ) {
            let heuristic = Heuristic { fraction, max };
            let lifetime = |last_modified: &str| {
                let map = with(&[("last-modified", Some(last_modified)), ("date", date.as_deref())]);
                let cc = CacheControl::parse(&map);
                heuristic_lifetime(status, &cc, &map, response_time, &heuristic)
            };
            let (la, lb) = (lifetime(&a), lifetime(&b));
            prop_assert!(la.is_none_or(|l| l <= max) && lb.is_none_or(|l| l <= max));
            // An earlier Last-Modified never gives a shorter lifetime.
            let (ta, tb) = (httpdate::parse_http_date(&a), httpdate::parse_http_date(&b));
            if let (Ok(ta), Ok(tb), Some(la), Some(lb)) = (ta, tb, la, lb) {
                prop_assert!((ta <= tb) == (la >= lb) || la == lb);
            }
        }

        #[test]
        fn reuse_never_panics_and_a_younger_response_is_no_less_fresh(
            (lifetime, a, b) in (any_duration(), any_duration(), any_duration()),
            (stale_while_revalidate, stale_if_error) in (any_duration(), any_duration()),
            (forbids_stale, no_cache) in (any::<bool>(), any::<bool>()),
            request in any_request_cc(),
        ) {
            let older = Freshness {
                lifetime,
                age: a.max(b),
                stale_while_revalidate,
                stale_if_error,
                forbids_stale,
                no_cache,
            };
            let younger = Freshness { age: a.min(b), ..older };
            let _ = (older.usable_on_error(&request), younger.usable_on_error(&request));
            if older.reuse(&request) == Reuse::Fresh {
                prop_assert_eq!(younger.reuse(&request), Reuse::Fresh);
            }
            prop_assert!(younger.staleness() <= older.staleness());
        }
    }
}

/// The examples these items once carried in their docs, kept as tests now that the
/// module is internal.
#[cfg(test)]
mod doc_examples {
    #[test]
    fn example_1() {
        use crate::cache::policy::{CacheControl, freshness::explicit_lifetime};
        use http::{HeaderMap, HeaderValue};
        use std::time::{Duration, SystemTime};

        let mut headers = HeaderMap::new();
        headers.insert(
            "date",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        headers.insert(
            "expires",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:50:37 GMT"),
        );
        let cc = CacheControl::parse(&headers);
        let lifetime = explicit_lifetime(&cc, &headers, SystemTime::now());
        assert_eq!(lifetime, Some(Duration::from_secs(60)));
    }

    #[test]
    fn example_2() {
        use crate::cache::policy::CacheControl;
        use crate::cache::policy::freshness::{Freshness, Reuse};
        use std::time::Duration;

        let stored = Freshness {
            lifetime: Duration::from_secs(60),
            age: Duration::from_secs(70),
            stale_while_revalidate: Duration::from_secs(30),
            ..Freshness::default()
        };
        assert_eq!(
            stored.reuse(&CacheControl::default()),
            Reuse::StaleWhileRevalidate
        );
    }
}
