//! The fields the proxy rewrites on the way: a request as the origin sees it (its own
//! forwarding fields over any the client sent, in any CGI spelling; `Via`; HTTP/2 cookie
//! crumbs joined), and hop-by-hop fields dropped both ways but for those the cache decides
//! by.

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use tower_memcache::cache::{decides_caching, is_hop_by_hop};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Request headers that tell an origin where a request came from, what it "really"
/// asked for, or what the proxy in front does for it. Clients' copies never reach the
/// origin (see the crate docs), in any spelling a CGI-style gateway reads as theirs
/// ([`cgi_spelling_of`]): the first four are replaced by the proxy's own values, the
/// rest dropped.
pub(crate) const FORWARDING: [HeaderName; 57] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-host"),
    // Traefik's, nginx auth_request's, ASP.NET's and others' names for the same things.
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-original-for"),
    HeaderName::from_static("x-original-proto"),
    // The client-address fields PHP's common "real client IP" helpers read before or
    // beside `X-Forwarded-For` (`HTTP_CLIENT_IP` first; Rails' `RemoteIp` reads it too),
    // and the CDNs' own: a client's `Client-IP: 10.0.0.1` was an internal address to such
    // an origin (review RT).
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    // And the ones hand-written "client IP" code and WAF allow-lists read (Exchange's
    // `X-Originating-IP` among them): read as the client's address, sent by the client.
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-proxyuser-ip"),
    // No HTTP field: to a CGI-style origin it is `HTTP_PROXY`, which its HTTP clients
    // have taken for their own proxy ("httpoxy"), fetching a page's parts through the
    // client's server.
    HeaderName::from_static("proxy"),
    // Where the application is mounted and which scheme the client used, by other
    // servers' names: gunicorn takes a `SCRIPT_NAME` field (this name's `_` spelling,
    // passed with `--underscores-in-headers`) as the mount point every link and route
    // follows, and `X-Forwarded-Protocol: ssl` as `https`; Tornado reads `X-Scheme` before
    // `X-Forwarded-Proto`; WSGI's "reverse proxied" recipe reads `X-Script-Name`. A
    // client's copy had the page's links stored pointing elsewhere (review RY).
    HeaderName::from_static("script-name"),
    HeaderName::from_static("x-script-name"),
    HeaderName::from_static("x-scheme"),
    HeaderName::from_static("x-forwarded-protocol"),
    // Work the origin leaves to the proxy in front on the proxy's word, which this proxy
    // does not do: send a file itself (Rack::Sendfile, in Rails' default stack, takes
    // `X-Sendfile-Type` and `X-Accel-Mapping` from the request when the application set
    // none: CVE-2025-61780) and expand edge side includes (`Surrogate-Capability`, as
    // Symfony reads it). A client's copy had an empty body (and the file's path), or the
    // page's raw `<esi:include>` tags, stored for everyone.
    HeaderName::from_static("x-sendfile-type"),
    HeaderName::from_static("x-accel-mapping"),
    HeaderName::from_static("surrogate-capability"),
    // The client certificate, or the verdict on it, as a TLS terminator in front passes
    // them on: ASP.NET Core's certificate forwarding and Azure's, Envoy's, Traefik's, the
    // nginx recipes' and Tomcat SSLValve's (`ssl_client_cert`) names. This proxy speaks no
    // TLS, so a client's copy is forged; an origin signing the client in by it answered
    // that user's page with no credential the cache knows of, stored for everyone.
    HeaderName::from_static("x-client-cert"),
    HeaderName::from_static("x-arr-clientcert"),
    HeaderName::from_static("x-forwarded-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert-info"),
    HeaderName::from_static("x-ssl-cert"),
    HeaderName::from_static("x-ssl-client-cert"),
    HeaderName::from_static("x-ssl-client-verify"),
    HeaderName::from_static("x-ssl-client-dn"),
    HeaderName::from_static("x-ssl-client-s-dn"),
    HeaderName::from_static("x-client-verify"),
    HeaderName::from_static("x-client-dn"),
    HeaderName::from_static("ssl-client-cert"),
    HeaderName::from_static("ssl-client-verify"),
    HeaderName::from_static("ssl-client-s-dn"),
];

