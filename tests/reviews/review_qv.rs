//! Review QV: an adversarial second look at reviews QR (a receipt `Date`, `Via`, a wait
//! that ends on an unusable entry looks again) and QU (a refresh keeps out what the
//! stored response's own lists kept out; the revalidating client gets its 304's kept-out
//! fields; a `Range` request's non-200 is not stored).
//!
//! Each test fails if the defect it names returns.

use crate::support;

use http::{Method, StatusCode};
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, MemcacheLayer};

use support::scripted_service::Origin;
use support::{Watch, send};

fn cache(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend)
        .namespace("review-qv")
        .mode(CacheMode::Origin)
}

/// Attack (hostile origin, QU's 304 path): the stored page's `no-cache="…"` names the
/// message's framing and connection fields (`Content-Length`, `Transfer-Encoding`,
/// `Content-Range`, and a field its 304's `Connection` names), so none is stored and the
/// answer from the entry carries none of its own; the 304 that refreshes it carries
/// `Content-Length: 1`, `Transfer-Encoding: chunked`, a `Content-Range` and a
/// connection-only field. The revalidating client's 200 got all of them appended: a
/// length that framed the 11-byte body as 1 (the rest read as the next response on a
/// kept-alive connection), a transfer coding beside it, a range on a whole body.
#[tokio::test]
async fn a_304_cannot_hand_its_framing_fields_to_the_revalidating_clients_200() {
    let origin = Origin::new(|request| {
        let mut lines = vec![
            ("etag", "\"v1\"".to_string()),
            (
                "cache-control",
                "max-age=0, no-cache=\"content-length, transfer-encoding, content-range, x-hop\""
                    .to_string(),
            ),
        ];
        if request.headers().contains_key("if-none-match") {
            lines.push(("content-length", "1".to_string()));
            lines.push(("transfer-encoding", "chunked".to_string()));
            lines.push(("content-range", "bytes 0-0/11".to_string()));
            lines.push(("connection", "x-hop".to_string()));
            lines.push(("x-hop", "this connection only".to_string()));
            return (304, lines, "");
        }
        (200, lines, "shared page")
    });
    let cache = cache(MemoryBackend::new());
    let svc = cache.layer(origin.clone());
    let watch = Watch::of(&cache);
    let url = "http://site.test/framed";
    send(&svc, Method::GET, url, &[]).await;
    watch.settled().await;
    let bob = support::bounded("revalidation", send(&svc, Method::GET, url, &[])).await;
    assert_eq!(origin.calls(), 2, "the stale entry was revalidated");
    assert_eq!(bob.status, StatusCode::OK);
    assert_eq!(bob.body, "shared page");
    let length = bob.header("content-length");
    assert!(
        length.is_none_or(|length| length == "11"),
        "a length other than the body's: {bob:?}"
    );
    for field in ["transfer-encoding", "content-range", "x-hop"] {
        assert_eq!(bob.header(field), None, "{field} from the 304: {bob:?}");
    }
}

/// Attack (operator mistake or a hostile `Host`-routed upstream, QR's `Via`): the proxy's
/// upstream is the proxy itself. Each hop forwarded the request to itself again, each
/// waiting for the one it sent (the same URL's flight), until the client gave up: one
/// request held connections and upstream slots for as long as it was kept open (30 s and
/// more), and answered nothing. A request whose `Via` already holds this process's own
/// member is a loop: answered `508 Loop Detected` at once, before the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_upstream_is_itself_answers_508_at_once() {
    use std::process::{Command, Stdio};
    let (child, addr) = support::proxy::spawn_listening(|addr| {
        let mut command = Command::new(support::proxy::proxy_binary());
        command
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{addr}")])
            .args(["--threads", "1", "--access-log", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    });
    let proxy = support::proxy::Proxy { child, addr };
    let started = std::time::Instant::now();
    let (status, body) =
        support::proxy::raw(&proxy, "GET /looped HTTP/1.1\r\nHost: a.example\r\n").await;
    assert_eq!(status, 508, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

/// Attack (QR's receipt `Date`, with `If-Range`): an origin without a clock sends
/// `Last-Modified` but no `Date`; the cache dates the stored response when it receives
/// it, by its own clock. A `Last-Modified` counted as strong when a second or more before
/// that `Date`, so a client's `If-Range` with it got a 206 of the stored body: two
/// versions written within one second share the `Last-Modified`, and the client spliced
/// this one's bytes onto the other's. Before QR no `Date` was stored and such an
/// `If-Range` got the whole. RFC 9110 §8.8.2.2: a cache counts a `Last-Modified` strong
/// only at least 60 seconds before the entry's `Date` (which covers the slack between two
/// clocks).
#[tokio::test]
async fn a_receipt_date_does_not_make_a_recent_last_modified_strong_for_if_range() {
    let modified =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(30));
    let lm = modified.clone();
    let origin = Origin::new(move |_| {
        let lines = vec![
            ("cache-control", "max-age=600".to_string()),
            ("last-modified", lm.clone()),
        ];
        (200, lines, "0123456789")
    });
    let cache = cache(MemoryBackend::new());
    let svc = cache.layer(origin.clone());
    let watch = Watch::of(&cache);
    let url = "http://site.test/file";
    send(&svc, Method::GET, url, &[]).await;
    watch.settled().await;
    let headers = [("range", "bytes=0-1"), ("if-range", modified.as_str())];
    let ranged = send(&svc, Method::GET, url, &headers).await;
    assert_eq!(origin.calls(), 1, "answered from the entry");
    assert_eq!(ranged.status, StatusCode::OK, "{ranged:?}");
    assert_eq!(ranged.body, "0123456789");
}
