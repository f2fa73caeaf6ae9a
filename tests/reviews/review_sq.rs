//! Review SQ: a second look at reviews SP and SM. SP keeps from the pool an origin
//! connection whose answer framed a body it did not carry (`Content-Length` beside
//! `Transfer-Encoding`, a 204 or 1xx naming a body), but retired it only once the answer
//! reached `forward`: by then hyper had put a bodiless answer's connection back in the
//! pool, and on a runtime of several threads another request could take it meanwhile,
//! its answer then the rest of the body the origin framed. The tests here race that
//! window with requests of their own, as any client can.
//!
//! Also looked at and found to hold (see the report): `Carriers` on the retry, the other
//! heads hyper reads without a body (304, HEAD, `Content-Length: 0`), SM's local purge
//! records (bounded, matched by the generation alone), and this morning's four moves.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::desync::{EVIL, get, path_of};
use support::origin::RawOrigin;
use support::proxy::start_proxy;
use support::raw_http::{next_request, ok};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An origin that answers `/empty…` with a 204 framing `EVIL` by its length, and
/// `/split…` with a page whose `Content-Length` frames a last chunk and `EVIL` after it,
/// `EVIL` sent a moment after the rest (as gunicorn writes what a page yields); every
/// other path with a page of its own at once; one request at a time per connection;
/// stopped when dropped.
async fn origin() -> RawOrigin {
    RawOrigin::start(serve).await
}

/// What the origin writes at once for `path`, if it writes `EVIL` after it.
fn framing_evil(path: &str) -> Option<String> {
    let last_chunk = "0\r\n\r\n";
    if path.starts_with("/empty") {
        Some(format!(
            "HTTP/1.1 204 No Content\r\nContent-Length: {}\r\n\r\n",
            EVIL.len()
        ))
    } else if path.starts_with("/split") {
        Some(format!(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{last_chunk}",
            last_chunk.len() + EVIL.len()
        ))
    } else {
        None
    }
}

async fn serve(mut stream: TcpStream) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_request(&mut stream, &mut buffer).await else {
            return;
        };
        let path = path_of(&head);
        let written = if let Some(first) = framing_evil(path) {
            if stream.write_all(first.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            stream.write_all(EVIL.as_bytes()).await
        } else {
            let page = ok("Cache-Control: no-store\r\n", &format!("page {path}"));
            stream.write_all(page.as_bytes()).await
        };
        if written.is_err() {
            return;
        }
    }
}

/// Asks for `page` (`/empty` or `/split`, numbered) again and again while six clients
/// keep requests of their own going through a proxy on two threads; how many of theirs
/// were answered `EVIL`, and after how many tries (stopped at the first).
async fn race(page: &str, tries: usize) -> (usize, usize) {
    let origin = origin().await;
    let proxy = Arc::new(start_proxy(origin.addr, &["--threads", "2"]));
    let stop = Arc::new(AtomicBool::new(false));
    let stolen = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for task in 0..6 {
        let (proxy, stop, stolen) = (Arc::clone(&proxy), Arc::clone(&stop), Arc::clone(&stolen));
        flood.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (_, body) = get(&proxy, &format!("/victim-{task}-{round}")).await;
                if body.contains("EVIL") {
                    stolen.fetch_add(1, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                }
                round += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tried = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && tried < tries {
        let (status, body) = get(&proxy, &format!("{page}{tried}")).await;
        assert!(
            status == 204 || status == 200,
            "{page}{tried}: {status} {body:?}"
        );
        assert!(!body.contains("EVIL"), "{page}{tried}: {body:?}");
        tried += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    (stolen.load(Ordering::Relaxed), tried)
}

/// SP retired a connection whose 204 framed a body once the 204 reached `forward`, but
/// hyper had put it back in the pool already (a bodiless answer's connection is idle at
/// its head), and with two threads a request under way on the other took it in between.
/// Its answer was the body the 204 framed, come once that request had gone out: a
/// client that keeps requests going while it asks for such a page won within a dozen
/// tries. hyper now reads such a head with `Connection: close`, and never pools it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_no_content_answer_framing_a_body_never_answers_a_request_racing_it() {
    let (stolen, tried) = race("/empty", 1000).await;
    assert_eq!(
        stolen, 0,
        "a request racing the 204 was answered with its body ({tried} tries)"
    );
}

/// The same for a page whose `Content-Length` goes on past the last chunk hyper reads
/// (`Transfer-Encoding` beside it): a small chunked body is read whole with its head,
/// and its connection is idle before the answer reaches `forward`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_framed_two_ways_never_answers_a_request_racing_it() {
    let (stolen, tried) = race("/split", 1000).await;
    assert_eq!(
        stolen, 0,
        "a request racing the page was answered with the rest ({tried} tries)"
    );
}