/// Headers that make some frameworks run another method's handler; dropped from GET and
/// HEAD, whose answers are stored under the GET's key (in every spelling, as above).
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Drops the hop-by-hop headers, including those the `Connection` header names but for
/// those `kept` says stay.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, kept: impl Fn(&HeaderName) -> bool) {
    // The fixed names by a look at each field, those `Connection` names by reading it
    // once (asking `is_hop_by_hop` with the request's fields would read it per field:
    // this runs on every request, hits included).
    let no_fields = HeaderMap::new();
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &no_fields))
        .cloned()
        .collect();
    doomed.extend(connection_named(headers).filter(|name| !kept(name)));
    for name in &doomed {
        headers.remove(name);
    }
}

/// Writes the request's `Content-Length` as the one decimal number hyper frames its body
/// by, or drops it when it is none. hyper forwards the lines as the client wrote them:
/// `1*DIGIT` with any number of leading zeros (RFC 9110 §8.6), repeated, or (from an
/// HTTP/2 client, which h2 reads as 0) empty. Past the head line bytes the origin
/// connection follows (`request_writes`), such a request was "lost" once written whole,
/// and its connection, back in the pool, failed the next request sent on it, anyone's
/// (review TB); and an origin may frame an odd spelling otherwise than hyper does.
pub(crate) fn canonical_length(headers: &mut HeaderMap) {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let digits = value.as_bytes();
        let parsed = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| {
                digits.iter().try_fold(0u64, |n, &digit| {
                    n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
                })
            })
            .flatten();
        match (parsed, length) {
            (Some(parsed), None) => length = Some(parsed),
            (Some(parsed), Some(first)) if parsed == first => {}
            // Unequal lengths hyper's server refuses; one it frames nothing by goes.
            _ => {
                length = None;
                break;
            }
        }
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    match length {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Whether a response field is one the cache decides by ([`decides_caching`]: an origin's
/// `Connection` may not make it hop-by-hop; the cache, in the proxy, is that hop's
/// recipient and decides after this step), or the proxy's tag and lifetime fields, which
/// the layer reads and removes.
pub(crate) fn kept_from_connection(name: &HeaderName) -> bool {
    decides_caching(name)
        || name == tower_memcache::cache::DEFAULT_TAG_HEADER
        || name == tower_memcache::cache::DEFAULT_LIFETIME_HEADER
}

/// The fields `Connection` names (read once: `is_hop_by_hop` would read it per field).
fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    // As bytes: a line holding obs-text (no `str`) still names fields in its other
    // members (skipped whole, an origin's `Connection: x-session, café` passed
    // `X-Session` to the client and the cache).
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
}

/// A request as the origin will see it, before the cache looks it up: the cache chooses
/// a variant by the request's fields, so they must be the ones the origin answers. Without
/// this, `Connection: accept-language` would hide `Accept-Language` from the origin after
/// the cache chose the French variant (the default page stored as the French one), and a
/// `Vary: X-Forwarded-For` would select by the client's value, not the address the origin
/// is told (one client's page served to the others). `Host` stays (it was validated and
/// keys the request; [`forward`](crate::forward::forward) sets it), and so do the body's framing fields: the cache
/// bypasses a GET with a body by them; [`forward`](crate::forward::forward) drops them after it.
///
/// HTTP/2 cookie crumbs become one `Cookie` line here, for the same reason: the origin
/// is spoken to in HTTP/1.1, where RFC 9113 §8.2.3 has them joined with `; `.
pub(crate) fn as_forwarded(
    headers: &mut HeaderMap,
    request: ClientRequest<'_>,
    client: &PeerFields,
    client_host: Option<&HeaderValue>,
) {
    // One pass over the fields, whose names are compared, not hashed: this runs on every
    // request, hits included, and most requests carry none of the fields dropped.
    let no_fields = HeaderMap::new();
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| request.drops(name, &no_fields))
        .cloned()
        .collect();
    let named = connection_named(headers).filter(|name| !KEPT_FOR_THE_CACHE.contains(name));
    doomed.extend(named);
    for name in &doomed {
        headers.remove(name);
    }
    set_forwarding(headers, client, client_host);
    if request.version == Version::HTTP_2 {
        join_cookie_crumbs(headers);
    }
}

