//! Review SN: an adversarial second look at review SK (the rest of an upload the origin
//! no longer takes is read and dropped, bounded) and at the upload holds of reviews SF
//! and SI, as a resource attacker and as a desync attacker: what a held or discarded
//! upload keeps busy (a connection, an origin connection and its place), for how long,
//! and whether anything of it reaches the origin (an HTTP/2 upload its client reset
//! among it).
//!
//! The origin is a raw TCP server: `/early-long` answers 401 on the head with a body of
//! 4 MiB framed by its length, without reading the request's body, and reads on (an
//! origin that keeps its connection); any other path reads its body (by
//! `Content-Length`, or chunked) and answers `page <path>`, noting that it had it whole.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::desync::{get, path_of};
use support::h2_frames::{
    DATA, END_HEADERS, HEADERS, PREFACE, RST_STREAM, SETTINGS, frame, literal_block,
    status_of_stream_1,
};
use support::proxy::start_proxy;
use support::raw_http::{find, more, next_head, ok, skip_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// The early answer's body: more than any window or buffer on the way holds.
const LONG: usize = 4 << 20;

struct RawOrigin {
    addr: SocketAddr,
    /// The paths of the requests whose bodies the origin read whole.
    whole: Arc<Mutex<Vec<String>>>,
    /// Stops the origin when dropped.
    _serving: support::origin::RawOrigin,
}

impl RawOrigin {
    async fn start() -> Self {
        let whole = Arc::new(Mutex::new(Vec::new()));
        let serving = support::origin::RawOrigin::start({
            let whole = Arc::clone(&whole);
            move |stream| serve(stream, Arc::clone(&whole))
        })
        .await;
        Self {
            addr: serving.addr,
            whole,
            _serving: serving,
        }
    }
}

async fn serve(mut stream: TcpStream, whole: Arc<Mutex<Vec<String>>>) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        let path = path_of(&head).to_string();
        if path == "/early-long" {
            let mut answer =
                format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
            answer.extend(std::iter::repeat_n(b'n', LONG));
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        if !skip_body(&mut stream, &mut buffer, &head).await {
            return;
        }
        whole.lock().unwrap().push(path.clone());
        let answer = ok("", &format!("page {path}"));
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Keeps `client`, an HTTP/2 connection, alive as a live client does (it acknowledges
/// the proxy's PINGs) while taking nothing, and sends a PING of its own every 20 ms;
/// whether the proxy closed the connection within `within`.
async fn pings_until_closed(client: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return false,
            _ = ticks.tick() => {
                sent += 1;
                if client.write_all(&frame(PING, 0, 0, &sent.to_be_bytes())).await.is_err() {
                    return true;
                }
            }
            read = client.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => n,
                };
                buffer.extend_from_slice(&chunk[..n]);
                while buffer.len() >= 9 {
                    let len = (buffer[0] as usize) << 16
                        | (buffer[1] as usize) << 8
                        | buffer[2] as usize;
                    if buffer.len() < 9 + len {
                        break;
                    }
                    // The proxy's own keep-alive PING: acknowledged.
                    if buffer[3] == PING && buffer[4] & ACK == 0 {
                        let ack = frame(PING, ACK, 0, &buffer[9..9 + len]);
                        if client.write_all(&ack).await.is_err() {
                            return true;
                        }
                    }
                    buffer.drain(..9 + len);
                }
            }
        }
    }
}

