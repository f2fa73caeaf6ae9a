//! Invalidation: what a successful unsafe request removes (RFC 9111 §4.4), and the
//! requests the cache does not look up.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body::Body;
use tower::Service;

use super::body::ResponseBody;
use super::key::RequestTarget;
use super::range;
use super::shared::Shared;
use super::status::{Forward, Outcome};
use super::target::client_target;
use crate::backend::Backend;
use crate::cache::policy::Policy;

impl<B: Backend> Shared<B> {
    /// RFC 9111 §4.4: a successful response to an unsafe method invalidates the target
    /// URI and the same-origin URIs in `Location` and `Content-Location`. Their keys (four
    /// at most), made now: what invalidates them later holds nothing of the request.
    pub(super) fn invalidated_keys(
        &self,
        target: &Uri,
        request_headers: &HeaderMap,
        extensions: &http::Extensions,
        locations: &[HeaderValue],
    ) -> Vec<String> {
        let mut uris = vec![target.clone()];
        // A target spelled with dot segments (`/a/../b` or `/a/%2e%2e/b`) or `\`
        // (`/a\..\b`, which IIS and other Windows stacks read as `/`), sent as is, names
        // the resource the origin serves at `/b` too, which the cache keys apart.
        uris.extend(lenient_target(target));
        uris.extend(locations.iter().filter_map(|value| {
            same_origin(
                target,
                request_headers,
                value,
                &self.config.canonical.default_scheme,
            )
        }));
        uris.iter()
            .filter_map(|uri| {
                self.config
                    .canonical
                    .key_for_get(uri, request_headers, extensions)
            })
            .map(|canonical| self.storage.primary_key(&canonical))
            .collect()
    }

    /// Invalidates `keys` ([`invalidated_keys`](Self::invalidated_keys)) at the same
    /// time: each is a delete on every server, then a new store epoch, and the response
    /// waits for all of them.
    pub(super) async fn invalidate_keys(&self, keys: &[String]) {
        let invalidations = keys.iter().map(|key| async move {
            match self.storage.invalidate(key).await {
                Ok(()) => tracing::debug!(%key, "invalidated by an unsafe method"),
                Err(err) => tracing::debug!(%key, error = %err, "invalidation failed"),
            }
        });
        futures_util::future::join_all(invalidations).await;
    }
}

/// A `Location` / `Content-Location` value as a URI on the request's origin, if it is one.
/// Both origins are validated authorities: a response cannot invalidate another site's
/// entries by naming it, however its Host was spelled.
pub(super) fn same_origin(
    target: &Uri,
    request_headers: &HeaderMap,
    value: &HeaderValue,
    default_scheme: &str,
) -> Option<Uri> {
    // The fragment is the client's (RFC 9110 §4.2.5), in no key.
    let text = value.to_str().ok()?.trim();
    let text = text.split('#').next().unwrap_or("");
    let as_browsers_read;
    let text = if text.contains(['\\', '\t']) {
        as_browsers_read = browser_spelling(text);
        as_browsers_read.as_str()
    } else {
        text
    };
    // A relative reference (`42`, `../42`, `?page=2`, RFC 9110 §10.2.2) names a URI on the
    // target's origin too: resolved against the target's path (RFC 3986 §5.2), it is an
    // absolute path. Parsed as it is, `42` would read as an authority, `../42` as nothing.
    // A network-path reference (`//host/path`) takes the target's scheme (RFC 3986
    // §5.2.2), and is on its origin only if its authority is.
    let resolved;
    let text = if let Some(reference) = relative_reference(text) {
        resolved = resolve_relative(target, reference)?;
        resolved.as_str()
    } else if text.starts_with("//") {
        let scheme = target.scheme_str().unwrap_or(default_scheme);
        resolved = format!("{scheme}:{text}");
        resolved.as_str()
    } else {
        text
    };
    let uri: Uri = text.parse().ok()?;
    // Every reference's path is resolved without its dot segments (RFC 3986 §5.2.2), so
    // `/a/../b` (or `/a/%2e%2e/b`) names `/b`, where a client that follows it goes.
    let uri = without_dot_segments(&uri).unwrap_or(uri);
    let own = RequestTarget::from_parts(default_scheme, target, request_headers).ok()?;
    match uri.authority() {
        // An absolute path: on the target's origin.
        None if uri.path().starts_with('/') => {
            if own.authority().is_empty() {
                return Some(uri);
            }
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            format!("{own}{path}").parse().ok()
        }
        None => None,
        Some(_) => {
            let theirs = RequestTarget::from_parts(default_scheme, &uri, &HeaderMap::new()).ok()?;
            if theirs.authority() != own.authority() {
                return None;
            }
            // Its scheme the target's, or the layer's own: the page as it names it (an
            // absolute-form `POST https://…` to an `http` layer redirecting to its
            // `http://` page names the page the layer keys for a client that follows).
            if theirs.scheme() == own.scheme() || theirs.scheme() == default_scheme {
                return Some(uri);
            }
            // The same host in the other scheme: behind a TLS terminator the layer keys
            // `http://` while the application names its public `https://` URLs (and an
            // `https` layer's may name `http://` ones). The page a client that follows
            // it reads is the one the layer keys in its own scheme (the target's, which
            // is then the layer's), as `purge_uri` of the public URL purges it. Another
            // host or port is another origin.
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            format!("{own}{path}").parse().ok()
        }
    }
}