/// Hop-by-hop fields the cache still needs to see: `Host` was validated and keys the
/// request ([`forward`](crate::forward::forward) sets it), and the cache bypasses a GET with a body by its framing
/// fields ([`forward`](crate::forward::forward) drops them after it).
const KEPT_FOR_THE_CACHE: [HeaderName; 3] = [
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
];

/// What [`as_forwarded`] needs to know of a request besides its fields.
#[derive(Clone, Copy)]
pub(crate) struct ClientRequest<'a> {
    pub(crate) version: Version,
    pub(crate) method: &'a Method,
    /// `--underscores-in-headers`.
    pub(crate) pass_underscored: bool,
}

impl ClientRequest<'_> {
    /// Whether the client's field `name` stays away from the cache and the origin.
    fn drops(&self, name: &HeaderName, no_fields: &HeaderMap) -> bool {
        if KEPT_FOR_THE_CACHE.contains(name) {
            return false;
        }
        // A method override on a GET or HEAD could run another method's handler at the
        // origin for an answer stored under the GET's key. Dropped before the cache
        // (which would otherwise bypass such a request), the origin never sees it.
        let stored = matches!(*self.method, Method::GET | Method::HEAD);
        if is_hop_by_hop(name, no_fields)
            || FORWARDING.contains(name)
            || (stored && METHOD_OVERRIDES.contains(name))
        {
            return true;
        }
        if memchr::memchr(b'_', name.as_str().as_bytes()).is_none() {
            return false;
        }
        // nginx's `underscores_in_headers off`: a CGI-style gateway reads `Accept_Language`
        // as `Accept-Language`, so passed on beside the real one it could choose the page
        // stored as another variant. Passed (`--underscores-in-headers`), the spellings of
        // the fields dropped above still go.
        !self.pass_underscored
            || cgi_spelling_of(name, &FORWARDING)
            || (stored && cgi_spelling_of(name, &METHOD_OVERRIDES))
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send `Cookie` as one field per cookie; "these
/// MUST be concatenated into a single octet string using the two-octet delimiter of 0x3b,
/// 0x20 ("; ") before being passed into a non-HTTP/2 context, such as an HTTP/1.1
/// connection". Sent as separate lines, they reach an HTTP/1.1 origin as a message
/// HTTP/1.1 forbids (RFC 6265 §5.4), which gateways that join repeated lines with `,`
/// read as one cookie holding the others.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Field values joined by a visible delimiter are a field value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What the forwarding headers say of a client connection's peer, built once per
/// connection: they are set on every request (hits included, see [`as_forwarded`]), and
/// formatting an address each time cost more than the rest of the step.
pub(crate) struct PeerFields {
    /// `X-Forwarded-For`: the peer address alone.
    x_forwarded_for: HeaderValue,
    /// The `for=` parameter of `Forwarded` (RFC 7239 §6: an IPv6 node is bracketed and
    /// quoted).
    forwarded_for: String,
    /// The `Forwarded` value of the first host the connection asked for, with that host:
    /// a connection mostly asks for one.
    forwarded_first: OnceLock<(HeaderValue, HeaderValue)>,
    /// The first `Host` field the connection sent with an origin-form target, valid, and
    /// the `Host` such a request is forwarded with (see [`check_target`](crate::target::check_target)).
    pub(crate) host_first: OnceLock<(HeaderValue, Option<HeaderValue>)>,
}

impl PeerFields {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let forwarded_for = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        // An address's text is always a valid field value.
        let x_forwarded_for = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            x_forwarded_for,
            forwarded_for,
            forwarded_first: OnceLock::new(),
            host_first: OnceLock::new(),
        }
    }

    /// `Forwarded: for=<peer>;host="<host>";proto=http` (without `host` for none).
    fn forwarded(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let (Some(host), Some((first, value))) = (host, self.forwarded_first.get()) {
            if host == first {
                return Some(value.clone());
            }
        }
        let mut forwarded = String::with_capacity(self.forwarded_for.len() + 64);
        forwarded.push_str(&self.forwarded_for);
        // A validated authority holds no quote or backslash.
        if let Some(text) = host.and_then(|host| host.to_str().ok()) {
            forwarded.push_str(";host=\"");
            forwarded.push_str(text);
            forwarded.push('"');
        }
        forwarded.push_str(";proto=http");
        let value = HeaderValue::try_from(forwarded).ok()?;
        if let Some(host) = host {
            let _ = self.forwarded_first.set((host.clone(), value.clone()));
        }
        Some(value)
    }
}

