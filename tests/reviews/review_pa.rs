//! Review PA: the public APIs an operator or application calls directly (`Purger`,
//! `MemcacheClient`), tried with the arguments a careful user and an attacker send.
//!
//! Each test fails if the defect it names returns.

use crate::support;

use http::Method;
use tower::Layer;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend, TcpBackend};

use support::scripted_service::Origin;
use support::{Memcached, Watch, send};

/// An origin whose every answer is fresh for ten minutes and names its call.
fn origin() -> Origin {
    Origin::numbered(200, &[("cache-control", "max-age=600")])
}

/// Stores `GET path` (Host `example.com`) through `layer`, purges `purge`, and says
/// whether the next request for the page went to the origin.
async fn purged<B: Backend>(layer: MemcacheLayer<B>, path: &str, purge: &str) -> bool {
    let watch = Watch::of(&layer);
    let svc = layer.layer(origin());
    let host = [("host", "example.com")];
    send(&svc, Method::GET, path, &host).await;
    watch.settled().await;
    let before = send(&svc, Method::GET, path, &host).await;
    assert!(before.cache_status().contains("hit"), "{before:?}");
    let result = layer.purger().purge_uri(purge).await;
    assert!(result.is_ok(), "{purge}: {result:?}");
    let after = send(&svc, Method::GET, path, &host).await;
    !after.cache_status().contains("hit")
}

/// Behind a TLS terminator the layer sees plain HTTP and keys pages `http://` (its
/// `default_scheme`), while the operator purges the public URL, `https://…`. That purge
/// returned `Ok` and reached nothing: the layer never stores a key of a scheme other
/// than its own, so the page stayed served for its whole lifetime. A URI is now purged
/// in the layer's scheme too (and still in its own, for layers of the other scheme
/// sharing the namespace).
async fn a_purge_of_the_public_https_url_reaches_the_pages_of_a_layer_behind_tls<B, F>(make: F)
where
    B: Backend,
    F: Fn() -> B,
{
    let plain = || MemcacheLayer::new(make()).namespace("review-pa-scheme");
    for purge in [
        "https://example.com/news/1?a=1",
        "HTTPS://Example.COM:443/news/1?a=1",
        "http://example.com:80/news/1?a=1",
    ] {
        assert!(purged(plain(), "/news/1?a=1", purge).await, "{purge}");
    }
    // And a layer that serves https behind the purge of its `http://` spelling.
    let tls = || {
        MemcacheLayer::new(make())
            .namespace("review-pa-scheme-tls")
            .default_scheme("https")
    };
    for purge in [
        "http://example.com/news/1?a=1",
        "https://example.com/news/1?a=1",
    ] {
        assert!(purged(tls(), "/news/1?a=1", purge).await, "{purge}");
    }
    // An IPv6 literal keeps its brackets when the port is dropped.
    let v6 = MemcacheLayer::new(make()).namespace("review-pa-scheme-v6");
    let watch = Watch::of(&v6);
    let svc = v6.layer(origin());
    let host = [("host", "[::1]")];
    send(&svc, Method::GET, "/v6", &host).await;
    watch.settled().await;
    assert!(
        send(&svc, Method::GET, "/v6", &host)
            .await
            .cache_status()
            .contains("hit")
    );
    v6.purger()
        .purge_uri("https://[::1]:443/v6")
        .await
        .expect("purged");
    assert!(
        !send(&svc, Method::GET, "/v6", &host)
            .await
            .cache_status()
            .contains("hit")
    );
    // Another port stays another page.
    assert!(!purged(plain(), "/news/1", "https://example.com:8443/news/1").await);
}

#[tokio::test]
async fn a_purge_of_the_public_https_url_reaches_the_pages_of_a_layer_behind_tls_memory() {
    a_purge_of_the_public_https_url_reaches_the_pages_of_a_layer_behind_tls(MemoryBackend::new)
        .await;
}

#[tokio::test]
async fn a_purge_of_the_public_https_url_reaches_the_pages_of_a_layer_behind_tls_tcp() {
    let Some(one) = Memcached::start("review_pa::scheme") else {
        return;
    };
    let Some(two) = Memcached::start("review_pa::scheme") else {
        return;
    };
    let servers = [one.addr(), two.addr()];
    a_purge_of_the_public_https_url_reaches_the_pages_of_a_layer_behind_tls(|| {
        TcpBackend::builder()
            .servers(servers.clone())
            .build()
            .expect("backend")
    })
    .await;
}

/// A request without `Host` (HTTP/1.0, or a layer in front of an in-process service) is
/// keyed with an empty authority, `http:///news/1`, and its answer stored; but no absolute
/// URI names an empty authority, so no `purge_uri` could reach that entry: an attacker
/// who sent `GET /news/1 HTTP/1.0` before a purge kept the old page served, after the
/// purge returned `Ok`, to every client that sends no `Host`. A URI purge now reaches the
/// Host-less spelling of its path too (the origin answered it with its default site,
/// which may be this one; if not, the purge costs that entry a miss).
async fn a_purge_reaches_the_entry_of_a_request_without_host<B, F>(make: F)
where
    B: Backend,
    F: Fn() -> B,
{
    for (run, purge) in [
        "http://example.com/news/1?a=1",
        "https://example.com/news/1?a=1",
        "http://other.example:8080/news/1?a=1",
    ]
    .into_iter()
    .enumerate()
    {
        let layer = MemcacheLayer::new(make()).namespace(format!("review-pa-no-host-{run}"));
        let watch = Watch::of(&layer);
        let svc = layer.layer(origin());
        let path = "/news/1?a=1";
        send(&svc, Method::GET, path, &[]).await;
        watch.settled().await;
        let before = send(&svc, Method::GET, path, &[]).await;
        assert!(before.cache_status().contains("hit"), "{before:?}");
        let result = layer.purger().purge_uri(purge).await;
        assert!(result.is_ok(), "{purge}: {result:?}");
        let after = send(&svc, Method::GET, path, &[]).await;
        assert!(!after.cache_status().contains("hit"), "{purge}: {after:?}");
        assert_eq!(after.body, "call 2", "{purge}");
    }
}

#[tokio::test]
async fn a_purge_reaches_the_entry_of_a_request_without_host_memory() {
    a_purge_reaches_the_entry_of_a_request_without_host(MemoryBackend::new).await;
}

#[tokio::test]
async fn a_purge_reaches_the_entry_of_a_request_without_host_tcp() {
    let Some(one) = Memcached::start("review_pa::no_host") else {
        return;
    };
    let Some(two) = Memcached::start("review_pa::no_host") else {
        return;
    };
    let servers = [one.addr(), two.addr()];
    a_purge_reaches_the_entry_of_a_request_without_host(|| {
        TcpBackend::builder()
            .servers(servers.clone())
            .build()
            .expect("backend")
    })
    .await;
}