/// A reference as a browser reads it in an http(s) URL (the URL Standard): tabs dropped,
/// and `\` taken for `/` before the query, so `Location: \a\b` sends it to `/a/b` and
/// `\\host\b` to `//host/b`. Only what a client that follows the value reaches is
/// invalidated through it; unparsed, it named nothing.
fn browser_spelling(reference: &str) -> String {
    let query = reference.find('?').unwrap_or(reference.len());
    reference
        .char_indices()
        .filter(|(_, c)| *c != '\t')
        .map(|(at, c)| if c == '\\' && at < query { '/' } else { c })
        .collect()
}

/// `reference` when it is a relative-path or query reference (RFC 3986 §4.2): no
/// scheme, no authority (`//`), no absolute path.
fn relative_reference(reference: &str) -> Option<&str> {
    if reference.is_empty() || reference.starts_with('/') {
        return None;
    }
    // A scheme is letters, digits, `+`, `-` and `.` up to a `:` before any `/`, `?`.
    let before = reference.split(['/', '?']).next().unwrap_or("");
    let has_scheme = before.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    (!has_scheme).then_some(reference)
}

/// A relative reference resolved against `target`'s path (RFC 3986 §5.2.2, §5.2.3): the
/// absolute path and query it names.
fn resolve_relative(target: &Uri, reference: &str) -> Option<String> {
    let base = target.path();
    if !base.starts_with('/') {
        return None;
    }
    if reference.starts_with('?') {
        return Some(format!("{base}{reference}"));
    }
    let (path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (reference, None),
    };
    let directory = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    let mut resolved = remove_dot_segments(&format!("{directory}{path}"));
    if let Some(query) = query {
        resolved.push('?');
        resolved.push_str(query);
    }
    Some(resolved)
}

/// The target as an origin that reads `\` as `/` and resolves dot segments reads it, if
/// that is another URI.
fn lenient_target(target: &Uri) -> Option<Uri> {
    let slashed = with_slashes(target);
    without_dot_segments(slashed.as_ref().unwrap_or(target)).or(slashed)
}

/// `uri` with each `\` in its path read as `/`, if it has any (the query kept as is).
fn with_slashes(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    if !path.contains('\\') {
        return None;
    }
    with_path(uri, path.replace('\\', "/"))
}

/// `uri` with its path's dot segments removed, if it has any.
fn without_dot_segments(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let has_dots = path
        .split('/')
        .skip(1)
        .any(|segment| dot_segment(segment).is_some());
    if !has_dots || !path.starts_with('/') {
        return None;
    }
    with_path(uri, remove_dot_segments(path))
}

/// `uri` with `path` in place of its own, the query kept as is.
fn with_path(uri: &Uri, mut path_and_query: String) -> Option<Uri> {
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// A dot segment: `.` or `..`, each dot maybe percent-encoded (`%2E`, `%2e`). RFC 3986
/// §2.3 makes `%2E` and `.` the same URI, and the URL Standard (browsers following a
/// `Location`) reads `%2e%2e` as `..`; an origin that decodes before it resolves serves
/// `/x/%2e%2e/c` as `/c` too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dot {
    One,
    Two,
}

