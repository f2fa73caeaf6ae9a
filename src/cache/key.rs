//! The canonical request key: what makes two requests "the same" for the cache.
//!
//! Clients are untrusted: the key is built from a parsed and validated authority
//! ([`RequestTarget`]), never from raw `Host` text, so no request can be stored under the
//! key of another URL.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Uri, header};

/// The parts of a request a key function may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method (GET or HEAD: only those reach a key function).
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (e.g. axum's `MatchedPath`, your own auth data).
    pub extensions: &'a Extensions,
}

/// Makes the cache key of a request; `None` lets the request bypass the cache.
///
/// Implemented for closures, so a tenant header or a cookie value can key the cache. A
/// key stands for everything the answer depends on: keep the host and the whole target
/// (the query too, or `/search?q=b` is answered with the page of `?q=a`), and join the
/// parts so that no two requests spell one key (a tenant `t:/x` asking for `/y` must not
/// read as `t` asking for `/x:/y`). Take the host from [`RequestTarget`], not the raw
/// `Host` field: it is spelled as the layer keys it (lower case, no trailing dot or
/// default port), so `Example.com.` and `example.com` share entries, as the origin, asked
/// with that spelling, answers them alike, and an unsafe request to one spelling
/// invalidates the page all of them read:
///
/// ```
/// use tower_memcache::cache::{KeyFn, RequestHead, RequestTarget};
///
/// let by_tenant = |req: &RequestHead<'_>| {
///     let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
///     // A plain word: nothing in it can be taken for the host or the target.
///     if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric()) {
///         return None;
///     }
///     // The scheme the layer serves (its `default_scheme`).
///     let site = RequestTarget::from_parts("http", req.uri, req.headers).ok()?;
///     let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
///     Some(format!("{tenant} {site}{target}"))
/// };
/// # fn check(_: impl KeyFn) {}
/// # check(by_tenant);
/// ```
pub trait KeyFn: Send + Sync + 'static {
    /// The key for this request.
    fn key(&self, request: &RequestHead<'_>) -> Option<String>;
}

impl<F> KeyFn for F
where
    F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
{
    fn key(&self, request: &RequestHead<'_>) -> Option<String> {
        self(request)
    }
}

/// Why a request's target cannot be keyed: the cache neither looks it up nor stores it,
/// and a server in front of the layer should answer 400 (RFC 9112 §3.2, RFC 9113 §8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTarget {
    /// More than one `Host` field.
    #[error("more than one Host field")]
    DuplicateHost,
    /// `Host` (or the target's authority) is not `host [":" port]`: a path, user
    /// information, white space or another character a host cannot hold, a bad IP literal.
    #[error("the Host or authority is not host[:port]")]
    MalformedAuthority,
    /// The port is not a number from 0 to 65535.
    #[error("the port is not a number from 0 to 65535")]
    BadPort,
    /// `Host` names another authority than the absolute-form target or `:authority`.
    #[error("Host disagrees with the request target's authority")]
    HostMismatch,
    /// The scheme is neither `http` nor `https`.
    #[error("the scheme is neither http nor https")]
    UnsupportedScheme,
    /// The target is in asterisk form (`*`, a server-wide OPTIONS) or authority form
    /// (`host:port`, CONNECT's): it names no resource (RFC 9112 §3.2.3, §3.2.4).
    #[error("the request target is in asterisk or authority form")]
    NotAResource,
    /// The target's scheme (absolute form, HTTP/2's `:scheme`) is not the one the layer
    /// serves ([`default_scheme`](super::MemcacheLayer::default_scheme)): the client
    /// claims a connection it is not on (RFC 9110 §7.4).
    #[error("the target's scheme is not the listener's")]
    SchemeMismatch,
}

