//! Review PP: the reverse proxy's side facing the origin. Framing and connection reuse:
//! whether any response can end up stored or served for a request it does not belong to
//! (an origin answering twice for one request, bytes after a bodiless response, a body
//! cut short), and what request framing and fields the proxy forwards to the origin.
//!
//! The origin is a raw TCP server whose script says, per request head, the exact bytes
//! to write, so that it can say what hyper-based origins never would.

use crate::support;
use support::desync::{EVIL, Heads, cached, get, own_page, page, path_of};

use support::raw_http::{find, header_of, more, next_head};

use support::proxy::{Proxy, start_proxy};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the origin does for one request head.
struct Answer {
    /// Written at once.
    now: Vec<u8>,
    /// Written after a pause (the connection otherwise idle), if any.
    later: Option<(Duration, Vec<u8>)>,
    /// Close the connection once written.
    close: bool,
    /// Read the request's `Content-Length` body before answering (an origin that answers
    /// some paths without reading the body leaves it to be read as the next request: a
    /// "CL.0" desync).
    reads_body: bool,
    /// Answer only once the next request head on the connection has arrived (a slow
    /// handler: the proxy has sent its next request meanwhile).
    after_next_head: bool,
    /// Once written, send nothing more: wait for the proxy to close the connection (20 s
    /// at most), and say when it did in `closed`.
    hold: bool,
    /// Then this many one-byte chunks, each after this pause, and the last chunk.
    trickle: Option<(usize, Duration)>,
}

impl Answer {
    fn bytes(now: impl Into<Vec<u8>>) -> Self {
        Self {
            now: now.into(),
            later: None,
            close: false,
            reads_body: true,
            after_next_head: false,
            hold: false,
            trickle: None,
        }
    }
}

type Script = dyn Fn(&str) -> Answer + Send + Sync;

/// A raw origin: each request head read (and its `Content-Length` body, unless the answer
/// says otherwise) gets what the script says; remembers every head.
struct RawOrigin {
    addr: SocketAddr,
    heads: Heads,
    /// When each connection held (see [`Answer::hold`]) was closed by the proxy.
    closed: Arc<Mutex<Vec<Instant>>>,
    /// Stops the origin when dropped.
    _serving: support::origin::RawOrigin,
}

impl RawOrigin {
    async fn start(script: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let heads = Heads::default();
        let closed = Arc::new(Mutex::new(Vec::new()));
        let serving = support::origin::RawOrigin::start({
            let (heads, closed) = (heads.clone(), Arc::clone(&closed));
            move |stream| {
                let (script, heads) = (Arc::clone(&script), heads.clone());
                serve(stream, script, heads, Arc::clone(&closed))
            }
        })
        .await;
        Self {
            addr: serving.addr,
            heads,
            closed,
            _serving: serving,
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<Script>,
    heads: Heads,
    closed: Arc<Mutex<Vec<Instant>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        heads.push(head.clone());
        let answer = script(&head);
        let length = header_of(&head, "content-length")
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|_| answer.reads_body)
            .unwrap_or(0);
        while buffer.len() < length {
            if !more(&mut stream, &mut buffer).await {
                return;
            }
        }
        buffer.drain(..length);
        if answer.after_next_head {
            let next = async {
                while find(&buffer, b"\r\n\r\n").is_none() {
                    if !more(&mut stream, &mut buffer).await {
                        return false;
                    }
                }
                true
            };
            // Bounded: no next request within 5 s, and the answer goes out alone.
            if let Ok(false) = tokio::time::timeout(Duration::from_secs(5), next).await {
                return;
            }
        }
        if stream.write_all(&answer.now).await.is_err() {
            return;
        }
        if let Some((pause, bytes)) = answer.later {
            tokio::time::sleep(pause).await;
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if let Some((chunks, pause)) = answer.trickle {
            for _ in 0..chunks {
                tokio::time::sleep(pause).await;
                if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                    return;
                }
            }
            if stream.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
        if answer.hold {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest));
            if read.await.is_ok() {
                closed.lock().unwrap().push(Instant::now());
            }
            return;
        }
        if answer.close {
            return;
        }
    }
}