fn dot_segment(segment: &str) -> Option<Dot> {
    let is_dot = |part: &str| part == "." || part.eq_ignore_ascii_case("%2e");
    match segment.len() {
        1 | 3 if is_dot(segment) => Some(Dot::One),
        2 | 4 | 6 => {
            // Split after a `.` (one byte) or an escape (three); both halves a dot.
            [1, 3].into_iter().find_map(|at| {
                let (first, second) = (segment.get(..at)?, segment.get(at..)?);
                (is_dot(first) && is_dot(second)).then_some(Dot::Two)
            })
        }
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path: `.` and `..` segments (see [`dot_segment`])
/// removed (`..` above the root stays at the root).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot_segment(segment) {
            Some(Dot::One) => {}
            Some(Dot::Two) => {
                out.pop();
            }
            None => {
                out.push(segment);
                continue;
            }
        }
        // A trailing `.` or `..` leaves the path ending in `/`.
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// What an unsafe request's invalidation is made of, taken before the request goes: its
/// target as the lookup keys it, its head and extensions (for the key function).
type Saved = (Uri, HeaderMap, http::Extensions);

/// A request the cache does not look up: other methods (which may invalidate), and
/// routes or keys that opt out.
pub(super) async fn bypass<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    shared.config.stats.record_bypass();
    let method = request.method().clone();
    tracing::debug!(%method, path = request.uri().path(), "cache bypassed");
    // `get` too: a server that answers it as a GET (which is why it invalidates nothing
    // by itself) honours its override as a GET's.
    let invalidates = Policy::invalidates(&method)
        || (Policy::reads_as_cacheable(&method) && Policy::overridden_to_unsafe(request.headers()));
    let saved: Option<Saved> = invalidates.then(|| {
        (
            // The whole target, as the lookup keys it (see `client_target`).
            client_target(&request).clone(),
            request.headers().clone(),
            request.extensions().clone(),
        )
    });
    // Not looked up is no licence to relay what a miss would not (see `range::tame`):
    // any field that makes a GET bypass the cache took an abusive range set past it.
    let mut request = request;
    if Policy::reads_as_cacheable(&method) && range::tame(request.headers_mut()) {
        tracing::debug!("abusive or invalid Range of a bypassed request not forwarded");
    }
    let response = match saved {
        None => {
            let mut response = inner.call(request).await?;
            shared.drop_own_fields(&mut response);
            response
        }
        Some(saved) => {
            // Followed to its answer should its client leave first (see `Unanswered`).
            let mut call = Unanswered {
                call: Some(Box::pin(inner.call(request))),
                saved: Some(saved),
                shared: Arc::clone(shared),
            };
            let outcome = std::future::poll_fn(|cx| call.poll_answer(cx)).await;
            let saved = call.saved.take();
            drop(call);
            let mut response = outcome?;
            shared.drop_own_fields(&mut response);
            if let Some(keys) = saved.and_then(|saved| shared.keys_invalidated_by(saved, &response))
            {
                invalidate_to_the_end(shared, keys).await;
            }
            response
        }
    };
    let fwd = if Policy::is_cacheable_method(&method) {
        Forward::Bypass
    } else {
        Forward::Method
    };
    let mut response = response.map(ResponseBody::passthrough);
    shared.set_status(&mut response, Outcome::forwarded(fwd, None));
    Ok(response)
}

impl<B: Backend> Shared<B> {
    /// The keys a response to an unsafe request invalidates: none unless it is a success
    /// or a redirection (RFC 9111 §4.4). What was saved of the request is gone when this
    /// returns: a client that leaves at once leaves behind only its keys, however large
    /// its head was.
    fn keys_invalidated_by<T>(&self, saved: Saved, response: &Response<T>) -> Option<Vec<String>> {
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return None;
        }
        let locations: Vec<HeaderValue> = [header::LOCATION, header::CONTENT_LOCATION]
            .iter()
            .filter_map(|name| response.headers().get(name).cloned())
            .collect();
        let (uri, headers, extensions) = saved;
        Some(self.invalidated_keys(&uri, &headers, &extensions, &locations))
    }
}

/// An unsafe request's call to the origin, which goes on to the origin's answer if its
/// client leaves first (hyper drops the response future, a timeout does): the origin has
/// the request, and most act on it whoever waits for the answer. Dropped with the client
/// as any call, its success came back to nobody and invalidated nothing, and the page it
/// changed was a hit for the rest of its lifetime. Followed, it invalidates as if the
/// client had stayed, and only then (a client leaving makes no invalidation of an answer
/// that was none, or any client could evict any page): for at most
/// `background_timeout` after the client left, and `layer::MAX_UNANSWERED` such calls at
/// once (past it a call goes with its client, as before).
struct Unanswered<B, F, T, E>
where
    B: Backend,
    F: Future<Output = Result<Response<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    /// The call, until it answered.
    call: Option<Pin<Box<F>>>,
    saved: Option<Saved>,
    shared: Arc<Shared<B>>,
}

