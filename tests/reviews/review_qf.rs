//! Review QF: consistency when the ring of memcached servers changes, with
//! `remove_failed_servers(true)` (libmemcached's behaviour: a dead server's keys move to
//! the next server on the ring while it is out). What a `MemcacheClient` invalidation that
//! returned `Ok` removed must stay removed when the server that was out comes back with
//! its old content, and when the server that took its keys meanwhile is the one out next.
//! Real servers, each test its own, stopped with SIGSTOP (they keep their content); every
//! wait is bounded and polls.
#![cfg(feature = "tcp")]

use crate::support;

use support::{bounded, eventually};

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tower_memcache::MemcacheClient;
use tower_memcache::backend::TcpBackend;

use support::Memcached;

/// Two servers, failed servers taken out of the ring, marked down and probed back quickly.
fn removing(servers: &[&Memcached]) -> TcpBackend {
    TcpBackend::builder()
        .servers(servers.iter().map(|server| server.addr()))
        .timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .remove_failed_servers(true)
        .build()
        .unwrap()
}

/// A user key whose memcache key lives on server `index` while every server is in use.
fn key_on(client: &MemcacheClient<TcpBackend>, index: usize, skip: usize) -> String {
    (0..1000)
        .map(|i| format!("user-{i}"))
        .filter(|key| {
            client
                .backend()
                .server_for_key(&client.build_key(key.as_str()))
                == Some(index)
        })
        .nth(skip)
        .expect("a key on the server")
}

/// Stops `server` (index `index`) and reads `key` until the backend has marked it down.
async fn stop(server: &Memcached, index: usize, client: &MemcacheClient<TcpBackend>, key: &str) {
    server.signal(Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.backend().is_server_down(index) {
        assert!(
            Instant::now() < deadline,
            "the stopped server not marked down"
        );
        let _ = client.try_query::<String>(key).await;
    }
}

/// Continues `server` and waits until the backend uses it again.
async fn resume(server: &Memcached, index: usize, client: &MemcacheClient<TcpBackend>) {
    server.signal(Signal::SIGCONT);
    eventually("the resumed server back in use", || {
        !client.backend().is_server_down(index)
    })
    .await;
}

/// An invalidation made while the key's server was out of the ring went to the server
/// that took its keys; the server comes back holding the value from before it. So does a
/// value replaced meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_made_while_the_keys_server_was_out_holds_when_it_returns() {
    let test = "review_qf::returns";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let client = MemcacheClient::new(removing(&[&a, &b])).with_namespace("qf");
        let invalidated = key_on(&client, 1, 0);
        let replaced = key_on(&client, 1, 1);
        client.try_set(&invalidated, "before").await.unwrap();
        client.try_set(&replaced, "before").await.unwrap();

        stop(&b, 1, &client, &invalidated).await;
        client.try_invalidate(&invalidated).await.unwrap();
        client.try_set(&replaced, "during").await.unwrap();
        assert_eq!(
            client.try_query::<String>(&invalidated).await.unwrap(),
            None
        );
        resume(&b, 1, &client).await;

        assert_eq!(
            client.try_query::<String>(&invalidated).await.unwrap(),
            None,
            "an invalidation that returned Ok undone by the returning server"
        );
        assert_ne!(
            client
                .try_query::<String>(&replaced)
                .await
                .unwrap()
                .as_deref(),
            Some("before"),
            "a value replaced while its server was out came back"
        );
    })
    .await;
}

/// A value written while its server was out stays on the server that took it; invalidated
/// after its server is back, it must not come back when that server is out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_holds_against_the_copy_a_fallback_server_took() {
    let test = "review_qf::fallback";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let client = MemcacheClient::new(removing(&[&a, &b])).with_namespace("qf");
        let key = key_on(&client, 1, 0);

        stop(&b, 1, &client, &key).await;
        // Taken by the other server.
        client.try_set(&key, "during").await.unwrap();
        resume(&b, 1, &client).await;

        client.try_set(&key, "after").await.unwrap();
        client.try_invalidate(&key).await.unwrap();
        assert_eq!(client.try_query::<String>(&key).await.unwrap(), None);

        // Out again: its keys move to the other server once more.
        stop(&b, 1, &client, &key).await;
        assert_eq!(
            client.try_query::<String>(&key).await.unwrap(),
            None,
            "the copy the other server took during the first outage came back"
        );
        b.signal(Signal::SIGCONT);
    })
    .await;
}

