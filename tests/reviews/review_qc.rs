//! Review QC: request identity. Every way two requests that deserve different answers
//! could share one cache key or one stored response, in the layer and in the proxy.
//!
//! Each test fails if the defect it names returns. Tests that need memcached start their
//! own and skip without the binary (unless `MEMCACHED_REQUIRED=1`).

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use support::Memcached;
use support::proxy::{raw, start_proxy, until_cached};

/// An origin that serves one site whatever `Host` names (as most single-site apps and
/// file servers do): `name` at every path, fresh for an hour.
async fn single_site_origin(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    support::origin::serve_http1(listener, move |_: Request<Incoming>| async move {
        let response = Response::builder()
            .header("cache-control", "max-age=3600")
            .body(Full::new(Bytes::from(name)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    addr
}

/// Two proxies in front of two different origins, sharing one memcached (as services
/// share a memcached pool): a client that sends proxy A a request naming site B's host
/// gets site A's page stored under site B's key, and proxy B then served it to every
/// client of site B. The key holds the host the client claims, not the origin that
/// answered; each origin now has a namespace of its own by default, while replicas in
/// front of one origin still share their entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_front_of_another_origin_cannot_fill_this_ones_pages() {
    let test = "a_proxy_in_front_of_another_origin_cannot_fill_this_ones_pages";
    let Some(memcached) = Memcached::start(test) else {
        return;
    };
    let origin_a = single_site_origin("site A").await;
    let origin_b = single_site_origin("site B").await;
    let memcache = memcached.addr();
    let proxy_a = start_proxy(origin_a, &["--memcache", &memcache]);
    let proxy_b = start_proxy(origin_b, &["--memcache", &memcache]);

    // The attacker asks proxy A for site B's page; site A answers it, and it is stored.
    let poison = "GET /index.html HTTP/1.1\r\nHost: b.example\r\n";
    assert_eq!(raw(&proxy_a, poison).await, (200, "site A".to_string()));
    assert_eq!(until_cached(&proxy_a, poison).await, "site A");

    // Site B's visitors get site B's page.
    let (status, body) = raw(&proxy_b, poison).await;
    assert_eq!((status, body.as_str()), (200, "site B"));

    // A replica in front of the same origin still shares proxy A's entries.
    let replica = start_proxy(origin_a, &["--memcache", &memcache]);
    let only_cached = format!("{poison}Cache-Control: only-if-cached\r\n");
    let (status, body) = raw(&replica, &only_cached).await;
    assert_eq!((status, body.as_str()), (200, "site A"));
}

/// An application that tells its sites apart by the `Host` field (as handlers reading
/// `headers["host"]` do), with a default site for a request that names none.
fn virtual_hosts() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|request: Request<()>| async move {
        let site = match request.headers().get(http::header::HOST) {
            Some(host) => format!("site of {}", host.to_str().unwrap_or("?")),
            None => "default site".to_string(),
        };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(site))))
    })
}

/// An HTTP/2 request names its authority in `:authority` (hyper puts it in the target)
/// and mostly sends no `Host` field; so may an HTTP/1.1 request in absolute form. Keyed
/// by the target's authority, it went to an application that reads `Host` without one:
/// the default site's page was stored as the named site's, and served to that site's
/// HTTP/1.1 clients. The inner service now gets the key's authority in `Host` too.
#[tokio::test]
async fn a_target_authority_without_host_stores_the_named_sites_page() {
    let layer = support::layer(tower_memcache::backend::MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = tower::Layer::layer(&layer, virtual_hosts());

    let get = http::Method::GET;
    let h2 = support::send(&service, get.clone(), "http://victim.example/page", &[]).await;
    watch.settled().await;

    let host = [("host", "victim.example")];
    let h1 = support::send(&service, get, "/page", &host).await;
    assert_eq!(h1.body, "site of victim.example", "{}", h1.cache_status());
    // And the HTTP/2 client was answered for the site it named.
    assert_eq!(h2.body, "site of victim.example");
}

/// The key function `KeyFn`'s documentation showed (a tenant header and the path), as a
/// user copies it: it left out the query, so `/search?q=b` was answered with the page of
/// `?q=a`, and joined the tenant to the path with a `:` a tenant may hold. The example now
/// keys the whole target and refuses a tenant that is not a plain word.
#[tokio::test]
async fn the_documented_tenant_key_keeps_queries_and_tenants_apart() {
    use tower_memcache::cache::RequestHead;
    // As the documentation of `KeyFn` has it.
    let by_tenant = |req: &RequestHead<'_>| {
        let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
        if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let host = (req.uri.authority().map(|authority| authority.as_str()))
            .or_else(|| req.headers.get("host")?.to_str().ok())
            .unwrap_or("");
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        Some(format!("{tenant} {host}{target}"))
    };
    let layer = support::layer(tower_memcache::backend::MemoryBackend::new()).key_fn(by_tenant);
    let watch = support::Watch::of(&layer);
    let echo = tower::service_fn(|request: Request<()>| async move {
        let tenant = request.headers().get("x-tenant").cloned();
        let tenant = tenant.as_ref().and_then(|t| t.to_str().ok()).unwrap_or("-");
        let body = format!("{tenant} asked {}", request.uri());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let service = tower::Layer::layer(&layer, echo);
    let get = http::Method::GET;
    let asks: [(&str, &str); 4] = [
        ("acme", "/search?q=a"),
        ("acme", "/search?q=b"),
        ("acme:/x", "/y"),
        ("acme", "/x:/y"),
    ];
    for _ in 0..2 {
        for (tenant, target) in asks {
            let headers = [("host", "example.com"), ("x-tenant", tenant)];
            let answer = support::send(&service, get.clone(), target, &headers).await;
            assert_eq!(
                answer.body,
                format!("{tenant} asked {target}"),
                "{}",
                answer.cache_status()
            );
            watch.settled().await;
        }
    }
}

/// An origin that answers with the names of the request fields it got, fresh for an hour.
async fn field_names_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        let names: Vec<&str> = request.headers().keys().map(|name| name.as_str()).collect();
        let response = Response::builder()
            .header("cache-control", "max-age=3600")
            .body(Full::new(Bytes::from(names.join(","))))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    addr
}

/// A client's `Proxy` field becomes `HTTP_PROXY` to a CGI-style origin (PHP, CGI, WSGI
/// gateways), which HTTP client libraries there have taken for the proxy of their own
/// requests ("httpoxy", CVE-2016-5385 and its siblings): the origin fetched what its page
/// is made of through the attacker's server, and the page was stored for everyone. No
/// HTTP field is called `Proxy`; the proxy drops it, as nginx's and Apache's advisories
/// have them do.
#[tokio::test]
async fn a_proxy_field_never_reaches_the_origin() {
    let origin = field_names_origin().await;
    for args in [&[][..], &["--underscores-in-headers"][..]] {
        let proxy = start_proxy(origin, args);
        let head =
            "GET /names HTTP/1.1\r\nHost: shop.example\r\nProxy: http://attacker.example:8080\r\n";
        let (status, names) = raw(&proxy, head).await;
        assert_eq!(status, 200);
        assert!(
            !names.split(',').any(|name| name == "proxy"),
            "Proxy reached the origin ({args:?}): {names}"
        );
        assert!(names.contains("x-forwarded-host"), "{names}");
    }
}
