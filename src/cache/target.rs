//! What a request is keyed by and whether the cache takes it at all: its [`Plan`], made
//! from the target the client sent (not the one a nested router sees) and the route rules.

use http::Request;

use super::exchange::Plan;
use super::key::{InvalidTarget, KeyOutcome, RequestHead};
use super::shared::Shared;
use crate::backend::Backend;
use crate::cache::policy::conditional::has_origin_preconditions;
use crate::cache::policy::{CacheControl, Policy};

impl<B: Backend> Shared<B> {
    /// What to do with a request: `None` to bypass the cache.
    pub(super) fn plan<T>(&self, request: &Request<T>) -> Option<Plan> {
        if !Policy::is_cacheable_method(request.method()) {
            return None;
        }
        if let Some(reason) = Policy::unkeyed_request_input(request.headers()) {
            tracing::debug!(
                reason,
                "request carries input the key cannot hold; cache bypassed"
            );
            return None;
        }
        // Rules match the path the key holds (and `MatchedPath` names): a `no_cache` rule
        // for `/account` must hold for the router nested there, which sees `/me`. Rules
        // written for that stripped path still hold too: in a nested router the stricter
        // reading wins (no caching, else the shorter lifetime).
        let Some(target) = keyed_target(request) else {
            tracing::debug!(
                path = request.uri().path(),
                "target rewritten after routing; cache bypassed"
            );
            return None;
        };
        let pattern = matched_path(request);
        let mut lifetime = self.policy().route_lifetime(target.path(), pattern)?;
        if !std::ptr::eq(target, request.uri()) && target.path() != request.uri().path() {
            let stripped = self
                .policy()
                .route_lifetime(request.uri().path(), pattern)?;
            lifetime = lifetime.min(stripped);
        }
        let head = RequestHead {
            method: request.method(),
            uri: target,
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let canonical = match self.config.canonical.request_key(&head) {
            KeyOutcome::Key(canonical) => canonical,
            KeyOutcome::Declined => return None,
            KeyOutcome::Invalid(InvalidTarget::SchemeMismatch) => {
                warn_scheme_mismatch_once(request.uri(), &self.config.canonical.default_scheme);
                return None;
            }
            KeyOutcome::Invalid(invalid) => {
                tracing::debug!(reason = %invalid, "request target cannot be keyed; cache bypassed");
                return None;
            }
        };
        Some(Plan {
            key: self.storage.primary_key(&canonical),
            canonical,
            lifetime,
            request_cc: CacheControl::parse_request(request.headers()),
            from_cache: !has_origin_preconditions(request.headers()),
            arrived: self.config.flights.epoch(),
        })
    }
}

#[cfg(feature = "axum")]
pub(super) fn matched_path<T>(request: &Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
pub(super) fn matched_path<T>(_request: &Request<T>) -> Option<&str> {
    None
}

/// Says once per process that a request named another scheme than the layer's: a layer
/// behind TLS left at the default `http` sees every HTTP/2 request so (`:scheme https`),
/// and caches none of them; on a plain listener it is a client's doing, and one line is
/// all it gets.
fn warn_scheme_mismatch_once(uri: &http::Uri, default_scheme: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(scheme = ?uri.scheme_str(), "target names another scheme than the layer's; cache bypassed");
        return;
    }
    tracing::warn!(
        scheme = ?uri.scheme_str(),
        default_scheme,
        "a request names another scheme than the layer's default_scheme and is not cached \
         (further ones are logged at debug level); a layer serving TLS needs \
         MemcacheLayer::default_scheme(\"https\")"
    );
}

/// The target the client sent, which keys the request. axum's `Router::nest` hands a
/// nested router (and a layer on it) the path without its prefix, and keeps the whole
/// target as `OriginalUri`: keyed by the stripped path, `/v1/x` and `/v2/x` of two nested
/// routers sharing a layer shared the key of `/x`, one's page served for the other.
#[cfg(feature = "axum")]
pub(super) fn client_target<T>(request: &Request<T>) -> &http::Uri {
    request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or(request.uri(), |original| &original.0)
}

#[cfg(not(feature = "axum"))]
pub(super) fn client_target<T>(request: &Request<T>) -> &http::Uri {
    request.uri()
}

/// The target that keys a lookup: the client's ([`client_target`]), while the inner service
/// reads that target or the one `Router::nest` made of it (the same query, the path less
/// the prefix the nest's `NestedPath` names). `None` when the target was changed otherwise
/// after axum's `Router` took it (a route middleware outside the layer putting a cookie's
/// locale in the query, rewriting the path, the authority or the scheme): the handler
/// answers a target the client did not send, and keyed by the client's, one client's answer
/// was stored for every other; keyed by the rewritten one, it was stored for clients who
/// asked that target without the input that made it. A rewrite to `/` or to a tail of the
/// client's path (`/fr/news` to `/news`) is such a change too unless a nest made it: read
/// as a nest's stripping, a guest's request a login wall rewrote to `/` was answered a
/// member's page stored under the client's target (review TN).
#[cfg(feature = "axum")]
pub(super) fn keyed_target<T>(request: &Request<T>) -> Option<&http::Uri> {
    let original = client_target(request);
    let seen = request.uri();
    // The whole target: a handler that serves by the host of its target (HTTP/2's
    // `:authority`, an absolute form) answered the authority a middleware gave it, stored
    // under the client's (review TS).
    if original.query() != seen.query()
        || original.authority() != seen.authority()
        || original.scheme() != seen.scheme()
    {
        return None;
    }
    let as_routed = match request.extensions().get::<axum::extract::NestedPath>() {
        Some(nested) => {
            nest_hands_on(original.path(), nested.as_str(), seen.path())
                && nest_captures_hold(request, original.path(), nested.as_str())
        }
        None => original.path() == seen.path(),
    };
    as_routed.then_some(original)
}

/// A segment of a route or nest path that captures a `{param}` (axum's `is_capture`).
#[cfg(feature = "axum")]
fn is_capture(segment: &str) -> bool {
    segment.starts_with('{')
        && segment.ends_with('}')
        && !segment.starts_with("{{")
        && !segment.ends_with("}}")
        && !segment.starts_with("{*")
}

/// The literal start and the name of the `{param}` a segment of a route or nest path
/// captures (`{id}`, `v{version}`; matchit takes no literal after it), if it captures one.
#[cfg(feature = "axum")]
fn captured(segment: &str) -> Option<(&str, &str)> {
    if is_capture(segment) {
        return Some(("", &segment[1..segment.len() - 1]));
    }
    let (literal, param) = segment.split_once('{')?;
    let name = param.strip_suffix('}')?;
    let plain = |text: &str| !text.contains(['{', '}']);
    (plain(literal) && !name.is_empty() && plain(name) && !name.starts_with('*'))
        .then_some((literal, name))
}

/// Whether each `{param}` segment of the nest's `prefix` took, when the request was
/// routed, the value the client's `path` holds there. A nest strips any value from such a
/// segment, so a middleware that changed only that value before a router inside routed
/// the request again (`/fr/news` made `/en/news` for a nest at `/{lang}`) had the
/// handler answer the other value's page, handed on as the client's (review TP). Every
/// value of that name axum noted must be the client's (a router or route inside notes its
/// own after the nest's, which the params do not tell apart): none, or one that differs,
/// is taken for a rewrite. Only nests with captures
/// pay for the look (a copy of the request's extensions, for axum's extractor).
#[cfg(feature = "axum")]
fn nest_captures_hold<T>(request: &Request<T>, path: &str, prefix: &str) -> bool {
    use axum::extract::{FromRequestParts, RawPathParams};
    use futures_util::FutureExt;
    if !prefix.split('/').any(|segment| captured(segment).is_some()) {
        return true;
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.extensions = request.extensions().clone();
    // Ready at once: axum reads its extension.
    let Some(Ok(params)) = RawPathParams::from_request_parts(&mut parts, &()).now_or_never() else {
        return false;
    };
    prefix
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(prefix_segment, segment)| Some((captured(prefix_segment)?, segment)))
        .all(|((literal, name), segment)| {
            let Some(decoded) = segment.strip_prefix(literal).and_then(percent_decoded) else {
                return false;
            };
            // Every value of that name, not the last: a route inside the nest naming
            // `{lang}` again (`/{lang}/compare/{lang}`) is noted after the nest's, and
            // the route's value, the client's, hid a rewritten nest value (review TR).
            let mut routed = params.iter().filter(|(key, _)| *key == name).peekable();
            routed.peek().is_some() && routed.all(|(_, value)| value == decoded)
        })
}

/// `segment` percent-decoded as axum decodes a captured value (a `%` not followed by two
/// hex digits kept as it is); `None` if the bytes are no UTF-8.
#[cfg(feature = "axum")]
fn percent_decoded(segment: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(std::borrow::Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let hex = |at: usize| {
        bytes
            .get(at)
            .and_then(|byte| char::from(*byte).to_digit(16))
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if let (b'%', Some(high), Some(low)) = (byte, hex(at + 1), hex(at + 2)) {
            if let Ok(byte) = u8::try_from(high * 16 + low) {
                decoded.push(byte);
                at += 3;
                continue;
            }
        }
        decoded.push(byte);
        at += 1;
    }
    String::from_utf8(decoded).ok().map(std::borrow::Cow::Owned)
}

/// Whether `Router::nest` at `prefix` hands `path` on as `seen` (axum's `StripPrefix`):
/// the segments the prefix names taken off (a `{param}` segment takes any one), `/` for
/// nothing left; never for a path the prefix does not match, which only a rewrite can
/// have routed into the nest. Compared in place: this runs on every request of a nested
/// router.
#[cfg(feature = "axum")]
fn nest_hands_on(path: &str, prefix: &str, seen: &str) -> bool {
    let (Some(segments), Some(prefix)) = (path.strip_prefix('/'), prefix.strip_prefix('/')) else {
        return false;
    };
    let mut path_segments = segments.split('/');
    let mut taken = 0usize;
    // Whether a `/` after the prefix is taken too, as axum takes it when the path goes
    // on past the prefix (`/v1//x` is handed on as `/x`).
    let mut past = false;
    for prefix_segment in prefix.split('/') {
        match path_segments.next() {
            Some(segment) if is_capture(prefix_segment) || segment == prefix_segment => {
                taken += 1 + segment.len();
            }
            // A prefix ending in `/` matches whatever follows.
            Some(_) if prefix_segment.is_empty() => {
                past = true;
                break;
            }
            // A segment axum routes as a capture after a literal start (`v{version}`)
            // or an escape (`{{a}}`) but its stripping compares as written: it never
            // matches, and the nest hands on the path as it got it (review TR). The
            // value captured is checked with the others' (`nest_captures_hold`).
            Some(_) if prefix_segment.contains('{') => return path == seen,
            // No match: the client's path never reached this nest by routing (`nest`
            // routes only paths under its prefix), so a middleware rewrote it before a
            // router inside routed it again. The nest's stripping may hand on the client's
            // path again (`/news` made `/members/news`, handed on as `/news`), but the
            // handler answered the rewritten target (review TP).
            _ => return false,
        }
    }
    past = past || path_segments.next().is_some();
    match path.get(taken + usize::from(past)..) {
        Some(rest) if rest.starts_with('/') => rest == seen,
        Some(rest) => seen.strip_prefix('/') == Some(rest),
        None => false,
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::{captured, keyed_target, nest_hands_on, percent_decoded};

    /// A target given another scheme or authority after routing is no target of the
    /// client's (review TS); the one axum routed, stripped by a nest or not, is.
    #[test]
    fn a_target_is_the_clients_only_with_its_scheme_and_authority() {
        let routed = |original: &str, seen: &str| {
            let mut request = http::Request::get(seen).body(()).unwrap();
            let original = axum::extract::OriginalUri(original.parse().unwrap());
            request.extensions_mut().insert(original);
            keyed_target(&request).map(ToString::to_string)
        };
        let client = "http://a.example/p?q";
        assert_eq!(routed(client, client).as_deref(), Some(client));
        assert_eq!(routed("/p?q", "/p?q").as_deref(), Some("/p?q"));
        for seen in [
            "http://b.example/p?q",
            "https://a.example/p?q",
            "http://a.example:8080/p?q",
            "/p?q",
        ] {
            assert_eq!(routed(client, seen), None, "{seen}");
        }
        assert_eq!(routed("/p?q", "http://a.example/p?q"), None);
    }

    #[test]
    fn a_segment_captures_as_matchit_reads_it() {
        for (segment, expected) in [
            ("{id}", Some(("", "id"))),
            ("v{version}", Some(("v", "version"))),
            ("v1", None),
            ("{{a}}", None),
            ("a{{b}}", None),
            ("{*rest}", None),
            ("v{}", None),
        ] {
            assert_eq!(captured(segment), expected, "{segment}");
        }
    }

    #[test]
    fn a_segment_is_decoded_as_axum_decodes_a_capture() {
        for (segment, decoded) in [
            ("fr", Some("fr")),
            ("pt%2Dbr", Some("pt-br")),
            ("%c3%A9", Some("\u{e9}")),
            ("100%", Some("100%")),
            ("%zz%4", Some("%zz%4")),
            ("%2F", Some("/")),
            ("%FF", None),
        ] {
            assert_eq!(percent_decoded(segment).as_deref(), decoded, "{segment}");
        }
    }

    #[test]
    fn a_nest_hands_on_the_path_less_its_prefix_and_nothing_else() {
        for (path, prefix, seen) in [
            ("/v1/x", "/v1", "/x"),
            ("/v1", "/v1", "/"),
            ("/v1/", "/v1", "/"),
            ("/v1/x/y", "/v1", "/x/y"),
            ("/acme/api/x", "/{tenant}/api", "/x"),
            ("/a/b/x", "/a/b", "/x"),
            ("/v1/x", "/v1/", "/x"),
            ("/v1/", "/v1/", "/"),
            ("/v1//x", "/v1/", "/x"),
            ("/v1//x", "/v1", "/x"),
            ("/{{a}}/x", "/{{a}}", "/x"),
            // Never stripped by axum: handed on as it came (review TR).
            ("/api/v7/x", "/api/v{version}", "/api/v7/x"),
        ] {
            assert!(nest_hands_on(path, prefix, seen), "{path} {prefix} {seen}");
        }
        for (path, prefix, seen) in [
            // A rewrite to the root or to a tail is no nest's.
            ("/members", "/v1", "/"),
            ("/v1/fr/news", "/v1", "/news"),
            ("/v2/x", "/v1", "/x"),
            ("/v1x", "/v1", "x"),
            ("/v1x", "/v1", "/x"),
            ("/acme/x", "/{tenant}/api", "/x"),
            ("/v1//x", "/v1", "//x"),
            ("", "/v1", "/"),
            ("/v1/x", "", "/x"),
            // A path the nest's prefix does not match was rewritten into the nest before
            // a router inside routed it (review TP), whatever the stripping handed on.
            ("/v1", "/v1/", "/v1"),
            ("/news", "/members", "/news"),
            ("/x/news", "/members", "/x/news"),
            ("/api/v7/x", "/api/v{version}", "/x"),
            ("/api/v7/x", "/api/v{version}", "/api/v8/x"),
            ("/web/v7/x", "/api/v{version}", "/web/v7/x"),
        ] {
            assert!(!nest_hands_on(path, prefix, seen), "{path} {prefix} {seen}");
        }
    }

    proptest::proptest! {
        /// Any client path and nest prefix: no panic, and a nest only ever takes a path's
        /// start off, never hands on more than the client sent.
        #[test]
        fn any_path_is_compared_without_panic(
            path in "[/a-z{}%.]{0,16}",
            prefix in "(/([a-z]{1,3}|\\{[a-z]\\}|\\{\\{a\\}\\})){1,3}/?",
            seen in "[/a-z{}%.]{0,16}",
        ) {
            if nest_hands_on(&path, &prefix, &seen) {
                proptest::prop_assert!(seen.len() <= path.len(), "{path} {prefix} {seen}");
            }
        }
    }
}

#[cfg(not(feature = "axum"))]
pub(super) fn keyed_target<T>(request: &Request<T>) -> Option<&http::Uri> {
    Some(request.uri())
}