/// The validated scheme and authority of a request: what the default cache key is built
/// from.
///
/// The authority comes from the target (absolute form, or HTTP/2's `:authority`) or from
/// the single `Host` field; when both are present they must agree. It must be
/// `host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name of letters,
/// digits, `-`, `.`, `_` and `~`, an IPv4 address, or a bracketed IPv6 address. Scheme and
/// host are lower-cased, a name's trailing dot (DNS's fully qualified form) and the
/// scheme's default port dropped, and an IPv6 address written in RFC 5952's form, so
/// `Example.COM.:80` and `example.com` are one key, and `[0:0::1]` and `[::1]`.
/// A miss asks the origin with this spelling ([`MemcacheLayer`](super::MemcacheLayer)
/// respells `Host`), so what is stored under the key is the origin's answer for it.
///
/// A server in front of the cache can use it to refuse what the cache would not key:
///
/// ```
/// use http::Request;
/// use tower_memcache::cache::{InvalidTarget, RequestTarget};
///
/// let ok = Request::get("/b").header("host", "Example.com.:80").body(()).unwrap();
/// let target = RequestTarget::from_parts("http", ok.uri(), ok.headers()).unwrap();
/// assert_eq!(target.authority(), "example.com");
///
/// let poison = Request::get("/b").header("host", "example.com/a").body(()).unwrap();
/// assert_eq!(
///     RequestTarget::from_parts("http", poison.uri(), poison.headers()),
///     Err(InvalidTarget::MalformedAuthority)
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    scheme: &'static str,
    authority: String,
}

impl RequestTarget {
    /// Validates the target and `Host` of a request; `default_scheme` applies when the
    /// target has none (origin form). A request with neither an authority nor a `Host`
    /// field (HTTP/1.0) has an empty authority; an empty `Host` field is refused.
    pub fn from_parts(
        default_scheme: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Self, InvalidTarget> {
        let mut authority = String::new();
        let scheme = validate_into(default_scheme, uri, headers, &mut authority, |_, _| {})?;
        Ok(Self { scheme, authority })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.scheme
    }

    /// `host[:port]`, lower-cased, without a name's trailing dot or the scheme's default
    /// port; empty when the request named none.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl fmt::Display for RequestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Validates a request's target (see [`RequestTarget`]): writes `prefix(out, scheme)`, then
/// the normalised authority, into `out`, and returns the scheme. Writing into the caller's
/// buffer lets the cache key be built without a second copy of the authority.
fn validate_into(
    default_scheme: &str,
    uri: &Uri,
    headers: &HeaderMap,
    out: &mut String,
    prefix: impl FnOnce(&mut String, &'static str),
) -> Result<&'static str, InvalidTarget> {
    let scheme = match uri.scheme_str().unwrap_or(default_scheme) {
        s if s.eq_ignore_ascii_case("http") => "http",
        s if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err(InvalidTarget::UnsupportedScheme),
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(InvalidTarget::DuplicateHost);
    }
    prefix(out, scheme);
    let start = out.len();
    match (uri.authority(), host) {
        (Some(target), host) => {
            push_authority(scheme, target.as_str().as_bytes(), out)?;
            if let Some(host) = host {
                // RFC 9112 §3.2.2 lets a server ignore Host for an absolute-form target,
                // but the origin behind may not: two different names are refused.
                let mut from_host = String::new();
                push_authority(scheme, host.as_bytes(), &mut from_host)?;
                if from_host != out[start..] {
                    return Err(InvalidTarget::HostMismatch);
                }
            }
        }
        (None, Some(host)) => push_authority(scheme, host.as_bytes(), out)?,
        (None, None) => {}
    }
    Ok(scheme)
}

/// `host [":" port]` checked byte by byte and appended to `out` normalised. An empty one
/// is refused: an http(s) URI always has a host (RFC 9110 §4.2.1), and an empty `Host`
/// would reach the origin's default site under the key of requests that name none.
fn push_authority(scheme: &str, raw: &[u8], out: &mut String) -> Result<(), InvalidTarget> {
    if raw.is_empty() {
        return Err(InvalidTarget::MalformedAuthority);
    }
    let start = out.len();
    let port = if raw[0] == b'[' {
        let close = memchr::memchr(b']', raw).ok_or(InvalidTarget::MalformedAuthority)?;
        let literal =
            std::str::from_utf8(&raw[1..close]).map_err(|_| InvalidTarget::MalformedAuthority)?;
        // IPv6 only (no IPvFuture, no zone): what std parses is what an origin can route.
        let Ok(address) = literal.parse::<Ipv6Addr>() else {
            return Err(InvalidTarget::MalformedAuthority);
        };
        let port = match &raw[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(InvalidTarget::MalformedAuthority),
        };
        // In RFC 5952's form (std's `Display`: lower case, zeros compressed), so
        // `[0:0:0:0:0:0:0:1]` and `[::1]` are one key, which a purge of either reaches.
        out.push('[');
        out.push_str(&address.to_string());
        out.push(']');
        port
    } else {
        let (host, port) = match memchr::memrchr(b':', raw) {
            Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
            None => (raw, None),
        };
        if host.is_empty() {
            return Err(InvalidTarget::MalformedAuthority);
        }
        // DNS's trailing dot (`example.com.`, the fully qualified spelling a browser sends
        // for `http://example.com./`) names the same host: keyed apart, no purge or
        // invalidation of `example.com` reached its entry. Only one dot after a label:
        // `example.com..` and `.` are no such spelling, and stay names of their own.
        let host = match host.split_last() {
            Some((b'.', name)) if name.last().is_some_and(|byte| *byte != b'.') => name,
            _ => host,
        };
        out.reserve(raw.len());
        // One pass checks, lower-cases and copies (this runs on every request; a check, a
        // UTF-8 pass and a lower-casing pass cost three times as much, and chunks
        // lower-cased on the stack, appended with a UTF-8 check each, cost more too).
        for &byte in host {
            match REG_NAME_LOWER[usize::from(byte)] {
                0 => {
                    out.truncate(start);
                    return Err(InvalidTarget::MalformedAuthority);
                }
                lower => out.push(char::from(lower)),
            }
        }
        port
    };
    let port = match port {
        // `host:` is allowed (port = *DIGIT) and means the default port.
        None | Some([]) => None,
        Some(digits) => {
            let port = (digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit))
                .then(|| {
                    digits
                        .iter()
                        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                })
                .filter(|port| *port <= 65535);
            let Some(port) = port else {
                out.truncate(start);
                return Err(InvalidTarget::BadPort);
            };
            Some((port, digits))
        }
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some((_, digits)) = port.filter(|(port, _)| *port != default_port) {
        // The digits without their leading zeros are the port's decimal form (formatting
        // the number cost more than the rest of this function).
        let significant = match digits.iter().position(|digit| *digit != b'0') {
            Some(first) => &digits[first..],
            None => b"0",
        };
        out.push(':');
        out.extend(significant.iter().copied().map(char::from));
    }
    Ok(())
}

/// The bytes a registered name may hold here: letters, digits, `-`, `.`, `_`, `~`
/// (RFC 3986's unreserved set; its sub-delims and percent-encoding are refused, since no
/// real host needs them and an origin could read them differently).
/// Each such byte maps to its lower-case form, every other byte to 0.
const REG_NAME_LOWER: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            table[byte] = b.to_ascii_lowercase();
        }
        byte += 1;
    }
    table
};

