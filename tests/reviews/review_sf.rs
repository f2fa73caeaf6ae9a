//! Review SF: an adversarial second look at reviews SB and SD.
//!
//! SB ended a request body's upload once the origin's answer to it had ended (against the
//! "pause-based" desync: the rest of a paused body, sent after an early answer, read by
//! the origin as a request of its own). Here: an early answer the client does not read
//! (so that it never ends at the proxy) while the client sends the rest; an upload cut
//! by the proxy's own `--upstream-timeout`; an origin's early 413 whose client sends its
//! body and a pipelined request after it (HTTP/1.1, `Content-Length` and chunked); and
//! the legitimate uploads that must still go through (`Expect: 100-continue`); and a
//! body sent on the proxy's own `100 Continue` to an origin that declined it.
//!
//! SD read route rules as Tomcat drops `;` parameters and let a whole-segment `Prefix`
//! cover a `.format` suffix: here, whether a lenient reading ever gives a page a longer
//! lifetime than the rules as written (it did, through the format suffix). The cost of
//! the readings (their count and size, whatever the path holds) is bounded by a unit test
//! in `cache::policy::route`.
//!
//! The origin is a raw TCP server that reads request heads and records them; an early
//! answer is written by a task of its own while the connection reads on (an origin with
//! a write queue, as Netty's or Node's), so that what the origin reads after it is seen
//! whatever the answer's size.

use crate::support;
use support::desync::{Heads, NotingOrigin, SMUGGLED, get, own_page, path_of, post, read_until};
use support::h2_frames::{DATA, literal_block};

use std::sync::Arc;
use std::time::Duration;

