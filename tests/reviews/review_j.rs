//! Review J: HTTP message framing through `tower-memcache-proxy` and the layer: what an
//! attacker who knows the HTTP desync research ("HTTP Desync Attacks", "Browser-powered
//! desync") would try against a cache, on the origin side (responses framed two ways,
//! cut short, coded, 1xx) and in the request target. Each test fails if the attack works.
//!
//! The origin here is a raw TCP server answering canned bytes per path, so that it can
//! say what hyper-based origins never would (both `Content-Length` and
//! `Transfer-Encoding`, and the like), and records the request heads it was sent.

use crate::support;

use support::desync::{Heads, NotingOrigin, page};
use support::raw_http::{find, next_head};

use support::proxy::{Proxy, start_proxy};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw origin: answers `GET <path>` with the canned bytes for `<path>` (a 404 for
/// others), or for `<path>#range` when the request has a `Range`, keeps the connection
/// open (but closes it after answering a path that starts with `/close`), and remembers
/// every request head.
async fn raw_origin(answers: &[(&str, &[u8])]) -> NotingOrigin {
    let answers: Arc<HashMap<String, Vec<u8>>> = Arc::new(
        answers
            .iter()
            .map(|(path, bytes)| ((*path).to_string(), bytes.to_vec()))
            .collect(),
    );
    NotingOrigin::start(move |stream, heads| serve_raw(stream, Arc::clone(&answers), heads)).await
}

/// One origin connection: each request head (bodies are not expected) gets its path's
/// canned answer.
async fn serve_raw(mut stream: TcpStream, answers: Arc<HashMap<String, Vec<u8>>>, heads: Heads) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        let mut path = head.split(' ').nth(1).unwrap_or("").to_string();
        if head.to_ascii_lowercase().contains("\r\nrange:") {
            path.push_str("#range");
        }
        heads.push(head);
        let answer = answers
            .get(&path)
            .cloned()
            .unwrap_or_else(|| b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        if stream.write_all(&answer).await.is_err() || path.starts_with("/close") {
            return;
        }
    }
}

/// One response read off a client connection by its own framing (`Content-Length` or
/// chunked), as a browser reads it: its head and body.
struct Framed {
    head: String,
    body: Vec<u8>,
}

impl Framed {
    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// A keep-alive client connection to the proxy that reads responses by their framing.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    async fn connect(proxy: &Proxy) -> Self {
        Self {
            stream: TcpStream::connect(proxy.addr).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; `false` at the end of the stream (or after 5 s of nothing).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next response, read by its framing; `None` if the connection ends first.
    /// `head_request`: the response answers a HEAD (no body whatever it says).
    async fn response(&mut self, head_request: bool) -> Option<Framed> {
        let end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..end + 4]).into_owned();
        self.buffer.drain(..end + 4);
        let mut framed = Framed {
            head,
            body: Vec::new(),
        };
        let status = framed.status();
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(framed);
        }
        let chunked = framed
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(at) = find(&self.buffer, b"\r\n") {
                        break at;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                while self.buffer.len() < line_end + 2 + size + 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                framed
                    .body
                    .extend_from_slice(&self.buffer[line_end + 2..line_end + 2 + size]);
                self.buffer.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return Some(framed);
                }
            }
        }
        let length: usize = framed.header("content-length")?.parse().ok()?;
        while self.buffer.len() < length {
            if !self.fill().await {
                return None;
            }
        }
        framed.body = self.buffer.drain(..length).collect();
        Some(framed)
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n")
}

// ---------------------------------------------------------------------------------------
// Origin-side framing.

/// The body an origin sends chunked while also saying `Content-Length: 5`: its first five
/// bytes, then a whole response of the attacker's choosing (a page that reflects what a
/// user uploaded, say). RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length`,
/// and "an intermediary that chooses to forward the message MUST first remove the received
/// Content-Length field".
const SPLIT_BODY: &[u8] =
    b"hello HTTP/1.1 200 OK\r\nContent-Length: 8\r\nCache-Control: no-store\r\n\r\nsmuggled";

fn chunked_with_content_length() -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        SPLIT_BODY.len()
    )
    .into_bytes();
    answer.extend_from_slice(SPLIT_BODY);
    answer.extend_from_slice(b"\r\n0\r\n\r\n");
    answer
}