/// How a layer turns a request into its canonical key: the user's key function, or the
/// default below. One place for the lookup, the invalidations and the purge handle.
#[derive(Clone)]
pub(crate) struct Canonical {
    pub(crate) key_fn: Option<Arc<dyn KeyFn>>,
    pub(crate) default_scheme: String,
}

/// What [`Canonical::key`] makes of a request.
#[derive(Debug)]
pub(crate) enum KeyOutcome {
    Key(String),
    /// A key function declined the request.
    Declined,
    /// The target cannot be keyed safely.
    Invalid(InvalidTarget),
}

impl Canonical {
    /// The request's key. The target is validated even when a key function builds the
    /// key: a request whose Host the origin could read differently is never cached.
    pub(crate) fn key(&self, head: &RequestHead<'_>) -> KeyOutcome {
        // `GET *` or `GET host:port` would be keyed as `/` or the path `*`, while the
        // application sees a path that is `*` or empty: whatever it answers for that
        // (a 404, a fallback page) was stored as the home page.
        let names_a_resource = match head.uri.path_and_query() {
            Some(path_and_query) => path_and_query.path().starts_with('/'),
            None => head.uri.scheme().is_some(),
        };
        if !names_a_resource {
            return KeyOutcome::Invalid(InvalidTarget::NotAResource);
        }
        let Some(key_fn) = &self.key_fn else {
            return match canonical_key(&self.default_scheme, head.uri, head.headers) {
                Ok(key) => KeyOutcome::Key(key),
                Err(invalid) => KeyOutcome::Invalid(invalid),
            };
        };
        if let Err(invalid) =
            RequestTarget::from_parts(&self.default_scheme, head.uri, head.headers)
        {
            return KeyOutcome::Invalid(invalid);
        }
        match key_fn.key(head) {
            Some(key) => KeyOutcome::Key(format!("GET {key}")),
            None => KeyOutcome::Declined,
        }
    }

