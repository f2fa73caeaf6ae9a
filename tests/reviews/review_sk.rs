//! Review SK: the proxy's uploads as real clients and origins use them, after reviews SB,
//! SF and SI held or cut the rest of an upload once the origin's answer began.
//!
//! Most HTTP/1.1 clients write their WHOLE body before they read anything (Python's
//! http.client, Go's net/http, a browser's form post, curl once its `Expect` wait is
//! over), and many origins answer early: a 401 on missing credentials, a 413, a 303
//! after reading part of the body. Such a client must still get that answer, promptly,
//! and its connection must then be closed or reused cleanly; ordinary uploads (the
//! origin reads everything, then answers) must be unaffected.
//!
//! The origin is a raw TCP server; what it does is chosen by the request's path:
//! - `/all`: reads the whole body, answers `got N` (N: the body's bytes);
//! - `/early`: answers 401 on the head, without reading the body, then reads on and
//!   drops what comes (an origin that keeps its connection); `/early-chunked` the same
//!   with a chunked 401;
//! - `/early-long`: as `/early`, with a 401 of 4 MiB framed by its length;
//! - `/early-close`: answers 401 on the head, then closes as a careful server does
//!   (its side shut for writing, the rest read until the proxy ends the connection);
//! - `/partial`: reads 64 KiB of the body, answers 303, then reads on and drops.

use crate::support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::origin::RawOrigin;
use support::proxy::{Proxy, start_proxy};
use support::raw_http::{find, header_of, more, next_head, ok, skip_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body sizes tried: below the sockets' buffers, above them, far above.
const SIZES: [usize; 3] = [1024, 256 * 1024, 8 << 20];

/// How long any one exchange may take here: generous, far below the proxy's
/// `--upstream-timeout`, which a hang would wait for.
const PROMPT: Duration = Duration::from_secs(10);

const EARLY: &[u8] = b"no credentials\n";

/// The size of an early answer no socket buffer holds whole (`/early-long`).
const LONG: usize = 4 << 20;

fn early_401(chunked: bool) -> Vec<u8> {
    if chunked {
        let mut answer =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        answer.extend_from_slice(format!("{:x}\r\n", EARLY.len()).as_bytes());
        answer.extend_from_slice(EARLY);
        answer.extend_from_slice(b"\r\n0\r\n\r\n");
        answer
    } else {
        let mut answer = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n",
            EARLY.len()
        )
        .into_bytes();
        answer.extend_from_slice(EARLY);
        answer
    }
}

/// Reads and drops everything until the peer closes.
async fn read_on(reader: &mut TcpStream) {
    let mut sink = vec![0u8; 64 * 1024];
    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn serve(mut stream: TcpStream) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        match path.as_str() {
            "/early" | "/early-chunked" => {
                let answer = early_401(path == "/early-chunked");
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                return read_on(&mut stream).await;
            }
            "/early-long" => {
                let mut answer =
                    format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {LONG}\r\n\r\n")
                        .into_bytes();
                answer.extend(std::iter::repeat_n(b'n', LONG));
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                return read_on(&mut stream).await;
            }
            "/early-close" => {
                if stream.write_all(&early_401(false)).await.is_err() {
                    return;
                }
                let _ = stream.shutdown().await;
                return read_on(&mut stream).await;
            }
            "/partial" => {
                while buffer.len() < 64 * 1024 {
                    if !more(&mut stream, &mut buffer).await {
                        return;
                    }
                }
                let answer =
                    "HTTP/1.1 303 See Other\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                return read_on(&mut stream).await;
            }
            _ => {
                let Some(got) = body_length(&mut stream, &mut buffer, &head).await else {
                    return;
                };
                let answer = ok("", &format!("got {got}\n"));
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the body `head` frames (by `Content-Length`, or chunked without trailers) and
/// returns its length; none if the connection ended first.
async fn body_length(stream: &mut TcpStream, buffer: &mut Vec<u8>, head: &str) -> Option<usize> {
    if header_of(head, "transfer-encoding").is_none() {
        let length = header_of(head, "content-length")?.parse::<usize>().ok()?;
        return skip_body(stream, buffer, head).await.then_some(length);
    }
    let mut total = 0;
    loop {
        let Some(end) = find(buffer, b"\r\n") else {
            if !more(stream, buffer).await {
                return None;
            }
            continue;
        };
        let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        let whole = end + 2 + size + 2;
        while buffer.len() < whole {
            if !more(stream, buffer).await {
                return None;
            }
        }
        buffer.drain(..whole);
        total += size;
        if size == 0 {
            return Some(total);
        }
    }
}

/// A response read off a blocking socket: status, fields, body (by `Content-Length`).
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response framed by `Content-Length` (the proxy frames short answers so)
/// from `stream`, leaving nothing of the next behind (the answers here are one read).
fn read_answer(stream: &mut std::net::TcpStream) -> Result<Answer, String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed before a head: {buffer:?}")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("reading the head: {err}")),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[end + 4..].to_vec();
    if header_of(&head, "transfer-encoding").is_some() {
        // The answers here are short: read to the last chunk, then undo the chunking.
        while !body.ends_with(b"\r\n0\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) => return Err("closed inside the body".into()),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(format!("reading the body: {err}")),
            }
        }
        return Ok(Answer {
            status,
            head,
            body: unchunked(&body).ok_or("a malformed chunk")?,
        });
    }
    let length = header_of(&head, "content-length")
        .and_then(|value| value.parse::<usize>().ok())
        .ok_or_else(|| format!("no Content-Length: {head}"))?;
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed inside the body".into()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("reading the body: {err}")),
        }
    }
    Ok(Answer { status, head, body })
}