/// An origin response with both `Content-Length` and `Transfer-Encoding: chunked`: the
/// proxy kept the `Content-Length` when it dropped the hop-by-hop `Transfer-Encoding`.
/// The client of a miss got the first five bytes; and once the whole body was stored (a
/// range request's miss fills the entry in the background), every hit said
/// `Content-Length: 5` and sent the whole body: the rest of it was read by the client as
/// the response to its next request on the connection (response splitting on every
/// keep-alive connection that hit the entry; in a debug build hyper's assertion killed
/// the connection instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_content_length_beside_chunked_never_splits_a_hit() {
    let answer = chunked_with_content_length();
    let range = format!(
        "HTTP/1.1 206 Partial Content\r\nCache-Control: public, max-age=60\r\n\
         Content-Range: bytes 0-1/{}\r\nContent-Length: 2\r\n\r\nhe",
        SPLIT_BODY.len()
    );
    let origin = raw_origin(&[
        ("/split", &answer),
        ("/split#range", range.as_bytes()),
        ("/miss", &answer),
    ])
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut client = Client::connect(&proxy).await;

    // A miss: the body is the one the origin framed.
    client.send(get("/miss").as_bytes()).await;
    let miss = client.response(false).await.expect("a response to /miss");
    assert_eq!(miss.body, SPLIT_BODY, "a miss's body ({})", miss.head);

    // A range request's miss stores the whole in the background.
    client
        .send(b"GET /split HTTP/1.1\r\nHost: shop.example\r\nRange: bytes=0-1\r\n\r\n")
        .await;
    let _ = client
        .response(false)
        .await
        .expect("a response to the range");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = Client::connect(&proxy).await;
    client.send(get("/split").as_bytes()).await;
    client.send(get("/next").as_bytes()).await;
    let hit = client
        .response(false)
        .await
        .expect("a response to /split (the connection was cut)");
    assert!(
        hit.header("cache-status")
            .is_some_and(|s| s.contains("hit")),
        "stored by the range's fill: {}",
        hit.head
    );
    assert_eq!(hit.body, SPLIT_BODY, "a hit's body ({})", hit.head);
    let next = client.response(false).await.expect("a response to /next");
    assert_eq!(
        next.status(),
        404,
        "the next request got the rest of the last body: {:?}",
        next.head
    );
}

/// The same response behind the layer alone: an inner service (a hyper client, say) whose
/// response says `Content-Length: 5` over a body of unknown length that holds more. The
/// entry kept the field and every hit replayed it beside the whole stored body, which a
/// server writes as it is told (hyper trusts the field in release builds): the rest of
/// the body became the next response on the client's connection. Since review TT a body
/// that runs past its `Content-Length` is not stored at all (its own client was framed
/// five bytes of it, or cut off); a hit that still finds such an entry (written before)
/// is framed by its stored body (`stored.rs`'s unit test).
#[tokio::test]
async fn a_hit_is_framed_by_its_stored_body_not_a_stored_content_length() {
    use http_body_util::{BodyExt, StreamBody};
    use tower::{Layer, ServiceExt};

    let layer = support::layer(tower_memcache::backend::MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: http::Request<()>| async {
        let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            http_body::Frame::data(bytes::Bytes::from_static(SPLIT_BODY)),
        )]);
        let response = http::Response::builder()
            .header("cache-control", "public, max-age=60")
            .header("content-length", "5")
            .body(StreamBody::new(frames))
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    }));
    for round in ["miss", "again"] {
        let request = http::Request::get("http://shop.example/split")
            .body(())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let status = parts.headers["cache-status"].to_str().unwrap();
        assert!(!status.contains("hit"), "{round}: {status}");
        assert_eq!(
            body.as_ref(),
            SPLIT_BODY,
            "passed on as the inner service sent it"
        );
        watch.settled().await;
    }
}