impl<B, F, T, E> Unanswered<B, F, T, E>
where
    B: Backend,
    F: Future<Output = Result<Response<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    /// The origin's answer, once; pending for good after it (never polled again).
    /// The call is out of `self` while polled: one that panics unwinds through the
    /// drop of this, which must not take it for a client that left and poll it again in
    /// the background (review TP).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<T>, E>> {
        let Some(mut call) = self.call.take() else {
            return Poll::Pending;
        };
        let outcome = call.as_mut().poll(cx);
        if outcome.is_pending() {
            self.call = Some(call);
        }
        outcome
    }
}

impl<B, F, T, E> Drop for Unanswered<B, F, T, E>
where
    B: Backend,
    F: Future<Output = Result<Response<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn drop(&mut self) {
        let (Some(call), Some(saved)) = (self.call.take(), self.saved.take()) else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.shared.config.unanswered).try_acquire_owned() else {
            tracing::debug!("enough unsafe requests followed after their clients left; dropped");
            return;
        };
        let shared = Arc::clone(&self.shared);
        let deadline = shared.config.background_timeout;
        // Counted, never skipped (an invalidation is not best effort); bounded above.
        let started = self.shared.config.background.spawn(async move {
            let answered = tokio::time::timeout(deadline, call).await;
            let Ok(Ok(mut response)) = answered else {
                tracing::debug!("an unsafe request whose client left got no answer in time");
                return;
            };
            shared.drop_own_fields(&mut response);
            let keys = shared.keys_invalidated_by(saved, &response);
            // The answer's body, which nobody reads, and its connection go first.
            drop(response);
            if let Some(keys) = keys {
                tracing::debug!("invalidating after an unsafe request whose client left");
                shared.invalidate_keys(&keys).await;
            }
            drop(permit);
        });
        if !started {
            tracing::debug!("no tokio runtime: an unsafe request went with its client");
        }
    }
}