    /// The key of a request the layer answers: as [`key`](Self::key), but a target whose
    /// scheme is not the layer's own is not keyed. The application answers for the
    /// connection it is on (a plain listener's redirect to https, say), so an `https://`
    /// target sent in clear, keyed as such, stored that answer for the TLS listener's
    /// clients where both share a namespace. Purges and invalidations name URIs of either
    /// scheme and use [`key`](Self::key).
    pub(crate) fn request_key(&self, head: &RequestHead<'_>) -> KeyOutcome {
        if head
            .uri
            .scheme_str()
            .is_some_and(|scheme| !scheme.eq_ignore_ascii_case(&self.default_scheme))
        {
            return KeyOutcome::Invalid(InvalidTarget::SchemeMismatch);
        }
        self.key(head)
    }

    /// Gives a request about to go to the inner service the authority its key holds, in
    /// `Host` (added when the target alone named it) and in an absolute target (HTTP/2's
    /// `:authority`), where the client spelled it otherwise. The key merges
    /// `API.example.com.:80` with `api.example.com`; the answer it stores must then be the
    /// one for the key's spelling, or an application that tells its virtual hosts apart by
    /// name (a string comparison) would answer the odd spelling with its default site,
    /// stored for every client of the named one.
    /// Called on the way to the origin only (misses and refreshes), never on a hit.
    pub(crate) fn spell_as_keyed<T>(&self, request: &mut http::Request<T>) {
        let Ok(target) =
            RequestTarget::from_parts(&self.default_scheme, request.uri(), request.headers())
        else {
            return;
        };
        let authority = target.authority();
        if authority.is_empty() {
            return;
        }
        // Without a `Host` field too: an HTTP/2 request (or an absolute-form target) names
        // its authority in the target alone, and an application that reads `Host` would
        // answer it with its default site, stored as the named site's page.
        let respell_host = request
            .headers()
            .get(header::HOST)
            .is_none_or(|host| host.as_bytes() != authority.as_bytes());
        if respell_host {
            // A validated authority is a valid field value.
            if let Ok(value) = http::HeaderValue::from_str(authority) {
                request.headers_mut().insert(header::HOST, value);
            }
        }
        let respelled = request
            .uri()
            .authority()
            .filter(|given| given.as_str() != authority)
            .and_then(|_| http::uri::Authority::try_from(authority).ok());
        if let Some(respelled) = respelled {
            let mut parts = request.uri().clone().into_parts();
            parts.authority = Some(respelled);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }

    /// The key of a GET for `uri` (`headers` give the Host when `uri` has no authority,
    /// and both go to a key function): what invalidation and purges remove.
    pub(crate) fn key_for_get(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Option<String> {
        match self.key(&RequestHead {
            method: &Method::GET,
            uri,
            headers,
            extensions,
        }) {
            KeyOutcome::Key(key) => Some(key),
            KeyOutcome::Declined | KeyOutcome::Invalid(_) => None,
        }
    }
}

/// The default canonical key: `GET scheme://authority/path?query`. HEAD uses GET's key, so
/// a HEAD is answered from a stored GET. The path and query are kept byte for byte: two
/// targets an origin can tell apart (`%2F` and `/`, `%2f` and `%2F`, `..`) are two keys.
/// (Configured key headers select variants under this key, like `Vary`, so purging a URL
/// purges all of them.)
pub(crate) fn canonical_key(
    default_scheme: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, InvalidTarget> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut key = String::with_capacity(64 + path_and_query.len());
    validate_into(default_scheme, uri, headers, &mut key, |key, scheme| {
        key.push_str("GET ");
        key.push_str(scheme);
        key.push_str("://");
    })?;
    // An empty path is `/` (RFC 9110 §4.2.3), and the origin is asked for `/?query`
    // (`Uri` writes it so); `http` gives an absolute target's `?query` without it. Keyed
    // apart, a purge or invalidation of `/?query` would leave that spelling's entry.
    if path_and_query.starts_with('?') {
        key.push('/');
    }
    key.push_str(path_and_query);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str, hosts: &[&str]) -> KeyOutcome {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(
                header::HOST,
                http::HeaderValue::from_bytes(host.as_bytes()).unwrap(),
            );
        }
        let canonical = Canonical {
            key_fn: None,
            default_scheme: "http".into(),
        };
        canonical.key(&RequestHead {
            method: &Method::HEAD,
            uri: &uri,
            headers: &headers,
            extensions: &Extensions::new(),
        })
    }

