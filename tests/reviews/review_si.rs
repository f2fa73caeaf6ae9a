//! Review SI: the proxy's uploads against a pausing client, after reviews SB and SF, for
//! an early answer that is CHUNKED.
//!
//! SB ends an upload once the origin's answer to it has ended at the proxy; SF holds the
//! rest of a body back from the head of an answer framed by its length. A chunked early
//! answer (a body read timeout's page, an early 401) still let the upload go on until it
//! ended at the proxy, which is only as fast as the client takes it: a client that stops
//! reading (HTTP/1.1), or keeps its flow-control window shut (HTTP/2), sent the rest of
//! its body, a whole request, on to an origin that had moved on to its next request.
//! Here: those clients, and the full-duplex clients that must not be slowed (an origin
//! that echoes as it reads, its client reading as it sends).
//!
//! The origin is a raw TCP server that records the request heads it reads; an early
//! answer is written by a task of its own while the connection reads on (an origin with
//! a write queue), so what it reads after is seen whatever the answer's size.

use crate::support;
use support::desync::{Heads, SMUGGLED, get, path_of, post, read_until};
use support::h2_frames::{DATA, literal_block};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::h2_frames::{
    END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame, status_of_stream_1,
};
use support::proxy::{Proxy, start_proxy};
use support::raw_http::{find, header_of, more, next_head, ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The size of an early answer no client-side buffer holds whole (the client's small
/// receive buffer, the proxy's send buffer and hyper's write buffer).
const LONG: usize = 8 << 20;

/// A raw origin: `/pause` is answered after 300 ms (its body read timeout) with a
/// chunked 408 of `early` body bytes, the connection reading on without the body;
/// `/echo` streams back each piece of its body as it reads it (chunked), then ends;
/// any other path reads its body and answers `page <path>`.
struct RawOrigin {
    addr: SocketAddr,
    heads: Heads,
    echoed: Arc<Mutex<Vec<u8>>>,
    /// Stops the origin when dropped.
    _serving: support::origin::RawOrigin,
}

impl RawOrigin {
    async fn start(early: usize) -> Self {
        let heads = Heads::default();
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let serving = support::origin::RawOrigin::start({
            let heads = heads.clone();
            let echoed = Arc::clone(&echoed);
            move |stream| serve(stream, early, heads.clone(), Arc::clone(&echoed))
        })
        .await;
        Self {
            addr: serving.addr,
            heads,
            echoed,
            _serving: serving,
        }
    }
}

fn length_of(head: &str) -> usize {
    header_of(head, "content-length")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(0)
}

async fn serve(stream: TcpStream, early: usize, heads: Heads, echoed: Arc<Mutex<Vec<u8>>>) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut reader, &mut buffer).await else {
            return;
        };
        heads.push(head.clone());
        match path_of(&head) {
            "/pause" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                // The answer goes out from a task of its own; the connection reads on.
                let mut writer = Arc::clone(&writer).lock_owned().await;
                tokio::spawn(async move {
                    // The head goes out with the first chunk, in one write: a client that
                    // sends the rest the moment the head came, before any of the body,
                    // is the window SECURITY.md leaves open (it looks like an upload to
                    // an echo); with the two apart the tests raced it (review SZ saw
                    // `xGET /smuggled` reach the origin once on a loaded machine).
                    let mut head =
                        b"HTTP/1.1 408 Request Timeout\r\nTransfer-Encoding: chunked\r\n\r\n"
                            .to_vec();
                    // Chunks well past the 64 KiB an answer may run ahead of the body sent
                    // and still pass for an echo's (`ANSWER_AHEAD`): with chunks of just
                    // that size, a proxy that had passed one and waited for the next (the
                    // origin's task late on a loaded machine) let the rest go on, as it
                    // would to an echo, and the test raced it.
                    let block = vec![b'e'; 256 * 1024];
                    let mut left = early;
                    while left > 0 {
                        let n = left.min(block.len());
                        let chunk =
                            [format!("{n:x}\r\n").as_bytes(), &block[..n], b"\r\n"].concat();
                        let chunk = [std::mem::take(&mut head), chunk].concat();
                        if writer.write_all(&chunk).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    // (With no early body, the head goes with the last chunk.)
                    let _ = writer
                        .write_all(&[head, b"0\r\n\r\n".to_vec()].concat())
                        .await;
                });
            }
            "/echo" => {
                let mut writer = writer.lock().await;
                let answer = "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";
                if writer.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = length_of(&head);
                while left > 0 {
                    if buffer.is_empty() && !more(&mut reader, &mut buffer).await {
                        return;
                    }
                    let piece: Vec<u8> = buffer.drain(..left.min(buffer.len())).collect();
                    left -= piece.len();
                    echoed.lock().unwrap().extend_from_slice(&piece);
                    let chunk =
                        [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
                    if writer.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                if writer.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
            path => {
                let length = length_of(&head);
                while buffer.len() < length {
                    if !more(&mut reader, &mut buffer).await {
                        return;
                    }
                }
                buffer.drain(..length);
                let answer = ok("Cache-Control: no-store\r\n", &format!("page {path}"));
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
        }
    }
}

/// The pause-based desync with a chunked early answer its client does not read: the
/// client reads the answer's head (its cue) and no more, so that the answer never ends
/// at the proxy, and a moment later (the proxy has filled the buffers towards it) sends
/// the rest of its body, a whole request. It went on to the origin, which had written its
/// whole answer and read it as a request the proxy never saw. Once the client takes the
/// whole answer, the held upload ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_early_answer_its_client_does_not_read_lets_no_more_of_the_body_through() {
    let origin = RawOrigin::start(LONG).await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.write_all(SMUGGLED.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        origin.heads.smuggled(),
        Vec::<String>::new(),
        "the rest of the body reached the origin as a request"
    );
    // The client takes the whole answer: the upload, held, ends with it; the connection
    // then answers a next request with that request's page, or closes.
    let mut seen = answered.into_bytes();
    let mut chunk = vec![0u8; 64 * 1024];
    while find(&seen, b"\r\n0\r\n\r\n").is_none() {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                seen.extend_from_slice(&chunk[..n]);
                // Only the tail matters: what is before it is the answer's blocks.
                if seen.len() > 1 << 20 {
                    seen.drain(..seen.len() - 64);
                }
            }
            other => panic!("the answer stopped: {other:?}"),
        }
    }
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
    for path in ["/after1", "/after2"] {
        assert_eq!(get(&proxy, path).await, (200, format!("page {path}")));
    }
    assert_eq!(origin.heads.smuggled(), Vec::<String>::new());
}

