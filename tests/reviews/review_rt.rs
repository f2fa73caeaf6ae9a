//! Review RT: the reverse proxy as an untrusted client sees it, over real sockets, and
//! what its operator configures: settings that did less than they said without a word
//! (a `Cache-Status` name no field can carry, one memcached server listed under two
//! spellings), and what the access log keeps of a request.

use crate::support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;

use support::proxy::{raw, start_proxy, start_proxy_with_log};

/// `MemcacheLayer::cache_status_name` with a name no `Cache-Status` field can carry (a
/// control character, a newline read from a file with the name, text outside ASCII, or
/// nothing at all, an unset variable) was taken, and the layer then sent no `Cache-Status`
/// at all: the operator's dashboards and the proxy's access log lost the cache's outcome,
/// unsaid. Such a name is refused where it is given: `cache_status_name` panics,
/// `try_cache_status_name` returns the error for names read from configuration.
#[test]
fn a_cache_status_name_no_field_can_carry_is_refused() {
    let refused = [
        "",
        "   ",
        "edge\n",
        "edge\r\nX-Injected: 1",
        "\tedge",
        " edge",
        "edge\u{0}",
        "edge\u{7f}",
        "café",
    ];
    for name in refused {
        let taken = std::panic::catch_unwind(|| {
            MemcacheLayer::new(MemoryBackend::new()).cache_status_name(name)
        });
        assert!(taken.is_err(), "{name:?} taken");
        match MemcacheLayer::new(MemoryBackend::new()).try_cache_status_name(name) {
            Ok(_) => panic!("{name:?} taken"),
            Err(err) => assert!(err.to_string().contains("Cache-Status"), "{name:?}: {err}"),
        }
    }
    // Tokens and anything a String holds (review D) are still taken.
    for name in [
        "edge",
        "Example CDN",
        "edge \"eu\"",
        "cache.example.com:443",
    ] {
        let _ = MemcacheLayer::new(MemoryBackend::new()).cache_status_name(name);
        assert!(
            MemcacheLayer::new(MemoryBackend::new())
                .try_cache_status_name(name)
                .is_ok(),
            "{name:?}"
        );
    }
}

/// One memcached server listed under two spellings (`localhost:11211` beside
/// `127.0.0.1:11211`, an IPv6 address written out and compressed, an IPv4 address as
/// IPv6 maps it, a name with DNS's trailing dot) was taken as two servers: ketama gave it
/// two shares of the keys and its outage cost two shares of the hits, not the one share a
/// dead node may cost. Review RM refused identical spellings only. Spellings that name one
/// address without asking a resolver are refused now; two loopback addresses (or two
/// ports) are still two servers: each may be a memcached of its own.
#[cfg(feature = "tcp")]
#[test]
fn one_memcached_server_under_two_spellings_is_refused() {
    use tower_memcache::backend::TcpBackend;

    for list in [
        "localhost:11211,127.0.0.1:11211",
        "127.0.0.1:11211,LocalHost.:11211",
        "localhost,[::1]:11211",
        "[::1]:11212,[0:0:0:0:0:0:0:1]:11212",
        "[::ffff:127.0.0.1]:11211,127.0.0.1",
        "cache-a.:11211,10.0.0.2:11211,cache-a",
    ] {
        match TcpBackend::builder().server_list(list).build() {
            Ok(backend) => panic!("{list}: taken as {:?}", backend.server_names()),
            Err(err) => assert!(err.to_string().contains("one server"), "{list}: {err}"),
        }
    }
    for list in [
        "127.0.0.1:11211,[::1]:11211",
        "127.0.0.1:11211,127.0.0.2:11211",
        "localhost:11211,localhost:11212",
        "cache-a,cache-b",
    ] {
        assert!(
            TcpBackend::builder().server_list(list).build().is_ok(),
            "{list}"
        );
    }
}

/// Secrets travel in URLs (password-reset and login tokens, signed links, API keys in
/// queries) and in the `Referer` a browser sends from such a page. The access log keeps
/// nginx's `combined` format by default, queries included, as operators' tools read it;
/// `--access-log-query off` keeps them out: the target and the `Referer` are logged
/// without their query (a bare `?` says one was there) and the `Referer` without its
/// fragment.
#[tokio::test]
async fn the_access_log_can_keep_queries_out() {
    let (origin, _seen) = recording_origin().await;
    let (proxy, lines) = start_proxy_with_log(origin, &["--access-log-query", "off"]);
    let (status, _) = raw(
        &proxy,
        "GET /reset?token=s3cret HTTP/1.1\r\nHost: example.com\r\n\
         Referer: http://example.com/login?password=hunter2#otp=123456\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw(
        &proxy,
        "GET /plain HTTP/1.1\r\nHost: example.com\r\nReferer: http://example.com/a#b\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let read = |lines: &std::sync::mpsc::Receiver<String>| {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an access log line")
    };
    let first = read(&lines);
    assert!(
        first.contains("\"GET /reset? HTTP/1.1\" 200 "),
        "the target's query logged: {first}"
    );
    assert!(
        first.contains(" \"http://example.com/login?\" "),
        "the Referer's query logged: {first}"
    );
    for secret in ["s3cret", "hunter2", "123456"] {
        assert!(!first.contains(secret), "{secret} logged: {first}");
    }
    let second = read(&lines);
    assert!(second.contains("\"GET /plain HTTP/1.1\" 200 "), "{second}");
    assert!(second.contains(" \"http://example.com/a\" "), "{second}");
    drop(proxy);

    // The default is nginx's `combined`: the target as sent.
    let (proxy, lines) = start_proxy_with_log(origin, &[]);
    let (status, _) = raw(
        &proxy,
        "GET /reset?token=s3cret HTTP/1.1\r\nHost: example.com\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let line = read(&lines);
    assert!(
        line.contains("\"GET /reset?token=s3cret HTTP/1.1\" 200 "),
        "{line}"
    );
}

