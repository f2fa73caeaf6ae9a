//! The canonical request key: what makes two requests "the same" for the cache.

use std::fmt::Write as _;
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
/// Implemented for closures, so a tenant header or a cookie value can key the cache:
///
/// ```
/// use tower_memcache::cache::{KeyFn, RequestHead};
///
/// let by_tenant = |req: &RequestHead<'_>| {
///     let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
///     Some(format!("{tenant}:{}", req.uri.path()))
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

/// How a layer turns a request into its canonical key: the user's key function, or the
/// default below. One place for the lookup, the invalidations and the purge handle.
#[derive(Clone)]
pub(crate) struct Canonical {
    pub(crate) key_fn: Option<Arc<dyn KeyFn>>,
    pub(crate) default_scheme: String,
}

impl Canonical {
    /// `None` when a key function declines the request.
    pub(crate) fn key(&self, head: &RequestHead<'_>) -> Option<String> {
        match &self.key_fn {
            Some(key_fn) => Some(format!("GET {}", key_fn.key(head)?)),
            None => Some(canonical_key(&self.default_scheme, head)),
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
        self.key(&RequestHead {
            method: &Method::GET,
            uri,
            headers,
            extensions,
        })
    }
}

/// The default canonical key: `GET scheme://authority/path?query`. HEAD uses GET's key, so
/// a HEAD is answered from a stored GET. (Configured key headers select variants under
/// this key, like `Vary`, so purging a URL purges all of them.)
pub(crate) fn canonical_key(default_scheme: &str, head: &RequestHead<'_>) -> String {
    let uri = head.uri;
    let scheme = uri.scheme_str().unwrap_or(default_scheme);
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut key = String::with_capacity(8 + scheme.len() + authority.len() + path_and_query.len());
    let _ = write!(
        key,
        "GET {scheme}://{}{path_and_query}",
        authority.to_ascii_lowercase()
    );
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        ext: &'a Extensions,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            uri,
            headers,
            extensions: ext,
        }
    }

    #[test]
    fn head_and_get_share_a_key_and_host_fills_in_the_authority() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "Example.COM".parse().unwrap());
        headers.insert("accept-language", "de,  en".parse().unwrap());
        let ext = Extensions::new();
        let get = canonical_key("http", &head(&Method::GET, &uri, &headers, &ext));
        let head_key = canonical_key("http", &head(&Method::HEAD, &uri, &headers, &ext));
        assert_eq!(get, "GET http://example.com/a/b?x=1");
        assert_eq!(get, head_key);
        let https = canonical_key("https", &head(&Method::GET, &uri, &headers, &ext));
        assert_eq!(https, "GET https://example.com/a/b?x=1");
        let absolute: Uri = "http://other:8080/p".parse().unwrap();
        let other = canonical_key("http", &head(&Method::GET, &absolute, &headers, &ext));
        assert_eq!(other, "GET http://other:8080/p");
    }
}
