//! Review QM: a second look at the changes merged last (reviews QK, QL, Qi, Qh): safe
//! methods spelled in another case, a returning server's settings, `Vary` values matched
//! byte for byte, failed revalidations answered stale, and the memcached evictions count.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tower_memcache::backend::MemoryBackend;

/// A GET that a framework runs as a DELETE (`X-HTTP-Method-Override`) invalidates as the
/// DELETE would (review E). Review QK stopped `get` (a safe method in another case) from
/// invalidating, on the ground that servers upper-case the method and answer it as a GET;
/// but such a server then honours the override as it does for a GET, and `get` was never
/// looked at for an override (only GET and HEAD were). A client (or a library that
/// lower-cases its method) deleting a page through `get` + override left the deleted page
/// served from the cache, to everyone, for its whole lifetime.
#[tokio::test]
async fn a_lower_case_get_overridden_to_delete_invalidates_as_a_get_would() {
    use tower::Layer;

    let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(http_body_util::Full::new(Bytes::from_static(b"the page")))
                .unwrap(),
        )
    }));
    for (path, spelling) in [("/a", "GET"), ("/b", "get"), ("/c", "Get"), ("/d", "head")] {
        let url = format!("http://shop.example{path}");
        support::send(&service, Method::GET, &url, &[]).await;
        support::stores(&watch, 1).await;
        let hit = support::send(&service, Method::GET, &url, &[]).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        let method = Method::from_bytes(spelling.as_bytes()).unwrap();
        support::send(
            &service,
            method,
            &url,
            &[("x-http-method-override", "DELETE")],
        )
        .await;
        watch.settled().await;
        let after = support::send(&service, Method::GET, &url, &[]).await;
        assert!(
            !after.cache_status().contains("hit"),
            "{spelling} overridden to DELETE left the page stored: {}",
            after.cache_status()
        );
    }
}