/// What a recording origin saw of each request: its target and its fields.
type Seen = Arc<Mutex<Vec<(String, http::HeaderMap)>>>;

/// An origin on a fresh loopback port that answers a request carrying `Authorization` or
/// `Cookie` with that user's page, `private`, and any other with the public page, fresh
/// for a minute; it records what it saw of each request.
async fn recording_origin() -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    support::origin::serve_http1(listener, move |request: Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let headers = request.headers();
            let credentialed = headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(http::header::COOKIE);
            record
                .lock()
                .unwrap()
                .push((request.uri().to_string(), headers.clone()));
            let user = support::personal::user_of(headers);
            let (body, cache_control) = if credentialed {
                (format!("{user}'s page"), "private")
            } else {
                ("the public page".to_owned(), "public, max-age=60")
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", cache_control)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    (addr, seen)
}

/// `Connection: Authorization, Cookie` makes the client's credentials hop-by-hop by its
/// own word. The proxy drops them before the cache looks the request up and before the
/// origin sees it, both alike: the request is anonymous to both, answered the public page,
/// and nothing of the user reaches what others are answered. (Were they dropped for the
/// cache only, the user's page would be stored as the public one; for the origin only,
/// the anonymous answer would be stored under a credentialed request's rules.)
#[tokio::test]
async fn credentials_named_in_connection_are_dropped_for_the_cache_and_the_origin_alike() {
    let (origin, seen) = recording_origin().await;
    let proxy = start_proxy(origin, &[]);
    let (status, body) = raw(
        &proxy,
        "GET /me HTTP/1.1\r\nHost: example.com\r\nAuthorization: Bearer alice\r\n\
         Cookie: user=alice\r\nConnection: Authorization, Cookie\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "the public page"));
    let anonymous =
        support::proxy::until_cached(&proxy, "GET /me HTTP/1.1\r\nHost: example.com\r\n").await;
    assert_eq!(anonymous, "the public page");
    // Alice's own request, her credentials end to end, reaches the origin as hers.
    let (status, body) = raw(
        &proxy,
        "GET /me HTTP/1.1\r\nHost: example.com\r\nAuthorization: Bearer alice\r\n\
         Cache-Control: no-cache\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "alice's page"));
    let (status, body) = raw(&proxy, "GET /me HTTP/1.1\r\nHost: example.com\r\n").await;
    assert_eq!((status, body.as_str()), (200, "the public page"));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    let (target, first) = &seen[0];
    assert_eq!(target, "/me");
    assert!(
        !first.contains_key("authorization") && !first.contains_key("cookie"),
        "{first:?}"
    );
    assert_eq!(
        seen[1].1.get("authorization").map(|v| v.as_bytes()),
        Some(&b"Bearer alice"[..]),
        "{seen:?}"
    );
}

/// The client-address fields of the well-known "real client IP" helpers of PHP
/// applications (`HTTP_CLIENT_IP`, `HTTP_X_FORWARDED`, `HTTP_X_CLUSTER_CLIENT_IP`,
/// `HTTP_FORWARDED_FOR`, read before or beside `X-Forwarded-For`; Rails' `RemoteIp`
/// reads `Client-IP` too) and the CDNs' (`CF-Connecting-IP`, `Fastly-Client-IP`) reached
/// the origin as the client sent them, while the proxy replaces `X-Forwarded-For` and
/// drops `X-Real-IP` and `True-Client-IP` so that the origin sees the real peer. A client
/// claiming `Client-IP: 10.0.0.1` was an internal address to such an origin: an
/// allow-list's page, or another country's, answered and stored for everyone. They are
/// dropped like the others.
#[tokio::test]
async fn client_address_fields_of_other_names_never_reach_the_origin() {
    let (origin, seen) = recording_origin().await;
    let proxy = start_proxy(origin, &[]);
    let sent = [
        "Client-IP",
        "X-Cluster-Client-IP",
        "X-Forwarded",
        "Forwarded-For",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Originating-IP",
        "X-Remote-IP",
        "X-Remote-Addr",
        "X-ProxyUser-Ip",
    ];
    let mut head = String::from("GET /where HTTP/1.1\r\nHost: example.com\r\n");
    for name in sent {
        head.push_str(&format!("{name}: 10.0.0.1\r\n"));
    }
    let (status, _) = raw(&proxy, &head).await;
    assert_eq!(status, 200);
    // Their CGI spellings too, with `--underscores-in-headers`.
    let proxy = start_proxy(origin, &["--underscores-in-headers"]);
    let mut head = String::from("GET /where HTTP/1.1\r\nHost: example.com\r\n");
    for name in sent {
        head.push_str(&format!("{}: 10.0.0.1\r\n", name.replace('-', "_")));
    }
    let (status, _) = raw(&proxy, &head).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (_, headers) in &seen {
        for (name, value) in headers {
            assert!(
                value.as_bytes() != b"10.0.0.1",
                "{name} reached the origin: {headers:?}"
            );
        }
        assert_eq!(
            headers.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"127.0.0.1"[..])
        );
    }
}
