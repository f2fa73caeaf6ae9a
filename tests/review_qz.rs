//! Review QZ: an adversarial second look at the newest changes (relative and dotted
//! `Location` / target invalidation, route-rule readings, the proxy's client-upload
//! errors, obs-text `Connection` lines, multipart range order, 304 kept-out fields).
//! Each test names an attack or defect and fails if it works.

mod support;

use support::scripted_service::Origin;
use support::{HIT, Watch, assert_hit, send};

use http::{Method, Request};
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

/// An origin whose `/page/*` are cacheable pages, and whose unsafe requests answer 201
/// naming what the request's `x-location` / `x-content-location` say.
fn origin() -> Origin {
    Origin::new(|request: &Request<()>| {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            return (
                200,
                vec![("cache-control", "max-age=600".to_owned())],
                "page",
            );
        }
        let mut lines = Vec::new();
        for (field, name) in [
            ("x-location", "location"),
            ("x-content-location", "content-location"),
        ] {
            if let Some(value) = request.headers().get(field) {
                lines.push((name, value.to_str().unwrap_or("").to_owned()));
            }
        }
        (201, lines, "done")
    })
}

/// RFC 9111 §4.4 with RFC 3986 §2.3 / §6.2.2.2: `%2E` is `.` (an unreserved character
/// percent-encoded), so `/x/%2E%2E/b` is the URI `/b`, and a browser that follows a
/// `Location: /x/%2e%2e/b` goes to `/b` (the URL Standard reads `%2e` as `.` in a dot
/// segment). Only the literal `..` was resolved: the encoded spelling, in a `Location`,
/// a `Content-Location` or the target itself (`POST /x/%2e%2e/c`, which an origin that
/// decodes before resolving serves as `/c`), invalidated only itself and left the stored
/// `/page/b` and `/page/c` answering as before the change.
#[tokio::test]
async fn percent_encoded_dot_segments_invalidate_the_path_they_name() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(origin());
    // The request (target and the fields the origin answers with), the path it names.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "/page/form",
            &[("x-location", "/page/x/%2E%2e/b")],
            "/page/b",
        ),
        (
            "/page/form",
            &[("x-content-location", "x/.%2e/c")],
            "/page/c",
        ),
        ("/page/form", &[("x-location", "%2e/d")], "/page/d"),
        ("/page/x/%2e%2E/e", &[], "/page/e"),
    ];
    let mut left = Vec::new();
    for (target, fields, named) in cases {
        send(&svc, Method::GET, named, &[]).await;
        watch.settled().await;
        let again = send(&svc, Method::GET, named, &[]).await;
        assert_hit(again.cache_status());
        let posted = send(&svc, Method::POST, target, fields).await;
        assert_eq!(posted.status, 201);
        let after = send(&svc, Method::GET, named, &[]).await;
        if after.cache_status() == HIT {
            left.push(format!("POST {target} {fields:?} left {named} cached"));
        }
    }
    assert!(left.is_empty(), "{left:#?}");
}
