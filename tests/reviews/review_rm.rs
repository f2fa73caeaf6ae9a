//! Review RM: what an operator configures, as a careless operator writes it and as an
//! attacker who controls part of it would: route rules spelled as another framework
//! spells them, or placed where they cannot see what they match on, and the proxy's
//! flags given values that quietly weaken the cache (an empty namespace, a zero
//! timeout). Each test fails if the value is again taken without a word and the cache
//! does less than the operator meant.

use crate::support;

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

/// An axum route answering the page of the user whose cookie came with the request:
/// `{user}'s {what}` (`anonymous` without a cookie).
#[cfg(feature = "axum")]
fn cookie_page(what: &'static str) -> axum::routing::MethodRouter {
    axum::routing::get(move |headers: http::HeaderMap| async move {
        let user = headers
            .get("cookie")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned();
        format!("{user}'s {what}")
    })
}

/// `GET path` through `app`, with `cookie` when given: the body.
#[cfg(feature = "axum")]
async fn axum_get<S, B>(app: &S, path: &str, cookie: Option<&str>) -> String
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut request = http::Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
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
    let layer =
        support::layer(MemoryBackend::new()).no_cache(RouteMatch::Pattern("/users/{id}".into()));
    let watch = support::Watch::of(&layer);
    let app = axum::Router::new().route("/users/{id}", cookie_page("profile"));
    let app = layer.layer(app);
    let call = |cookie| axum_get(&app, "/users/7", cookie);
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
    // Read as a pattern, a lifetime rule only caps: with a default lifetime of 0,
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

/// Starts the proxy with `args` (and `env`) after the usual ones and waits up to 5 s for
/// it to exit: its exit status and stderr, or `None` when it went on running (killed).
#[cfg(feature = "proxy")]
fn proxy_exit(args: &[&str], env: &[(&str, &str)]) -> Option<(Option<i32>, String)> {
    let mut command = support::proxy::startup_command(&["--access-log", "off"]);
    command.args(args).envs(env.iter().copied());
    support::proxy::exit_of(&mut command, Duration::from_secs(5))
        .map(|(status, stderr)| (status.code(), stderr))
}

/// An empty `--namespace` (`TOWER_MEMCACHE_PROXY_NAMESPACE=` left unset in a unit file or
/// a container template) was taken as the empty namespace: the one every
/// `MemcacheLayer` left at its default keys in, and every proxy given the same empty
/// variable, so proxies of two origins on one memcached shared keys and a client could
/// have one origin's page stored as the other site's (SECURITY.md's "one namespace per
/// application"). A namespace read with its trailing newline (a mounted secret) keyed one
/// replica apart from the others, whose invalidations then left its entries. Both are
/// refused at startup, exit status 2, naming the flag.
#[cfg(feature = "proxy")]
#[test]
fn an_empty_or_padded_namespace_is_refused_at_startup() {
    /// A command line's extra flags and environment.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 4] = [
        (&["--namespace", ""], &[]),
        (&[], &[("TOWER_MEMCACHE_PROXY_NAMESPACE", "")]),
        (&["--namespace", " "], &[]),
        (&["--namespace", "proxy:origin\n"], &[]),
    ];
    for (args, env) in cases {
        let (code, stderr) =
            proxy_exit(args, env).unwrap_or_else(|| panic!("{args:?} {env:?}: accepted"));
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("--namespace"), "{args:?} {env:?}: {stderr}");
    }
    // A name given on purpose still starts.
    assert!(proxy_exit(&["--namespace", "site a:1"], &[]).is_none());
}

