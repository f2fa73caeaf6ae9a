//! Which response fields a shared cache keeps: the ones that describe one connection
//! (RFC 9110 §7.6.1), the ones that belong to the one client whose request brought them,
//! and the ones the cache decides by, which no `Connection` line may drop.

use http::header::{self, HeaderMap, HeaderName};

use super::CacheControl;

/// Headers that describe one connection, never stored (RFC 9110 §7.6.1), plus the ones a
/// `Connection` header names.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || connection_names(name, headers)
}

/// Whether a `Connection` line of `headers` names the field `name`.
fn connection_names(name: &HeaderName, headers: &HeaderMap) -> bool {
    connection_options(headers).any(|token| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
}

/// Whether a response field decides whether a cache stores the response, for whom, how
/// long, or which purges reach it: a field an origin's `Connection` may not make
/// hop-by-hop (RFC 9110 §7.6.1: "Cache-Control is never appropriate as a connection
/// option"), which a cache keeps in the response it stores and answers with. Dropped,
/// `Connection: vary` sent hits without the `Vary` a cache in front of this one (a CDN, a
/// browser) keys by, `Connection: cache-control` without the directives another process
/// judges the entry by, and `Connection: etag` without the validator to revalidate with.
/// Besides the directives and `Vary`: `Set-Cookie` (whose presence keeps a response out
/// of the cache), `Content-Range` (a 200 holding part of its representation),
/// `ETag` / `Last-Modified` (whether a 304 is about the stored response), `Location` /
/// `Content-Location` (which entries an unsafe method's answer invalidates),
/// `Content-Type` (an event stream is never stored), `Content-Encoding` (what the stored
/// bytes are: dropped, the miss went out labelled `gzip` and every hit served the same
/// bytes unlabelled), and RFC 9213's targeted fields (`CDN-Cache-Control` and every
/// `*-Cache-Control`).
///
/// ```
/// use http::HeaderName;
/// use tower_memcache::cache::decides_caching;
///
/// assert!(decides_caching(&HeaderName::from_static("vary")));
/// assert!(decides_caching(&HeaderName::from_static("cdn-cache-control")));
/// assert!(!decides_caching(&HeaderName::from_static("x-request-id")));
/// ```
pub fn decides_caching(name: &HeaderName) -> bool {
    const FIELDS: [&str; 15] = [
        "cache-control",
        "pragma",
        "expires",
        "vary",
        "age",
        "surrogate-control",
        "set-cookie",
        "set-cookie2",
        "content-range",
        "etag",
        "last-modified",
        "location",
        "content-location",
        "content-type",
        "content-encoding",
    ];
    FIELDS.contains(&name.as_str()) || name.as_str().ends_with("-cache-control")
}

/// The members of a message's `Connection` lines, trimmed, as bytes: a line holding
/// obs-text (no `str`) still names the fields in its other members.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
}

/// The fields that describe one connection whatever the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether a field in an entry read back is one the layer never stores, whatever the
/// response it came with: a hop-by-hop field of the fixed list, or a [`PER_CLIENT_FIELDS`]
/// one (the cookie setters only when the layer does not share cookies). Such an entry is
/// not one this layer wrote, whatever its metadata says: another tool's, a corrupt one,
/// or one kept while the layer shared cookies (the operator has turned that off since).
/// Checked on every entry read back, also those [`Policy::judge_stored`](super::Policy::judge_stored) is spared.
pub(crate) fn is_never_stored(name: &HeaderName, share_set_cookie: bool) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || (PER_CLIENT_FIELDS.contains(name)
            && !(share_set_cookie && COOKIE_SETTERS.contains(name)))
}

/// The response fields that set a cookie: `Set-Cookie`, and RFC 2965's `Set-Cookie2`,
/// obsolete but still honoured by some clients (Java's `java.net.CookieManager`).
pub(super) const COOKIE_SETTERS: [HeaderName; 2] =
    [header::SET_COOKIE, HeaderName::from_static("set-cookie2")];

