//! The outermost service: what the proxy answers itself (CONNECT, TRACE, loops,
//! `Max-Forwards: 0`) and the targets it refuses (400) before the cache or the origin see
//! the request; the rest goes on as the origin will see it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{self, TryFutureExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::Service;
use tower_memcache::cache::{InvalidTarget, RequestTarget};

use crate::fields::{ClientRequest, PeerFields, as_forwarded, looped};
use crate::forward::{only_chunked, plain};
use crate::upload::{ProxyRequestBody, discard_rest};

/// Why a request is refused before the cache sees it, if it is; else the `Host` it is
/// forwarded with (its target's validated authority; none for an HTTP/1.0 request that
/// named none).
pub(crate) fn check_target<B>(
    request: &Request<B>,
    client: &PeerFields,
) -> Result<Option<HeaderValue>, InvalidTarget> {
    // The proxy listens on plain HTTP only: an `https://` target here is a lie (and would
    // be keyed apart from the same page under `http://`).
    if request
        .uri()
        .scheme_str()
        .is_some_and(|scheme| !scheme.eq_ignore_ascii_case("http"))
    {
        return Err(InvalidTarget::UnsupportedScheme);
    }
    // RFC 9112 §3.2.3, §3.2.4: the asterisk form is a server-wide OPTIONS's and the
    // authority form CONNECT's. A `GET *` was stored and replayed; a `GET host:port` went
    // to the origin as `GET /`.
    let form_allowed = match request.uri().path_and_query() {
        Some(path_and_query) if path_and_query.as_str() == "*" => {
            request.method() == Method::OPTIONS
        }
        Some(path_and_query) => path_and_query.path().starts_with('/'),
        None => request.uri().scheme().is_some() || request.method() == Method::CONNECT,
    };
    if !form_allowed {
        return Err(InvalidTarget::NotAResource);
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (host, more_hosts) = (hosts.next(), hosts.next().is_some());
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if request.version() == Version::HTTP_11 && host.is_none() {
        return Err(InvalidTarget::MalformedAuthority);
    }
    // An origin-form target's authority is its one `Host` field's, validated alike
    // whatever else the request holds. Most connections send one host: the bytes this
    // one sent first were validated then and are not again here (the layer validates
    // every request's target for its key anyway).
    let origin_form = request.uri().scheme().is_none() && request.uri().authority().is_none();
    let single_host = host.filter(|_| origin_form && !more_hosts);
    if let (Some(host), Some((first, forwarded))) = (single_host, client.host_first.get()) {
        if host.as_bytes() == first.as_bytes() {
            return Ok(forwarded.clone());
        }
    }
    let target = RequestTarget::from_parts("http", request.uri(), request.headers())?;
    let forwarded = match target.authority() {
        "" => None,
        // Most often the `Host` field as it came: shared, not copied.
        authority => match host {
            Some(host) if host.as_bytes() == authority.as_bytes() => Some(host.clone()),
            _ => HeaderValue::from_str(authority).ok(),
        },
    };
    if let Some(host) = single_host {
        // Copies: a slice would hold the connection's first read buffer for its lifetime.
        let copy = |value: &HeaderValue| HeaderValue::from_bytes(value.as_bytes()).ok();
        if let Some(first) = copy(host) {
            let kept = forwarded.as_ref().map(|value| {
                if value == host {
                    first.clone()
                } else {
                    value.clone()
                }
            });
            let _ = client.host_first.set((first, kept));
        }
    }
    Ok(forwarded)
}

/// The 400 for a target the proxy refuses.
pub(crate) fn refused(invalid: InvalidTarget) -> Response<Full<Bytes>> {
    tracing::debug!(reason = %invalid, "request refused: 400");
    plain(StatusCode::BAD_REQUEST, "400 Bad Request\n")
}

/// The outermost service: drops method overrides from GET and HEAD, and answers 400 to a
/// request whose target the proxy refuses ([`check_target`]), before the cache or the
/// origin see it; passes the rest on as the origin will see it ([`as_forwarded`]).
#[derive(Clone)]
pub(crate) struct ValidTarget<S> {
    pub(crate) inner: S,
    /// What the forwarding headers say of the client (the connection's peer).
    pub(crate) client: Arc<PeerFields>,
    /// `--underscores-in-headers`: pass fields whose names hold `_`.
    pub(crate) pass_underscored: bool,
}

/// The inner service's response, or the 400.
pub(crate) type GuardedResponse<B> = Response<Either<B, Full<Bytes>>>;

impl<S, B> Service<Request<Incoming>> for ValidTarget<S>
where
    S: Service<Request<ProxyRequestBody>, Response = Response<B>, Error = Infallible>,
{
    type Response = GuardedResponse<B>;
    type Error = Infallible;
    type Future = future::Either<
        future::Ready<Result<GuardedResponse<B>, Infallible>>,
        future::MapOk<S::Future, fn(Response<B>) -> GuardedResponse<B>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        // A reverse proxy tunnels nothing: forwarded, CONNECT asked the origin (which may
        // itself be a forward proxy) to open a tunnel for any client.
        if request.method() == Method::CONNECT {
            tracing::debug!("CONNECT refused: 501");
            let response = plain(StatusCode::NOT_IMPLEMENTED, "501 Not Implemented\n");
            return answered_unread(request, response);
        }
        // A transfer coding besides its one `chunked` (`gzip, chunked`) stays on the body
        // hyper hands over: forwarded without the hop-by-hop field that names it, the
        // origin took the coded bytes for the representation. RFC 9112 §6.1: 501, as
        // nginx answers (review TB).
        if !only_chunked(request.headers()) {
            tracing::debug!("request transfer coding other than chunked: 501");
            let response = plain(StatusCode::NOT_IMPLEMENTED, "501 Not Implemented\n");
            return answered_unread(request, response);
        }
        // Before the cache: a looped request waited for its own flight at each hop.
        if looped(request.headers()) {
            tracing::warn!(
                "a request came back through this proxy (its upstream leads to it): 508"
            );
            let response = plain(StatusCode::LOOP_DETECTED, "508 Loop Detected\n");
            return answered_unread(request, response);
        }
        if let Some(response) = answered_here(&mut request) {
            return answered_unread(request, response);
        }
        match check_target(&request, &self.client) {
            Err(invalid) => answered_unread(request, refused(invalid)),
            Ok(client_host) => future::Either::Right({
                // A standard method's clone is a copy.
                let method = request.method().clone();
                let clients = ClientRequest {
                    version: request.version(),
                    method: &method,
                    pass_underscored: self.pass_underscored,
                };
                as_forwarded(
                    request.headers_mut(),
                    clients,
                    &self.client,
                    client_host.as_ref(),
                );
                self.inner
                    .call(request.map(Either::Left))
                    .map_ok(passed as fn(Response<B>) -> GuardedResponse<B>)
            }),
        }
    }
}