/// `--cache-timeout 0` (an operator reading 0 as "no timeout") was accepted: memcached
/// answers a lookup in no time only by chance, so most lookups became misses (9 hits in
/// 30 repeated requests here) while every response was still stored, a cache that costs
/// memcached's work and saves the origin little, with nothing said. `--max-entry-size 0`
/// (nginx's "no limit" for body sizes) stored no response with a body, and made
/// `--max-unsent-bytes`' default (128 entries) 0, which closes connections whose client
/// has not yet taken every byte. Both are refused at startup, exit status 2, as review
/// QI refused the origin timeouts of 0.
#[cfg(feature = "proxy")]
#[test]
fn a_zero_cache_timeout_or_entry_size_is_refused_at_startup() {
    for (flag, value) in [
        ("--cache-timeout", "0"),
        ("--cache-timeout", "0ms"),
        ("--max-entry-size", "0"),
        ("--max-entry-size", "0K"),
    ] {
        let (code, stderr) =
            proxy_exit(&[flag, value], &[]).unwrap_or_else(|| panic!("{flag} {value}: accepted"));
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("more than 0"),
            "{flag} {value}: {stderr}"
        );
    }
}

/// `--upstream http://origin:0` was accepted: no connection can be made to port 0, so
/// the proxy started, said it forwarded to the origin, and answered every miss 502 (or
/// a stale entry, for as long as `--stale-if-unreachable` let it). memcached servers on
/// port 0 were already refused. `--near-cache 64` (a size without its `M`) was taken as
/// a tier of 64 bytes, announced as on ("near tier 0 KiB"), and kept nothing: each entry
/// counts its size and 512 bytes more, and the tier is split in shards. Both are refused
/// at startup, exit status 2, naming the flag.
#[cfg(feature = "proxy")]
#[test]
fn an_unreachable_upstream_or_a_near_tier_that_keeps_nothing_is_refused() {
    let (code, stderr) = proxy_exit(&["--upstream", "http://127.0.0.1:0"], &[])
        .unwrap_or_else(|| panic!("--upstream with port 0: accepted"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--upstream"), "{stderr}");
    for value in ["64", "1", "1K", "512K,1s"] {
        let (code, stderr) = proxy_exit(&["--near-cache", value], &[])
            .unwrap_or_else(|| panic!("--near-cache {value}: accepted"));
        assert_eq!(code, Some(2), "--near-cache {value}: {stderr}");
        assert!(
            stderr.contains("--near-cache"),
            "--near-cache {value}: {stderr}"
        );
    }
    // A tier of a size that holds pages still starts.
    assert!(proxy_exit(&["--near-cache", "1M"], &[]).is_none());
}

/// `TcpBackendBuilder::probe_interval(Duration::ZERO)` (an operator's "probe at once")
/// was taken as it was: a server marked down was probed with no pause at all, and one
/// that accepts connections and drops them (a memcached out of connections, a proxy with
/// no server behind it) was sent about 650 connections a second on this machine by a
/// loop that kept a runtime thread busy. Probes now pause at least
/// `MIN_PROBE_INTERVAL` (10 ms): at most a hundred a second.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_probe_interval_does_not_flood_a_server_that_is_down() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_memcache::backend::{Backend, TcpBackend};

    // A server that takes each connection and closes it: every probe fails at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let backend = TcpBackend::builder()
        .server(addr.to_string())
        .probe_interval(Duration::ZERO)
        .failure_threshold(1)
        .build()
        .expect("a valid configuration");
    support::bounded("marking the server down", async {
        while !backend.is_server_down(0) {
            let _ = backend.get("k").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let before = accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = accepted.load(Ordering::SeqCst) - before;
    // 10 ms apart: 200 in 2 s at most (fewer, each probe taking its own time).
    assert!(probes <= 250, "{probes} connections in 2 s");
    assert!(
        backend.is_server_down(0),
        "a server that answers nothing came back"
    );
}

/// Two rules for one path, a lifetime and a `no_cache` (a shared base layer's
/// `route(Exact("/account"), 1 min)`, then the application's `no_cache` for it): the one
/// added first won for `Exact` and `Pattern` rules, the one added last for `Prefix`
/// rules, so the `no_cache` rule was silently ignored in one order and not the other, and
/// the victim's page stored. Whatever the order, `no_cache` now wins over a lifetime for
/// the same matcher, and of two lifetimes the shorter.
#[tokio::test]
async fn no_cache_wins_over_a_lifetime_rule_for_the_same_path_in_either_order() {
    let minute = Duration::from_secs(60);
    let layers = |matcher: RouteMatch| {
        let base = || support::layer(MemoryBackend::new());
        [
            (
                "no_cache first",
                base()
                    .no_cache(matcher.clone())
                    .route(matcher.clone(), minute),
            ),
            (
                "no_cache last",
                base().route(matcher.clone(), minute).no_cache(matcher),
            ),
        ]
    };
    for matcher in [
        RouteMatch::Exact("/account".into()),
        RouteMatch::Prefix("/account".into()),
    ] {
        // `assert_each_gets_own` names the path; the order is the loop's second round.
        for (_order, layer) in layers(matcher) {
            let watch = support::Watch::of(&layer);
            let service = layer.layer(personal_origin());
            path_origin::assert_each_gets_own(&service, &watch, "/account", |user| {
                format!("{user}'s page")
            })
            .await;
        }
    }
    // A `Pattern` rule, where axum's `MatchedPath` names it (`route_layer`).
    #[cfg(feature = "axum")]
    for (order, layer) in layers(RouteMatch::Pattern("/account".into())) {
        let watch = support::Watch::of(&layer);
        let app = axum::Router::new()
            .route("/account", cookie_page("account"))
            .route_layer(layer);
        let call = |cookie| axum_get(&app, "/account", cookie);
        assert_eq!(call(Some("alice")).await, "alice's account", "{order}");
        watch.settled().await;
        assert_eq!(call(None).await, "anonymous's account", "Pattern, {order}");
    }
}

/// A lifetime rule meant to shorten one route's lifetime that could not see its route:
/// `route(Pattern("/quotes/{symbol}"), 1 s)` on a layer that sees no `MatchedPath` (a
/// layer around the whole router, a hyper server), or `route(Prefix("/quotes/*"), 1 s)`
/// (a glob, which matches no path as text), left the quotes at the default hour: a
/// price kept an hour longer than the operator allowed, with nothing said. Such a rule
/// now caps the lifetime of the paths its pattern covers (it can shorten, never
/// lengthen).
#[tokio::test]
async fn a_lifetime_rule_that_cannot_see_its_route_still_shortens() {
    for rule in [
        RouteMatch::Pattern("/quotes/{symbol}".into()),
        RouteMatch::Prefix("/quotes/*".into()),
    ] {
        let layer = support::layer(MemoryBackend::new())
            .default_lifetime(Duration::from_secs(3600))
            .route(rule.clone(), Duration::from_secs(1));
        let watch = support::Watch::of(&layer);
        let service = layer.layer(personal_origin());
        let (_, first) = get(&service, "/quotes/acme", None).await;
        assert_eq!(first, "tower-memcache; fwd=uri-miss; stored", "{rule:?}");
        watch.settled().await;
        // Well past the rule's second (a loaded machine's scheduling included).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (_, later) = get(&service, "/quotes/acme", None).await;
        assert_ne!(later, support::HIT, "{rule:?}: still fresh after 2.5 s");
    }
}

/// `--max-unsent-bytes 0` (nginx's "0 is no limit" habit again) was taken as a budget of
/// nothing: every connection holding a byte its client had not yet taken counted as over
/// the budget, and one that took under 1 KiB in a second (a slow link, a large response
/// read at a modest pace) was closed. Refused at startup, exit status 2.
#[cfg(feature = "proxy")]
#[test]
fn a_zero_unsent_budget_is_refused_at_startup() {
    for value in ["0", "0K"] {
        let (code, stderr) = proxy_exit(&["--max-unsent-bytes", value], &[])
            .unwrap_or_else(|| panic!("--max-unsent-bytes {value}: accepted"));
        assert_eq!(code, Some(2), "--max-unsent-bytes {value}: {stderr}");
        assert!(
            stderr.contains("--max-unsent-bytes") && stderr.contains("more than 0"),
            "--max-unsent-bytes {value}: {stderr}"
        );
    }
}

/// `default_scheme` taken as written. `default_scheme("https://")` (the scheme as a URL
/// begins) made every request's target unkeyable (an unknown scheme): the layer cached
/// nothing, said only at debug level. `default_scheme("HTTPS")` keyed `https` pages, but
/// an unsafe request's `Location` in the layer's own scheme was compared with the
/// setting byte for byte: after an absolute-form `POST http://…` (a TLS terminator's
/// plain side) its `Location: https://example.com/y` was respelled into `http`, where
/// the layer keys nothing, and the stored `https` page of `/y` outlived the change. The
/// scheme is now read as a scheme: case folded, a trailing `://` dropped.
#[tokio::test]
async fn default_scheme_is_read_as_a_scheme() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    for written in ["https://", "HTTPS", " https "] {
        let version = Arc::new(AtomicUsize::new(0));
        let origin = {
            let version = Arc::clone(&version);
            tower::service_fn(move |request: http::Request<()>| {
                let version = Arc::clone(&version);
                async move {
                    let response = if request.method() == http::Method::POST {
                        version.fetch_add(1, Ordering::SeqCst);
                        http::Response::builder()
                            .status(303)
                            .header("location", "https://example.com/y")
                            .body(String::new())
                    } else {
                        let page = format!("version {}", version.load(Ordering::SeqCst));
                        http::Response::builder().body(page)
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("a valid response"))
                }
            })
        };
        let layer = support::layer(MemoryBackend::new()).default_scheme(written);
        let watch = support::Watch::of(&layer);
        let service = layer.layer(origin);
        let host = [("host", "example.com")];
        let first = support::send(&service, http::Method::GET, "/y", &host).await;
        watch.settled().await;
        let again = support::send(&service, http::Method::GET, "/y", &host).await;
        assert_eq!(
            (again.body.as_str(), again.cache_status()),
            ("version 0", support::HIT),
            "{written:?}: {first:?}"
        );
        let post = support::send(&service, http::Method::POST, "http://example.com/x", &host).await;
        assert_eq!(post.status, 303, "{written:?}");
        watch.settled().await;
        let after = support::send(&service, http::Method::GET, "/y", &host).await;
        assert_eq!(
            after.body,
            "version 1",
            "{written:?}: {}",
            after.cache_status()
        );
    }
}

/// `--ttl` without `--mode routes` was taken and ignored: the proxy's default mode,
/// origin, takes every lifetime from the origin's headers, so an operator's `--ttl 60`
/// (meant as "at most a minute") left pages the origin marks `max-age=86400` cached for
/// a day, and the shipped systemd unit itself set `TOWER_MEMCACHE_PROXY_TTL` beside
/// `MODE=origin`. Refused at startup, exit status 2, naming both flags; with
/// `--mode routes` it starts.
#[cfg(feature = "proxy")]
#[test]
fn a_ttl_that_origin_mode_would_ignore_is_refused() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 3] = [
        (&["--ttl", "60"], &[]),
        (&["--ttl", "60", "--mode", "origin"], &[]),
        (&[], &[("TOWER_MEMCACHE_PROXY_TTL", "60")]),
    ];
    for (args, env) in cases {
        let (code, stderr) =
            proxy_exit(args, env).unwrap_or_else(|| panic!("{args:?} {env:?}: accepted"));
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--ttl") && stderr.contains("--mode routes"),
            "{args:?} {env:?}: {stderr}"
        );
    }
    assert!(proxy_exit(&["--ttl", "60", "--mode", "routes"], &[]).is_none());
}