/// With namespace versioning the copy the other server took is under that server's own
/// generation of the namespace, which a key's invalidation (on the key's server) does not
/// name (documented on `remove_failed_servers`); a namespace invalidation, written on every
/// server, removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_invalidation_holds_against_the_copy_a_fallback_server_took() {
    let test = "review_qf::versioned_fallback";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let client = MemcacheClient::new(removing(&[&a, &b]))
            .with_namespace("qf")
            .with_versioned_namespace(true);
        let key = key_on(&client, 1, 0);
        client.try_set(&key, "before").await.unwrap();

        stop(&b, 1, &client, &key).await;
        client.try_set(&key, "during").await.unwrap();
        resume(&b, 1, &client).await;
        assert_eq!(client.try_query::<String>(&key).await.unwrap(), None);

        client.try_set(&key, "after").await.unwrap();
        client.try_invalidate_namespace().await.unwrap();
        assert_eq!(client.try_query::<String>(&key).await.unwrap(), None);

        stop(&b, 1, &client, &key).await;
        assert_eq!(
            client.try_query::<String>(&key).await.unwrap(),
            None,
            "the copy the other server took during the first outage came back"
        );
        b.signal(Signal::SIGCONT);
    })
    .await;
}

/// Through the layer: pages refilled on the other server while theirs was out, refilled
/// again on their own server once back, then invalidated (by an unsafe method, or a purge
/// of the tag every page carries): the copies the other server took stay invalidated when
/// their server is out again.
async fn layer_invalidations_hold_against_the_copies_a_fallback_server_took(by_tag: bool) {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use support::versioned::get;
    use tower::ServiceExt;

    let test = "review_qf::layer_fallback";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let backend = removing(&[&a, &b]);
        let layer = support::layer(backend.clone())
            .namespace("qf")
            .mode(tower_memcache::cache::CacheMode::Origin);
        let version = Arc::new(AtomicU64::new(0));
        let origin = Arc::clone(&version);
        let svc: support::versioned::Svc = tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(move |request: http::Request<()>| {
                    let body = format!(
                        "{} v{}",
                        request.uri().path(),
                        origin.load(Ordering::SeqCst)
                    );
                    async move {
                        let response = http::Response::builder()
                            .header("cache-control", "max-age=600")
                            .header("surrogate-key", "every-page")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                }),
        );
        let pages: Vec<String> = (0..24)
            .map(|i| format!("http://site.example/page/{i}"))
            .collect();
        let every_page = || async {
            let mut bodies = Vec::new();
            for page in &pages {
                bodies.push(get(&svc, page).await.0);
            }
            layer.background().idle().await;
            bodies
        };
        every_page().await;

        b.signal(Signal::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !backend.is_server_down(1) {
            assert!(
                Instant::now() < deadline,
                "the stopped server not marked down"
            );
            every_page().await;
        }
        // The stopped server's pages, refilled on the other one.
        version.store(1, Ordering::SeqCst);
        every_page().await;
        b.signal(Signal::SIGCONT);
        eventually("the resumed server back in use", || {
            !backend.is_server_down(1)
        })
        .await;
        version.store(2, Ordering::SeqCst);
        every_page().await;

        version.store(3, Ordering::SeqCst);
        if by_tag {
            layer.purger().purge_tag("every-page").await.unwrap();
        } else {
            for page in &pages {
                let request = http::Request::post(page.as_str()).body(()).unwrap();
                let response = svc.clone().oneshot(request).await.unwrap();
                assert!(response.status().is_success());
            }
        }
        layer.background().idle().await;

        b.signal(Signal::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for body in every_page().await {
                assert!(
                    body.ends_with(" v3"),
                    "{body}: from before the invalidation"
                );
            }
            if backend.is_server_down(1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stopped server not marked down"
            );
        }
        for body in every_page().await {
            assert!(
                body.ends_with(" v3"),
                "{body}: from before the invalidation"
            );
        }
        b.signal(Signal::SIGCONT);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_method_invalidation_holds_against_the_copies_a_fallback_server_took() {
    layer_invalidations_hold_against_the_copies_a_fallback_server_took(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_holds_against_the_copies_a_fallback_server_took() {
    layer_invalidations_hold_against_the_copies_a_fallback_server_took(true).await;
}