/// [`Shared::invalidate_keys`] as a background task the response waits for: the origin
/// has already acted on the request, so a client that goes away (its response future
/// dropped by hyper or a timeout) must not cut the invalidation off halfway, its entry
/// deleted in memcached but the store epoch and the near tier left to serve the old page.
/// Such tasks are not capped (an invalidation is not skipped); each holds its keys only.
async fn invalidate_to_the_end<B: Backend>(shared: &Arc<Shared<B>>, keys: Vec<String>) {
    // Without a runtime to spawn on (the layer driven by another executor), here.
    if tokio::runtime::Handle::try_current().is_err() {
        shared.invalidate_keys(&keys).await;
        return;
    }
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let owned = Arc::clone(shared);
    // Counted, never skipped: an invalidation is not best effort.
    shared.config.background.spawn(async move {
        owned.invalidate_keys(&keys).await;
        let _ = done.send(());
    });
    // Ends when the task does (or is dropped with its runtime).
    let _ = finished.await;
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn location(target: &str, host: Option<&str>, value: &'static str) -> Option<String> {
        let target: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(http::header::HOST, host.parse().unwrap());
        }
        same_origin(&target, &headers, &HeaderValue::from_static(value), "http")
            .map(|uri| uri.to_string())
    }

    #[test]
    fn only_locations_on_the_requests_own_origin_are_invalidated() {
        assert_eq!(
            location("/a", Some("Site.example"), "/b?x=1").as_deref(),
            Some("http://site.example/b?x=1")
        );
        assert_eq!(
            location("/a", Some("site.example"), "http://SITE.example:80/c").as_deref(),
            Some("http://SITE.example:80/c")
        );
        for other in [
            "http://other.example/c",
            "http://site.example:8080/c",
            "https://site.example:8443/c",
            "https://site.example:80/c",
            "https://other.example/c",
            "mailto:x@site.example",
            "//other.example/c",
        ] {
            assert_eq!(location("/a", Some("site.example"), other), None, "{other}");
        }
        // An absolute-form target in the other scheme: a `Location` in the layer's own
        // names the page as it is (not respelled into the target's scheme, where the
        // layer keys nothing a client that follows it asks for).
        assert_eq!(
            location("https://site.example/a", None, "http://site.example/p").as_deref(),
            Some("http://site.example/p")
        );
        // The same host in the other scheme names the page in the layer's own (review RF).
        for (value, resolved) in [
            ("https://Site.example/c?x", "http://site.example/c?x"),
            ("https://site.example:443/c/../d", "http://site.example/d"),
        ] {
            assert_eq!(
                location("/a", Some("site.example"), value).as_deref(),
                Some(resolved),
                "{value}"
            );
        }
        // Relative references resolve against the target (RFC 3986 §5.2).
        for (target, value, resolved) in [
            ("/items/", "42", "http://site.example/items/42"),
            (
                "/items/42/edit",
                "../42?x=1#top",
                "http://site.example/items/42?x=1",
            ),
            ("/items/42/edit", "./", "http://site.example/items/42/"),
            (
                "/items/42",
                "?page=2",
                "http://site.example/items/42?page=2",
            ),
            ("/a", "../../b", "http://site.example/b"),
            ("/a/b", "site.example", "http://site.example/a/site.example"),
            ("/a/b", "./c:d", "http://site.example/a/c:d"),
            ("/a", "//SITE.example/b", "http://SITE.example/b"),
            ("/a", "//site.example/b#top", "http://site.example/b"),
            ("/a", "http://site.example/b#top", "http://site.example/b"),
        ] {
            assert_eq!(
                location(target, Some("site.example"), value).as_deref(),
                Some(resolved),
                "{target} {value}"
            );
        }
        // Dot segments go from every path, absolute ones too (RFC 3986 §5.2.2).
        for (value, resolved) in [
            ("/a/../b", "http://site.example/b"),
            ("/a/./b/..?x=/../", "http://site.example/a/?x=/../"),
            ("http://site.example/a/../../b", "http://site.example/b"),
            ("//site.example/a/../b", "http://site.example/b"),
            ("/a/..b/.c", "http://site.example/a/..b/.c"),
            // Percent-encoded dots are dots (RFC 3986 §2.3), in any case.
            ("/a/b/%2E%2e/c", "http://site.example/a/c"),
            ("/a/.%2e/%2E./%2e/c", "http://site.example/c"),
            (
                "/a/%2e%2e%2e/%2ex/%252e",
                "http://site.example/a/%2e%2e%2e/%2ex/%252e",
            ),
            ("//site.example/a/%2e%2e", "http://site.example/"),
        ] {
            assert_eq!(
                location("/x", Some("site.example"), value).as_deref(),
                Some(resolved),
                "{value}"
            );
        }
        // IIS's `%u002e` and an overlong `%c0%ae` are no dots to a client that follows
        // the value (browsers send them as they are): invalidated as spelled (review RF).
        for value in ["/x/%u002e%u002e/b", "/x/%c0%ae%c0%ae/b"] {
            assert_eq!(
                location("/a", Some("site.example"), value),
                Some(format!("http://site.example{value}")),
                "{value}"
            );
        }
        assert_eq!(location("/a", Some("site.example"), "#top"), None);
        assert_eq!(
            location("/a/b", Some("site.example"), "%2e%2E/c").as_deref(),
            Some("http://site.example/c")
        );
        // Never another origin, however many dot segments climb.
        assert_eq!(
            location("/a", Some("site.example"), "//other.example/%2e%2e/../b"),
            None
        );

        // `\` is `/` before the query, as browsers read it; tabs are dropped (review RC).
        for (value, resolved) in [
            ("\\a\\b", Some("http://site.example/a/b")),
            ("\\a\\..\\b?x=\\", Some("http://site.example/b?x=\\")),
            ("c\\d", Some("http://site.example/c/d")),
            ("\\/site.example\\e", Some("http://site.example/e")),
            ("http:\\\\site.example\\f", Some("http://site.example/f")),
            ("/g\th", Some("http://site.example/gh")),
            ("\\\\other.example\\a", None),
            ("http:\\\\other.example\\a", None),
            ("\\/other.example/a", None),
            ("/\\other.example\\a", None),
        ] {
            assert_eq!(
                location("/x", Some("site.example"), value).as_deref(),
                resolved,
                "{value}"
            );
        }

        // A request whose own Host cannot be keyed invalidates nothing else.
        assert_eq!(location("/a", Some("site.example/x"), "/b"), None);
    }
}
