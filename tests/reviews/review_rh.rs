//! Review RH: does every documented promise hold? Each test pins a claim of the README,
//! SECURITY.md, the rustdoc or `--help` that had no test saying it, or that said otherwise
//! before this review.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Request};
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::Origin;
use support::{Watch, bounded, send};

/// An origin whose every answer has a validator and stale windows (and, with `lifetime`,
/// an `x-memcache-lifetime` header): nothing in it keeps the response out of the cache.
fn origin(lifetime: Option<&'static str>) -> Origin {
    Origin::new(move |_: &Request<()>| {
        let mut lines = vec![
            ("etag", "\"v1\"".to_owned()),
            (
                "cache-control",
                "max-age=60, stale-while-revalidate=60, stale-if-error=60".to_owned(),
            ),
        ];
        if let Some(value) = lifetime {
            lines.push(("x-memcache-lifetime", value.to_owned()));
        }
        (200, lines, "page")
    })
}

/// Sends two GETs for `url` and asserts that the origin answered both, nothing was stored
/// and neither answer came from the cache (`fwd=uri-miss` both times, not `fwd=stale`).
async fn nothing_stored<S>(service: &S, watch: &Watch, origin: &Origin, url: &str)
where
    S: tower::Service<
            Request<()>,
            Response = http::Response<
                tower_memcache::cache::ResponseBody<http_body_util::Full<bytes::Bytes>>,
            >,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..2 {
        let answer = send(service, Method::GET, url, &[]).await;
        assert_eq!(answer.body, "page");
        assert_eq!(answer.cache_status(), "tower-memcache; fwd=uri-miss");
        assert_eq!(answer.header("x-memcache-lifetime"), None);
        watch.settled().await;
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(watch.snapshot().stores, 0);
}

/// README ("Routes"): routes no rule names get `default_lifetime`, and a lifetime of 0
/// stores nothing (the README said "stale at once", which would keep a response with a
/// validator and `stale-while-revalidate` for revalidation and stale serving). Code and
/// the other docs (`CacheLifetime`, `DEFAULT_LIFETIME_HEADER`) agree: not stored.
#[tokio::test]
async fn a_route_lifetime_of_zero_stores_nothing() {
    bounded("route lifetime 0", async {
        let origin = origin(None);
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-rh-zero-route")
            .default_lifetime(Duration::ZERO);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin.clone());
        nothing_stored(&service, &watch, &origin, "http://review-rh.test/zero").await;
    })
    .await;
}

/// README ("Routes") and `MemcacheLayer::lifetime_header`: an `x-memcache-lifetime` that
/// is no whole number of seconds counts as 0 and keeps the response out of the cache (the
/// docs said "stale at once"), in origin mode too, whatever `max-age` says.
#[tokio::test]
async fn a_lifetime_header_that_is_no_number_keeps_the_response_out_in_both_modes() {
    bounded("lifetime header", async {
        for mode in [CacheMode::Routes, CacheMode::Origin] {
            for value in ["0", "0.5", "30s"] {
                let origin = origin(Some(value));
                let layer = support::layer(MemoryBackend::new())
                    .namespace("review-rh-zero-header")
                    .mode(mode);
                let watch = Watch::of(&layer);
                let service = layer.layer(origin.clone());
                nothing_stored(&service, &watch, &origin, "http://review-rh.test/header").await;
            }
        }
    })
    .await;
}

/// The flags named in `--help` (a flag's own line is indented six spaces).
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| line.strip_prefix("      --"))
        .map(|rest| format!("--{}", rest.split([' ', '\t']).next().unwrap_or("")))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// The flags named in the first column of the README's proxy table.
