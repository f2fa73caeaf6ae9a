//! Review RM: what an operator configures, as a careless operator writes it and as an
//! attacker who controls part of it would: route rules spelled as another framework
//! spells them, or placed where they cannot see what they match on, and the proxy's
//! flags given values that quietly weaken the cache (an empty namespace, a zero
//! timeout). Each test fails if the value is again taken without a word and the cache
//! does less than the operator meant.

mod support;

use std::time::Duration;

use support::path_origin::{self, get};
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// An origin that answers every path with the page of the user whose cookie came with
/// the request, marked by nothing: what a `no_cache` rule has to keep out of the cache.
fn personal_origin() -> impl tower::Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|_path, user| format!("{user}'s page"))
}

/// Web cache deception through a `Pattern` rule that could not see its pattern. A
/// `no_cache(RouteMatch::Pattern("/users/{id}"))` is matched against axum's
/// `MatchedPath`, which only a layer inside an axum `Router` sees: on a layer wrapped
/// around the router, on a hyper server, or without the `axum` feature, no request
/// carries one, and the rule protected nothing:
/// a victim's `/users/7` was stored and served to the next client. A `no_cache` pattern
/// now holds for the paths it covers whenever the request names no route pattern.
#[tokio::test]
async fn a_no_cache_pattern_holds_where_no_matched_path_is_seen() {
    let layer = support::layer(MemoryBackend::new())
        .no_cache(RouteMatch::Pattern("/users/{id}".into()))
        .no_cache(RouteMatch::Pattern("/files/{*path}".into()));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(personal_origin());
    for path in ["/users/7", "/Users/7", "/users/7/", "/files/a/b.pdf"] {
        path_origin::assert_each_gets_own(&service, &watch, path, |user| format!("{user}'s page"))
            .await;
    }
    // Paths the patterns do not cover are still cached.
    let (_, first) = get(&service, "/users", Some("user=alice")).await;
    watch.settled().await;
    let (_, second) = get(&service, "/users", None).await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("tower-memcache; fwd=uri-miss; stored", support::HIT)
    );
}

/// The same through axum, the layer wrapped around the whole `Router` (as the README's
/// stacking example wraps one in `NormalizePathLayer`): outside the routing, where no
/// `MatchedPath` is set yet. (`Router::layer` and `route_layer` wrap each route, and see
/// it.)
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_no_cache_pattern_holds_on_a_layer_outside_the_router() {
    use axum::Router;
    use axum::routing::get as route_get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let layer =
        support::layer(MemoryBackend::new()).no_cache(RouteMatch::Pattern("/users/{id}".into()));
    let watch = support::Watch::of(&layer);
    let app = Router::new().route(
        "/users/{id}",
        route_get(|headers: http::HeaderMap| async move {
            let user = headers
                .get("cookie")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("anonymous")
                .to_owned();
            format!("{user}'s profile")
        }),
    );
    let app = layer.layer(app);
    let call = |cookie: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut request = http::Request::get("/users/7");
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            let response = app
                .oneshot(request.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    assert_eq!(call(Some("alice")).await, "alice's profile");
    watch.settled().await;
    assert_eq!(call(None).await, "anonymous's profile");
}

/// Web cache deception through a `no_cache` rule written as another framework writes
/// routes: a glob (`/account/*`, `/account/**`, Spring's and nginx's habit) or a route
/// parameter (`/account/{id}`, `/account/:id`) in an `Exact` or `Prefix` rule was
/// compared as literal text, matched no request, and left every page under it
/// cacheable: the victim's `/account/settings` was served to the attacker. Such a rule
/// now also turns caching off for the paths its pattern covers.
#[tokio::test]
async fn a_no_cache_rule_written_with_a_glob_or_a_parameter_holds() {
    for (rule, path) in [
        (RouteMatch::Prefix("/account/*".into()), "/account/settings"),
        (RouteMatch::Prefix("/account/**".into()), "/account/a/b"),
        (RouteMatch::Exact("/account/*".into()), "/account/settings"),
        (RouteMatch::Exact("/account/{id}".into()), "/account/7"),
        (RouteMatch::Exact("/account/:id".into()), "/account/7"),
        (RouteMatch::Prefix("/users/{id}/".into()), "/users/7/keys"),
        (
            RouteMatch::Exact("/files/*.pdf".into()),
            "/files/report.pdf",
        ),
    ] {
        let layer = support::layer(MemoryBackend::new()).no_cache(rule.clone());
        let watch = support::Watch::of(&layer);
        let service = layer.layer(personal_origin());
        let (victim, _) = get(&service, path, Some("user=alice")).await;
        assert_eq!(victim, "alice's page", "{rule:?} {path}");
        watch.settled().await;
        let (attacker, status) = get(&service, path, None).await;
        assert_eq!(attacker, "anonymous's page", "{rule:?} {path}: {status}");
    }
    // Only `no_cache` rules are read so (as a pattern, a lifetime rule would lengthen the
    // lifetime of paths it does not name): with a default lifetime of 0,
    // `route(Prefix("/static/*"), 1h)` stores nothing.
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::ZERO)
        .route(
            RouteMatch::Prefix("/static/*".into()),
            Duration::from_secs(3600),
        );
    let watch = support::Watch::of(&layer);
    let service = layer.layer(personal_origin());
    let (_, status) = get(&service, "/static/x", Some("user=alice")).await;
    watch.settled().await;
    assert!(!status.contains("stored"), "/static/x: {status}");
}
