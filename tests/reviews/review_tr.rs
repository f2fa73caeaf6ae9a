//! Review TR: an adversarial second look at reviews TP and TQ.
//!
//! - Review TQ: a write every server must take fails when a server that missed it (a
//!   twemproxy whose server behind is dead) was left in use, whoever else took it.
//! - Review TP: a nest's `{param}` segment must have been routed with the client's value
//!   (`RawPathParams`), or the request bypasses the cache (axum).

use crate::support;

#[cfg(feature = "axum")]
mod a_nest_capture_named_again_inside {
    use axum::Router;
    use axum::extract::{RawPathParams, Request};
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use axum::routing::get;
    use http::Uri;
    use tower::Layer;
    use tower_memcache::backend::MemoryBackend;

    use super::support;

    /// A member whose cookie asks for English is served `/fr/...` as `/en/...` (review
    /// TP's rewrite before the site's router, which nests the language at `/{lang}`).
    async fn english_for_en_cookie(mut request: Request, next: Next) -> Response {
        let english = request
            .headers()
            .get(http::header::COOKIE)
            .is_some_and(|value| value.as_bytes() == b"lang=en");
        if english {
            let path = request.uri().path().replacen("/fr/", "/en/", 1);
            *request.uri_mut() = path.parse::<Uri>().unwrap();
        }
        next.run(request).await
    }

    /// Pages of a language nested at `/{lang}`, whose routes inside name a capture
    /// `{lang}` again (the language of a translation shown beside the page: `/fr/compare/de`);
    /// the handler reads every capture as axum routed it.
    fn site(cache: &tower_memcache::MemcacheLayer<MemoryBackend>) -> Router {
        let pages = Router::new()
            .route(
                "/compare/{lang}",
                get(|params: RawPathParams| async move {
                    let values: Vec<&str> = params.iter().map(|(_, value)| value).collect();
                    values.join(" beside ")
                }),
            )
            .layer(cache.clone());
        let site = Router::new().nest("/{lang}", pages);
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .fallback_service(middleware::from_fn(english_for_en_cookie).layer(site))
    }

    /// The English reader of `/fr/compare/fr` is answered `/en/compare/fr`: axum notes
    /// the nest's `lang` (`en`) and the route's (`fr`), and the last of that name, the
    /// route's, was taken for the nest's: the English page was stored under
    /// `/fr/compare/fr` for everyone.
    #[tokio::test]
    async fn a_rewritten_capture_named_again_inside_the_nest_is_not_stored_under_the_clients_target()
     {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = site(&layer);
        let url = "http://club.example/fr/compare/fr";
        let english = support::send_axum(&app, url, &[("cookie", "lang=en")]).await;
        assert_eq!(english.body, "en beside fr");
        watch.settled().await;
        let french = support::send_axum(&app, url, &[]).await;
        assert_eq!(
            french.body,
            "fr beside fr",
            "a French reader was answered the English page ({})",
            french.cache_status()
        );
    }

