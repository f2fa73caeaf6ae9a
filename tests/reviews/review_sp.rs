//! Review SP: the origin's response framing and informational responses, as a tenant of a
//! shared origin (a PHP, CGI or WSGI page that sets its own header fields and body bytes)
//! would try them against `tower-memcache-proxy`'s pooled origin connections and the
//! entries stored for them: bytes after a framed body, `Content-Length` beside
//! `Transfer-Encoding`, bodies on answers that have none (1xx, 204), bodies cut short or
//! reset, chunk sizes hyper refuses. For each: what the next clients, whose requests go
//! out on the pooled origin connection, are answered, and what is stored under their
//! keys. The tests here are the defects found: a head that frames a body two ways, whose
//! connection went on to answer the next request with the rest of that body.
//!
//! The origin is a raw TCP server (`support::origin::RawOrigin`) whose script says, per
//! request head, what to write and when.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::desync::{EVIL, cached, get, own_page, path_of};
use support::origin::RawOrigin;
use support::proxy::{Proxy, start_proxy};
use support::raw_http::next_request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the origin writes for one request head, each write after its pause.
struct Answer(Vec<(Duration, Vec<u8>)>);

impl Answer {
    fn now(bytes: impl Into<Vec<u8>>) -> Self {
        Self(vec![(Duration::ZERO, bytes.into())])
    }

    fn then(mut self, pause: Duration, bytes: impl Into<Vec<u8>>) -> Self {
        self.0.push((pause, bytes.into()));
        self
    }
}

type Script = dyn Fn(&str) -> Answer + Send + Sync;

/// A raw origin on a loopback port answering each request head read (its body skipped) as
/// `script` says, one request at a time per connection, as a worker does; stopped when
/// dropped.
async fn raw_origin(script: impl Fn(&str) -> Answer + Send + Sync + 'static) -> RawOrigin {
    let script: Arc<Script> = Arc::new(script);
    RawOrigin::start(move |stream| serve(stream, Arc::clone(&script))).await
}

async fn serve(mut stream: TcpStream, script: Arc<Script>) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_request(&mut stream, &mut buffer).await else {
            return;
        };
        for (pause, bytes) in script(&head).0 {
            tokio::time::sleep(pause).await;
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

/// The page every path gets unless a script says otherwise.
fn own(head: &str) -> Answer {
    Answer::now(own_page(head))
}

/// The next client's `victim`, asked while the rest of a body the origin framed is on its
/// way: answered its own page (or a 502), and half a second later, nothing but its own
/// page stored under its key. `context` begins the failure messages.
async fn next_gets_its_own(proxy: &Proxy, victim: &str, context: &str) {
    let (status, body) = get(proxy, victim).await;
    assert!(
        status == 502 || body == format!("page {victim}"),
        "{context}{victim} was answered {status} {body:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = cached(proxy, victim).await;
    assert!(
        status == 504 || body == format!("page {victim}"),
        "{context}{victim} stored {body:?}"
    );
}

/// `Content-Length` beside `Transfer-Encoding: chunked` (RFC 9112 §6.3: "might indicate an
/// attempt to perform ... response splitting and ought to be handled as an error"). A
/// tenant's page that names `Transfer-Encoding: chunked` itself, on an origin server that
/// frames the page by its own `Content-Length`, ends where the proxy reads a last chunk
/// while the origin's framing goes on: the rest of the body (a whole response) came after
/// the proxy had put the connection back in its pool and sent the next client's request
/// there, and answered that request, and was stored under its key for everyone. nginx
/// refuses such a response ("upstream sent "Content-Length" and "Transfer-Encoding"
/// headers at the same time"); the proxy forwards it as chunked (`review_j`) but no longer
/// uses its connection again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_framed_two_ways_never_answers_the_next_request() {
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let origin = raw_origin(move |head| {
        if path_of(head) != "/split" {
            return own(head);
        }
        Answer::now(format!(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{chunked}",
            chunked.len() + EVIL.len()
        ))
        // The rest of what the origin framed by its length, a moment later.
        .then(Duration::from_millis(300), EVIL)
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for round in 0..2 {
        let (status, body) = get(&proxy, "/split").await;
        // Passed on chunked, as hyper read it.
        assert!(
            status == 200 && body.contains("hello") && !body.contains("EVIL"),
            "round {round}: {status} {body:?}"
        );
        // The next client, while the rest of that body is on its way.
        next_gets_its_own(&proxy, &format!("/victim{round}"), "").await;
    }
}

/// A 204 that names a body length (other than 0) or a transfer coding, which no 204 may
/// carry (RFC 9110 §8.6, RFC 9112 §6.1): hyper reads it, rightly, as ending at its head.
/// An origin server that frames a page's 204 by the page's own `Content-Length` (as
/// gunicorn does for a WSGI app that sends one, writing what the app yields as it comes)
/// sends a body after it; what came of it after the next client's request had gone out on
/// the pooled connection answered that request, and was stored under its key. Its
/// connection is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_content_answer_that_frames_a_body_never_answers_the_next_request() {
    let origin = raw_origin(move |head| {
        let framing = match path_of(head) {
            "/empty-length" => format!("Content-Length: {}", EVIL.len()),
            "/empty-chunked" => "Transfer-Encoding: chunked".to_string(),
            _ => return own(head),
        };
        Answer::now(format!("HTTP/1.1 204 No Content\r\n{framing}\r\n\r\n"))
            // The body the origin framed, as the page wrote it, a moment later.
            .then(Duration::from_millis(300), EVIL)
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for path in ["/empty-length", "/empty-chunked"] {
        let (status, body) = get(&proxy, path).await;
        assert_eq!((status, body.as_str()), (204, ""), "{path}");
        next_gets_its_own(&proxy, &format!("/after{path}"), &format!("after {path}: ")).await;
    }
}

/// A 1xx that names a body length or a transfer coding: a 1xx ends at its head (RFC 9110
/// §15.2), and hyper reads what follows as the final answer. An origin server that frames
/// a page's 103 by the page's own `Content-Length` (gunicorn writes what a WSGI app
/// yields for any status) sends the rest of that body later; what came of it after the
/// next client's request had gone out on the pooled connection answered that request, and
/// was stored under its key. Its connection is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informational_answer_that_frames_a_body_never_answers_the_next_request() {
    let origin = raw_origin(move |head| {
        let path = path_of(head);
        if !path.starts_with("/hints") {
            return own(head);
        }
        let own = own_page(head);
        Answer::now(format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
             Content-Length: {}\r\n\r\n{own}",
            own.len() + EVIL.len()
        ))
        // The rest of the body the origin framed, as the page wrote it, a moment later.
        .then(Duration::from_millis(300), EVIL)
    })
    .await;
    let proxy = start_proxy(origin.addr, &[]);
    for round in 0..2 {
        // What came after the 103's head is the final answer to the same request.
        let hints = format!("/hints{round}");
        let (status, body) = get(&proxy, &hints).await;
        assert_eq!((status, body), (200, format!("page {hints}")));
        next_gets_its_own(&proxy, &format!("/after-hints{round}"), "").await;
    }
}
