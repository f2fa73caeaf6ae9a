//! Review SB: request smuggling and response-queue poisoning through
//! `tower-memcache-proxy`, as "HTTP/2: The Sequel is Always Worse" and "Browser-Powered
//! Desync Attacks" would try them: HTTP/2 requests whose framing or fields an HTTP/1.1
//! origin could read as more than one request (H2.CL, CR/LF or colons injected in field
//! names and values, pseudo-fields holding spaces or line breaks), a request body paused
//! until the origin answers early ("pause-based" desync), bodies the proxy answers before
//! it read them (client-side desync), and origins that frame a bodiless or informational
//! answer with a body. For each: what the origin read as requests, and what the next
//! clients, whose requests go out on the pooled origin connection, are answered and have
//! stored under their keys.
//!
//! The origin is a raw TCP server (it reads bodies framed by `Content-Length` or chunked,
//! but not on the paths a script says, like a static handler), so that it can say what a
//! hyper-based origin never would and record every request head it read.

use crate::support;
use support::desync::{EVIL, Heads, SMUGGLED, cached, get, own_page, page, path_of};
use support::h2_frames::{DATA, literal_block};

use support::raw_http::{header_of, more, next_head, skip_body};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::h2_frames::{
    END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame, status_of_stream_1,
};
use support::proxy::{Proxy, start_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the origin does for one request head.
struct Answer {
    now: Vec<u8>,
    /// Written after a pause, if any.
    later: Option<(Duration, Vec<u8>)>,
    /// Whether the request's body (by `Content-Length` or chunked) is read before the
    /// answer; if not, what follows the head is read as the next request.
    reads_body: bool,
    /// Wait this long before answering (an origin's body read timeout that answers
    /// early, the body not read).
    pause: Duration,
    /// Write `now` before reading the body, and `later` once it was read (an origin that
    /// reads and answers at once); the bodies it read go to `bodies`.
    duplex: bool,
}

impl Answer {
    fn bytes(now: impl Into<Vec<u8>>) -> Self {
        Self {
            now: now.into(),
            later: None,
            reads_body: true,
            pause: Duration::ZERO,
            duplex: false,
        }
    }
}

type Script = dyn Fn(&str) -> Answer + Send + Sync;

/// A raw origin: every head it read, in order.
struct RawOrigin {
    addr: SocketAddr,
    heads: Heads,
    /// The bodies read by `duplex` answers.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Stops the origin when dropped.
    _serving: support::origin::RawOrigin,
}

impl RawOrigin {
    async fn start(script: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let heads = Heads::default();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let serving = support::origin::RawOrigin::start({
            let (heads, bodies) = (heads.clone(), Arc::clone(&bodies));
            move |stream| {
                let (script, heads) = (Arc::clone(&script), heads.clone());
                serve(stream, script, heads, Arc::clone(&bodies))
            }
        })
        .await;
        Self {
            addr: serving.addr,
            heads,
            bodies,
            _serving: serving,
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<Script>,
    heads: Heads,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        heads.push(head.clone());
        let answer = script(&head);
        tokio::time::sleep(answer.pause).await;
        if answer.duplex {
            let length = header_of(&head, "content-length")
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(0);
            if stream.write_all(&answer.now).await.is_err() {
                return;
            }
            while buffer.len() < length {
                if !more(&mut stream, &mut buffer).await {
                    break;
                }
            }
            let body: Vec<u8> = buffer.drain(..length.min(buffer.len())).collect();
            bodies.lock().unwrap().push(body);
            let _ = stream.write_all(&answer.later.unwrap_or_default().1).await;
            return;
        }
        if answer.reads_body {
            if header_of(&head, "transfer-encoding").is_some() {
                if !skip_body(&mut stream, &mut buffer, &head).await {
                    return;
                }
            } else {
                let length = header_of(&head, "content-length")
                    .and_then(|value| value.parse::<usize>().ok())
                    .unwrap_or(0);
                while buffer.len() < length {
                    if !more(&mut stream, &mut buffer).await {
                        return;
                    }
                }
                buffer.drain(..length);
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
    }
}

/// The page every path gets unless a script says otherwise.
fn own(head: &str) -> Answer {
    Answer::bytes(own_page(head))
}

/// Asks each of `paths` (on fresh client connections, the proxy reusing its pooled origin
/// connection) and checks that each is answered, and has stored, its own page.
async fn each_gets_its_own(proxy: &Proxy, paths: &[&str], after: &str) {
    for path in paths {
        let (status, body) = get(proxy, path).await;
        assert_eq!(
            (status, body.as_str()),
            (200, format!("page {path}").as_str()),
            "after {after}: {path} was answered another's"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for path in paths {
        let (status, body) = cached(proxy, path).await;
        if status == 200 {
            assert_eq!(
                body,
                format!("page {path}"),
                "after {after}: {path} stored another's"
            );
        }
    }
}

/// The request heads the origin read that the attacker smuggled (in a body or a field).
fn smuggled_heads(origin: &RawOrigin) -> Vec<String> {
    origin
        .heads
        .all()
        .into_iter()
        .filter(|head| path_of(head).contains("smuggled") || head.contains("injected"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/2.

/// An HTTP/2 connection to the proxy, preface and empty SETTINGS sent.
async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    stream
}

/// A field's name and value, as bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Sends stream 1 with `fields` (after `:method` unless they name one, `:scheme` and
/// `:authority` likewise) and `body` as one DATA frame (none: END_STREAM on the head),
/// and waits for its head.
async fn h2_attack(proxy: &Proxy, fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> Option<u8> {
    let mut all: Vec<(&[u8], &[u8])> = Vec::new();
    for (pseudo, default) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":authority", b"shop.example"),
    ] {
        if !fields.iter().any(|(name, _)| *name == pseudo) {
            all.push((pseudo, default));
        }
    }
    all.extend_from_slice(fields);
    let mut stream = h2_connect(proxy.addr).await;
    let flags = if body.is_some() {
        END_HEADERS
    } else {
        END_HEADERS | END_STREAM
    };
    let mut bytes = frame(HEADERS, flags, 1, &literal_block(&all));
    if let Some(body) = body {
        bytes.extend_from_slice(&frame(DATA, END_STREAM, 1, body));
    }
    stream.write_all(&bytes).await.unwrap();
    status_of_stream_1(&mut stream, Duration::from_secs(5)).await
}

/// H2.CL and friends: an HTTP/2 request whose `content-length` disagrees with its DATA
/// (none, less, more), or a GET or HEAD carrying DATA, whose body holds a whole request.
/// HTTP/2 frames its body by DATA frames; downgraded to HTTP/1.1, only the length the
/// proxy writes frames it, and the origin must never read the smuggled request as one of
/// its own, nor its answer reach the clients that come next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_bodies_framed_two_ways_never_smuggle_a_request() {
    let origin = RawOrigin::start(own).await;
    let proxy = start_proxy(origin.addr, &[]);
    let smuggled = SMUGGLED.as_bytes();
    let cases: Vec<(&str, Vec<Field>)> = vec![
        (
            "POST cl 0",
            vec![(b":path", b"/p1"), (b"content-length", b"0")],
        ),
        (
            "POST cl short",
            vec![(b":path", b"/p2"), (b"content-length", b"3")],
        ),
        (
            "POST cl long",
            vec![(b":path", b"/p3"), (b"content-length", b"400")],
        ),
        ("POST no cl", vec![(b":path", b"/p4")]),
        (
            "GET cl 0",
            vec![
                (b":method", b"GET"),
                (b":path", b"/g1"),
                (b"content-length", b"0"),
            ],
        ),
        ("GET no cl", vec![(b":method", b"GET"), (b":path", b"/g2")]),
        (
            "HEAD cl 0",
            vec![
                (b":method", b"HEAD"),
                (b":path", b"/h1"),
                (b"content-length", b"0"),
            ],
        ),
        (
            "OPTIONS cl 0",
            vec![
                (b":method", b"OPTIONS"),
                (b":path", b"/o1"),
                (b"content-length", b"0"),
            ],
        ),
    ];
    for (n, (name, fields)) in cases.iter().enumerate() {
        let status = h2_attack(&proxy, fields, Some(smuggled)).await;
        eprintln!("{name}: {status:?}");
        assert!(
            smuggled_heads(&origin).is_empty(),
            "{name}: the origin read the body as a request: {:?}",
            origin.heads.all()
        );
        each_gets_its_own(&proxy, &[&format!("/v{n}a"), &format!("/v{n}b")], name).await;
    }
}

/// Field names and values, and pseudo-fields, holding CR, LF, NUL, colons or spaces:
/// HTTP/2 carries them as bytes, and written into an HTTP/1.1 head as they are they end
/// the line (or the head) early, smuggling fields or a whole request. Each is refused or
/// reaches the origin as one request whose head holds none of the injected text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_fields_holding_line_breaks_never_split_the_origins_request() {
    let origin = RawOrigin::start(own).await;
    let proxy = start_proxy(origin.addr, &[]);
    let get: (&[u8], &[u8]) = (b":method", b"GET");
    let cases: Vec<(&str, Vec<Field>)> = vec![
        (
            "CRLF in a value",
            vec![get, (b":path", b"/f1"), (b"x-a", b"b\r\ninjected: 1")],
        ),
        (
            "CRLFCRLF request in a value",
            vec![
                get,
                (b":path", b"/f2"),
                (
                    b"x-a",
                    b"b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop.example",
                ),
            ],
        ),
        (
            "LF in a value",
            vec![get, (b":path", b"/f3"), (b"x-a", b"b\ninjected: 1")],
        ),
        (
            "CR in a value",
            vec![get, (b":path", b"/f4"), (b"x-a", b"b\rinjected: 1")],
        ),
        (
            "NUL in a value",
            vec![get, (b":path", b"/f5"), (b"x-a", b"b\0injected")],
        ),
        (
            "colon in a name",
            vec![get, (b":path", b"/f6"), (b"x-a:injected", b"1")],
        ),
        (
            "CRLF in a name",
            vec![get, (b":path", b"/f7"), (b"x-a\r\ninjected", b"1")],
        ),
        (
            "space in a name",
            vec![get, (b":path", b"/f8"), (b"x-a injected", b"1")],
        ),
        (
            "transfer-encoding by a line in a value",
            vec![
                (b":method", b"POST"),
                (b":path", b"/f9"),
                (b"x-a", b"b\r\ntransfer-encoding: chunked"),
            ],
        ),
        (
            ":method with a request line",
            vec![
                (
                    b":method",
                    b"GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\nGET",
                ),
                (b":path", b"/m1"),
            ],
        ),
        (
            ":method with a space",
            vec![(b":method", b"GET /smuggled"), (b":path", b"/m2")],
        ),
        (
            ":path with a space and a version",
            vec![get, (b":path", b"/p1 HTTP/1.1\r\ninjected: 1\r\nx:")],
        ),
        (
            ":path with a space",
            vec![get, (b":path", b"/p2 /smuggled")],
        ),
        (":path without a slash", vec![get, (b":path", b"smuggled")]),
        (
            ":path absolute",
            vec![get, (b":path", b"http://evil.example/smuggled")],
        ),
        (
            ":authority with a line break",
            vec![
                get,
                (b":path", b"/a1"),
                (b":authority", b"shop.example\r\ninjected: 1"),
            ],
        ),
        (
            ":authority with a space",
            vec![
                get,
                (b":path", b"/a2"),
                (b":authority", b"shop.example injected"),
            ],
        ),
        (
            ":scheme with a line break",
            vec![
                get,
                (b":path", b"/s1"),
                (b":scheme", b"http\r\ninjected: 1"),
            ],
        ),
        (
            ":scheme https",
            vec![get, (b":path", b"/s2"), (b":scheme", b"https")],
        ),
        (
            ":scheme odd",
            vec![get, (b":path", b"/s3"), (b":scheme", b"injected")],
        ),
        (
            "host with a line break",
            vec![
                get,
                (b":path", b"/h1"),
                (b"host", b"shop.example\r\ninjected: 1"),
            ],
        ),
    ];
    for (n, (name, fields)) in cases.iter().enumerate() {
        let before = origin.heads.all().len();
        let status = h2_attack(&proxy, fields, None).await;
        let heads = origin.heads.all()[before..].to_vec();
        eprintln!("{name}: {status:?}, origin read {heads:?}");
        assert!(
            smuggled_heads(&origin).is_empty(),
            "{name}: injected text reached the origin: {heads:?}"
        );
        assert!(heads.len() <= 1, "{name}: the origin read {heads:?}");
        each_gets_its_own(&proxy, &[&format!("/w{n}")], name).await;
    }
}

/// "Pause-based" desync: a client sends a request head and part of its body, then
/// pauses; the origin answers early (its body read timeout) without reading the rest, and
/// reads what comes next on the connection as a request. The rest of the body, a whole
/// request, went on to the origin after the answer had ended, and was read there as a
/// request of its own that the proxy never saw (any `Host`, `X-Forwarded-For`, method
/// override). Now the upload ends with the answer; and the smuggled request's answer
/// never answers, nor is stored as, the next clients' pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_paused_until_the_origin_answers_early_reaches_it_no_further() {
    let origin = RawOrigin::start(|head| match path_of(head) {
        "/pause" => {
            let mut answer =
                Answer::bytes("HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\n\r\ntimeout");
            answer.reads_body = false;
            answer.pause = Duration::from_millis(300);
            answer
        }
        "/smuggled" => {
            let mut answer = Answer::bytes("");
            answer.later = Some((Duration::from_millis(200), EVIL.as_bytes().to_vec()));
            answer
        }
        _ => own(head),
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for round in 0..2 {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "POST /pause HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\n\r\n",
            SMUGGLED.len() + 1
        );
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(b"x").await.unwrap();
        // The answer, once it came: the paused client's cue to send the rest.
        let mut first = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut first)).await;
        let answered = match read {
            Ok(Ok(n)) => String::from_utf8_lossy(&first[..n]).into_owned(),
            _ => String::new(),
        };
        assert!(answered.starts_with("HTTP/1.1 408"), "{answered:?}");
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = client.write_all(SMUGGLED.as_bytes()).await;
        // Victims while the smuggled answer would be on its way, and after.
        for step in 0..3 {
            each_gets_its_own(&proxy, &[&format!("/r{round}s{step}")], "a paused body").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("EVIL"), "{rest:?}");
        assert!(
            smuggled_heads(&origin).is_empty(),
            "round {round}: the rest of the body reached the origin as a request: {:?}",
            origin.heads.all()
        );
    }
}

/// Client-side desync: the proxy answers some requests itself, before it reads their
/// body (TRACE, CONNECT, OPTIONS with `Max-Forwards: 0`, a target it refuses, a loop).
/// On a kept-alive client connection, the body (a whole request, here sent after a pause
/// as a browser's second write would be) must be read as the body or the connection
/// closed: never read as the connection's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_proxy_answers_early_is_never_read_as_the_next_request() {
    let origin = RawOrigin::start(own).await;
    let proxy = start_proxy(origin.addr, &[]);
    let length = SMUGGLED.len();
    let heads = [
        format!("TRACE /t HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\n\r\n"),
        format!(
            "CONNECT shop.example:80 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\n\r\n"
        ),
        format!(
            "OPTIONS /o HTTP/1.1\r\nHost: shop.example\r\nMax-Forwards: 0\r\nContent-Length: {length}\r\n\r\n"
        ),
        format!(
            "POST https://shop.example/x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\n\r\n"
        ),
        format!("POST /x HTTP/1.1\r\nContent-Length: {length}\r\n\r\n"),
        "GET /c HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
    ];
    for (n, head) in heads.iter().enumerate() {
        for pause in [0u64, 600] {
            let mut client = TcpStream::connect(proxy.addr).await.unwrap();
            client.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let body = if head.contains("chunked") {
                format!("{length:x}\r\n{SMUGGLED}\r\n0\r\n\r\n")
            } else {
                SMUGGLED.to_string()
            };
            let _ = client.write_all(body.as_bytes()).await;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer);
            let answers = answer.matches("HTTP/1.1 ").count();
            eprintln!("{n} after {pause} ms: {answers} answers");
            assert!(
                answers <= 1 && !answer.contains("page /smuggled"),
                "{head:?} then its body after {pause} ms: {answer:?}"
            );
            assert!(
                smuggled_heads(&origin).is_empty(),
                "{head:?}: the origin read the body as a request"
            );
        }
    }
}

/// Informational answers framed with a body (`Content-Length` or chunked on a 100 or a
/// 103), and bodiless answers (to a HEAD, a 204, a 304) with a chunked body: the bytes
/// after them are no body. After a bodiless final answer they must never answer anything;
/// after a 1xx they are the final answer to the same request (a 1xx ends at its head),
/// and what the origin sent after that must never answer the next request on the pooled
/// connection. (`review_pp` has the bodiless answers with a `Content-Length`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_on_answers_that_have_none_never_answer_a_request() {
    let chunked_evil = format!("{:x}\r\n{EVIL}\r\n0\r\n\r\n", EVIL.len());
    let cases: Vec<(&str, String)> = vec![
        (
            "/early-cl",
            format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: {}\r\n\r\n{EVIL}{}",
                EVIL.len(),
                page("page /early-cl")
            ),
        ),
        (
            "/early-chunked",
            format!(
                "HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_evil}{}",
                page("page /early-chunked")
            ),
        ),
        (
            "/continue-cl",
            format!(
                "HTTP/1.1 100 Continue\r\nContent-Length: {}\r\n\r\n{EVIL}{}",
                EVIL.len(),
                page("page /continue-cl")
            ),
        ),
        (
            "/204-chunked",
            format!(
                "HTTP/1.1 204 No Content\r\nCache-Control: public, max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_evil}"
            ),
        ),
        (
            "/304-chunked",
            format!(
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_evil}"
            ),
        ),
        (
            "/head-chunked",
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_evil}"
            ),
        ),
    ];
    let answers: std::collections::HashMap<String, String> = cases
        .iter()
        .map(|(path, answer)| (path.to_string(), answer.clone()))
        .collect();
    let origin = RawOrigin::start(move |head| match answers.get(path_of(head)) {
        Some(answer) => Answer::bytes(answer.clone()),
        None => own(head),
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for (n, (path, _)) in cases.iter().enumerate() {
        let request = match *path {
            "/head-chunked" => format!("HEAD {path} HTTP/1.1\r\nHost: shop.example\r\n"),
            "/304-chunked" => {
                format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nIf-None-Match: \"x\"\r\n")
            }
            _ => format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n"),
        };
        let answer = support::proxy::raw_text(&proxy, &request).await;
        eprintln!("{path}: {answer:?}");
        // A 1xx ends at its head whatever its fields say (RFC 9110 §15.2): the response
        // after it is the final answer to this request, the origin's own word for it.
        if !path.starts_with("/early") && !path.starts_with("/continue") {
            assert!(!answer.contains("EVIL"), "{path}: {answer:?}");
        }
        each_gets_its_own(&proxy, &[&format!("/x{n}a"), &format!("/x{n}b")], path).await;
    }
}

