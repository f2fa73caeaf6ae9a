//! Review TQ: an adversarial second look at two changes merged in the last hour.
//!
//! - Review TM: client sockets keep at most 16 KiB unsent in the kernel
//!   (`TCP_NOTSENT_LOWAT`), and a connection that holds places at the origin is judged
//!   over two probes.
//! - Review TO: an error line that a server taken for twemproxy answers a write every
//!   server must take with no longer marks it down.
//!
//! Found: with twemproxy on the client's ring beside another server (a memcached, or a
//! second twemproxy over other servers), a purge of a URL whose key twemproxy hashes to
//! a server it cannot reach returned `Ok`: the other server took the delete, the proxy
//! answered `SERVER_ERROR` and, since review TO, is no longer marked down, so nothing
//! made up for the write it missed. ARCHITECTURE says purges never return `Ok` without
//! reaching or marking down every server, and README that such a purge returns
//! twemproxy's error: the caller (a CMS purging a page) took the purge as made, while
//! the server behind twemproxy, back with its content, answered the old page again.
#![cfg(feature = "tcp")]

use crate::support;

use std::time::Duration;

use tower_memcache::backend::{Backend, Lifetime, TcpBackend};
use tower_memcache::key::build_key;

use support::Memcached;
use support::nutcracker::Nutcracker;

/// One connection (so every request is pipelined on it), timeouts no loaded machine
/// reaches.
fn backend_of(addrs: &[String]) -> TcpBackend {
    let mut builder = TcpBackend::builder()
        .connections_per_server(1)
        .timeout(Duration::from_secs(2));
    for addr in addrs {
        builder = builder.server(addr);
    }
    builder.build().unwrap()
}

/// twemproxy over two memcached servers, on the client's ring beside a third memcached;
/// one server behind twemproxy dead. A purge of a URL whose key twemproxy hashes to the
/// dead server reaches neither it nor anything that makes up for it (the proxy, which
/// answered, stays in use): it must not return `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_twemproxy_a_purge_of_a_url_on_a_dead_server_behind_it_is_not_ok() {
    let test = "review_tq::purge_beside_twemproxy";
    let namespace = "review-tq-purge";
    let (Some(first), Some(second), Some(beside)) = (
        Memcached::start(test),
        Memcached::start(test),
        Memcached::start(test),
    ) else {
        return;
    };
    let mut behind = [first, second];
    let Some(proxy) = Nutcracker::start(test, &behind) else {
        return;
    };
    let cache = support::layer(backend_of(&[proxy.addr(), beside.addr()]))
        .namespace(namespace)
        .lookup_timeout(Duration::from_secs(2));

    // A URL whose primary key twemproxy puts on the second server (written through the
    // proxy, read on each server directly).
    let through = backend_of(&[proxy.addr()]);
    let direct = backend_of(&[behind[1].addr()]);
    let mut on_second = None;
    for page in 0..40 {
        let url = format!("http://review-tq.test/page/{page}");
        let key = build_key(Some(namespace), &format!("GET {url}")[..]);
        through
            .set(
                &key,
                bytes::Bytes::from_static(b"x"),
                0,
                Lifetime::from_secs(60),
            )
            .await
            .unwrap();
        if direct.get(&key).await.unwrap().is_some() {
            on_second = Some(url);
            break;
        }
    }
    let url = on_second.expect("some URL twemproxy hashes to the second server");

    behind[1].kill();
    let purged = cache.purger().purge_uri(&url).await;
    assert!(
        purged.is_err(),
        "a purge that twemproxy could not make (its server dead) returned Ok: {purged:?}"
    );
}