/// The data of a whole chunked body (no trailers).
fn unchunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let end = find(body, b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..end]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(data);
        }
        data.extend_from_slice(body.get(end + 2..end + 2 + size)?);
        body = body.get(end + 4 + size..)?;
    }
}

/// A request of `size` bytes of body, framed by `Content-Length` or chunked (64 KiB
/// chunks), as one buffer.
fn upload(path: &str, size: usize, chunked: bool) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: shop.example\r\n").into_bytes();
    if chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut left = size;
        while left > 0 {
            let piece = left.min(64 * 1024);
            request.extend_from_slice(format!("{piece:x}\r\n").as_bytes());
            request.extend(std::iter::repeat_n(b'x', piece));
            request.extend_from_slice(b"\r\n");
            left -= piece;
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {size}\r\n\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'x', size));
    }
    request
}

/// A client that writes its whole request, then reads the answer (blocking sockets, as
/// Python's or Go's), then asks again on the same connection if it may. Returns the first
/// answer, and the second's status (None: the connection was closed cleanly, with
/// `Connection: close` on the first or an end of stream before a second answer).
fn write_all_then_read(
    proxy: SocketAddr,
    path: &str,
    size: usize,
    chunked: bool,
) -> Result<(Answer, Option<u16>), String> {
    let mut stream = std::net::TcpStream::connect(proxy).map_err(|err| err.to_string())?;
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream
        .write_all(&upload(path, size, chunked))
        .map_err(|err| format!("writing the body: {err}"))?;
    let first = read_answer(&mut stream)?;
    if header_of(&first.head, "connection").is_some_and(|value| value.contains("close")) {
        return Ok((first, None));
    }
    if stream.write_all(&upload("/all", 10, false)).is_err() {
        return Err("the connection was reset after the answer".into());
    }
    let second = match read_answer(&mut stream) {
        Ok(second) => Some(second.status),
        Err(err) if err.starts_with("closed before a head: []") => None,
        Err(err) => return Err(format!("the second request: {err}")),
    };
    Ok((first, second))
}