    fn valid(uri: &str, hosts: &[&str]) -> String {
        match key(uri, hosts) {
            KeyOutcome::Key(key) => key,
            other => panic!("{uri} {hosts:?}: {other:?}"),
        }
    }

    fn invalid(uri: &str, hosts: &[&str]) -> InvalidTarget {
        match key(uri, hosts) {
            KeyOutcome::Invalid(why) => why,
            other => panic!("{uri} {hosts:?} was keyed: {other:?}"),
        }
    }

    #[test]
    fn head_and_get_share_a_key_and_host_fills_in_the_authority() {
        assert_eq!(
            valid("/a/b?x=1", &["Example.COM"]),
            "GET http://example.com/a/b?x=1"
        );
        assert_eq!(valid("http://other:8080/p", &[]), "GET http://other:8080/p");
        assert_eq!(valid("HTTPS://Other:443/p", &[]), "GET https://other/p");
        // HTTP/1.0 without Host: an empty authority.
        assert_eq!(valid("/p", &[]), "GET http:///p");
    }

    #[test]
    fn default_ports_and_case_fold_into_one_key() {
        for host in [
            "example.com",
            "EXAMPLE.com:80",
            "example.com:",
            "example.com:0080",
            "example.com.",
            "Example.com.:80",
        ] {
            assert_eq!(valid("/x", &[host]), "GET http://example.com/x", "{host}");
        }
        for host in ["example.com:8080", "example.com:08080"] {
            assert_eq!(
                valid("/x", &[host]),
                "GET http://example.com:8080/x",
                "{host}"
            );
        }
        assert_eq!(valid("/x", &["a:000"]), "GET http://a:0/x");
        // One trailing dot after a label is DNS's; other dots are the name's own.
        assert_eq!(
            valid("/x", &["127.0.0.1.:8080"]),
            "GET http://127.0.0.1:8080/x"
        );
        for odd in ["example.com..", ".", "..", ".example.com"] {
            assert_eq!(valid("/x", &[odd]), format!("GET http://{odd}/x"), "{odd}");
        }
        assert_eq!(
            valid("http://example.com./x", &["example.com"]),
            "GET http://example.com/x"
        );
        assert_eq!(valid("/x", &["a:10"]), "GET http://a:10/x");
        assert_eq!(valid("/x", &["[::1]:3000"]), "GET http://[::1]:3000/x");
        assert_eq!(valid("/x", &["[FE80::1]"]), "GET http://[fe80::1]/x");
        // An IPv6 address in RFC 5952's form, however it was written.
        for spelling in ["[0:0:0:0:0:0:0:1]:3000", "[::0001]:3000", "[0::1]:03000"] {
            assert_eq!(
                valid("/x", &[spelling]),
                "GET http://[::1]:3000/x",
                "{spelling}"
            );
        }
        assert_eq!(
            valid("/x", &["[FE80:0:0:0:0:0:0:A]"]),
            "GET http://[fe80::a]/x"
        );
        assert_eq!(
            valid("/x", &["127.0.0.1:3000"]),
            "GET http://127.0.0.1:3000/x"
        );
    }