    /// Without a rewrite, such pages are still cached.
    #[tokio::test]
    async fn pages_whose_capture_is_named_again_inside_the_nest_are_still_cached() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = site(&layer);
        for (url, page) in [
            ("/fr/compare/fr", "fr beside fr"),
            ("/de/compare/de", "de beside de"),
        ] {
            let url = format!("http://club.example{url}");
            let first = support::send_axum(&app, &url, &[]).await;
            assert_eq!(first.body, page, "{url}");
            watch.settled().await;
            let again = support::send_axum(&app, &url, &[]).await;
            assert_eq!(again.body, page, "{url}");
            assert_eq!(again.cache_status(), support::HIT, "{url}");
        }
    }

    /// Nested routers kept their hits (review TP's checks): a router with a capture in
    /// `nest_service` and in `nest`, its routes and its fallback, two nests deep, and a
    /// nest whose segment captures after a literal start (`/api/v{version}`), which axum
    /// routes but never strips (its `StripPrefix` compares that segment as written):
    /// review TP took it for a rewrite, and every page of such a nest bypassed the cache.
    #[tokio::test]
    async fn nested_routers_with_captures_and_fallbacks_keep_their_hits() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let routes = || {
            Router::new().route(
                "/x/{item}",
                get(|params: RawPathParams| async move {
                    let values: Vec<&str> = params.iter().map(|(_, value)| value).collect();
                    values.join("/")
                }),
            )
        };
        let inner = |cache: &tower_memcache::MemcacheLayer<MemoryBackend>| {
            routes()
                .fallback(|uri: Uri| async move { format!("fallback {}", uri.path()) })
                .layer(cache.clone())
        };
        let app = Router::new()
            .nest("/api/v{version}", routes().layer(layer.clone()))
            .nest_service("/s/{tenant}", inner(&layer))
            .nest("/n/{tenant}", inner(&layer))
            .nest(
                "/d/{tenant}",
                Router::new().nest("/{lang}", routes().layer(layer.clone())),
            );
        for (url, page) in [
            ("/s/acme/x/1", "acme/1"),
            ("/s/acme/other", "fallback /other"),
            ("/n/acme/x/1", "acme/1"),
            ("/n/acme/other", "fallback /other"),
            ("/d/acme/fr/x/1", "acme/fr/1"),
            ("/api/v7/x/1", "7/1"),
        ] {
            let url = format!("http://club.example{url}");
            let first = support::send_axum(&app, &url, &[]).await;
            assert_eq!(first.body, page, "{url}");
            watch.settled().await;
            let again = support::send_axum(&app, &url, &[]).await;
            assert_eq!(again.body, page, "{url}");
            assert_eq!(again.cache_status(), support::HIT, "{url}");
        }
    }
}

/// Review TQ's `Err` for a purge twemproxy could not make, beside a memcached on the
/// ring: what the purge must do all the same (the other server's delete, this process's
/// near tier forgetting the page) is done, whatever the error.
#[cfg(feature = "tcp")]
mod beside_twemproxy {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Method, Request, Response};
    use http_body_util::Full;
    use tower::Layer;
    use tower_memcache::backend::TcpBackend;
    use tower_memcache::cache::NearCache;

    use super::support;
    use support::Memcached;
    use support::nutcracker::Nutcracker;

    /// twemproxy over two memcached servers, one of them dead, beside a third memcached,
    /// with a near tier: after each page's purge, `Ok` or not, the next request is no
    /// hit of the page purged, and some purges did fail (twemproxy's error).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_that_fails_through_twemproxy_still_purges_what_it_reached() {
        let test = "review_tr::purge_beside_twemproxy";
        let (Some(first), Some(second), Some(beside)) = (
            Memcached::start(test),
            Memcached::start(test),
            Memcached::start(test),
        ) else {
            return;
        };
        let mut behind = [first, second];
        let Some(proxy) = Nutcracker::start(test, &behind) else {
            return;
        };
        let backend = TcpBackend::builder()
            .connections_per_server(1)
            .timeout(Duration::from_secs(2))
            .server(proxy.addr())
            .server(beside.addr())
            .build()
            .unwrap();
        let layer = tower_memcache::MemcacheLayer::new(backend)
            .namespace("review-tr-purge")
            .lookup_timeout(Duration::from_secs(2))
            .near_cache(NearCache::new(1 << 20, Duration::from_secs(60)));
        let served = Arc::new(AtomicU64::new(0));
        let origin = {
            let served = served.clone();
            tower::service_fn(move |_request: Request<()>| {
                let version = served.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("cache-control", "max-age=600")
                            .body(Full::new(Bytes::from(format!("v{version}"))))
                            .unwrap(),
                    )
                }
            })
        };
        let svc = layer.clone().layer(origin);
        behind[1].kill();
        let purger = layer.purger();
        let mut failed = 0;
        for page in 0..24 {
            let url = format!("http://review-tr.test/page/{page}");
            let first = support::send(&svc, Method::GET, &url, &[]).await;
            layer.background().idle().await;
            let again = support::send(&svc, Method::GET, &url, &[]).await;
            if again.body != first.body {
                // Not stored (its key on the dead server): nothing to purge.
                continue;
            }
            if purger.purge_uri(&url).await.is_err() {
                failed += 1;
            }
            let after = support::send(&svc, Method::GET, &url, &[]).await;
            assert_ne!(
                after.body,
                first.body,
                "{url}: the page purged was answered again ({})",
                after.cache_status()
            );
        }
        assert!(failed > 0, "no purge met twemproxy's error");
    }
}
