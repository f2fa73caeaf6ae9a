//! Review TO: the newest consistency writes (variants by `add`/`cas` over what the lookup
//! read, reviews TF and TK; a far-future tag creation rewritten as a purge, review TD;
//! purges as max-registers and the tag-purge mark, reviews SX and TA) as operators deploy
//! them: through twemproxy (nutcracker) in front of several memcached servers, across
//! several servers on the client's own ketama ring, and on a memcached another client
//! shares and writes under the namespace's keys.
//!
//! Found: through twemproxy, a write every server must take (a purge, an unsafe method's
//! invalidation) of a key twemproxy hashes to a server it cannot reach is answered by
//! twemproxy with a `SERVER_ERROR`; the client took that for the proxy missing the write,
//! marked the proxy down (every lookup a miss) and, when it answered again, deleted the
//! namespace's generation through it: every entry on every server orphaned. Any client's
//! POST to a URL on the dead server emptied the whole cache, again on every such POST.
#![cfg(feature = "tcp")]

use crate::support;

use std::time::Duration;

use http::Method;
use tower_memcache::backend::{Backend, TcpBackend};
use tower_memcache::key::build_key;

use support::nutcracker::Nutcracker;
use support::scripted_service::{Origin, Reply, lines};
use support::{Memcached, Watch, send};

/// A page naming its path, cacheable for five minutes; any other method answered 200.
fn origin() -> Origin {
    Origin::replying(|request, _| {
        Reply::ok(
            lines(&[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=300"),
            ]),
            format!("page {}", request.uri().path()),
        )
    })
}

/// One connection (so every request is pipelined on it), timeouts no loaded machine
/// reaches.
fn one_connection(addr: &str) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Two memcached servers behind nutcracker, a layer over it in `namespace`, and the URLs
/// filled, split by the server twemproxy put each URL's entry on: the one holding the
/// namespace's generation (`live`) and the other.
struct Spread {
    servers: [Memcached; 2],
    _proxy: Nutcracker,
    backend: TcpBackend,
    cache: tower_memcache::MemcacheLayer<TcpBackend>,
    live: usize,
    on_live: Vec<String>,
    on_dead: Vec<String>,
}

async fn spread(test: &str, namespace: &str) -> Option<Spread> {
    let servers = [Memcached::start(test)?, Memcached::start(test)?];
    let proxy = Nutcracker::start(test, &servers)?;
    let backend = one_connection(&proxy.addr());
    let cache = support::layer(backend.clone())
        .namespace(namespace)
        .lookup_timeout(Duration::from_secs(2));
    let svc = origin().service(&cache);
    let urls: Vec<String> = (0..40)
        .map(|page| format!("http://review-to.test/spread/{page}"))
        .collect();
    for url in &urls {
        send(&svc, Method::GET, url, &[]).await;
    }
    support::stores(&Watch::of(&cache), 40).await;
    let direct: Vec<TcpBackend> = servers.iter().map(|s| one_connection(&s.addr())).collect();
    let generation = format!("g:{}", build_key(Some(namespace), "\0generation"));
    let live = if direct[0].get(&generation).await.unwrap().is_some() {
        0
    } else {
        assert!(direct[1].get(&generation).await.unwrap().is_some());
        1
    };
    let (mut on_live, mut on_dead) = (Vec::new(), Vec::new());
    for url in urls {
        let key = build_key(Some(namespace), &format!("GET {url}")[..]);
        if direct[live].get(&key).await.unwrap().is_some() {
            on_live.push(url);
        } else {
            on_dead.push(url);
        }
    }
    assert!(
        on_live.len() >= 4 && !on_dead.is_empty(),
        "not spread: {on_live:?} {on_dead:?}"
    );
    Some(Spread {
        servers,
        _proxy: proxy,
        backend,
        cache,
        live,
        on_live,
        on_dead,
    })
}

impl Spread {
    /// Asserts that every URL on the live server is still a hit, a while after the
    /// client's probe would have put a proxy marked down back (and reset it).
    async fn live_urls_still_hit(&self, after: &str) {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let svc = origin().service(&self.cache);
        for url in &self.on_live {
            let answer = send(&svc, Method::GET, url, &[]).await;
            assert_eq!(answer.status, 200, "{url}");
            assert_eq!(
                answer.cache_status(),
                support::HIT,
                "after {after}: {url}, on the live server, lost its hit (outages: {})",
                self.backend.outages()
            );
        }
    }
}

/// An unsafe method on a URL whose entry twemproxy hashes to a server it cannot reach:
/// the invalidation's delete is answered `SERVER_ERROR` by twemproxy. That is one
/// server's failure behind the proxy, not the proxy's: the URLs on the live server stay
/// hits (before the fix, the proxy was marked down and the namespace's generation deleted
/// through it on its return: every URL on every server a miss, on every such POST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_twemproxy_a_post_to_a_url_on_a_dead_server_keeps_the_others_hits() {
    let test = "review_to::post_on_dead_server";
    let Some(mut spread) = spread(test, "review-to-post").await else {
        return;
    };
    spread.servers[1 - spread.live].kill();
    let svc = origin().service(&spread.cache);
    let posted = send(&svc, Method::POST, &spread.on_dead[0], &[]).await;
    assert_eq!(posted.status, 200);
    Watch::of(&spread.cache).settled().await;
    spread
        .live_urls_still_hit("a POST to a URL on the dead server")
        .await;
}

/// A purge of a URL on the server twemproxy cannot reach returns an error (it was not
/// made), and costs nothing else: the URLs on the live server stay hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_twemproxy_a_failed_purge_of_a_url_on_a_dead_server_keeps_the_others_hits() {
    let test = "review_to::purge_on_dead_server";
    let Some(mut spread) = spread(test, "review-to-purge").await else {
        return;
    };
    spread.servers[1 - spread.live].kill();
    let purged = spread.cache.purger().purge_uri(&spread.on_dead[0]).await;
    assert!(
        purged.is_err(),
        "a purge twemproxy could not make: {purged:?}"
    );
    spread.live_urls_still_hit("a failed purge").await;
}