/// The other side of ending an upload with its answer: an origin that answers as it reads
/// (its response head and first chunk at once, its last chunk once the body is in) still
/// gets the whole body, sent after its answer began, and its client the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_as_it_reads_still_gets_the_whole_body() {
    let origin = RawOrigin::start(|head| {
        if path_of(head) != "/duplex" {
            return own(head);
        }
        let mut answer = Answer::bytes(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        );
        answer.duplex = true;
        answer.later = Some((Duration::ZERO, b"4\r\nlast\r\n0\r\n\r\n".to_vec()));
        answer
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /duplex HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello")
        .await
        .unwrap();
    // The answer has begun before the rest is sent.
    let mut first = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut first))
        .await
        .expect("the answer's head within 5 s")
        .unwrap();
    assert!(first[..read].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.write_all(b"world").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    let whole = String::from_utf8_lossy(&[&first[..read], &rest[..]].concat()).into_owned();
    assert!(
        whole.contains("first") && whole.ends_with("last\r\n0\r\n\r\n"),
        "{whole:?}"
    );
    assert_eq!(
        origin.bodies.lock().unwrap().clone(),
        vec![b"helloworld".to_vec()]
    );
}

/// The pause-based desync from an HTTP/2 client: its DATA after the origin's whole answer
/// came reach the origin no more than an HTTP/1.1 client's body does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_paused_until_the_origin_answers_early_reaches_it_no_further() {
    let origin = RawOrigin::start(|head| {
        if path_of(head) != "/pause" {
            return own(head);
        }
        let mut answer =
            Answer::bytes("HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\n\r\ntimeout");
        answer.reads_body = false;
        answer.pause = Duration::from_millis(300);
        answer
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    let length = (SMUGGLED.len() + 1).to_string();
    let fields: Vec<Field> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"shop.example"),
        (b":path", b"/pause"),
        (b"content-length", length.as_bytes()),
    ];
    let mut stream = h2_connect(proxy.addr).await;
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &literal_block(&fields));
    bytes.extend_from_slice(&frame(DATA, 0, 1, b"x"));
    stream.write_all(&bytes).await.unwrap();
    assert!(
        status_of_stream_1(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "no answer"
    );
    // The answer's body has come by now; then the rest of the request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stream
        .write_all(&frame(DATA, END_STREAM, 1, SMUGGLED.as_bytes()))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    each_gets_its_own(&proxy, &["/h2v1", "/h2v2"], "a paused h2 body").await;
    assert!(
        smuggled_heads(&origin).is_empty(),
        "the rest of the body reached the origin as a request: {:?}",
        origin.heads.all()
    );
}