async fn proxy_before(origin: &RawOrigin) -> Proxy {
    // A hang would last the whole --upstream-timeout: longer than PROMPT.
    start_proxy(origin.addr, &["--upstream-timeout", "60s"])
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// Every write-all-then-read client gets the early 401 whole and promptly, whatever the
/// body's size and framing, the answer's framing, and whether the origin keeps its
/// connection: before, a body larger than what the sockets buffer was cut off unread,
/// hyper closed the connection with it unread, the kernel reset the connection, and the
/// client's write failed (a broken pipe) before it read a byte of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_body_first_reads_the_early_answer() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let addr = proxy.addr;
    let mut failures = Vec::new();
    for path in ["/early", "/early-chunked", "/early-close"] {
        for size in SIZES {
            for chunked in [false, true] {
                let started = Instant::now();
                let path_owned = path.to_string();
                let outcome =
                    blocking(move || write_all_then_read(addr, &path_owned, size, chunked)).await;
                let case = format!("{path} {size} bytes chunked={chunked}");
                match outcome {
                    Ok((first, second)) => {
                        if first.status != 401 || first.body != EARLY {
                            failures.push(format!("{case}: {} {:?}", first.status, first.body));
                        }
                        if second.is_some_and(|status| status != 200) {
                            failures.push(format!("{case}: the next request got {second:?}"));
                        }
                    }
                    Err(err) => failures.push(format!("{case}: {err}")),
                }
                if started.elapsed() > PROMPT {
                    failures.push(format!("{case}: took {:?}", started.elapsed()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A long early answer framed by its length, to a client that writes its whole body
/// first: before, the upload was held, the body unread, while the answer waited for the
/// client to read it, and the client for the proxy to take its body: both hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_early_answer_reaches_a_client_that_writes_its_whole_body_first() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let addr = proxy.addr;
    for size in [256 * 1024, 8 << 20] {
        for chunked in [false, true] {
            let (first, second) =
                blocking(move || write_all_then_read(addr, "/early-long", size, chunked))
                    .await
                    .unwrap_or_else(|err| panic!("{size} chunked={chunked}: {err}"));
            assert_eq!(first.status, 401, "{size} chunked={chunked}");
            assert_eq!(first.body.len(), LONG, "{size} chunked={chunked}");
            assert_eq!(second, Some(200), "{size} chunked={chunked}: reused");
        }
    }
}

/// An origin that reads part of the body, then redirects (a 303 after a form's first
/// fields), keeping its connection: the client that writes everything first gets the 303,
/// and its connection serves its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_after_part_of_the_body_reaches_a_client_that_writes_it_all_first() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let addr = proxy.addr;
    for size in [256 * 1024, 8 << 20] {
        for chunked in [false, true] {
            let outcome = blocking(move || write_all_then_read(addr, "/partial", size, chunked))
                .await
                .unwrap_or_else(|err| panic!("{size} chunked={chunked}: {err}"));
            assert_eq!(outcome.0.status, 303, "{size} chunked={chunked}");
            assert_eq!(outcome.1, Some(200), "{size} chunked={chunked}: reused");
        }
    }
}

/// Python's http.client writes the whole body, then reads: it gets the early 401 (and
/// the 303), not a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_client_reads_the_early_answer_to_a_large_upload() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let script = r#"
import http.client, sys
port, path, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
try:
    c.request("POST", path, body=b"x" * size)
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
    c.request("POST", "/all", body=b"0123456789")
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
except Exception as e:
    print("error", type(e).__name__, e)
"#;
    let port = proxy.addr.port().to_string();
    for (path, size) in [
        ("/early", 8 << 20),
        ("/early-close", 8 << 20),
        ("/partial", 8 << 20),
    ] {
        let (script, port, size) = (script.to_string(), port.clone(), size.to_string());
        let output = blocking(move || {
            Command::new("python3")
                .args(["-c", &script, &port, path, &size])
                .output()
                .unwrap()
        })
        .await;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let expected = match path {
            "/partial" => "303 \n200 got 10\n",
            _ => "401 no credentials\n200 got 10\n",
        };
        assert_eq!(text, expected, "{path}");
    }
}

/// curl, with its `Expect: 100-continue` (the proxy answers 100 itself) and without:
/// the early 401 promptly, and the exit status of a complete transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_the_early_answer_to_a_large_upload() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let file = std::env::temp_dir().join(format!("review-sk-{}.bin", std::process::id()));
    std::fs::write(&file, vec![b'x'; 8 << 20]).unwrap();
    for expect in ["Expect: 100-continue", "Expect:"] {
        for path in ["/early", "/early-close", "/all"] {
            let url = format!("http://{}{path}", proxy.addr);
            let data = format!("@{}", file.display());
            let started = Instant::now();
            let output = blocking({
                let expect = expect.to_string();
                move || {
                    Command::new("curl")
                        .args(["-sS", "--max-time", "10", "-H", &expect])
                        .args(["--data-binary", &data, "-w", "\n%{http_code}", &url])
                        .output()
                        .unwrap()
                }
            })
            .await;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let expected = match path {
                "/all" => format!("got {}\n\n200", 8 << 20),
                _ => "no credentials\n\n401".to_string(),
            };
            assert_eq!(
                text,
                expected,
                "{expect} {path}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(started.elapsed() < PROMPT, "{expect} {path}");
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// hyper's client, which writes the body as the connection lets it and reads the answer
/// meanwhile: the early 401 for 8 MiB, and ordinary uploads (both framings) whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_uploads_and_early_answers() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for (path, expected) in [
        ("/early", "401 no credentials\n".to_string()),
        ("/all", format!("200 got {}\n", 8 << 20)),
    ] {
        for method in ["POST", "PUT"] {
            let request = http::Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", proxy.addr))
                .body(Full::new(Bytes::from(vec![b'x'; 8 << 20])))
                .unwrap();
            let response = tokio::time::timeout(PROMPT, client.request(request))
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: no answer in time"))
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            let status = response.status().as_u16();
            let body = tokio::time::timeout(PROMPT, response.into_body().collect())
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            let text = format!("{status} {}", String::from_utf8_lossy(&body));
            assert_eq!(text, expected, "{method} {path}");
        }
    }
}

/// Ordinary uploads, the origin reading everything before it answers: every size, both
/// framings, with and without `Expect: 100-continue`, on one kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_uploads_are_whole_and_prompt() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let addr = proxy.addr;
    for size in SIZES {
        for chunked in [false, true] {
            let (first, second) =
                blocking(move || write_all_then_read(addr, "/all", size, chunked))
                    .await
                    .unwrap_or_else(|err| panic!("{size} chunked={chunked}: {err}"));
            assert_eq!(first.status, 200);
            assert_eq!(first.body, format!("got {size}\n").as_bytes());
            assert_eq!(second, Some(200));
        }
    }
    // 100-continue, as a careful client sends it: the head, the 100, then the body.
    let outcome = blocking(move || -> Result<Answer, String> {
        let mut stream = std::net::TcpStream::connect(addr).map_err(|err| err.to_string())?;
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        let size = 256 * 1024;
        let head = format!(
            "PUT /all HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\nContent-Length: {size}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).map_err(|err| err.to_string())?;
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).map_err(|err| err.to_string())?;
        if !interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n") {
            return Err(format!("no 100: {:?}", String::from_utf8_lossy(&interim)));
        }
        stream
            .write_all(&vec![b'x'; size])
            .map_err(|err| err.to_string())?;
        read_answer(&mut stream)
    })
    .await
    .unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.body, format!("got {}\n", 256 * 1024).as_bytes());
}

/// An HTTP/2 client (the h2 crate) that sends its whole 8 MiB body before it looks at the
/// answer: the early 401 reaches it, and the stream ends without an error. (For a 401
/// longer than its receive window, it reads as it sends, as HTTP/2 clients do.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_sends_everything_first_gets_the_early_answer() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for path in ["/early", "/early-long", "/all"] {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://shop.example{path}"))
            .body(())
            .unwrap();
        sender = sender.ready().await.unwrap();
        let (response, mut stream) = sender.send_request(request, false).unwrap();
        let send_all = async {
            let mut left: usize = 8 << 20;
            while left > 0 {
                stream.reserve_capacity(left.min(64 * 1024));
                let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(granted)) => granted,
                    // The stream reset (NO_ERROR: the server has its whole answer out).
                    _ => return false,
                };
                if granted == 0 {
                    continue;
                }
                if stream
                    .send_data(Bytes::from(vec![b'x'; granted]), granted == left)
                    .is_err()
                {
                    return false;
                }
                left -= granted;
            }
            true
        };
        let read_answer = async {
            let response = tokio::time::timeout(PROMPT, response)
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer in time"))
                .unwrap_or_else(|err| panic!("{path}: {err}"));
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap_or_else(|err| panic!("{path}: {err}"));
                let _ = body.flow_control().release_capacity(data.len());
                bytes.extend_from_slice(&data);
            }
            (status, bytes)
        };
        let sending = async {
            tokio::time::timeout(PROMPT, send_all)
                .await
                .unwrap_or_else(|_| panic!("{path}: the body's sending hung"))
        };
        let (sent_all, (status, bytes)) = if path == "/early-long" {
            // An answer larger than the client's receive window (64 KiB) completes only
            // as the client reads it, and until then its stream's body need not be read
            // (RFC 9113 §8.1): a client that sent all first would wait on a server that
            // waits on it. HTTP/2 clients read as they send (curl, Go's, browsers).
            tokio::join!(sending, read_answer)
        } else {
            let sent_all = sending.await;
            (sent_all, read_answer.await)
        };
        let text = format!("{status} {}", String::from_utf8_lossy(&bytes));
        match path {
            "/early" => assert_eq!(text, "401 no credentials\n"),
            "/early-long" => assert_eq!((status, bytes.len()), (401, LONG)),
            _ => {
                assert!(sent_all);
                assert_eq!(text, format!("200 got {}\n", 8 << 20));
            }
        }
    }
}

/// What is read and dropped after an early answer is bounded: a client that stops
/// sending its body once answered (a slow loris) has its connection closed after the
/// discard's pause (5 s), not held for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_after_its_early_answer_is_let_go() {
    let origin = RawOrigin::start(serve).await;
    let proxy = proxy_before(&origin).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /early HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1048576\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'x'; 100 * 1024]).await.unwrap();
    let mut buffer = Vec::new();
    while find(&buffer, EARLY).is_none() {
        let read = tokio::time::timeout(PROMPT, more(&mut client, &mut buffer)).await;
        assert_eq!(read, Ok(true), "no early answer: {buffer:?}");
    }
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while more(&mut client, &mut buffer).await {}
    })
    .await;
    assert!(ended.is_ok(), "the paused client's connection was kept");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "closed before the pause allowed"
    );
}