/// An origin that stops in the middle of a body (its connection closes before the
/// `Content-Length` is reached, or before the last chunk) sent an incomplete response: it
/// must never be stored as if it were whole, or every later client gets the truncated
/// page (a truncated script or stylesheet breaks a site for an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_origin_is_never_stored() {
    let short_length =
        b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 100\r\n\r\nonly ten b"
            .to_vec();
    let short_chunked = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\n\
        Transfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n"
        .to_vec();
    let origin = raw_origin(&[
        ("/close-length", &short_length),
        ("/close-chunked", &short_chunked),
    ])
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for path in ["/close-length", "/close-chunked"] {
        let mut client = Client::connect(&proxy).await;
        client.send(get(path).as_bytes()).await;
        // The client sees the response fail (its connection cut, or a short body).
        let _ = client.response(false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut client = Client::connect(&proxy).await;
        client
            .send(
                format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nCache-Control: only-if-cached\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        let cached = client.response(false).await.expect("an answer");
        assert_eq!(
            cached.status(),
            504,
            "{path} was stored: {} {:?}",
            cached.head,
            String::from_utf8_lossy(&cached.body)
        );
    }
}

/// A 101 (Switching Protocols: a WebSocket handshake's answer) is no response to keep:
/// what follows it is another protocol on that one connection. With `statuses` covering
/// every code (`100..600`, "store whatever the routes say"), the layer stored it and
/// answered the next GET of the URL, plain or not, with another client's handshake (its
/// `Sec-WebSocket-Accept`), which hyper treats as the end of HTTP on that connection:
/// the page was gone for everyone until the entry expired. Like 206 and 304, a 1xx is
/// never stored, whatever `statuses` lists.
#[tokio::test]
async fn a_websocket_handshake_is_never_replayed_whatever_statuses_allow() {
    use tower::Layer;

    let layer = support::layer(tower_memcache::backend::MemoryBackend::new())
        .statuses(100..600)
        .default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
        let upgrade = request.headers().contains_key("upgrade");
        let response = if upgrade {
            http::Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
        } else {
            http::Response::builder().body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"the chat page",
            )))
        };
        Ok::<_, std::convert::Infallible>(response.unwrap())
    }));
    let handshake = support::send(
        &service,
        http::Method::GET,
        "http://shop.example/ws",
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ],
    )
    .await;
    assert_eq!(handshake.status, 101);
    watch.settled().await;
    let plain = support::send(&service, http::Method::GET, "http://shop.example/ws", &[]).await;
    assert_eq!(
        (plain.status.as_u16(), plain.body.as_str()),
        (200, "the chat page"),
        "{}",
        plain.cache_status()
    );
}

/// "the real page", gzip-compressed.
const GZIPPED: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x2b\xc9\x48\x55\x28\x4a\x4d\xcc\x51\x28\x48\x4c\x4f\x05\x00\x08\xf8\x9f\xd5\x0d\x00\x00\x00";

/// An origin that applies a transfer coding besides `chunked` (`Transfer-Encoding: gzip,
/// chunked`, RFC 9112 §7): hyper undoes only the chunking, and the proxy dropped the
/// hop-by-hop field, so the client got (and the cache stored for everyone) compressed
/// bytes that nothing said were compressed. A proxy that cannot undo a transfer coding
/// must not pass the body on as if it had (nginx answers 502: "upstream sent unknown
/// Transfer-Encoding").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_the_proxy_cannot_undo_never_reaches_a_client_undone() {
    let mut coded = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        GZIPPED.len()
    )
    .into_bytes();
    coded.extend_from_slice(GZIPPED);
    coded.extend_from_slice(b"\r\n0\r\n\r\n");
    let origin = raw_origin(&[("/coded", &coded)]).await;
    let proxy = start_proxy(origin.addr, &[]);
    for attempt in ["first", "second"] {
        let mut client = Client::connect(&proxy).await;
        client.send(get("/coded").as_bytes()).await;
        let answer = client.response(false).await.expect("an answer");
        let coding = answer.header("transfer-encoding").unwrap_or_default();
        let what = format!("{attempt}: {} {:?}", answer.head, answer.body);
        assert!(
            answer.status() == 502 || answer.body == b"the real page" || coding.contains("gzip"),
            "compressed bytes passed on as the page: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An absolute-form target with an empty path and a query (`GET http://shop.example?x=1
/// HTTP/1.1`; RFC 9110 §4.2.3: the path is `/`) reached the origin as `/?x=1`, but was
/// keyed as `http://shop.example?x=1`, apart from `/?x=1`: a purge or an invalidation of
/// `/?x=1` (a POST to it) left that spelling's entry in place, served to every client that
/// asks that way. The key is `/?x=1`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_path_before_a_query_is_keyed_as_a_slash() {
    let home = page("home").into_bytes();
    let query = page("home with x").into_bytes();
    let origin = raw_origin(&[("/", &home), ("/?x=1", &query)]).await;
    let proxy = start_proxy(origin.addr, &[]);
    for (target, expected) in [
        ("http://shop.example", "home"),
        ("http://shop.example?x=1", "home with x"),
    ] {
        let mut client = Client::connect(&proxy).await;
        client
            .send(format!("GET {target} HTTP/1.1\r\nHost: shop.example\r\n\r\n").as_bytes())
            .await;
        let answer = client.response(false).await.expect("an answer");
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            expected,
            "{target}: {} (the origin saw {:?})",
            answer.head,
            origin.heads.all()
        );
    }
    // Both were stored under the keys of `/` and `/?x=1`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (target, expected) in [("/", "home"), ("/?x=1", "home with x")] {
        let mut client = Client::connect(&proxy).await;
        client
            .send(
                format!(
                    "GET {target} HTTP/1.1\r\nHost: shop.example\r\nCache-Control: only-if-cached\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let answer = client.response(false).await.expect("an answer");
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            expected,
            "{target}: {} {:?}",
            answer.head,
            origin.heads.all()
        );
    }
}