    #[test]
    fn a_host_with_a_path_or_odd_bytes_is_not_keyed() {
        for host in [
            "127.0.0.1:3000/a",
            "example.com/",
            "user@example.com",
            "example.com\\a",
            "exa mple.com",
            "example.com?x",
            "example.com#x",
            "ex%41mple.com",
            ":80",
            "[::1",
            "[::1]x",
            "[v1.x]",
            "[not-ip]",
            "a,b",
            "",
        ] {
            // Either reason will do ("3000/a" is a bad port): what matters is no key.
            let why = invalid("/b", &[host]);
            assert!(
                matches!(
                    why,
                    InvalidTarget::MalformedAuthority | InvalidTarget::BadPort
                ),
                "{host}: {why:?}"
            );
        }
        for port in [
            "example.com:65536",
            "example.com:8x",
            "example.com:123456",
            "[::1]:-1",
        ] {
            assert_eq!(invalid("/b", &[port]), InvalidTarget::BadPort, "{port}");
        }
    }

    #[test]
    fn duplicate_or_disagreeing_hosts_are_not_keyed() {
        assert_eq!(
            invalid("/b", &["a.example", "a.example"]),
            InvalidTarget::DuplicateHost
        );
        assert_eq!(
            invalid("http://a.example/b", &["b.example"]),
            InvalidTarget::HostMismatch
        );
        // The same authority spelled differently agrees.
        assert_eq!(
            valid("http://a.example/b", &["A.example:80"]),
            "GET http://a.example/b"
        );
        assert_eq!(
            invalid("ftp://a.example/b", &[]),
            InvalidTarget::UnsupportedScheme
        );
        assert_eq!(
            invalid("http://user@a.example/b", &[]),
            InvalidTarget::MalformedAuthority
        );
    }

    #[test]
    fn asterisk_and_authority_forms_name_no_resource() {
        for target in ["*", "a.example:80", "a.example"] {
            assert_eq!(
                invalid(target, &["a.example"]),
                InvalidTarget::NotAResource,
                "{target}"
            );
        }
        // The absolute form without a path names `/`.
        assert_eq!(valid("http://a.example", &[]), valid("/", &["a.example"]));
    }

    #[test]
    fn paths_are_kept_byte_for_byte() {
        let keys: Vec<String> = [
            "/a%2Fb", "/a/b", "/a%2fb", "/a/../b", "/b", "/a/b?", "/a/b?x",
        ]
        .iter()
        .map(|path| valid(path, &["h"]))
        .collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        // An empty path is `/` (RFC 9110 §4.2.3): what the origin is asked for.
        assert_eq!(valid("http://h", &[]), valid("/", &["h"]));
        assert_eq!(valid("http://h?x", &[]), valid("/?x", &["h"]));
    }