/// Reads what the proxy sends until it has sent nothing for `quiet` (5 s at most): a
/// client whose window the answer has filled.
async fn until_quiet(stream: &mut TcpStream, quiet: Duration) {
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// An HTTP/2 POST to `/pause` of the smuggled request's length plus one, its first byte
/// sent, from a client whose SETTINGS are `settings`; the stream once its answer's
/// status came.
async fn h2_paused_post(proxy: &Proxy, settings: &[u8]) -> TcpStream {
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
    bytes.extend_from_slice(&frame(SETTINGS, 0, 0, settings));
    bytes.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, &literal_block(&fields)));
    bytes.extend_from_slice(&frame(DATA, 0, 1, b"x"));
    stream.write_all(&bytes).await.unwrap();
    assert!(
        status_of_stream_1(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "no answer"
    );
    stream
}

/// The same from an HTTP/2 client, which holds the long chunked answer back by flow
/// control (it never opens its window past the first 64 KiB) rather than by not reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_chunked_early_answer_held_back_by_flow_control_lets_no_more_of_the_body_through() {
    let origin = RawOrigin::start(LONG).await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut stream = h2_paused_post(&proxy, &[]).await;
    // Once the proxy has filled the client's window with the answer (it sends nothing
    // more): sent at once after the head, the rest can meet the proxy before any of the
    // answer's body came from the origin, when nothing tells it from an echo waiting for
    // the body (README, "Uploads").
    until_quiet(&mut stream, Duration::from_millis(300)).await;
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

/// A full-duplex exchange: the origin echoes each piece of the body as it reads it, and
/// its client reads the echo as it sends, one piece at a time (of `~`, which no head or
/// chunk line holds), each piece sent only once the previous one came back. Every piece goes through at once (the whole exchange well
/// within a second), the origin gets the whole body and the client the whole echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_duplex_client_that_reads_as_it_sends_is_never_slowed() {
    const PIECE: usize = 16 * 1024;
    const PIECES: usize = 64;
    let origin = RawOrigin::start(0).await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                PIECE * PIECES
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut echoed = 0usize;
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    for piece in 0..PIECES {
        client.write_all(&[b'~'; PIECE]).await.unwrap();
        // Until this piece came back (counted by its bytes in what came).
        let want = PIECE * (piece + 1);
        while echoed < want {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    seen.extend_from_slice(&chunk[..n]);
                    echoed += chunk[..n].iter().filter(|&&b| b == b'~').count();
                }
                other => panic!("piece {piece} never came back ({echoed} bytes did): {other:?}"),
            }
        }
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    seen.extend_from_slice(&rest);
    let elapsed = started.elapsed();
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    assert!(seen.ends_with(b"\r\n0\r\n\r\n"), "the echo did not end");
    assert_eq!(origin.echoed.lock().unwrap().len(), PIECE * PIECES);
    // A held upload waits for `--upstream-timeout` (or a piece's 5 s): far past this,
    // which leaves a loaded CI machine room.
    assert!(elapsed < Duration::from_secs(10), "slowed: {elapsed:?}");
}

