//! `examples/reverse_proxy.rs` as users run it: the example binary (built by `cargo test`)
//! in front of a small HTTP origin this test starts, spoken to over loopback HTTP.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
            _ => {}
        }
        Ok(response)
    }
}

async fn start_origin(origin: Origin) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the task closes them too (an origin
        // that is really gone, not one that still answers on kept-alive connections).
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let origin = origin.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| origin.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The example binary, killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_binary() -> PathBuf {
    // target/<profile>/deps/reverse_proxy-<hash> → target/<profile>/examples/reverse_proxy
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir
        .join("examples")
        .join(format!("reverse_proxy{}", std::env::consts::EXE_SUFFIX))
}

fn start_proxy(upstream: SocketAddr) -> Proxy {
    let binary = example_binary();
    assert!(
        binary.exists(),
        "{} not built (cargo test builds examples)",
        binary.display()
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let child = Command::new(binary)
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &format!("http://{upstream}"),
            "--threads",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = Proxy { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
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

#[tokio::test]
async fn reverse_proxy_is_a_correct_shared_cache() {
    let origin = Origin::default();
    let (origin_addr, origin_task) = start_origin(origin.clone()).await;
    let proxy = start_proxy(origin_addr);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    // A miss forwards custom request headers; the hit replays every end-to-end header.
    let miss = send(&client, &proxy, "GET", "/page", &[("x-req", "hello")]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(
        miss.header("x-echo"),
        Some("hello"),
        "custom request header forwarded"
    );
    assert_eq!(origin.last().2["x-req"], "hello");
    let hit = until_hit(&client, &proxy, "/page").await;
    assert_eq!(hit.cache_status(), "tower-memcache; hit");
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

    // A client's conditional is answered from the cache.
    let not_modified = send(
        &client,
        &proxy,
        "GET",
        "/page",
        &[("if-none-match", "\"p1\"")],
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls_to("/page"), 1);

    // A client demanding a fresh copy is never answered from the cache: the proxy
    // revalidates, the origin's 304 refreshes the entry, the client gets the full body.
    let revalidated = send(
        &client,
        &proxy,
        "GET",
        "/page",
        &[("cache-control", "no-cache")],
    )
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

    // Unknown methods go to the origin untouched, with their headers.
    let custom = send(&client, &proxy, "REINDEX", "/page", &[("x-req", "m")]).await;
    assert_eq!(
        custom.body,
        format!("REINDEX /page #{}", origin.counter.load(Ordering::SeqCst))
    );
    assert_eq!(origin.last().0.as_str(), "REINDEX");
    assert_eq!(origin.last().2["x-req"], "m");
    assert_eq!(custom.cache_status(), "tower-memcache; fwd=method");
    // … and, being unsafe and successful, invalidate the page (§4.4).
    let after = send(
        &client,
        &proxy,
        "GET",
        "/page",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(after.status, StatusCode::GATEWAY_TIMEOUT);

    // POST is forwarded, never answered from the cache.
    until_hit(&client, &proxy, "/page").await;
    let calls = origin.calls_to("/page");
    let post = send(&client, &proxy, "POST", "/page", &[]).await;
    assert!(post.body.starts_with("POST /page"));
    assert_eq!(origin.calls_to("/page"), calls + 1);

    // no-store responses are never stored.
    send(&client, &proxy, "GET", "/no-store", &[]).await;
    let again = send(&client, &proxy, "GET", "/no-store", &[]).await;
    assert_eq!(origin.calls_to("/no-store"), 2);
    assert_ne!(again.cache_status(), "tower-memcache; hit");

    // stale-if-error: with the origin gone, the proxy's 502 gives way to the stale entry.
    let first = send(&client, &proxy, "GET", "/sie", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    origin_task.abort();
    let _ = origin_task.await;
    let fallback = send(&client, &proxy, "GET", "/sie", &[]).await;
    assert_eq!(
        (fallback.status, fallback.body.as_str()),
        (StatusCode::OK, first.body.as_str())
    );
    assert!(
        fallback.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        fallback.cache_status()
    );
}
