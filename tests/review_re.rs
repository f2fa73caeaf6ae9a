//! Review RE: an adversarial second look at reviews RB and RC (a 304 to a client's own
//! condition refreshing the stored response, `Cache-Status: stored`, several ranges of an
//! encoded entry, the route rules' origin reading, `\` in `Location`). Each test names an
//! attack or defect and fails if it works.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, Request};
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::Origin;
use support::{Watch, bounded, send};

/// Attack (RFC 9110 §13.1.3: a recipient "MUST ignore" an `If-Modified-Since` whose value
/// has more than one member): since review RB a validator-less 304 to a client's own
/// `If-Modified-Since` refreshes the validator-less stored response when the date asked
/// about is no later than the stored `Date`. The layer read the first of two field lines
/// and the origin another (the last, as PHP behind FastCGI does, each line a parameter
/// the next overwrites): `If-Modified-Since: <the stored Date>` then
/// `If-Modified-Since: <now>`. The origin, honestly not modified since now, answered 304;
/// the layer took it as vouching for its old page and refreshed it, so everyone got the
/// page the origin had replaced, for the 304's whole lifetime (and again each time it
/// went stale). A condition of several members vouches for nothing.
#[tokio::test]
async fn two_if_modified_since_lines_do_not_refresh_an_old_page() {
    let now = SystemTime::now();
    let made = now - Duration::from_secs(100);
    let changed_at = now - Duration::from_secs(50);
    let changed = Arc::new(AtomicBool::new(false));
    let origin = Origin::new({
        let changed = Arc::clone(&changed);
        move |request: &Request<()>| {
            if !changed.load(Ordering::SeqCst) {
                // Stale on arrival (100 s old, fresh for 50; kept for `stale-if-error`):
                // revalidated by the next request. No validator: the origin keeps its
                // modification time to itself.
                return (
                    200,
                    vec![
                        ("date", httpdate::fmt_http_date(made)),
                        ("cache-control", "max-age=50, stale-if-error=600".to_owned()),
                    ],
                    "old page",
                );
            }
            let date = ("date", httpdate::fmt_http_date(SystemTime::now()));
            let cache_control = ("cache-control", "max-age=600".to_owned());
            // The last line wins, and "not modified since" is answered honestly.
            let since = request
                .headers()
                .get_all("if-modified-since")
                .iter()
                .next_back()
                .and_then(|value| httpdate::parse_http_date(value.to_str().ok()?).ok());
            if since.is_some_and(|since| since >= changed_at) {
                return (304, vec![date, cache_control], "");
            }
            (200, vec![date, cache_control], "new page")
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    let url = "http://site.example/p";
    let first = bounded("fill", send(&service, Method::GET, url, &[])).await;
    assert_eq!(first.body, "old page");
    support::stores(&watch, 1).await;

    changed.store(true, Ordering::SeqCst);
    let (stored_date, later) = (httpdate::fmt_http_date(made), httpdate::fmt_http_date(now));
    let attack = [
        ("if-modified-since", stored_date.as_str()),
        ("if-modified-since", later.as_str()),
    ];
    let answer = bounded("attack", send(&service, Method::GET, url, &attack)).await;
    assert_eq!(answer.status, 304, "{answer:?}");
    watch.settled().await;

    let victim = bounded("victim", send(&service, Method::GET, url, &[])).await;
    assert_eq!(victim.body, "new page", "{victim:?}");
    assert_eq!(origin.calls(), 3);
}