/// The same full-duplex exchange from an HTTP/2 client (its windows opened as it reads):
/// every piece goes through at once, the origin gets the whole body and the client the
/// whole echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_full_duplex_client_that_reads_as_it_sends_is_never_slowed() {
    const PIECE: usize = 16 * 1024;
    const PIECES: usize = 64;
    let origin = RawOrigin::start(0).await;
    let proxy = start_proxy(origin.addr, &[]);
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri("http://shop.example/echo")
        .header("content-length", (PIECE * PIECES).to_string())
        .body(())
        .unwrap();
    let (response, mut upload) = sender.send_request(request, false).unwrap();
    let started = Instant::now();
    upload
        .send_data(bytes::Bytes::from(vec![b'~'; PIECE]), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the answer's head within 5 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut echoed = 0usize;
    for piece in 0..PIECES {
        if piece > 0 {
            upload
                .send_data(bytes::Bytes::from(vec![b'~'; PIECE]), piece + 1 == PIECES)
                .unwrap();
        }
        while echoed < PIECE * (piece + 1) {
            match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
                Ok(Some(Ok(data))) => {
                    echoed += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                other => panic!("piece {piece} never came back ({echoed} bytes did): {other:?}"),
            }
        }
    }
    // Its end (an empty DATA frame may carry it).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
            Ok(None) => break,
            Ok(Some(Ok(data))) if data.is_empty() => {}
            other => panic!("the echo did not end: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(echoed, PIECE * PIECES);
    assert_eq!(origin.echoed.lock().unwrap().len(), PIECE * PIECES);
    // A held upload waits for `--upstream-timeout` (or a piece's 5 s): far past this,
    // which leaves a loaded CI machine room.
    assert!(elapsed < Duration::from_secs(10), "slowed: {elapsed:?}");
    connection.abort();
}

/// A client whose upload is held (it stopped reading a chunked early answer) and that
/// then goes away holds nothing: its request's place at the origin (one, with
/// `--upstream-max-connections 1`) is given back, and the next client is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_its_upload_is_held_holds_no_place_at_the_origin() {
    let origin = RawOrigin::start(LONG).await;
    let proxy = start_proxy(origin.addr, &["--upstream-max-connections", "1"]);
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client);
    let next = tokio::time::timeout(Duration::from_secs(5), get(&proxy, "/after")).await;
    assert_eq!(next.ok(), Some((200, "page /after".to_string())));
    assert_eq!(origin.heads.smuggled(), Vec::<String>::new());
}

/// A client that reads a long chunked early answer as it comes and sends the rest of its
/// body, a whole request, once a megabyte of it came: the proxy, passing the answer on,
/// waits for the origin between its frames (the client keeps up), but the answer runs far
/// ahead of the body sent: it is no answer to the body, and the rest is held, then cut
/// once the answer ended. The client gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chunked_early_answer_its_client_reads_lets_no_more_of_the_body_through() {
    let origin = RawOrigin::start(LONG).await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(post("/pause", SMUGGLED.len() + 1, "x").as_bytes())
        .await
        .unwrap();
    let mut came = 0usize;
    let mut sent = false;
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while find(&tail, b"\r\n0\r\n\r\n").is_none() {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                came += n;
                tail.extend_from_slice(&chunk[..n]);
                tail.drain(..tail.len().saturating_sub(64));
            }
            other => panic!("the answer stopped after {came} bytes: {other:?}"),
        }
        if came > 1 << 20 && !sent {
            sent = true;
            let _ = client.write_all(SMUGGLED.as_bytes()).await;
        }
    }
    assert!(came > LONG, "{came}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        origin.heads.smuggled(),
        Vec::<String>::new(),
        "the rest of the body reached the origin as a request"
    );
}
