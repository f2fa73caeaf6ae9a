//! Review SV: an adversarial second look at three changes. ST (a server that refuses a
//! write every server must take for lack of memory has the key deleted instead of being
//! marked down), SU (an unsafe request's invalidation as counted background work its
//! response waits for), and the proxy's watch over origin response heads (SQ, and the
//! head parsed again only when a line end arrives).
//!
//! The defects found are in the last. The watch over an origin connection's response
//! heads started again on any write after a read that began with a request line, and the
//! rest of an upload written while its answer streams back (an echo) is such a write when the
//! client's body holds one. The answer's body was then read as heads: held while it
//! looked like an unfinished one, and rewritten (`Connection: close` injected) when it
//! looked like one framed two ways. And `Connection: close` went after the first line
//! end of a head framed two ways, before its status line when an empty line came first
//! (hyper skips it), which made hyper fail the answer.

#![cfg(feature = "proxy")]

use crate::support;

use std::time::Duration;

use support::origin::RawOrigin;
use support::proxy::start_proxy;
use support::raw_http::{find, more, next_head};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the echo origin sends back as its answer's one chunk: text that reads as a 204
/// framing a body by its length (a page about HTTP, an echoed capture).
const ECHOED: &str = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";

/// The rest of the client's upload, sent once the answer has begun: it starts with a
/// request line (the body is a capture of HTTP requests, say).
const REST: &str = "GET / HTTP/1.1\r\n\r\n";

/// The first part of the upload.
const FIRST: &str = "hello";

/// An origin that answers a POST at once with a chunked answer whose one chunk's size
/// line comes first, reads the whole body, then sends the chunk's data ([`ECHOED`]) and
/// the last chunk.
async fn echo_origin() -> RawOrigin {
    RawOrigin::start(|mut stream: TcpStream| async move {
        let mut buffer = Vec::new();
        if next_head(&mut stream, &mut buffer).await.is_none() {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            ECHOED.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        while buffer.len() < FIRST.len() + REST.len() {
            if !more(&mut stream, &mut buffer).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest = format!("{ECHOED}\r\n0\r\n\r\n");
        let _ = stream.write_all(rest.as_bytes()).await;
        // Held open: the answer is framed, the connection is not closed by the origin.
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await
}

/// A client that streams its upload and reads the answer as it comes (an echo) gets the
/// answer's body as the origin sent it, whatever the upload holds: the rest of an
/// upload is no new request, and the answer's body no head.
#[tokio::test]
async fn the_rest_of_an_upload_starting_with_a_request_line_leaves_the_answer_body_alone() {
    let origin = echo_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{FIRST}",
        FIRST.len() + REST.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // The answer's head, before the rest is sent.
    let mut received = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(end) = find(&received, b"\r\n\r\n") {
                return end;
            }
            assert!(more(&mut client, &mut received).await, "no answer head");
        }
    })
    .await
    .expect("the answer's head within 5 s");
    let answer_head = String::from_utf8_lossy(&received[..end]).into_owned();
    assert!(answer_head.starts_with("HTTP/1.1 200"), "{answer_head}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(REST.as_bytes()).await.unwrap();
    // The body, until the last chunk (or 3 s).
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while find(&received[end..], b"\r\n0\r\n\r\n").is_none() {
            if !more(&mut client, &mut received).await {
                return;
            }
        }
    })
    .await;
    let body = String::from_utf8_lossy(&received[end + 4..]).into_owned();
    assert!(
        !body.contains("Connection: close"),
        "the answer's body was rewritten: {body:?}"
    );
    assert!(
        body.contains(ECHOED) && body.ends_with("\r\n0\r\n\r\n"),
        "the answer's body, whole and unchanged: {body:?}"
    );
}

/// An origin that answers every request with a 204 framing a body by its length, the
/// status line after an empty line (which hyper, as httparse, skips), and closes.
async fn leading_empty_line_origin() -> RawOrigin {
    RawOrigin::start(|mut stream: TcpStream| async move {
        let mut buffer = Vec::new();
        if next_head(&mut stream, &mut buffer).await.is_none() {
            return;
        }
        let answer = "\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello";
        let _ = stream.write_all(answer.as_bytes()).await;
    })
    .await
}

/// `Connection: close` goes after the status line of a head framed two ways, found as
/// hyper finds it: after the empty lines before it. Put after the first line end (the
/// empty line's), it stood before the status line, and hyper failed an answer it reads
/// (a 502 where the 204 was due).
#[tokio::test]
async fn a_head_framed_two_ways_after_an_empty_line_is_still_answered() {
    let origin = leading_empty_line_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let (status, response) =
        support::proxy::raw(&proxy, "GET /empty HTTP/1.1\r\nHost: example.com\r\n").await;
    assert_eq!(status, 204, "{response:?}");
}