/// Asks `paths` one after another (each on a fresh client connection, the proxy reusing
/// its pooled origin connection) and checks that every answer, and what is then cached,
/// is the path's own page.
async fn each_gets_its_own(proxy: &Proxy, paths: &[&str]) {
    for path in paths {
        let (status, body) = get(proxy, path).await;
        assert!(
            status == 502 || body == format!("page {path}"),
            "{path} was answered {status} {body:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for path in paths {
        loop {
            let (status, body) = cached(proxy, path).await;
            if status == 200 {
                assert_eq!(body, format!("page {path}"), "{path} stored another's page");
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Response queue poisoning by an origin that answers one request twice: the second
/// answer, in the same write or a moment later on the idle pooled connection, must never
/// be taken for the next request sent there, nor stored under its key. (A regression
/// test: hyper closes a connection that sends bytes nobody asked for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_twice_never_answers_the_next_request() {
    let origin = RawOrigin::start(|head| {
        let path = path_of(head).to_string();
        let mut answer = Answer::bytes(page(&format!("page {path}")));
        match path.as_str() {
            "/twice" => answer.now.extend_from_slice(EVIL.as_bytes()),
            "/twice-later" => {
                answer.later = Some((Duration::from_millis(50), EVIL.as_bytes().to_vec()));
            }
            _ => {}
        }
        answer
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    each_gets_its_own(&proxy, &["/twice", "/a", "/b"]).await;
    assert_eq!(get(&proxy, "/twice-later").await.1, "page /twice-later");
    // The second answer arrives on the idle connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    each_gets_its_own(&proxy, &["/c", "/d"]).await;
}

/// Bytes after an answer that has no body (to a HEAD, a 204, a 304), whatever its
/// `Content-Length` says, are no body: here a whole response, which must never answer
/// the next request on the pooled connection nor be stored. (A regression test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_bodiless_answer_never_answer_the_next_request() {
    let origin = RawOrigin::start(|head| {
        let path = path_of(head).to_string();
        let method = head.split(' ').next().unwrap_or("");
        match path.as_str() {
            "/head" if method == "HEAD" => Answer::bytes(format!(
                "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: {}\r\n\r\n{EVIL}",
                EVIL.len()
            )),
            "/204" => Answer::bytes(format!(
                "HTTP/1.1 204 No Content\r\nCache-Control: public, max-age=60\r\nContent-Length: {}\r\n\r\n{EVIL}",
                EVIL.len()
            )),
            "/304" => Answer::bytes(format!("HTTP/1.1 304 Not Modified\r\nContent-Length: {}\r\n\r\n{EVIL}", EVIL.len())),
            _ => Answer::bytes(page(&format!("page {path}"))),
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let _ = support::proxy::raw(&proxy, "HEAD /head HTTP/1.1\r\nHost: shop.example\r\n").await;
    each_gets_its_own(&proxy, &["/a1", "/a2"]).await;
    let _ = get(&proxy, "/204").await;
    each_gets_its_own(&proxy, &["/b1", "/b2"]).await;
    let _ = support::proxy::raw(
        &proxy,
        "GET /304 HTTP/1.1\r\nHost: shop.example\r\nIf-None-Match: \"x\"\r\n",
    )
    .await;
    each_gets_its_own(&proxy, &["/c1", "/c2"]).await;
}

/// Sends `bytes` as they are and reads until the proxy closes (5 s at most).
async fn exchange(proxy: &Proxy, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Whether `response` (read to the connection's end) is framed complete: its body as long
/// as `Content-Length` says, or chunked up to the last chunk.
fn complete(response: &str) -> bool {
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return false;
    };
    if let Some(length) = header_of(head, "content-length") {
        return length.parse::<usize>().ok() == Some(body.len());
    }
    if header_of(head, "transfer-encoding").is_some() {
        return body.ends_with("0\r\n\r\n");
    }
    true
}

/// A body the origin cuts short (its connection closes before the `Content-Length` or the
/// last chunk) reaches the request that waited for it, as well as the one that asked,
/// as cut short (never framed complete), and is not stored. (A regression test;
/// `review_j` has the single request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_reaches_its_waiters_cut_short() {
    let origin = RawOrigin::start(|head| {
        let path = path_of(head).to_string();
        if path.starts_with("/cut") {
            let mut answer = Answer::bytes(
                "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 100\r\n\r\nonly ten b",
            );
            answer.later = Some((Duration::from_millis(600), b"more".to_vec()));
            answer.close = true;
            answer
        } else if path.starts_with("/chunk") {
            let mut answer = Answer::bytes(
                "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
            );
            answer.later = Some((Duration::from_millis(600), b"4\r\nmore\r\n".to_vec()));
            answer.close = true;
            answer
        } else {
            Answer::bytes(page(&format!("page {path}")))
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for path in ["/cut", "/chunk"] {
        let head =
            format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
        let leader = tokio::spawn({
            let addr = proxy.addr;
            let head = head.clone();
            async move { exchange_at(addr, head.as_bytes()).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let follower = exchange(&proxy, head.as_bytes()).await;
        let leader = leader.await.unwrap();
        for (who, answer) in [("leader", &leader), ("follower", &follower)] {
            assert!(answer.starts_with("HTTP/1.1 200"), "{who}: {answer:?}");
            assert!(!complete(answer), "{path}: the {who} got a cut body whole");
        }
        assert_eq!(
            cached(&proxy, path).await.0,
            504,
            "{path} was stored cut short"
        );
    }
}

async fn exchange_at(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Response heads framed ambiguously (two `Content-Length`s that disagree, a list, a
/// sign, obs-fold, a space before the colon) are a 502 and leave nothing behind on the
/// pooled connection; those framed one way only (a repeated equal `Content-Length`, bare
/// LF, HTTP/1.0 kept alive, 1xx by the thousand) are answered as such. Either way the
/// next request gets its own page. (A regression test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_origin_framing_is_a_502_and_poisons_nothing() {
    let cases: Vec<(&str, String)> = vec![
        ("/cl2", "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 4\r\nContent-Length: 8\r\n\r\nEVILpage".into()),
        ("/cl2same", "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nEVIL".into()),
        ("/cllist", "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 4, 8\r\n\r\nEVILpage".into()),
        ("/clplus", "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: +4\r\n\r\nEVIL".into()),
        ("/fold", "HTTP/1.1 200 OK\r\nCache-Control: public,\r\n max-age=60\r\nContent-Length: 4\r\n\r\nEVIL".into()),
        ("/space", "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length : 4\r\n\r\nEVIL".into()),
        ("/lf", "HTTP/1.1 200 OK\nCache-Control: public, max-age=60\nContent-Length: 4\n\nEVIL".into()),
        ("/storm", format!("{}{}", "HTTP/1.1 100 Continue\r\n\r\n".repeat(20000), page("page /storm"))),
        ("/h10", "HTTP/1.0 200 OK\r\nCache-Control: public, max-age=60\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nEVIL".into()),
    ];
    let answers: std::collections::HashMap<String, String> = cases
        .iter()
        .map(|(p, a)| (p.to_string(), a.clone()))
        .collect();
    let origin = RawOrigin::start(move |head| {
        let path = path_of(head).to_string();
        match answers.get(&path) {
            Some(answer) => Answer::bytes(answer.clone()),
            None => Answer::bytes(page(&format!("page {path}"))),
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let refused = ["/cl2", "/cllist", "/clplus", "/fold", "/space"];
    for (path, _) in &cases {
        let (status, body) = get(&proxy, path).await;
        if refused.contains(path) {
            assert_eq!(status, 502, "{path}: {body:?}");
            assert_eq!(cached(&proxy, path).await.0, 504, "{path} was stored");
        } else if *path == "/storm" {
            assert_eq!(body, "page /storm");
        } else {
            assert_eq!((status, body.as_str()), (200, "EVIL"), "{path}");
        }
        each_gets_its_own(&proxy, &[&format!("/after{path}")]).await;
    }
}

/// An origin that answers `/static` without reading a request body (as static-file and
/// redirect handlers of some servers do: "CL.0" in the HTTP desync research) reads the
/// body as the next request. A client put a whole `GET /slow` there: its answer (slow to
/// come) went out on the pooled connection after the proxy had sent its next request
/// there, another client's `GET /home`, and was taken as that one's: the attacker's page
/// answered, and stored, as the home page. A connection that carried a request body is
/// not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_an_origin_ignores_never_answers_the_next_request() {
    let origin = RawOrigin::start(|head| {
        let path = path_of(head).to_string();
        match path.as_str() {
            "/static" => {
                let mut answer = Answer::bytes(page("static"));
                answer.reads_body = false;
                answer
            }
            "/slow" => {
                let mut answer = Answer::bytes(EVIL);
                answer.after_next_head = true;
                answer
            }
            _ => Answer::bytes(page(&format!("page {path}"))),
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let smuggled = "GET /slow HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    for (method, victim) in [("POST", "/home"), ("GET", "/index")] {
        let attack = format!(
            "{method} /static HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let answer = exchange(&proxy, attack.as_bytes()).await;
        assert!(answer.ends_with("static"), "{answer:?}");
        each_gets_its_own(&proxy, &[victim]).await;
    }
    let heads = origin.heads.all();
    let attacks = heads.iter().filter(|head| path_of(head) == "/static");
    for head in attacks {
        assert!(head.contains("\r\nconnection: close\r\n"), "{head:?}");
    }
}

/// A request the proxy gave up on (504 after `--upstream-timeout`) leaves its connection
/// waiting for an answer: the late answer must never be taken for the next request's.
/// (A regression test: hyper closes a connection whose request was dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_to_a_request_given_up_never_answers_the_next() {
    let origin = RawOrigin::start(|head| {
        let path = path_of(head).to_string();
        if path == "/slow" {
            let mut answer = Answer::bytes("");
            answer.later = Some((Duration::from_millis(1500), EVIL.as_bytes().to_vec()));
            answer
        } else {
            Answer::bytes(page(&format!("page {path}")))
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &["--upstream-timeout", "1s"]);
    assert_eq!(get(&proxy, "/slow").await.0, 504);
    // Before, during and after the late answer.
    for path in ["/v1", "/v2", "/v3"] {
        each_gets_its_own(&proxy, &[path]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a POST to `/upload` whose `length`-byte body goes out one byte per `pause`, then
/// reads the answer (10 s at most): its status line.
async fn upload(proxy: &Proxy, length: usize, sent: usize, pause: Duration) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..sent {
        tokio::time::sleep(pause).await;
        if stream.write_all(b"x").await.is_err() {
            break;
        }
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    response.split("\r\n").next().unwrap_or("").to_string()
}

/// `--upstream-timeout` is how long the origin may take to send its response head: a
/// request body that took longer than that to arrive (an upload over a slow link, every
/// byte of it on its way) was cut off and answered 504, while the origin was waiting for
/// the rest of it. The time counts from the body's last byte (and a body that stops
/// coming for that long is still cut off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_upstream_timeout_still_reaches_the_origin() {
    let origin = RawOrigin::start(|head| Answer::bytes(own_page(head))).await;
    let proxy = start_proxy(origin.addr, &["--upstream-timeout", "2s"]);
    // 15 bytes, 200 ms apart: 3 s in all, never a pause near 2 s.
    let status = upload(&proxy, 15, 15, Duration::from_millis(200)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Half a body, then nothing: cut off after the timeout, not held for ever, and
    // answered as the client's stall (408), not the origin's (504).
    let started = Instant::now();
    let status = upload(&proxy, 15, 5, Duration::from_millis(10)).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(started.elapsed() < Duration::from_secs(9));
}

/// `--upstream-timeout` bounded only the wait for the response head: an origin that sent
/// a head and part of a body, then nothing (a handler stuck on its database), held the
/// request for ever. A background refresh (`stale-while-revalidate`) has no client whose
/// send timeout would end it: its task, one of the layer's 64, and the origin connection
/// stayed taken for good, and enough of them stopped every refresh. A body that sends
/// nothing for `--upstream-timeout` is now cut off (nginx's `proxy_read_timeout`), and
/// stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_body_that_stops_is_cut_off_after_the_upstream_timeout() {
    let asked = Arc::new(Mutex::new(0usize));
    let origin = RawOrigin::start({
        let asked = Arc::clone(&asked);
        move |_| {
            let mut asked = asked.lock().unwrap();
            *asked += 1;
            let cache_control = "public, max-age=1, stale-while-revalidate=600";
            if *asked == 1 {
                return Answer::bytes(format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: {cache_control}\r\nContent-Length: 2\r\n\r\nv1"
                ));
            }
            let mut answer = Answer::bytes(format!(
                "HTTP/1.1 200 OK\r\nCache-Control: {cache_control}\r\nContent-Length: 100\r\n\r\nonly ten b"
            ));
            answer.hold = true;
            answer
        }
    })
    .await;
    let proxy = start_proxy(origin.addr, &["--upstream-timeout", "1s"]);
    assert_eq!(get(&proxy, "/swr").await, (200, "v1".to_string()));
    // Stale once a second has passed: served, and refreshed in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *asked.lock().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = get(&proxy, "/swr").await;
        assert_eq!((status, body.as_str()), (200, "v1"));
    }
    let refreshed = Instant::now();
    while origin.closed.lock().unwrap().is_empty() {
        assert!(
            refreshed.elapsed() < Duration::from_secs(8),
            "the stalled refresh still holds its origin connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cut body was not stored: still the old page.
    assert_eq!(get(&proxy, "/swr").await, (200, "v1".to_string()));
}

/// The other side of the body timeout: only the time spent waiting for the origin counts.
/// A client that stops reading a large uncached body for longer than `--upstream-timeout`
/// (the origin has sent it all) still gets the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_is_not_taken_for_a_stalled_origin() {
    const SIZE: usize = 8 << 20;
    let origin = RawOrigin::start(|_| {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {SIZE}\r\n\r\n")
                .into_bytes();
        answer.resize(answer.len() + SIZE, b'x');
        Answer::bytes(answer)
    })
    .await;
    let proxy = start_proxy(origin.addr, &["--upstream-timeout", "1s"]);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let read = stream.read(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .expect("the body within 20 s")
        .unwrap();
    let whole = [&first[..read], &rest[..]].concat();
    let body_at = find(&whole, b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(whole.len() - body_at, SIZE, "the body was cut short");
}

/// A response the origin sends slowly (server-sent events: a few bytes of heartbeat now
/// and then) to a client that reads every byte: the connection was closed after a
/// `--client-header-timeout` with under 1 KiB written, as if the client had stopped
/// reading (nginx's `send_timeout`), every event stream cut every 30 to 60 s. Only a
/// response with something to send that the client does not take counts; one waiting
/// for its origin is bounded by `--upstream-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_stream_is_not_taken_for_a_client_that_stopped_reading() {
    let origin = RawOrigin::start(|_| {
        let mut answer = Answer::bytes(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Type: text/event-stream\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
        );
        // Twelve bytes over 3.6 s.
        answer.trickle = Some((12, Duration::from_millis(300)));
        answer
    })
    .await;
    let args = ["--client-header-timeout", "1s", "--upstream-timeout", "10s"];
    let proxy = start_proxy(origin.addr, &args);
    let request = b"GET /events HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    let answer = exchange(&proxy, request).await;
    assert!(complete(&answer), "the stream was cut: {answer:?}");
}