/// A glob's area includes its root where the frameworks that write them say so: Spring
/// Security's `/account/**` (and Express's `/account*`) covers `/account` itself. Read as
/// an axum catch-all, which needs a segment, `no_cache(Prefix("/account/**"))` left the
/// page at `/account` cacheable: a victim lured there had it stored for the attacker.
#[tokio::test]
async fn a_no_cache_glob_covers_its_areas_root() {
    for rule in [
        RouteMatch::Prefix("/account/**".into()),
        RouteMatch::Prefix("/account/*".into()),
        RouteMatch::Exact("/account/**".into()),
    ] {
        let layer = support::layer(MemoryBackend::new()).no_cache(rule.clone());
        let watch = support::Watch::of(&layer);
        let service = layer.layer(personal_origin());
        for path in ["/account", "/account/"] {
            let (victim, _) = get(&service, path, Some("user=alice")).await;
            assert_eq!(victim, "alice's page", "{rule:?} {path}");
            watch.settled().await;
            let (attacker, status) = get(&service, path, None).await;
            assert_eq!(attacker, "anonymous's page", "{rule:?} {path}: {status}");
        }
    }
}

/// `--metrics 127.0.0.1:0` (a free port, as `--listen` takes port 0 and its startup line
/// names the port chosen) was served on a port nobody could find: the log line said
/// `serving metrics addr=127.0.0.1:0`. It names the port bound, which answers a scrape.
#[cfg(all(feature = "proxy", feature = "metrics"))]
#[test]
fn the_metrics_line_names_the_port_bound() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(support::proxy::proxy_binary())
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--threads",
            "1",
            "--access-log",
            "off",
            "--log-format",
            "json",
        ])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        match read.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("serving metrics") => break line,
            Ok(_) => {}
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no \"serving metrics\" line: {err}");
            }
        }
    };
    let addr = line
        .split("\"addr\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok());
    let answered = addr
        .filter(|addr| addr.port() != 0)
        .map(|addr| support::proxy::raw_request(addr, "GET /metrics HTTP/1.1\r\nHost: m\r\n").0);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, Some(200), "{line}");
}

