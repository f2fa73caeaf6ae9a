//! Review A: an untrusted HTTP client against `tower-memcache-proxy` and the layer. Each
//! test names an attack and fails if it works. The origin here reflects what it was told
//! (the request body, the fields it varies on) into a cacheable response, so that an
//! answer made for one request and served to another shows.

use crate::support;

use support::proxy::{Proxy, raw, raw_from, start_proxy, until_cached};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The origin: every answer is `public, max-age=60` and says what the origin saw.
///
/// - `/body`: the request body.
/// - `/lang`: `Vary: Accept-Language`, the language it was asked for.
/// - `/ip`: `Vary: X-Forwarded-For`, the address the proxy said the client has.
/// - anything else: the method and path.
async fn origin(
    request: Request<Incoming>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let seen = |name: &str| {
        request.headers().get(name).map_or("-".to_string(), |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        })
    };
    let path = request.uri().path().to_string();
    let (vary, text) = match path.as_str() {
        "/lang" => (
            Some("accept-language"),
            format!("lang={}", seen("accept-language")),
        ),
        "/ip" => (
            Some("x-forwarded-for"),
            format!("ip={}", seen("x-forwarded-for")),
        ),
        "/body" => (None, String::new()),
        _ => (None, format!("{} {path}", request.method())),
    };
    let text = if path == "/body" {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        format!("body={}", String::from_utf8_lossy(&body))
    } else {
        text
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let headers = response.headers_mut();
    headers.insert("cache-control", "public, max-age=60".parse().unwrap());
    if let Some(vary) = vary {
        headers.insert("vary", vary.parse().unwrap());
    }
    Ok(response)
}

struct Origin {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let task = support::origin::serve_http1(listener, move |req| origin(req, Arc::clone(&counted)));
    Origin { addr, calls, task }
}

/// A request body of unknown length: an HTTP/2 client sends it as DATA frames with no
/// `content-length` field.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

// ---------------------------------------------------------------------------------------
// The proxy: what the cache keys on must be what the origin sees.

/// An HTTP/2 GET may carry a body without any `content-length` (its HEADERS frame just
/// lacks END_STREAM). The layer recognises a body only by `Content-Length` or
/// `Transfer-Encoding`, so it looks such a request up and stores its answer; the proxy is
/// safe only because its HTTP/1.1 client to the origin sends no body of unknown length
/// with a GET. Should that change, the stored answer would be the body's.
#[tokio::test]
async fn an_h2_get_with_an_unsized_body_poisons_nothing() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Unsized>();
    let request = Request::get(format!("http://{}/body", proxy.addr))
        .body(Unsized(Some(Bytes::from_static(b"evil"))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"body=", "the origin read an unkeyed body");
    // The h2 request's `:authority` is the proxy's address.
    let head = format!("GET /body HTTP/1.1\r\nHost: {}\r\n", proxy.addr);
    let plain = until_cached(&proxy, &head).await;
    assert_eq!(plain, "body=", "an h2 GET's body was stored for everyone");
}

/// `Connection: accept-language` makes the proxy drop `Accept-Language` on its way to the
/// origin, after the cache chose the variant from it: the origin's default page would be
/// stored as the French one.
#[tokio::test]
async fn a_header_named_in_connection_poisons_its_variant() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let (status, _) = raw(
        &proxy,
        "GET /lang HTTP/1.1\r\nHost: site.example\r\nAccept-Language: fr\r\nConnection: accept-language\r\n",
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = raw(
        &proxy,
        "GET /lang HTTP/1.1\r\nHost: site.example\r\nAccept-Language: fr\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body, "lang=fr",
        "a French reader got another request's page"
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 2);
}

/// The proxy replaces `X-Forwarded-For` with the peer's address after the cache looked
/// the request up, so an origin that varies on it (and says so) has one client's answer
/// served to another: the variant is chosen by the client's value (absent for both).
#[tokio::test]
async fn vary_on_x_forwarded_for_serves_one_clients_answer_to_another() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let head = "GET /ip HTTP/1.1\r\nHost: site.example\r\n";
    let (status, body) = raw_from("127.0.0.2", &proxy, head).await;
    assert_eq!((status, body.as_str()), (200, "ip=127.0.0.2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = raw_from("127.0.0.3", &proxy, head).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ip=127.0.0.3", "another client's address was served");
    // And a client that claims another's address does not get that one's page either.
    let spoofed = format!("{head}X-Forwarded-For: 127.0.0.2\r\n");
    let (_, body) = raw_from("127.0.0.4", &proxy, &spoofed).await;
    assert_eq!(body, "ip=127.0.0.4");
}

/// Whether the proxy closes a connection on which the client sends `sent` and then
/// nothing, within `within`.
async fn closes_stalled(proxy: &Proxy, sent: &[u8], within: Duration) -> bool {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(sent).await.unwrap();
    let mut buf = Vec::new();
    // The end of the stream (perhaps after a 408) or a reset: closed.
    tokio::time::timeout(within, stream.read_to_end(&mut buf))
        .await
        .is_ok()
}

