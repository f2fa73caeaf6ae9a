//! Review TB: an adversarial second look at review SW. The proxy follows each request it
//! writes to its origin byte by byte (`request_writes`), and a request that leaves the
//! framing it follows ("lost") fails every later write on its origin connection: here a
//! client shapes its request (HTTP/1.1 and HTTP/2) so that an honest request of its own,
//! or of someone else on the pooled connection, is failed; and looks at what the proxy
//! forwards of a request's framing.

#![cfg(feature = "proxy")]

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::h2_frames::{
    END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame, literal_block, status_of_stream_1,
};
use support::origin::RawOrigin;
use support::proxy::{raw, start_proxy};
use support::raw_http::{find, more};

/// The heads an origin was sent, in order.
type Heads = Arc<Mutex<Vec<String>>>;

/// An origin that keeps its connections alive and answers each bodiless request with a
/// small page it does not let be stored, taking any `Content-Length` it is sent for no
/// body (as some servers read an empty one); the heads it read.
async fn keep_alive_origin() -> (RawOrigin, Heads) {
    let heads = Heads::default();
    let seen = Arc::clone(&heads);
    let origin = RawOrigin::start(move |mut stream: TcpStream| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buffer = Vec::new();
            loop {
                let end = loop {
                    if let Some(end) = find(&buffer, b"\r\n\r\n") {
                        break end;
                    }
                    if !more(&mut stream, &mut buffer).await {
                        return;
                    }
                };
                let head: Vec<u8> = buffer.drain(..end + 4).collect();
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let answer =
                    "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 4\r\n\r\npage";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (origin, heads)
}

/// An honest GET, the status and body of its answer.
async fn honest(proxy: &support::proxy::Proxy, path: &str) -> (u16, String) {
    raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n"),
    )
    .await
}

/// `Content-Length` is `1*DIGIT` (RFC 9110 §8.6): leading zeros are valid, hyper takes
/// them, and forwarded the field as the client wrote it. A bodiless GET whose length was
/// written with more zeros than the watch keeps of a head line left its request "lost"
/// once written whole: its answer came back, its connection went back to the pool, and
/// the next request on it (anyone's) failed at its first write: a 502 for a client that
/// did nothing wrong, as often as the attacker sent such a GET.
#[tokio::test]
async fn a_length_written_with_leading_zeros_fails_no_later_request() {
    let (origin, heads) = keep_alive_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let zeros = "0".repeat(60);
    for round in 0..3 {
        let (status, body) = raw(
            &proxy,
            &format!(
                "GET /zeros/{round} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {zeros}\r\n"
            ),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "page"), "the zeros' own GET");
        let (status, body) = honest(&proxy, &format!("/honest/{round}")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "page"),
            "an honest GET after one whose length had leading zeros (round {round})"
        );
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 6, "{heads:?}");
    // The origin reads the length as the proxy framed the request.
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("\r\ncontent-length: 0\r\n"),
        "{:?}",
        heads[0]
    );
}

/// An HTTP/2 client's empty `content-length`, which h2 reads as 0: forwarded as sent, to
/// an origin that takes it for no body (as the stand-in here does), it too left the
/// request "lost" and its pooled connection failing the next client's request.
#[tokio::test]
async fn an_h2_empty_length_fails_no_later_request() {
    let (origin, heads) = keep_alive_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    for round in 0..3 {
        let path = format!("/empty/{round}");
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"example.com"),
            (b":path", path.as_bytes()),
            (b"content-length", b""),
        ];
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        bytes.extend_from_slice(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &literal_block(&fields),
        ));
        client.write_all(&bytes).await.unwrap();
        // 0x88: `:status: 200`, indexed.
        assert_eq!(
            status_of_stream_1(&mut client, Duration::from_secs(5)).await,
            Some(0x88),
            "the empty length's own GET"
        );
        let (status, body) = honest(&proxy, &format!("/honest/{round}")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "page"),
            "an honest GET after an HTTP/2 one with an empty length (round {round})"
        );
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 6, "{heads:?}");
}

/// `bytes` sent as they are on a connection of their own; the whole answer, as text.
async fn exchange(proxy: &support::proxy::Proxy, bytes: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answered within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request body whose `Transfer-Encoding` names a coding besides its one `chunked`
/// (`gzip, chunked`, `chunked, chunked`): hyper undoes the chunking only, and the proxy
/// dropped the hop-by-hop field, so the origin got the still-coded bytes as the
/// representation (a gzip stream handed to a JSON or form parser, a body checked by its
/// digest), with nothing saying so. RFC 9112 §6.1: a server that receives a transfer
/// coding it does not understand SHOULD answer 501, as nginx does; the response side is a
/// 502 already.
#[tokio::test]
async fn a_request_body_left_coded_by_its_transfer_coding_is_not_forwarded() {
    let (origin, heads) = keep_alive_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    for codings in ["gzip, chunked", "chunked, chunked", "x-custom, chunked"] {
        let answer = exchange(
            &proxy,
            format!(
                "POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: {codings}\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 501 "),
            "{codings}: {:?}",
            &answer[..answer.len().min(120)]
        );
    }
    // Only `chunked` is forwarded, as chunked.
    let answer = exchange(
        &proxy,
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    // (The stand-in reads no body: its last chunk may read as a head of its own.)
    let heads = heads.lock().unwrap().clone();
    let posts: Vec<_> = heads
        .iter()
        .filter(|head| head.starts_with("POST"))
        .collect();
    assert_eq!(posts.len(), 1, "{heads:?}");
    assert!(
        posts[0]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{heads:?}"
    );
}