fn readme_table_flags(readme: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in readme.lines() {
        let Some(row) = line.strip_prefix("| `--") else {
            continue;
        };
        let first_column = row.split(" | ").next().unwrap_or("");
        for part in format!("`--{first_column}").split('`') {
            if let Some(name) = part.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

/// README ("The caching proxy"): its table of flags names every flag `--help` lists, and
/// no flag the binary does not have.
#[test]
fn the_readme_proxy_table_names_every_flag_and_no_other() {
    let output = std::process::Command::new(support::proxy::proxy_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = help_flags(&String::from_utf8(output.stdout).unwrap());
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme_table_flags(&readme);
    assert!(help.len() > 20, "{help:?}");
    assert_eq!(table, help, "README's proxy table against --help");
}

/// An origin that takes `delay` to answer a cacheable page with a 40-tag `Surrogate-Key`
/// (more than a stored response may name) when `many_tags`, and counts its calls.
fn slow_origin(
    delay: Duration,
    many_tags: bool,
) -> (
    impl tower::Service<
        Request<()>,
        Response = http::Response<http_body_util::Full<bytes::Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let service = tower::service_fn(move |_: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut response = http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"page"),
            ));
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            if many_tags {
                let tags: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
                response
                    .headers_mut()
                    .insert("surrogate-key", tags.join(" ").parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    (service, calls)
}

/// `MemcacheLayer::max_coalesced`: "`0` turns coalescing off". Two requests for one
/// missing URL both go to the origin at once: neither waits for the other, in this
/// process nor through the first one's placeholder (`lease_wait`, 2 s). With the default,
/// the origin is called once (the test can fail).
#[tokio::test]
async fn max_coalesced_zero_turns_coalescing_off() {
    use std::sync::atomic::Ordering;
    bounded("max_coalesced(0)", async {
        for (max, origin_calls) in [(0, 2), (1024, 1)] {
            let (origin, calls) = slow_origin(Duration::from_millis(300), false);
            let layer = support::layer(MemoryBackend::new())
                .namespace("review-rh-coalesce")
                .max_coalesced(max);
            let watch = Watch::of(&layer);
            let service = layer.layer(origin);
            let url = "http://review-rh.test/coalesce";
            let started = std::time::Instant::now();
            let (a, b) = tokio::join!(
                send(&service, Method::GET, url, &[]),
                send(&service, Method::GET, url, &[]),
            );
            let took = started.elapsed();
            assert_eq!((a.body.as_str(), b.body.as_str()), ("page", "page"));
            assert_eq!(
                calls.load(Ordering::SeqCst),
                origin_calls,
                "max_coalesced({max})"
            );
            // Neither waited a `lease_wait` (2 s) for the other's placeholder.
            assert!(
                took < Duration::from_millis(1900),
                "max_coalesced({max}): {took:?}"
            );
            watch.settled().await;
        }
    })
    .await;
}

/// `cache_status_header(false)`, `lifetime_header(None)` and `tag_header(None)`: no
/// `Cache-Status` is sent; the lifetime and tag headers are the origin's own fields,
/// passed on untouched and not read (40 tags, past the 32 a stored response may name,
/// keep nothing out of the cache; `x-memcache-lifetime: 0` stores nothing only while the
/// layer reads it).
#[tokio::test]
async fn the_layers_own_headers_can_be_turned_off() {
    bounded("own headers off", async {
        let (origin, _) = slow_origin(Duration::ZERO, true);
        let origin = tower::ServiceBuilder::new()
            .map_response(|mut response: http::Response<_>| {
                response
                    .headers_mut()
                    .insert("x-memcache-lifetime", "0".parse().unwrap());
                response
            })
            .service(origin);
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-rh-own-headers")
            .cache_status_header(false)
            .lifetime_header(None)
            .tag_header(None);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin);
        let url = "http://review-rh.test/own-headers";
        for _ in 0..2 {
            let answer = send(&service, Method::GET, url, &[]).await;
            assert_eq!(answer.body, "page");
            assert_eq!(answer.header("cache-status"), None);
            assert_eq!(answer.header("x-memcache-lifetime"), Some("0"));
            assert!(answer.header("surrogate-key").is_some());
            watch.settled().await;
        }
        let snapshot = watch.snapshot();
        assert_eq!((snapshot.stores, snapshot.hits), (1, 1), "{snapshot:?}");
    })
    .await;
}

/// `MemcacheLayer::lease`: "`None` turns leases off (the single flight inside each
/// process stays)". Two layers over one store are two processes: with leases, the second
/// waits for the first one's placeholder and is answered with its response (one origin
/// call); without, it goes to the origin itself.
#[tokio::test]
async fn lease_none_turns_leases_off_across_processes() {
    use std::sync::atomic::Ordering;
    bounded("lease(None)", async {
        for (lease, origin_calls) in [(None, 2), (Some(Duration::from_secs(5)), 1)] {
            let backend = MemoryBackend::new();
            let (origin, calls) = slow_origin(Duration::from_millis(300), false);
            let process = || {
                support::layer(backend.clone())
                    .namespace("review-rh-lease")
                    .lease(lease)
                    .layer(origin.clone())
            };
            let (first, second) = (process(), process());
            let url = "http://review-rh.test/lease";
            let (a, b) = tokio::join!(send(&first, Method::GET, url, &[]), async {
                // The first is at the origin: its placeholder (if any) is in place.
                support::eventually("the first request at the origin", || {
                    calls.load(Ordering::SeqCst) > 0
                })
                .await;
                send(&second, Method::GET, url, &[]).await
            });
            assert_eq!((a.body.as_str(), b.body.as_str()), ("page", "page"));
            assert_eq!(
                calls.load(Ordering::SeqCst),
                origin_calls,
                "lease {lease:?}"
            );
        }
    })
    .await;
}

/// `MemcacheLayer::heuristic`: "a fraction of `0.0` turns it off". In origin mode a
/// response with `Last-Modified` ten days back and no explicit lifetime is fresh for a
/// day by default (a hit); with the heuristic off it is stored only to be revalidated.
#[tokio::test]
async fn a_heuristic_fraction_of_zero_turns_heuristic_freshness_off() {
    bounded("heuristic(0.0)", async {
        let modified =
            httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(864_000));
        for (fraction, second_status) in [
            (0.1, "tower-memcache; hit"),
            (0.0, "tower-memcache; fwd=stale; stored"),
        ] {
            let origin = Origin::new({
                let modified = modified.clone();
                move |_: &Request<()>| (200, vec![("last-modified", modified.clone())], "page")
            });
            let layer = support::layer(MemoryBackend::new())
                .namespace("review-rh-heuristic")
                .mode(CacheMode::Origin)
                .heuristic(fraction, Duration::from_secs(86_400));
            let watch = Watch::of(&layer);
            let service = layer.layer(origin.clone());
            let url = "http://review-rh.test/heuristic";
            let first = send(&service, Method::GET, url, &[]).await;
            assert_eq!(first.cache_status(), "tower-memcache; fwd=uri-miss; stored");
            watch.settled().await;
            let second = send(&service, Method::GET, url, &[]).await;
            assert_eq!(second.cache_status(), second_status, "heuristic {fraction}");
        }
    })
    .await;
}