    #[test]
    fn a_key_function_still_needs_a_valid_host() {
        let canonical = Canonical {
            key_fn: Some(Arc::new(|req: &RequestHead<'_>| {
                Some(req.uri.path().to_string())
            })),
            default_scheme: "http".into(),
        };
        let uri: Uri = "/b".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "h/a".parse().unwrap());
        let outcome = canonical.key(&RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            extensions: &Extensions::new(),
        });
        assert!(matches!(
            outcome,
            KeyOutcome::Invalid(InvalidTarget::MalformedAuthority)
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Host values an attacker might send: mostly host-like bytes, with the separators
        /// and odd bytes that matter mixed in.
        fn host_bytes() -> impl Strategy<Value = Vec<u8>> {
            let byte = prop_oneof![
                6 => proptest::sample::select(b"abcXYZ019.-_~".to_vec()),
                3 => proptest::sample::select(b":[]/@\\?#% ,;=*".to_vec()),
                1 => any::<u8>().prop_filter("a header value byte", |b| *b >= 0x20 && *b != 0x7f),
            ];
            proptest::collection::vec(byte, 0..40)
        }

        /// `push_authority` as it was before its one-pass form (check, UTF-8 pass,
        /// lower-casing), kept to show the two agree on every input.
        fn three_pass(scheme: &str, raw: &[u8]) -> Result<String, InvalidTarget> {
            if raw.is_empty() {
                return Err(InvalidTarget::MalformedAuthority);
            }
            let (host, port) = if raw[0] == b'[' {
                let close = memchr::memchr(b']', raw).ok_or(InvalidTarget::MalformedAuthority)?;
                let literal = std::str::from_utf8(&raw[1..close])
                    .map_err(|_| InvalidTarget::MalformedAuthority)?;
                let Ok(address) = literal.parse::<Ipv6Addr>() else {
                    return Err(InvalidTarget::MalformedAuthority);
                };
                let port = match &raw[close + 1..] {
                    [] => None,
                    [b':', port @ ..] => Some(port),
                    _ => return Err(InvalidTarget::MalformedAuthority),
                };
                (format!("[{address}]").into_bytes(), port)
            } else {
                let (host, port) = match memchr::memrchr(b':', raw) {
                    Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
                    None => (raw, None),
                };
                let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~".contains(b);
                if host.is_empty() || !host.iter().all(reg_name) {
                    return Err(InvalidTarget::MalformedAuthority);
                }
                let fqdn = host.len() > 1 && host.ends_with(b".") && !host.ends_with(b"..");
                (
                    if fqdn { &host[..host.len() - 1] } else { host }.to_vec(),
                    port,
                )
            };
            let port = match port {
                None | Some([]) => None,
                Some(digits) => {
                    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                        return Err(InvalidTarget::BadPort);
                    }
                    let port: u32 = std::str::from_utf8(digits).unwrap().parse().unwrap();
                    if port > 65535 {
                        return Err(InvalidTarget::BadPort);
                    }
                    Some(port)
                }
            };
            let mut out = std::str::from_utf8(&host).unwrap().to_ascii_lowercase();
            let default_port = if scheme == "https" { 443 } else { 80 };
            if let Some(port) = port.filter(|port| *port != default_port) {
                out.push_str(&format!(":{port}"));
            }
            Ok(out)
        }

        proptest! {
            #![proptest_config(ProptestConfig::default())]

            /// The one-pass `push_authority` keys and refuses exactly as the three-pass one
            /// did, and leaves the buffer as it found it when it refuses.
            #[test]
            fn push_authority_agrees_with_three_passes(
                raw in prop_oneof![
                    host_bytes(),
                    "(Example\\.COM\\.{0,2}|\\.|127\\.0\\.0\\.1\\.?|\\[::1\\]|\\[0:0:0:0:0:0:0:1\\]|\\[FE80:0::A\\]|\\[::FFFF:1\\.2\\.3\\.4\\]|\\[::g\\])(:[0-9]{0,7})?"
                        .prop_map(String::into_bytes),
                ],
                https in any::<bool>(),
            ) {
                let scheme = if https { "https" } else { "http" };
                let mut out = String::from("GET http://");
                let pushed = push_authority(scheme, &raw, &mut out).map(|()| out.clone());
                let expected = three_pass(scheme, &raw);
                prop_assert_eq!(
                    pushed.as_deref().map(|text| text.trim_start_matches("GET http://")),
                    expected.as_deref()
                );
                if pushed.is_err() {
                    prop_assert_eq!(out, "GET http://");
                }
            }

            /// Any Host: no panic; a keyed one holds no byte that could end the authority,
            /// is already normalised, and keys the same as its own normal form.
            #[test]
            fn any_host_is_refused_or_keyed_safely(host in host_bytes(), https in any::<bool>()) {
                let scheme = if https { "https" } else { "http" };
                let uri: Uri = "/p".parse().unwrap();
                let mut headers = HeaderMap::new();
                let Ok(value) = http::HeaderValue::from_bytes(&host) else {
                    return Ok(());
                };
                headers.insert(header::HOST, value);
                if let Ok(target) = RequestTarget::from_parts(scheme, &uri, &headers) {
                    let authority = target.authority();
                    prop_assert!(!authority.contains(['/', '?', '#', '@', '\\', ' ', '%']));
                    prop_assert_eq!(authority, authority.to_ascii_lowercase());
                    let mut again = HeaderMap::new();
                    if !authority.is_empty() {
                        again.insert(header::HOST, authority.parse().unwrap());
                    }
                    let renormalised = RequestTarget::from_parts(scheme, &uri, &again);
                    prop_assert_eq!(renormalised.as_ref(), Ok(&target));
                    // The key starts with exactly this origin, then the path.
                    let key = canonical_key(scheme, &uri, &headers).unwrap();
                    prop_assert_eq!(key, format!("GET {target}/p"));
                }
            }
        }
    }
}
