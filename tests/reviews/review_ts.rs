//! Review TS: the cache key against what the application actually routes, attacked with
//! crafted paths (percent-encoded and empty segments, trailing slashes) and with ordinary
//! axum stacks (`nest`, `nest_service`, captures, route middleware outside the cache):
//! the page a handler made must be stored only under the target whose page it is.
//!
//! A route middleware outside the cache (added with `Router::layer`, after the `Router`
//! noted `OriginalUri`) that changed the target's authority, not its path or query, was
//! not taken for a rewrite: the handler answered the other authority, and its page was
//! stored under the client's.
#![cfg(feature = "axum")]

use crate::support;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use http::Uri;
use tower_memcache::backend::MemoryBackend;

/// An operator previewing a tenant's site: the `preview` cookie names the tenant whose
/// authority the target is given (the handler serves by the target's host, as it reads
/// HTTP/2's `:authority` or an absolute-form target).
async fn preview_tenant(mut request: Request, next: Next) -> Response {
    let tenant = request
        .headers()
        .get(http::header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("preview="))
        .and_then(|tenant| format!("{tenant}.example").parse().ok());
    if let Some(authority) = tenant {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(authority);
        parts.scheme.get_or_insert(http::uri::Scheme::HTTP);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

/// A tenant's page, made for the host of the target the handler is given.
async fn tenant_page(uri: Uri) -> String {
    format!("{} page", uri.host().unwrap_or("no host"))
}

/// The preview of tenant `b` at `a.example`'s URL was stored under that URL: the next
/// visitor of `a.example` was answered `b`'s page, at the top level and in a nested router.
#[tokio::test]
async fn a_target_given_another_authority_is_not_stored_under_the_clients() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let app = Router::new()
        .route("/page", get(tenant_page).layer(layer.clone()))
        .nest(
            "/docs",
            Router::new()
                .route("/intro", get(tenant_page))
                .layer(layer.clone()),
        )
        .layer(middleware::from_fn(preview_tenant));
    for url in ["http://a.example/page", "http://a.example/docs/intro"] {
        let preview = support::send_axum(&app, url, &[("cookie", "preview=b")]).await;
        assert_eq!(preview.body, "b.example page", "{url}");
        watch.settled().await;
        let visitor = support::send_axum(&app, url, &[]).await;
        assert_eq!(
            visitor.body,
            "a.example page",
            "{url}: a visitor was answered the previewed tenant's page ({})",
            visitor.cache_status()
        );
    }
}
