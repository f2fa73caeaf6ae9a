//! The `tower-memcache-proxy` binary as users run it (built by `cargo test`, see
//! `support::proxy`) in front of a small HTTP origin this test starts, over loopback HTTP.

mod support;

use support::proxy::{Proxy, raw_request, start_proxy};
use support::{Answer, assert_hit, assert_not_hit, assert_stale_hit};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The origin: a few paths with known caching headers; counts calls per path.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<std::sync::Mutex<Vec<(Method, String, HeaderMap)>>>,
    counter: Arc<AtomicUsize>,
}

impl Origin {
    fn calls_to(&self, path: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .count()
    }

    fn last(&self) -> (Method, String, HeaderMap) {
        self.calls.lock().unwrap().last().cloned().unwrap()
    }

    async fn handle(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        self.calls
            .lock()
            .unwrap()
            .push((method.clone(), path.clone(), request.headers().clone()));
        let mut response = Response::new(Full::new(Bytes::from(format!("{method} {path} #{n}"))));
        let headers = response.headers_mut();
        headers.insert("content-type", "text/plain".parse().unwrap());
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/page") => {
                if request
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|v| v == "\"p1\"")
                {
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::new(Bytes::new());
                }
                let headers = response.headers_mut();
                headers.insert("cache-control", "max-age=60".parse().unwrap());
                headers.insert("etag", "\"p1\"".parse().unwrap());
                headers.insert("x-custom", "a".parse().unwrap());
                headers.append("x-multi", "1".parse().unwrap());
                headers.append("x-multi", "2".parse().unwrap());
                if let Some(echo) = request.headers().get("x-req") {
                    headers.insert("x-echo", echo.clone());
                }
            }
            ("GET", "/sie") => {
                headers.insert(
                    "cache-control",
                    "max-age=1, stale-if-error=600".parse().unwrap(),
                );
                headers.insert("age", "5".parse().unwrap());
            }
            ("GET", "/no-store") => {
                headers.insert("cache-control", "no-store".parse().unwrap());
            }
            ("GET", "/gone") => {
                // Stale on arrival, no stale-if-error: only a disconnected origin lets the
                // proxy serve it (its `--stale-if-unreachable`).
                headers.insert("cache-control", "max-age=1".parse().unwrap());
                headers.insert("age", "5".parse().unwrap());
                // Kept in memcached to be revalidated, with the proxy's stale bound or not.
                headers.insert("etag", "\"g\"".parse().unwrap());
            }
            ("GET", "/expires") => {
                let now = std::time::SystemTime::now();
                let expires = now + Duration::from_secs(60);
                headers.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
                headers.insert("expires", httpdate::fmt_http_date(expires).parse().unwrap());
            }
            ("GET", "/vary") => {
                headers.insert("cache-control", "max-age=60".parse().unwrap());
                headers.insert("vary", "accept-language".parse().unwrap());
            }
            ("GET", "/swr") => {
                // Stale on arrival (Age > max-age), inside its stale-while-revalidate window.
                headers.insert(
                    "cache-control",
                    "max-age=1, stale-while-revalidate=60".parse().unwrap(),
                );
                headers.insert("age", "5".parse().unwrap());
            }
            ("GET", "/must") => {
                headers.insert(
                    "cache-control",
                    "max-age=1, must-revalidate".parse().unwrap(),
                );
                headers.insert("age", "5".parse().unwrap());
                headers.insert("etag", "\"m1\"".parse().unwrap());
            }
            ("GET", "/aged") => {
                headers.insert("cache-control", "max-age=600".parse().unwrap());
                headers.insert("age", "30".parse().unwrap());
            }
            ("GET", "/old") => {
                let now = std::time::SystemTime::now();
                let modified = now - Duration::from_secs(10 * 24 * 3600);
                headers.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
                headers.insert(
                    "last-modified",
                    httpdate::fmt_http_date(modified).parse().unwrap(),
                );
            }
            ("GET", "/fields") => {
                let cc = "max-age=60, private=\"x-user\", no-cache=\"x-token\"";
                headers.insert("cache-control", cc.parse().unwrap());
                headers.insert("x-user", "alice".parse().unwrap());
                headers.insert("x-token", "t".parse().unwrap());
            }
            ("GET", "/slow") => {
                headers.insert("cache-control", "no-store".parse().unwrap());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            ("GET", "/b" | "/a/b") => {
                headers.insert("cache-control", "max-age=60".parse().unwrap());
            }
            ("GET" | "POST", "/reflect") => {
                // An origin that trusts forwarding headers: what it is told is in the page.
                headers.insert("cache-control", "max-age=60".parse().unwrap());
                let seen = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map_or("-", |v| v.to_str().unwrap_or("?"))
                        .to_string()
                };
                let reflected = [
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "x-forwarded-for",
                    "forwarded",
                    "x-http-method-override",
                    "x-original-url",
                ]
                .map(|name| format!("\n{name}: {}", seen(name)))
                .concat();
                *response.body_mut() =
                    Full::new(Bytes::from(format!("{method} {path} #{n}{reflected}")));
            }
            ("GET", "/redeployed") => {
                // "r1" first, stale on arrival; then "r2", whose 304 answers any
                // `If-None-Match` (an origin that answers conditionals loosely).
                let first = self.calls_to("/redeployed") == 1;
                headers.insert("cache-control", "max-age=1".parse().unwrap());
                headers.insert("age", "5".parse().unwrap());
                let etag = if first { "\"r1\"" } else { "\"r2\"" };
                headers.insert("etag", etag.parse().unwrap());
                if !first && request.headers().contains_key("if-none-match") {
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::new(Bytes::new());
                }
            }
            ("GET", "/tagged") => {
                headers.insert("cache-control", "max-age=60".parse().unwrap());
                headers.insert("surrogate-key", "t1 t2".parse().unwrap());
            }
            _ => {}
        }
        Ok(response)
    }
}