/// `response`, the proxy's own answer to `request`, whose body is read and dropped
/// ([`discard_rest`]) rather than dropped unread: a client that writes its whole body
/// before it reads would otherwise have its connection reset under its writes, the
/// answer never read.
fn answered_unread<F, B>(
    request: Request<Incoming>,
    response: Response<Full<Bytes>>,
) -> future::Either<future::Ready<Result<GuardedResponse<B>, Infallible>>, F> {
    let version = request.version();
    let body = request.into_body();
    // An HTTP/2 stream is reset instead, as h2 does when its body is dropped.
    if version != Version::HTTP_2 && !body.is_end_stream() {
        discard_rest(Either::Left(body));
    }
    future::Either::Left(future::ready(Ok(response.map(Either::Right))))
}

/// The methods the proxy passes on, for `Allow` in what it answers itself.
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

/// What the proxy answers itself rather than forward (RFC 9110 §7.6.2, §9.3.8), and the
/// `Max-Forwards` it lowers on the way:
/// - TRACE: 405, as nginx answers. Forwarded, the origin echoed the request as it got it
///   (cookies, credentials, the proxy's forwarding fields) to whoever sent it. In any
///   case (`trace`): many servers upper-case the method before routing.
/// - OPTIONS with `Max-Forwards: 0`: the proxy is its final recipient (200, `Allow`); with
///   more, it goes on one lower. An unreadable value is left as it is.
fn answered_here(request: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if request.method().as_str().eq_ignore_ascii_case("TRACE") {
        tracing::debug!("TRACE refused: 405");
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        response.headers_mut().insert(header::ALLOW, ALLOW);
        return Some(response);
    }
    if request.method() != Method::OPTIONS {
        return None;
    }
    let remaining = request
        .headers()
        .get(header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if remaining == 0 {
        let mut response = plain(StatusCode::OK, "");
        response.headers_mut().insert(header::ALLOW, ALLOW);
        return Some(response);
    }
    request
        .headers_mut()
        .insert(header::MAX_FORWARDS, HeaderValue::from(remaining - 1));
    None
}

pub(crate) fn passed<B>(response: Response<B>) -> GuardedResponse<B> {
    response.map(Either::Left)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn request(target: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut request = Request::get(target).version(version);
        for host in hosts {
            request = request.header(header::HOST, *host);
        }
        request.body(()).unwrap()
    }

    fn peer() -> PeerFields {
        PeerFields::new(SocketAddr::from(([127, 0, 0, 1], 40000)))
    }

    #[test]
    fn a_connection_checks_each_target_as_a_new_connection_would() {
        let v11 = Version::HTTP_11;
        let requests = [
            request("/a", v11, &["Example.COM:80"]),
            request("/a", v11, &["example.com"]),
            request("/a", v11, &["example.com:8080"]),
            request("/a", v11, &["example.com/a"]),
            request("/a", v11, &["example.com:99999"]),
            request("/a", v11, &["example.com", "example.com"]),
            request("/a", v11, &[]),
            request("/a", Version::HTTP_10, &[]),
            request("http://other.example/a", v11, &["example.com"]),
            request("http://example.com/a", v11, &["example.com"]),
            request("https://example.com/a", v11, &["example.com"]),
            request("*", v11, &["example.com"]),
        ];
        for first in &requests {
            let client = peer();
            let _ = check_target(first, &client);
            for request in &requests {
                assert_eq!(
                    check_target(request, &client),
                    check_target(request, &peer()),
                    "{} {:?} after {} {:?}",
                    request.uri(),
                    request.headers(),
                    first.uri(),
                    first.headers()
                );
            }
        }
        let client = peer();
        let first = check_target(&requests[0], &client);
        assert_eq!(first, Ok(Some(HeaderValue::from_static("example.com"))));
        assert_eq!(check_target(&requests[0], &client), first);
    }
}