/// An HTTP/2 client that keeps its receive window shut (`SETTINGS_INITIAL_WINDOW_SIZE`
/// 0: it takes not a byte of any answer) and sends a PING every 20 ms, which the proxy
/// acknowledges: 17 bytes written each. The proxy's stalled-client watch counted every
/// byte written to the socket as the client taking its responses, so those
/// acknowledgements (850 bytes a second here; two PINGs a second pass the default 30 s
/// period's 1 KiB) kept a client that took nothing from ever being closed as stalled
/// (SECURITY.md: "takes less than 1 KiB of them in a whole `--client-header-timeout`
/// ... is closed"). Here its POST got an early answer framed by its length: the upload
/// is held until that answer ends, which it never does, so the origin connection and its
/// place (`--upstream-max-connections 1`) were held for as long as the client liked, and
/// every other client got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_takes_nothing_but_pings_is_closed_as_stalled() {
    let origin = RawOrigin::start().await;
    let proxy = start_proxy(
        origin.addr,
        &[
            "--client-header-timeout",
            "2s",
            "--upstream-max-connections",
            "1",
            "--upstream-queue-timeout",
            "500ms",
        ],
    );
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"shop.example"),
        (b":path", b"/early-long"),
        (b"content-length", b"1048576"),
    ];
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0.
    bytes.extend_from_slice(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    bytes.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, &literal_block(&fields)));
    bytes.extend_from_slice(&frame(DATA, 0, 1, &[b'x'; 1024]));
    client.write_all(&bytes).await.unwrap();
    assert!(
        status_of_stream_1(&mut client, Duration::from_secs(5))
            .await
            .is_some(),
        "no early answer"
    );
    // Two `--client-header-timeout` periods, and one more for the watch's tick: by then
    // a stalled client is gone, and its place at the origin free.
    let pinging =
        tokio::spawn(async move { pings_until_closed(&mut client, Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let next = tokio::time::timeout(Duration::from_secs(5), get(&proxy, "/after")).await;
    let closed = pinging.await.unwrap();
    assert_eq!(
        (closed, next.ok()),
        (true, Some((200, "page /after".to_string()))),
        "a client that took nothing of its answer was kept (and the next client answered?)"
    );
}

/// An HTTP/2 client that sends part of its POST's body and then resets the stream with
/// `NO_ERROR`. hyper hands such a reset over as the body's END: without a length, the
/// proxy ended the chunked body it was sending on, and the origin took the cut upload
/// for a whole one (a file stored short, a form without its last fields); with one, the
/// origin connection failed on the short body and the proxy answered 502 and warned of
/// an upstream failure, the client's doing blamed on the origin. A stream reset before
/// its END_STREAM is a broken body: the origin never gets an end for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upload_reset_with_no_error_is_no_whole_body() {
    let origin = RawOrigin::start().await;
    let (proxy, log) = support::proxy::start_proxy_with_log(origin.addr, &[]);
    for length in [None, Some("100")] {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"shop.example"),
            (b":path", b"/upload"),
        ];
        if let Some(length) = length {
            fields.push((b"content-length", length.as_bytes()));
        }
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        bytes.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, &literal_block(&fields)));
        bytes.extend_from_slice(&frame(DATA, 0, 1, &[b'x'; 10]));
        client.write_all(&bytes).await.unwrap();
        // The ten bytes on their way to the origin first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // RST_STREAM, NO_ERROR.
        client
            .write_all(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 0]))
            .await
            .unwrap();
        let line = log
            .recv_timeout(Duration::from_secs(5))
            .expect("an access log line");
        assert!(!line.contains("\" 502 "), "{length:?}: {line}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            origin.whole.lock().unwrap().clone(),
            Vec::<String>::new(),
            "{length:?}: the origin took the cut upload for a whole one"
        );
    }
}

/// A client that writes its whole body before it reads (Python's http.client, Go's, a
/// form post) gets the answers the proxy makes itself before the origin sees a request:
/// 405 for TRACE, 400 for a `Host` it refuses, 508 for a request come back through it.
/// Review SK reads and drops the rest of a body the origin no longer takes; these bodies
/// were dropped unread, hyper closed the connection with them unread, and the client's
/// write failed on the reset before it read a byte of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_body_first_reads_the_proxys_own_refusal() {
    let origin = RawOrigin::start().await;
    let proxy = start_proxy(origin.addr, &[]);
    let size = 8 << 20;
    for (head, status) in [
        ("TRACE /x HTTP/1.1\r\nHost: shop.example\r\n", "405"),
        ("POST /x HTTP/1.1\r\nHost: shop.example/a\r\n", "400"),
    ] {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let mut request = format!("{head}Content-Length: {size}\r\n\r\n").into_bytes();
        request.extend(std::iter::repeat_n(b'x', size));
        let written = tokio::time::timeout(Duration::from_secs(10), client.write_all(&request))
            .await
            .expect("the body's writing hung");
        assert!(written.is_ok(), "{head:?}: {written:?}");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while find(&answer, b"\r\n").is_none() && more(&mut client, &mut answer).await {}
        })
        .await;
        let line = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{head:?}: {line:?}"
        );
    }
}