async fn start_origin(origin: Origin) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = support::origin::serve_http1(listener, move |req| origin.clone().handle(req));
    (addr, task)
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Background stores: retry (bounded) until the answer is a hit.
async fn until_hit(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: &Proxy,
    path: &str,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = send(client, proxy, "GET", path, &[]).await;
        if answer.cache_status().ends_with("; hit") || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An origin, the proxy in front of it, and a client.
struct Harness {
    origin: Origin,
    origin_addr: SocketAddr,
    origin_task: JoinHandle<()>,
    proxy: Proxy,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With these proxy arguments.
    async fn start_with(args: &[&str]) -> Self {
        let origin = Origin::default();
        let (origin_addr, origin_task) = start_origin(origin.clone()).await;
        Self {
            origin,
            origin_addr,
            origin_task,
            proxy: start_proxy(origin_addr, args),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(&self.client, &self.proxy, method, path, headers).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[]).await
    }

    async fn until_hit(&self, path: &str) -> Answer {
        until_hit(&self.client, &self.proxy, path).await
    }

    /// Waits (at most 3 s) until the proxy holds an entry for `path` and these request
    /// headers, fresh or (where the response allows it) stale.
    async fn until_stored(&self, path: &str, headers: &[(&str, &str)]) {
        let mut headers = headers.to_vec();
        headers.push(("cache-control", "only-if-cached, max-stale"));
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.send("GET", path, &headers).await.status != StatusCode::OK {
            assert!(Instant::now() < deadline, "{path} was not stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the proxy answers `path` from its cache alone.
    async fn cached(&self, path: &str) -> bool {
        let answer = self
            .send("GET", path, &[("cache-control", "only-if-cached")])
            .await;
        answer.status != StatusCode::GATEWAY_TIMEOUT
    }
}

#[tokio::test]
async fn rfc9111_3_stores_and_replays_every_end_to_end_header() {
    let h = Harness::start().await;
    let origin = &h.origin;
    // A miss forwards custom request headers; the hit replays every end-to-end header.
    let miss = h.send("GET", "/page", &[("x-req", "hello")]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(
        miss.header("x-echo"),
        Some("hello"),
        "custom request header forwarded"
    );
    assert_eq!(origin.last().2["x-req"], "hello");
    let hit = h.until_hit("/page").await;
    assert_hit(hit.cache_status());
    assert_eq!(hit.body, miss.body);
    for name in [
        "content-type",
        "cache-control",
        "etag",
        "x-custom",
        "x-echo",
    ] {
        assert_eq!(hit.headers.get(name), miss.headers.get(name), "{name}");
    }
    let multi: Vec<_> = hit.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["1", "2"]);
    assert_eq!(origin.calls_to("/page"), 1);
    // no-store responses are never stored.
    h.get("/no-store").await;
    let again = h.get("/no-store").await;
    assert_eq!(origin.calls_to("/no-store"), 2);
    assert_not_hit(again.cache_status());
    // §5.2.2.4, §5.2.2.7: fields a qualified private / no-cache names are not stored.
    let fields = h.get("/fields").await;
    assert_eq!(
        fields.header("x-user"),
        Some("alice"),
        "the origin's answer is whole"
    );
    let hit = h.until_hit("/fields").await;
    assert_eq!((hit.header("x-user"), hit.header("x-token")), (None, None));
    // The tag header is the cache's; it is never sent on.
    assert_eq!(h.get("/tagged").await.header("surrogate-key"), None);
    assert_eq!(h.until_hit("/tagged").await.header("surrogate-key"), None);
}

#[tokio::test]
async fn rfc9111_4_2_freshness_heuristics_and_age() {
    let h = Harness::start().await;
    // Expires − Date: fresh for a minute.
    h.get("/expires").await;
    assert_hit(h.until_hit("/expires").await.cache_status());
    assert_eq!(h.origin.calls_to("/expires"), 1);
    // §4.2.2: heuristic freshness from an old Last-Modified.
    h.get("/old").await;
    assert_hit(h.until_hit("/old").await.cache_status());
    // §4.2.3: the origin's Age counts and is carried on.
    h.get("/aged").await;
    let aged = h.until_hit("/aged").await;
    let age: u64 = aged.header("age").unwrap().parse().unwrap();
    assert!((30..=33).contains(&age), "age {age}");
    // Nothing that makes it fresh, no validator: never reused.
    h.get("/plain").await;
    h.get("/plain").await;
    assert_eq!(h.origin.calls_to("/plain"), 2);
    assert!(!h.cached("/plain").await);
}

#[tokio::test]
async fn rfc9110_13_and_rfc9111_4_3_conditionals_and_revalidation() {
    let h = Harness::start().await;
    let origin = &h.origin;
    let miss = h.get("/page").await;
    h.until_hit("/page").await;
    // A client's conditional is answered from the cache.
    let not_modified = h.send("GET", "/page", &[("if-none-match", "\"p1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls_to("/page"), 1);
    // A client demanding a fresh copy is never answered from the cache: the proxy
    // revalidates, the origin's 304 refreshes the entry, the client gets the full body.
    let revalidated = h
        .send("GET", "/page", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(origin.calls_to("/page"), 2);
    assert_eq!(origin.last().2["if-none-match"], "\"p1\"");
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (StatusCode::OK, miss.body.as_str())
    );
    assert_eq!(
        revalidated.cache_status(),
        "tower-memcache; fwd=request; fwd-status=304"
    );
}

/// RFC 9111 §4.3.4: a 304 to the proxy's own `If-None-Match: "r1"` naming `"r2"` refreshes
/// nothing. The client, who asked without conditions, gets the origin's whole answer to
/// its request sent again without the proxy's validator (not the stored "r1" body under
/// "r2", not a 304, not a 502).
#[tokio::test]
async fn rfc9111_4_3_4_a_304_for_another_representation_is_asked_again() {
    let h = Harness::start().await;
    let first = h.get("/redeployed").await;
    h.until_stored("/redeployed", &[]).await;
    let calls = h.origin.calls_to("/redeployed");
    let answer = h.get("/redeployed").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_ne!(answer.body, first.body);
    assert_eq!(answer.header("etag"), Some("\"r2\""));
    assert_eq!(h.origin.calls_to("/redeployed"), calls + 2);
    assert!(!h.origin.last().2.contains_key("if-none-match"));
    assert_eq!(
        answer.cache_status(),
        "tower-memcache; fwd=stale; fwd-status=200"
    );
}

#[tokio::test]
async fn rfc9111_5_2_1_request_directives() {
    let h = Harness::start().await;
    // only-if-cached on a miss: 504, the origin is not asked.
    assert!(!h.cached("/page").await);
    assert_eq!(h.origin.calls_to("/page"), 0);
    h.get("/page").await;
    h.until_hit("/page").await;
    assert!(h.cached("/page").await);
    // max-age=0: the origin is asked (with the stored validator).
    h.send("GET", "/page", &[("cache-control", "max-age=0")])
        .await;
    assert_eq!(h.origin.calls_to("/page"), 2);
    assert_eq!(h.origin.last().2["if-none-match"], "\"p1\"");
}

#[tokio::test]
async fn rfc9111_4_1_vary_variants_coexist() {
    let h = Harness::start().await;
    for lang in ["de", "en"] {
        h.send("GET", "/vary", &[("accept-language", lang)]).await;
    }
    for lang in ["de", "en"] {
        h.until_stored("/vary", &[("accept-language", lang)]).await;
    }
    for lang in ["de", "en"] {
        let hit = h.send("GET", "/vary", &[("accept-language", lang)]).await;
        assert_eq!(hit.cache_status(), "tower-memcache; hit", "{lang}");
    }
    assert_eq!(h.origin.calls_to("/vary"), 2);
    let other = h.send("GET", "/vary", &[("accept-language", "fr")]).await;
    assert!(
        other.cache_status().contains("fwd=vary-miss"),
        "{}",
        other.cache_status()
    );
}

#[tokio::test]
async fn rfc9111_4_4_unsafe_methods_are_forwarded_and_invalidate() {
    let h = Harness::start().await;
    let origin = &h.origin;
    h.get("/page").await;
    h.until_hit("/page").await;
    // Unknown methods go to the origin untouched, with their headers.
    let custom = h.send("REINDEX", "/page", &[("x-req", "m")]).await;
    assert_eq!(
        custom.body,
        format!("REINDEX /page #{}", origin.counter.load(Ordering::SeqCst))
    );
    assert_eq!(origin.last().0.as_str(), "REINDEX");
    assert_eq!(origin.last().2["x-req"], "m");
    assert_eq!(custom.cache_status(), "tower-memcache; fwd=method");
    // … and, being unsafe and successful, invalidate the page (§4.4).
    let after = h
        .send("GET", "/page", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(after.status, StatusCode::GATEWAY_TIMEOUT);
    // POST is forwarded, never answered from the cache.
    h.until_hit("/page").await;
    let calls = origin.calls_to("/page");
    let post = h.send("POST", "/page", &[]).await;
    assert!(post.body.starts_with("POST /page"));
    assert_eq!(origin.calls_to("/page"), calls + 1);
    assert!(!h.cached("/page").await, "the POST invalidated it too");
}

#[tokio::test]
async fn rfc5861_3_stale_while_revalidate() {
    let h = Harness::start().await;
    let first = h.get("/swr").await;
    h.until_stored("/swr", &[]).await;
    // Stale at once: served from the cache while the origin is asked in the background.
    let stale = h.get("/swr").await;
    assert_eq!(stale.body, first.body);
    assert_stale_hit(stale.cache_status());
    let deadline = Instant::now() + Duration::from_secs(3);
    while h.origin.calls_to("/swr") < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The refreshed copy answers next.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = h.get("/swr").await;
        if answer.body != first.body {
            assert!(
                answer.cache_status().contains("hit"),
                "{}",
                answer.cache_status()
            );
            break;
        }
        assert!(Instant::now() < deadline, "the refresh was not stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rfc5861_4_stale_if_error_and_rfc9111_4_2_4_must_revalidate() {
    let mut h = Harness::start().await;
    let first = h.get("/sie").await;
    h.get("/must").await;
    h.until_stored("/sie", &[]).await;
    // (must-revalidate forbids even max-stale, so its store cannot be observed this way;
    // it was sent after /sie's and lands as fast.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Stopping the origin task closes its connections too: the proxy's requests fail.
    h.origin_task.abort();
    let _ = (&mut h.origin_task).await;
    // stale-if-error: with the origin gone, the proxy's 502 gives way to the stale entry.
    let fallback = h.get("/sie").await;
    assert_eq!(
        (fallback.status, fallback.body.as_str()),
        (StatusCode::OK, first.body.as_str())
    );
    assert!(
        fallback.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        fallback.cache_status()
    );
    // must-revalidate: a stale entry is never served; the unreachable origin gives 504.
    let strict = h.get("/must").await;
    assert_eq!(strict.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        strict.cache_status().contains("detail=must-revalidate"),
        "{}",
        strict.cache_status()
    );
}

#[tokio::test]
async fn rfc9111_4_2_4_stale_served_when_the_origin_disconnects() {
    let mut h = Harness::start().await;
    let first = h.get("/gone").await;
    h.get("/must").await;
    h.until_stored("/gone", &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The origin reachable: a stale entry is revalidated, not served.
    let fetched = h.get("/gone").await;
    assert!(
        !fetched.cache_status().contains("hit"),
        "{}",
        fetched.cache_status()
    );
    h.until_stored("/gone", &[]).await;
    h.origin_task.abort();
    let _ = (&mut h.origin_task).await;
    let stale = h.get("/gone").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(stale.body.starts_with("GET /gone #"), "{}", stale.body);
    assert_ne!(stale.body, "");
    assert!(
        stale.cache_status().ends_with("detail=origin-unreachable"),
        "{}",
        stale.cache_status()
    );
    let _ = first;
    // must-revalidate: never stale, 504.
    let strict = h.get("/must").await;
    assert_eq!(strict.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn stale_if_unreachable_can_be_turned_off_in_the_proxy() {
    let mut h = Harness::start_with(&["--stale-if-unreachable", "0"]).await;
    h.get("/gone").await;
    h.until_stored("/gone", &[]).await;
    h.origin_task.abort();
    let _ = (&mut h.origin_task).await;
    let answer = h.get("/gone").await;
    assert_eq!(
        answer.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        answer.cache_status()
    );
}

/// A client with a fresh connection per request, so that requests reach the proxy on
/// new connections, which the kernel spreads over the per-thread listeners.
fn one_shot_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

#[tokio::test]
async fn runtimes_per_thread_serve_one_cache() {
    let origin = Origin::default();
    let (origin_addr, _origin_task) = start_origin(origin.clone()).await;
    // No --memcache: the threads must share the one in-process store, or hits on the
    // threads that did not store the entry would be misses.
    let proxy = start_proxy(origin_addr, &["--threads", "3", "--runtime", "per-thread"]);
    let client = one_shot_client();
    let first = send(&client, &proxy, "GET", "/page", &[]).await;
    until_hit(&client, &proxy, "/page").await;
    // 24 connections over 3 sockets: all on the storing thread has odds of 3⁻²³.
    for _ in 0..24 {
        let answer = send(&client, &proxy, "GET", "/page", &[]).await;
        assert_hit(answer.cache_status());
        assert_eq!(answer.body, first.body);
    }
    assert_eq!(origin.calls_to("/page"), 1);
}

/// SIGINT: the proxy stops accepting, lets the request in progress finish, and exits
/// cleanly, in both runtime modes.
#[cfg(unix)]
#[tokio::test]
async fn interrupt_finishes_open_requests_then_exits() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    for runtime in ["per-thread", "shared"] {
        let origin = Origin::default();
        let (origin_addr, _origin_task) = start_origin(origin.clone()).await;
        let mut proxy = start_proxy(origin_addr, &["--threads", "2", "--runtime", runtime]);
        let client = one_shot_client();
        let slow = tokio::spawn({
            let client = client.clone();
            let uri = format!("http://{}/slow", proxy.addr);
            async move {
                let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                let response = client.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            }
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while origin.calls_to("/slow") == 0 {
            assert!(
                Instant::now() < deadline,
                "{runtime}: /slow never reached the origin"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
        kill(pid, Signal::SIGINT).unwrap();
        let (status, body) = slow.await.unwrap().expect("the open request was cut off");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"GET /slow #1"[..]),
            "{runtime}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(exit) = proxy.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "{runtime}: the proxy did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(exit.success(), "{runtime}: {exit}");
        assert!(
            std::net::TcpStream::connect(proxy.addr).is_err(),
            "{runtime}: still listening"
        );
    }
}

/// `raw_request` on a blocking thread, so the origin on this runtime keeps answering.
async fn raw(proxy: &Proxy, head: String) -> (u16, String) {
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || raw_request(addr, &head))
        .await
        .unwrap()
}

/// RFC 9112 §3.2: a Host that is not `host[:port]` is refused before the cache sees it.
/// Keyed as text, `GET /b` with `Host: 127.0.0.1:PORT/a` would be stored as `/a/b`.
#[tokio::test]
async fn rfc9112_3_2_a_host_with_a_path_is_refused_and_poisons_nothing() {
    for args in [&[][..], &["--upstream-host"][..]] {
        let h = Harness::start_with(args).await;
        let host = h.proxy.addr;
        let (status, response) =
            raw(&h.proxy, format!("GET /b HTTP/1.1\r\nHost: {host}/a\r\n")).await;
        assert_eq!(status, 400, "{args:?}: {response}");
        assert_eq!(h.origin.calls_to("/b"), 0, "{args:?}: reached the origin");
        // /a/b is its own page, from the origin, then from the cache.
        let page = h.get("/a/b").await;
        assert!(
            page.body.starts_with("GET /a/b #"),
            "{args:?}: {}",
            page.body
        );
        assert_not_hit(page.cache_status());
        assert_eq!(h.until_hit("/a/b").await.body, page.body, "{args:?}");
        // A valid request for /b is served as usual.
        let b = h.get("/b").await;
        assert!(b.body.starts_with("GET /b #"), "{args:?}: {}", b.body);
    }
}

#[tokio::test]
async fn rfc9112_3_2_malformed_or_ambiguous_targets_get_400() {
    let h = Harness::start().await;
    let host = h.proxy.addr;
    let port = host.port();
    for head in [
        format!("GET /b HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n"),
        format!("GET /b HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n"),
        format!("GET /b HTTP/1.1\r\nHost: user@{host}\r\n"),
        format!("GET /b HTTP/1.1\r\nHost: {host}:{port}\r\n"),
        format!("GET /b HTTP/1.1\r\nHost: {host}\\a\r\n"),
        // HTTP/1.1 without Host.
        "GET /b HTTP/1.1\r\n".to_string(),
        // Absolute form: Host must agree, the scheme must be http, no user information.
        format!("GET http://evil.example/b HTTP/1.1\r\nHost: {host}\r\n"),
        format!("GET https://{host}/b HTTP/1.1\r\nHost: {host}\r\n"),
        format!("GET http://user@{host}/b HTTP/1.1\r\nHost: {host}\r\n"),
    ] {
        let (status, response) = raw(&h.proxy, head.clone()).await;
        assert_eq!(status, 400, "{head:?}: {response}");
    }
    assert_eq!(h.origin.calls_to("/b"), 0);
    // What is valid still passes: absolute form that agrees with Host, HTTP/1.0 without
    // Host, a host name in capitals.
    for head in [
        format!("GET http://{host}/b HTTP/1.1\r\nHost: {host}\r\n"),
        "GET /b HTTP/1.0\r\n".to_string(),
        format!("GET /b HTTP/1.1\r\nHost: LOCALHOST:{port}\r\n"),
    ] {
        let (status, response) = raw(&h.proxy, head.clone()).await;
        assert_eq!(status, 200, "{head:?}: {response}");
    }
}

/// Defect 7: forwarding headers a client sends never reach the origin; the proxy's own do.
/// An origin that reflects them would otherwise have one client's values served to all.
#[tokio::test]
async fn forwarding_headers_are_the_proxys_own() {
    for args in [&[][..], &["--upstream-host"][..]] {
        let h = Harness::start_with(args).await;
        let host = h.proxy.addr.to_string();
        let evil = [
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-port", "6666"),
            ("x-forwarded-prefix", "/evil"),
            ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
            ("x-http-method-override", "POST"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/evil"),
            ("x-rewrite-url", "/evil"),
        ];
        let first = h.send("GET", "/reflect", &evil).await;
        for bad in ["evil", "6.6.6.6", "https", "POST"] {
            assert!(!first.body.contains(bad), "{args:?}: {}", first.body);
        }
        let own = format!(
            "\nx-forwarded-host: {host}\nx-forwarded-proto: http\nx-forwarded-for: 127.0.0.1\n\
             forwarded: for=127.0.0.1;host=\"{host}\";proto=http\n\
             x-http-method-override: -\nx-original-url: -"
        );
        assert!(first.body.ends_with(&own), "{args:?}: {}", first.body);
        let seen = h.origin.last().2;
        for (name, _) in evil {
            if ![
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-forwarded-for",
                "forwarded",
            ]
            .contains(&name)
            {
                assert_eq!(seen.get(name), None, "{args:?}: {name}");
            }
        }
        let expected_host = if args.is_empty() {
            host.clone()
        } else {
            h.origin_addr.to_string()
        };
        assert_eq!(seen["host"], expected_host.as_str(), "{args:?}");
        // A clean client's hit is the page made with the proxy's values.
        let hit = h.until_hit("/reflect").await;
        assert_hit(hit.cache_status());
        assert_eq!(hit.body, first.body, "{args:?}");
        // Other methods keep their override: their answers are never stored.
        h.send("POST", "/reflect", &[("x-http-method-override", "PUT")])
            .await;
        assert_eq!(h.origin.last().2["x-http-method-override"], "PUT");
    }
}

/// RFC 9110 §9.3.8 and §7.6.2: TRACE is refused, as nginx refuses it (405): forwarded, it
/// echoed the request as the origin got it, cookies and the proxy's own forwarding fields
/// included, to whoever sent it (cross-site tracing). An OPTIONS with `Max-Forwards: 0` is
/// answered by the proxy, its final recipient; with more, it goes on one lower.
#[tokio::test]
async fn rfc9110_7_6_2_trace_is_refused_and_max_forwards_is_obeyed() {
    let harness = Harness::start().await;
    // In any case too: many servers upper-case the method before routing.
    for method in ["TRACE", "trace", "Trace"] {
        let answer = harness
            .send(method, "/page", &[("cookie", "session=secret")])
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert!(!answer.body.contains("secret"), "{}", answer.body);
        assert!(answer.headers.contains_key("allow"));
        assert_eq!(
            harness.origin.calls_to("/page"),
            0,
            "{method} was forwarded"
        );
    }

    let answer = harness
        .send("OPTIONS", "/page", &[("max-forwards", "0")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers.contains_key("allow"));
    assert_eq!(
        harness.origin.calls_to("/page"),
        0,
        "Max-Forwards: 0 was forwarded"
    );

    let answer = harness
        .send("OPTIONS", "/page", &[("max-forwards", "3")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let (method, _, headers) = harness.origin.last();
    assert_eq!(method, Method::OPTIONS);
    assert_eq!(headers.get("max-forwards").unwrap(), "2");

    // Without the field, or with another method, nothing changes.
    harness.send("OPTIONS", "/page", &[]).await;
    let (_, _, headers) = harness.origin.last();
    assert!(headers.get("max-forwards").is_none());
    harness
        .send("GET", "/other", &[("max-forwards", "0")])
        .await;
    assert_eq!(harness.origin.calls_to("/other"), 1);
}

/// A client's malformed chunked upload (a chunk-size line that is no hex number) is the
/// client's fault. It was answered `502 Bad Gateway`, marked as the origin unreachable
/// and logged as a warning against the upstream: any client could fill the log and the
/// operator's error figures with origin failures that never were. It is a `400` now;
/// a well-formed upload on the same proxy still reaches the origin.
#[tokio::test]
async fn a_malformed_request_body_is_the_clients_400_not_the_origins_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let _origin = support::origin::serve_http1(listener, |request: Request<Incoming>| async {
        // Reads the whole upload before answering, as an upload handler does.
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::from_static(b"broken"),
        };
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    });
    let proxy = start_proxy(origin, &[]);
    let addr = proxy.addr;
    let upload = |body: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: app.example\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    let good = upload("5\r\nhello\r\n0\r\n\r\n").await;
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    assert!(good.ends_with("hello"), "{good}");
    let bad = upload("5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
}

/// A `Connection` line from the origin that holds obs-text (a byte past ASCII, allowed in
/// a field value) was skipped whole, so the fields its other members named passed as
/// end-to-end ones: `Connection: X-Session, café` and Bob's `X-Session` went to the
/// client and into the cache, and every later client was handed Bob's session field.
/// Each member counts on its own now; the page is still stored and served, without it.
#[tokio::test]
async fn a_connection_line_with_obs_text_still_strips_the_fields_it_names() {
    let mut answer = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
        Connection: X-Session, caf"
        .to_vec();
    answer.extend_from_slice(b"\xe9\r\nX-Session: bob-secret\r\nContent-Length: 4\r\n\r\npage");
    let origin = support::origin::canned(answer, 4);
    let proxy = start_proxy(origin, &[]);
    let head = "GET /account HTTP/1.1\r\nHost: app.example\r\n";
    let (status, first) = raw_request(proxy.addr, head);
    assert_eq!(status, 200, "{first}");
    assert!(first.ends_with("page"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("x-session"), "{first}");
    // Stored in the background: asked until the cache answers.
    let mut later = String::new();
    support::eventually("the page is stored", || {
        later = raw_request(proxy.addr, head).1;
        later.to_ascii_lowercase().contains("; hit")
    })
    .await;
    assert!(later.ends_with("page"), "{later}");
    assert!(!later.to_ascii_lowercase().contains("x-session"), "{later}");
}