use support::h2_frames::{
    END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame, status_of_stream_1,
};
use support::proxy::start_proxy;
use support::raw_http::{header_of, next_head, skip_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How the origin answers a request it does not answer with a page of its own.
#[derive(Clone, Copy)]
struct Early {
    /// How long it waits (its body read timeout) before it answers and reads on.
    pause: Duration,
    status: &'static str,
    /// The answer's body size (`Content-Length`).
    size: usize,
    /// Whether it reads (and drops) the body after answering, as a well-behaved origin
    /// that answered early does; if not, what follows the head is its next request.
    drains: bool,
}

type Script = dyn Fn(&str) -> Option<Early> + Send + Sync;

/// A raw origin answering as `script` says (see [`serve`]), noting every request head it
/// read, in order.
async fn raw_origin(
    script: impl Fn(&str) -> Option<Early> + Send + Sync + 'static,
) -> NotingOrigin {
    let script: Arc<Script> = Arc::new(script);
    NotingOrigin::start(move |stream, heads| serve(stream, Arc::clone(&script), heads)).await
}

async fn serve(stream: TcpStream, script: Arc<Script>, heads: Heads) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut reader, &mut buffer).await else {
            return;
        };
        heads.push(head.clone());
        match script(&head) {
            None => {
                if !skip_body(&mut reader, &mut buffer, &head).await {
                    return;
                }
                let answer = own_page(&head);
                if writer
                    .lock()
                    .await
                    .write_all(answer.as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(early) => {
                tokio::time::sleep(early.pause).await;
                // The answer goes out from a task of its own, before any later one; the
                // connection reads on.
                let mut writer = Arc::clone(&writer).lock_owned().await;
                tokio::spawn(async move {
                    let head = format!(
                        "HTTP/1.1 {}\r\nContent-Length: {}\r\n\r\n",
                        early.status, early.size
                    );
                    if writer.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![b'e'; 64 * 1024];
                    let mut left = early.size;
                    while left > 0 {
                        let n = left.min(block.len());
                        if writer.write_all(&block[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
                if early.drains && !skip_body(&mut reader, &mut buffer, &head).await {
                    return;
                }
            }
        }
    }
}

/// The size of an early answer no client-side buffer holds whole (the client's small
/// receive buffer, the proxy's send buffer and its write queue).
const LONG: usize = 8 << 20;

/// The pause-based desync with an early answer the client does not read. The origin
/// answers a paused upload early (its body read timeout) with a long page and reads on;
/// the client reads the answer's head, its cue, and no more, so that the answer never
/// ends at the proxy (the proxy reads an origin's answer only as fast as its client
/// takes it), and sends the rest of its body, a whole request. SB's guard waits for the
/// answer's end: the rest went on to the origin, read there as a request the proxy
/// never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_its_client_does_not_read_lets_no_more_of_the_body_through() {
    let origin = raw_origin(|head| {
        (path_of(head) == "/pause").then_some(Early {
            pause: Duration::from_millis(300),
            status: "408 Request Timeout",
            size: LONG,
            drains: false,
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(proxy.addr).await.unwrap();
    client
        .write_all(post("/pause", SMUGGLED.len() + 1, "x").as_bytes())
        .await
        .unwrap();
    let answered = read_until(&mut client, "\r\n\r\n").await;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered:?}");
    let _ = client.write_all(SMUGGLED.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        origin.heads.smuggled(),
        Vec::<String>::new(),
        "the rest of the body reached the origin as a request"
    );
    // Once the client takes the whole answer, the held upload ends with it: the
    // connection then answers a next request with that request's page, or closes.
    let mut body = answered.len() - answered.find("\r\n\r\n").unwrap() - 4;
    let mut chunk = vec![0u8; 64 * 1024];
    while body < LONG {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body += n,
            other => panic!("the answer stopped after {body} bytes: {other:?}"),
        }
    }
    assert_eq!(body, LONG);
    let after = "GET /after HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    let _ = client.write_all(after.as_bytes()).await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(ended.is_ok(), "the connection hung: {rest:?}");
    assert!(
        rest.is_empty() || (rest.starts_with("HTTP/1.1 200") && rest.ends_with("page /after")),
        "{rest:?}"
    );
    // Nothing is held for that client: others are answered.
    for path in ["/after1", "/after2"] {
        assert_eq!(get(&proxy, path).await, (200, format!("page {path}")));
    }
    assert_eq!(origin.heads.smuggled(), Vec::<String>::new());
}

/// The same from an HTTP/2 client, which holds the answer back by flow control (it never
/// opens its window past the first 64 KiB) rather than by not reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_early_answer_held_back_by_flow_control_lets_no_more_of_the_body_through() {
    let origin = raw_origin(|head| {
        (path_of(head) == "/pause").then_some(Early {
            pause: Duration::from_millis(300),
            status: "408 Request Timeout",
            size: LONG,
            drains: false,
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let length = (SMUGGLED.len() + 1).to_string();
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"shop.example"),
        (b":path", b"/pause"),
        (b"content-length", length.as_bytes()),
    ];
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
    bytes.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, &literal_block(&fields)));
    bytes.extend_from_slice(&frame(DATA, 0, 1, b"x"));
    stream.write_all(&bytes).await.unwrap();
    assert!(
        status_of_stream_1(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "no answer"
    );
    let _ = stream
        .write_all(&frame(DATA, END_STREAM, 1, SMUGGLED.as_bytes()))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        origin.heads.smuggled(),
        Vec::<String>::new(),
        "the rest of the body reached the origin as a request"
    );
}

/// An upload the proxy cuts itself (`--upstream-timeout`, the client paused: 408): the
/// rest of the body, sent once the 408 came, never reaches the origin, which answers
/// late and reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_proxy_timed_out_lets_no_more_of_the_body_through() {
    let origin = raw_origin(|head| {
        (path_of(head) == "/slow").then_some(Early {
            pause: Duration::from_millis(1500),
            status: "200 OK",
            size: 4,
            drains: false,
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, &["--upstream-timeout", "500ms"]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(post("/slow", SMUGGLED.len() + 1, "x").as_bytes())
        .await
        .unwrap();
    let answered = read_until(&mut client, "\r\n\r\n").await;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered:?}");
    let _ = client.write_all(SMUGGLED.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(origin.heads.smuggled(), Vec::<String>::new());
    for path in ["/after1", "/after2"] {
        assert_eq!(get(&proxy, path).await, (200, format!("page {path}")));
    }
}

/// An origin's early 413 (it answers at once, then reads the body and drops it): its
/// client, told before it sent the body, sends it anyway with a request pipelined
/// behind, `Content-Length` framed or chunked. The client gets the whole 413; the body
/// (a whole request) is never read as a request, on the client's connection or the
/// origin's; the pipelined request is answered its own page or the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_an_early_413_is_never_read_as_a_request() {
    let origin = raw_origin(|head| {
        (path_of(head) == "/upload").then_some(Early {
            pause: Duration::ZERO,
            status: "413 Content Too Large",
            size: 5,
            drains: true,
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let heads = [
        (
            format!(
                "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\n\r\n",
                SMUGGLED.len()
            ),
            SMUGGLED.to_string(),
        ),
        (
            "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string(),
            chunked,
        ),
    ];
    for (head, body) in &heads {
        for pause in [false, true] {
            let mut client = TcpStream::connect(proxy.addr).await.unwrap();
            client.write_all(head.as_bytes()).await.unwrap();
            let mut seen = String::new();
            if pause {
                seen = read_until(&mut client, "eeeee").await;
                assert!(seen.starts_with("HTTP/1.1 413"), "{seen:?}");
            }
            let after = "GET /after HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
            let _ = client.write_all(format!("{body}{after}").as_bytes()).await;
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
            seen.push_str(&String::from_utf8_lossy(&rest));
            assert!(seen.starts_with("HTTP/1.1 413"), "{seen:?}");
            assert!(seen.contains("\r\n\r\neeeee"), "{seen:?}");
            assert!(!seen.contains("page /smuggled"), "{seen:?}");
            let answers = seen.matches("HTTP/1.1 ").count();
            assert!(
                answers == 1 || (answers == 2 && seen.ends_with("page /after")),
                "{head:?} then its body (after the answer: {pause}): {seen:?}"
            );
            assert_eq!(origin.heads.smuggled(), Vec::<String>::new(), "{head:?}");
        }
    }
}

/// `Expect: 100-continue`: the client waits for the proxy's 100 before it sends its
/// body, and the origin (hyper's, which reads the body before it answers) gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_waits_for_100_continue_reaches_the_origin_whole() {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _origin = support::origin::serve_http1(listener, |request: http::Request<_>| async move {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let answer = format!("got {}", String::from_utf8_lossy(&body));
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(answer),
        )))
    });
    let proxy = start_proxy(addr, &[]);
    for chunked in [false, true] {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let (framing, body) = if chunked {
            ("Transfer-Encoding: chunked", "5\r\nhello\r\n0\r\n\r\n")
        } else {
            ("Content-Length: 5", "hello")
        };
        client
            .write_all(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: shop.example\r\n{framing}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let continued = read_until(&mut client, "\r\n\r\n").await;
        assert!(continued.starts_with("HTTP/1.1 100"), "{continued:?}");
        client.write_all(body.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("HTTP/1.1 200"), "{rest:?}");
        assert!(rest.ends_with("got hello"), "{rest:?}");
    }
}

/// `Expect: 100-continue`, its body sent on the proxy's word: the proxy answers
/// `100 Continue` itself (hyper does, once the upload starts), so the client sends its
/// body at once. An origin that saw the expectation and answered with a final status in
/// place of a 100 (a 401 after its check of the credentials) takes it that no body comes,
/// and reads what follows as its next request: the body, a whole request the proxy never
/// saw. The expectation was the proxy's to meet, and it met it: the origin is sent none
/// (as nginx clears `Expect` towards its upstreams) and reads the body as a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_on_the_proxys_100_continue_is_never_read_as_a_request() {
    let origin = raw_origin(|head| {
        let expects = header_of(head, "expect")
            .is_some_and(|value| value.eq_ignore_ascii_case("100-continue"));
        (path_of(head) == "/upload" && expects).then_some(Early {
            pause: Duration::from_millis(200),
            status: "401 Unauthorized",
            size: 5,
            drains: false,
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for chunked in [false, true] {
        let (framing, body) = if chunked {
            (
                "Transfer-Encoding: chunked".to_string(),
                format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            )
        } else {
            (
                format!("Content-Length: {}", SMUGGLED.len()),
                SMUGGLED.to_string(),
            )
        };
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client
            .write_all(
                format!(
                    "POST /upload HTTP/1.1\r\nHost: shop.example\r\n{framing}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let continued = read_until(&mut client, "\r\n\r\n").await;
        assert!(continued.starts_with("HTTP/1.1 100"), "{continued:?}");
        let _ = client.write_all(body.as_bytes()).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("page /smuggled"), "{rest:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            origin.heads.smuggled(),
            Vec::<String>::new(),
            "chunked: {chunked}: the body reached the origin as a request"
        );
    }
}

/// An origin that reads paths without case and knows no format suffix (IIS, a Windows
/// file server): `/account/` is the user's own area, `/account/avatars/` a public
/// directory inside it; `/account/avatars.json` is a file of the private area.
fn case_blind_page(path: &str, user: &str) -> String {
    let path = path.to_ascii_lowercase();
    if path.starts_with("/account/avatars/") {
        format!("public {path}")
    } else if path == "/account" || path.starts_with("/account/") {
        format!("{user}'s {path}")
    } else {
        format!("public {path}")
    }
}

/// Review SD's format suffix (`.` ends a segment for a whole-segment `Prefix` rule) held
/// for lifetime rules too, in the lenient origin reading, where the longest prefix
/// decides: with `no_cache(Prefix("/account"))` and a lifetime for the public
/// `/account/avatars/`, `/Account/avatars.json` (a case-blind origin's private
/// `/account/avatars.json`, which the rules as written keep out of the cache) fell
/// under the avatars rule and was stored: a lenient reading gave a lifetime where the
/// rules said none. A format suffix only widens what a `no_cache` rule holds for.
#[tokio::test]
async fn a_format_suffix_gives_no_lifetime_past_a_no_cache_rule() {
    use support::path_origin;
    use tower::Layer;
    use tower_memcache::backend::MemoryBackend;
    use tower_memcache::cache::RouteMatch;

    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(3600))
        .no_cache(RouteMatch::Prefix("/account".into()))
        .route(
            RouteMatch::Prefix("/account/avatars/".into()),
            Duration::from_secs(60),
        );
    let watch = support::Watch::of(&layer);
    let app = layer.layer(path_origin::serving(case_blind_page));
    for spelling in [
        "/account/avatars.json",
        "/Account/avatars.json",
        "/account/Avatars.json",
    ] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("{user}'s /account/avatars.json")
        })
        .await;
    }
    assert_eq!(watch.snapshot().stores, 0);
    // The public directory is still cached, in any case.
    path_origin::assert_each_gets_own(&app, &watch, "/Account/Avatars/a.png", |_| {
        "public /account/avatars/a.png".to_string()
    })
    .await;
    assert_eq!(watch.snapshot().stores, 1);
}