/// The response fields that belong to the one client whose request brought them, never
/// stored: the cookie setters (unless the operator shares cookies), and the answers to
/// that request's credentials, `Authentication-Info` (RFC 9110 §11.6.3) and
/// `Proxy-Authentication-Info` (§11.7.3), whose Digest `rspauth` is a hash of the user's
/// password another client could attack offline, and whose `nextnonce` is the user's;
/// and `Clear-Site-Data`, which has the browser of that request drop its user's cookies
/// and storage (replayed, it would log out every later visitor of a `public` logout
/// page). A 304 or HEAD that refreshes an entry gives them to its own client only.
pub(crate) const PER_CLIENT_FIELDS: [HeaderName; 5] = [
    header::SET_COOKIE,
    HeaderName::from_static("set-cookie2"),
    HeaderName::from_static("authentication-info"),
    HeaderName::from_static("proxy-authentication-info"),
    HeaderName::from_static("clear-site-data"),
];

/// Whether `name` is, in a response to a request with `Authorization` (`authenticated`),
/// that request's own answer, never stored: `WWW-Authenticate`, which on the success
/// response of `Negotiate` (RFC 4559 §5: Kerberos, SPNEGO, as IIS and Apache's
/// `mod_auth_gssapi` answer) carries the server's mutual-authentication token for that
/// user's security context, as [`PER_CLIENT_FIELDS`]' `Authentication-Info` does for newer
/// schemes. A `public` page shared with it (RFC 9111 §3.5) gave every later client one
/// user's token, which a client authenticating with Kerberos itself checks against its
/// own context, and fails. An entry first stored for such a request never holds one
/// (refreshed, its 304's goes to the client that asked); a challenge to an anonymous
/// request (a stored `401`, a page saying credentials could change it) is the page's own.
pub(crate) fn answers_credentials(name: &HeaderName, authenticated: bool) -> bool {
    authenticated && name == header::WWW_AUTHENTICATE
}

/// The response fields a shared cache does not store (RFC 9111 §3.1, §5.2.2.4, §5.2.2.7):
/// hop-by-hop fields, `Age` (recomputed on reuse), the fields a qualified `private` or
/// `no-cache` names, and the [`PER_CLIENT_FIELDS`], which belong to the one client they
/// were sent to (even where storing such responses is allowed, the cookie itself never
/// is, unless `share_set_cookie`). A field `Connection` names is not stored unless the
/// cache decides by it ([`decides_caching`], or `targeted`: on the cache's target list).
pub(super) fn is_unstored_field(
    name: &HeaderName,
    headers: &HeaderMap,
    cc: &CacheControl,
    share_set_cookie: bool,
    targeted: bool,
) -> bool {
    name == header::AGE
        || (PER_CLIENT_FIELDS.contains(name)
            && !(share_set_cookie && COOKIE_SETTERS.contains(name)))
        || HOP_BY_HOP.contains(&name.as_str())
        || (connection_names(name, headers) && !decides_caching(name) && !targeted)
        || cc
            .private_fields
            .iter()
            .chain(&cc.no_cache_fields)
            .any(|field| field == name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::headers;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_includes_connection_tokens() {
        let map = headers(&[("connection", "close, X-Custom")]);
        assert!(is_hop_by_hop(&header::TRANSFER_ENCODING, &map));
        assert!(is_hop_by_hop(&HeaderName::from_static("x-custom"), &map));
        assert!(!is_hop_by_hop(&header::CONTENT_TYPE, &map));
        // A member of obs-text (RFC 9110 §5.5) in the line voids that member only: the
        // others still name connection-only fields (the whole line was skipped, and an
        // origin's `Connection: x-user, \xff` had its `X-User` stored for everyone).
        let mut map = HeaderMap::new();
        map.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"X-User , caf\xe9").unwrap(),
        );
        assert!(is_hop_by_hop(&HeaderName::from_static("x-user"), &map));
        assert!(!is_hop_by_hop(&header::CONTENT_TYPE, &map));
    }
}