/// Slowloris: connections that never finish a request head (or never start one, or sit
/// idle after a response) are closed after `--client-header-timeout`, so a client cannot
/// hold the proxy's sockets forever.
#[tokio::test]
async fn stalled_request_heads_are_closed() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &["--client-header-timeout", "500ms"]);
    let within = Duration::from_secs(3);
    assert!(closes_stalled(&proxy, b"", within).await, "nothing sent");
    assert!(closes_stalled(&proxy, b"G", within).await, "one byte");
    assert!(
        closes_stalled(&proxy, b"GET / HTTP/1.1\r\nHost: a\r\n", within).await,
        "a head without its end"
    );
    assert!(
        closes_stalled(&proxy, b"PRI * HTTP/2.0\r\n", within).await,
        "part of the h2 preface"
    );
    // A kept-alive connection idle after its response.
    assert!(
        closes_stalled(&proxy, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", within).await,
        "an idle kept-alive connection"
    );
    // A slow but steady client is served.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for part in [
        "GET /y HTTP/1.1\r\n",
        "Host: a\r\n",
        "Connection: close\r\n",
        "\r\n",
    ] {
        stream.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// An HTTP/2 connection (preface and SETTINGS sent, or one request made) that then starts
/// no request is closed after `--client-header-timeout`, which hyper applies to HTTP/1
/// heads only; one that keeps asking is not.
#[tokio::test]
async fn idle_h2_connections_are_closed() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &["--client-header-timeout", "400ms"]);
    let within = Duration::from_secs(3);
    // The preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert!(
        closes_stalled(&proxy, &hello, within).await,
        "an h2 connection that never asks"
    );

    let h2 = |stream| {
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
    };
    let get = || {
        Request::get(format!("http://{}/h2", proxy.addr))
            .body(Full::default())
            .unwrap()
    };
    // A busy connection stays open past the timeout.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = h2(stream).await.unwrap();
    let mut connection = tokio::spawn(connection);
    for _ in 0..8 {
        let response = sender.send_request(get()).await.unwrap();
        assert!(response.status().is_success());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(!connection.is_finished(), "a busy h2 connection was closed");
    // Idle after its requests: closed.
    let closed = tokio::time::timeout(within, &mut connection).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "an idle h2 connection stayed open: {closed:?}"
    );
}

/// `--max-connections`: past it the proxy stops accepting, so that clients cannot make it
/// hold more sockets than the operator allowed; a connection that closes makes room.
#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_place() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &["--max-connections", "2", "--threads", "2"]);
    async fn ask(stream: &mut tokio::net::TcpStream) {
        let head = "GET /n HTTP/1.1\r\nHost: a\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
    }
    // Whether a response head comes back on `stream` within `within`.
    async fn answered(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 12];
        matches!(
            tokio::time::timeout(within, stream.read_exact(&mut buf)).await,
            Ok(Ok(_)) if buf.starts_with(b"HTTP/1.1 200")
        )
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        ask(&mut stream).await;
        assert!(answered(&mut stream, Duration::from_secs(3)).await);
        held.push(stream);
    }
    // The kernel completes the handshake (the listen backlog); the proxy does not serve it.
    let mut third = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    ask(&mut third).await;
    assert!(
        !answered(&mut third, Duration::from_millis(700)).await,
        "a third connection was served past --max-connections 2"
    );
    drop(held.pop());
    assert!(
        answered(&mut third, Duration::from_secs(3)).await,
        "a closed connection did not make room"
    );
}

/// A HEAD on a miss goes to the origin as a HEAD and is not stored: a GET after it gets
/// the body, and so does a GET whose `Connection` names `Host` (the key's authority stays
/// the one the origin is sent).
#[tokio::test]
async fn a_head_first_never_leaves_an_empty_get() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let (status, body) = raw(&proxy, "HEAD /page HTTP/1.1\r\nHost: site.example\r\n").await;
    assert_eq!((status, body.as_str()), (200, ""));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw(&proxy, "GET /page HTTP/1.1\r\nHost: site.example\r\n").await;
    assert_eq!((status, body.as_str()), (200, "GET /page"));
    let body = until_cached(&proxy, "GET /page HTTP/1.1\r\nHost: site.example\r\n").await;
    assert_eq!(body, "GET /page");
    let (_, body) = raw(
        &proxy,
        "GET /page HTTP/1.1\r\nHost: site.example\r\nConnection: host\r\n",
    )
    .await;
    assert_eq!(body, "GET /page");
}

/// An HTTP/1.0 request without `Host` reaches the origin's default site under a key of
/// its own: it is not served to a request naming a host, nor the other way round.
#[tokio::test]
async fn a_request_without_host_shares_nothing_with_a_named_host() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let (status, _) = raw(&proxy, "GET /p HTTP/1.0\r\n").await;
    assert_eq!(status, 200);
    until_cached(&proxy, "GET /p HTTP/1.0\r\n").await;
    let (status, _) = raw(
        &proxy,
        "GET /p HTTP/1.1\r\nHost: site.example\r\nCache-Control: only-if-cached\r\n",
    )
    .await;
    assert_eq!(
        status, 504,
        "the host-less answer was served for site.example"
    );
}
