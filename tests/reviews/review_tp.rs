//! Review TP: a second look at reviews TL and TN.
//!
//! TL follows an unsafe request whose client left to the origin's answer: the call must
//! not outlive what it was before in ways a client can use (a future that panicked is not
//! polled again in the background).
//!
//! TN keys a nested router's request by the client's target only where the nest's own
//! stripping made the target the handler sees. A request that went through a nest whose
//! prefix the client's path does not even start with was routed by a target the client
//! did not send (a middleware rewrote it before a router inside routed it again): the
//! handler answered that target, and keyed by the client's, one client's page was stored
//! for every other. So was a rewrite of only the value of a `{param}` segment of the
//! nest's prefix, which the nest strips whatever its value.

use crate::support;

#[cfg(feature = "axum")]
mod rewritten_into_a_nest {
    use axum::Router;
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use axum::routing::get;
    use http::Uri;
    use tower::Layer;
    use tower_memcache::backend::MemoryBackend;

    use super::support;

    /// Members and guests see the same URLs, each served by the area their cookie opens:
    /// the target is rewritten into that area's nest before the site's router routes it
    /// (axum's advice for a rewrite that must change the routing: a middleware around
    /// the router, here the site served as the app's fallback).
    async fn choose_area(mut request: Request, next: Next) -> Response {
        let area = if request.headers().contains_key(http::header::COOKIE) {
            "/members"
        } else {
            "/public"
        };
        let target = format!(
            "{area}{}",
            request
                .uri()
                .path_and_query()
                .map_or("/", |target| target.as_str())
        );
        *request.uri_mut() = target.parse::<Uri>().unwrap();
        next.run(request).await
    }

    fn app(cache: &tower_memcache::MemcacheLayer<MemoryBackend>) -> Router {
        let area = |name: &'static str| {
            Router::new()
                .route("/news", get(move || async move { format!("{name} news") }))
                .layer(cache.clone())
        };
        let site = Router::new()
            .nest("/members", area("members"))
            .nest("/public", area("public"));
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .fallback_service(middleware::from_fn(choose_area).layer(site))
    }

    /// A member reads `/news` (the members' page, through the nest at `/members`, which
    /// hands on `/news` again); a guest asking `/news` must get the public page, not the
    /// members' one stored under the client's `/news`.
    #[tokio::test]
    async fn a_target_rewritten_into_a_nest_is_not_stored_under_the_clients_target() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = app(&layer);
        let member =
            support::send_axum(&app, "http://club.example/news", &[("cookie", "id=1")]).await;
        assert_eq!(member.body, "members news");
        watch.settled().await;
        let guest = support::send_axum(&app, "http://club.example/news", &[]).await;
        assert_eq!(
            guest.body,
            "public news",
            "a guest was answered the members' page ({})",
            guest.cache_status()
        );
    }

    /// A member whose cookie asks for English is served `/fr/news` as `/en/news` (the
    /// rewrite before the site's router, which nests the language at `/{lang}`).
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

    fn languages(cache: &tower_memcache::MemcacheLayer<MemoryBackend>) -> Router {
        use axum::extract::Path;
        let pages = Router::new()
            .route(
                "/news",
                get(|Path(lang): Path<String>| async move { format!("{lang} news") }),
            )
            .layer(cache.clone());
        let site = Router::new().nest("/{lang}", pages);
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .fallback_service(middleware::from_fn(english_for_en_cookie).layer(site))
    }

    /// The same rewrite changing only the value of the nest's `{lang}`: the nest strips
    /// `/en` as it would have stripped `/fr`, and the English page was stored under
    /// `/fr/news` for everyone.
    #[tokio::test]
    async fn a_capture_of_a_nest_rewritten_is_not_stored_under_the_clients_target() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = languages(&layer);
        let english = support::send_axum(
            &app,
            "http://club.example/fr/news",
            &[("cookie", "lang=en")],
        )
        .await;
        assert_eq!(english.body, "en news");
        watch.settled().await;
        let french = support::send_axum(&app, "http://club.example/fr/news", &[]).await;
        assert_eq!(french.body, "fr news", "{}", french.cache_status());
    }

    /// The nest's own captures still key their pages, percent-encoded values too.
    #[tokio::test]
    async fn pages_of_a_nest_with_a_capture_are_still_cached() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = languages(&layer);
        for (url, page) in [
            ("/fr/news", "fr news"),
            ("/de/news", "de news"),
            ("/pt%2Dbr/news", "pt-br news"),
            ("/%C3%A9/news", "\u{e9} news"),
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

mod followed_after_a_panic {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, ServiceExt};
    use tower_memcache::backend::MemoryBackend;

    use super::support;

    /// An origin call that panics when polled (a handler's bug an input sets off), counting
    /// its polls.
    struct Panics(Arc<AtomicUsize>);

    impl Future for Panics {
        type Output = Result<Response<Full<Bytes>>, Infallible>;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("the handler panicked");
        }
    }

    /// A POST whose handler panicked unwinds through the layer (to a `CatchPanicLayer`,
    /// or hyper's task): review TL's follow-up of an unsafe request whose client left took
    /// the unwinding for a client leaving, and polled the call that had panicked again in
    /// the background, where a future's behaviour is undefined (an `async fn` panics a
    /// second time, a hand-written one may act again).
    #[tokio::test]
    async fn a_call_that_panicked_is_not_polled_again_in_the_background() {
        let polls = Arc::new(AtomicUsize::new(0));
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let service = layer.layer(tower::service_fn({
            let polls = Arc::clone(&polls);
            move |_request: Request<Full<Bytes>>| Panics(Arc::clone(&polls))
        }));
        let request = Request::post("http://site.example/account")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let call = tokio::spawn(service.oneshot(request));
        assert!(call.await.unwrap_err().is_panic());
        watch.settled().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled again after it panicked"
        );
    }
}