/// Whether `field` is one of `names` as a CGI-style gateway reads it. WSGI, Rack and
/// CGI hand a field to the application as `HTTP_` + its name upper-cased with `-` made
/// `_`, so `X_Forwarded_Host` (or `x-forwarded_host`) is `X-Forwarded-Host` to it: passed
/// on, it would reach the origin beside or instead of the proxy's own value (Puma's
/// CVE-2024-45614; nginx and Apache drop such names for this reason). Only names holding
/// `_` are looked at: the exact names are matched by the caller's own lookups.
fn cgi_spelling_of(field: &HeaderName, names: &[HeaderName]) -> bool {
    let field = field.as_str().as_bytes();
    memchr::memchr(b'_', field).is_some()
        && names.iter().any(|name| {
            let name = name.as_str().as_bytes();
            name.len() == field.len()
                && field
                    .iter()
                    .zip(name)
                    .all(|(f, n)| f == n || (*f == b'_' && *n == b'-'))
        })
}

/// Removes every field that is one of `names`, exactly or in a CGI spelling.
pub(crate) fn remove_spellings(headers: &mut HeaderMap, names: &[HeaderName]) {
    // One pass over the request's fields first: most clients send none of these, and a
    // removal is a hashed lookup per name.
    let present = headers
        .keys()
        .any(|field| names.contains(field) || cgi_spelling_of(field, names));
    if !present {
        return;
    }
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|field| cgi_spelling_of(field, names))
        .cloned()
        .collect();
    for name in names.iter().chain(&aliases) {
        headers.remove(name);
    }
}

/// The proxy's `Via` member for a request received in `version` (RFC 9110 §7.6.3: the
/// protocol version, then a pseudonym rather than the host's name).
pub(crate) fn via(version: Version) -> HeaderValue {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::from_str(&format!("{protocol} {}", pseudonym()))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 tower-memcache"))
}

/// This process's `Via` pseudonym: `tower-memcache-` and a random token, the same for
/// every request, so that a request coming back to the process that relayed it is known
/// (a loop), while a chain of several proxies is not taken for one. It names no host.
fn pseudonym() -> &'static str {
    static PSEUDONYM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PSEUDONYM.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // Randomly keyed per process; nothing secret rides on it.
        let token = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("tower-memcache-{token:016x}")
    })
}

/// Whether the request's `Via` holds this process's own member: it relayed this request
/// already (its upstream leads back to it), and forwarding it again would loop until the
/// client gave up, each hop waiting for the next.
pub(crate) fn looped(headers: &HeaderMap) -> bool {
    let own = pseudonym().as_bytes();
    headers.get_all(header::VIA).iter().any(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .filter_map(|member| {
                // `RWS` between protocol and pseudonym is any run of spaces and tabs:
                // split at each byte, `1.1  <own>` had an empty second field.
                member
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|field| !field.is_empty())
                    .nth(1)
            })
            .any(|received_by| received_by == own)
    })
}

/// Sets the proxy's own forwarding headers (see the crate docs), over any the request
/// still holds.
pub(crate) fn set_forwarding(
    headers: &mut HeaderMap,
    client: &PeerFields,
    client_host: Option<&HeaderValue>,
) {
    headers.reserve(4);
    headers.insert(X_FORWARDED_FOR, client.x_forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = client_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Some(value) = client.forwarded(client_host) {
        headers.insert(header::FORWARDED, value);
    }
}