/// A `RUST_LOG` with a mistake in it (`tower_memcache=dbug`) was dropped without a word
/// for the default `info`: the operator who asked for every cache decision got none and
/// no reason why. Refused at startup, naming the variable.
#[cfg(feature = "proxy")]
#[test]
fn a_rust_log_with_a_mistake_is_refused() {
    let (code, stderr) = proxy_exit(&[], &[("RUST_LOG", "tower_memcache=dbug")])
        .unwrap_or_else(|| panic!("RUST_LOG=tower_memcache=dbug: accepted"));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("RUST_LOG"), "{stderr}");
    // A valid one still starts.
    assert!(proxy_exit(&[], &[("RUST_LOG", "warn,tower_memcache=debug")]).is_none());
}

/// A server listed twice (`--memcache 10.0.0.1:11211,10.0.0.2:11211,10.0.0.1:11211`, a
/// list pasted together) was taken as two servers: ketama gave it two shares of the keys
/// (two thirds here), so its memory filled and evicted first and its outage cost two
/// thirds of the hits, not the third "a dead node costs only its share" promises; its two
/// entries kept health (and the `server_up` series they share) apart. Refused, naming it.
#[cfg(feature = "tcp")]
#[test]
fn a_memcached_server_listed_twice_is_refused() {
    use tower_memcache::backend::TcpBackend;

    for list in [
        "10.0.0.1:11211,10.0.0.2:11211,10.0.0.1:11211",
        "cache-a, CACHE-A:11211",
        "[::1]:11212,[::1]:11212",
    ] {
        match TcpBackend::builder().server_list(list).build() {
            Ok(backend) => panic!("{list}: taken as {:?}", backend.server_names()),
            Err(err) => assert!(err.to_string().contains("listed twice"), "{list}: {err}"),
        }
    }
    // Two ports of one host are two servers.
    assert!(
        TcpBackend::builder()
            .server_list("10.0.0.1:11211,10.0.0.1:11212")
            .build()
            .is_ok()
    );
}
