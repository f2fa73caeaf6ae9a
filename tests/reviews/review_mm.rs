//! Review MM: the memcache client API (`MemcacheClient`) and the TCP backend's public
//! surface, attacked: hostile keys, names and values, twemproxy in front, servers that
//! misbehave, and the bounds of one connection.
#![cfg(feature = "tcp")]

use crate::support;

use support::bounded;

use support::nutcracker::Nutcracker;

use std::time::Duration;

use bytes::Bytes;
use tower_memcache::MemcacheClient;
use tower_memcache::backend::{Backend, BackendError, Lifetime, TcpBackend};

/// A backend through twemproxy: the defaults (failure threshold 3) but one connection, so
/// that every call shares it.
fn through(proxy: &Nutcracker) -> TcpBackend {
    TcpBackend::builder()
        .server(proxy.addr())
        .connections_per_server(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// twemproxy
// ---------------------------------------------------------------------------------------

/// nutcracker 0.5 closes a client connection on `stats` and `flush_all` (it supports
/// neither), dropping the replies of every request pipelined with them. A status page
/// calling `MemcacheClient::stats`, or an admin action calling `invalidate_all`, a few
/// times must not mark the proxy down (every lookup failing fast, and the keys registered
/// with `reset_on_rejoin`, versioned namespaces' epochs and the layer's generations,
/// deleted when it is back: the whole cache orphaned), nor fail the gets sharing the
/// connection. Each says clearly that the server does not support it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_flush_all_through_twemproxy_fail_clearly_and_cost_nothing() {
    let Some(memcached) = support::Memcached::start("review_mm::twemproxy_admin") else {
        return;
    };
    let Some(proxy) = Nutcracker::start("review_mm", std::slice::from_ref(&memcached)) else {
        return;
    };
    bounded("twemproxy admin", async {
        let backend = through(&proxy);
        let client = MemcacheClient::new(backend.clone())
            .with_namespace("users")
            .with_versioned_namespace(true);
        client.set("alice", &1u32).await;
        assert_eq!(client.query::<u32>("alice").await, Some(1));
        for round in 0..5 {
            let stats = client.try_stats().await;
            assert!(stats.is_err(), "round {round}: {stats:?}");
            let flushed = client.try_invalidate_all().await;
            assert!(flushed.is_err(), "round {round}: {flushed:?}");
            // Gets on the same connection meanwhile.
            let (got, _, _) = tokio::join!(
                client.try_query::<u32>("alice"),
                client.try_stats(),
                client.try_query::<u32>("alice"),
            );
            assert_eq!(got.unwrap(), Some(1), "round {round}");
        }
        assert!(!backend.is_server_down(0), "the proxy was marked down");
        assert_eq!(backend.outages(), 0);
        // Nothing was reset: the versioned namespace still finds its value.
        assert_eq!(client.query::<u32>("alice").await, Some(1));
        let refused = backend.flush_all().await;
        assert!(
            matches!(
                refused,
                Err(BackendError::Unsupported {
                    command: "flush_all",
                    ..
                })
            ),
            "{refused:?}"
        );
        let refused = backend.stats().await;
        assert!(
            matches!(
                refused,
                Err(BackendError::Unsupported {
                    command: "stats",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(client.stats().await.is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Hostile keys, values, flags and lifetimes through the Backend methods
// ---------------------------------------------------------------------------------------

/// What each hostile input does on one backend, so that the fake, memcached and
/// memcached behind twemproxy can be compared.
async fn hostile_inputs<B: Backend>(backend: &B) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, outcome: String| seen.push(format!("{what}: {outcome}"));
    // Keys that would inject a command or break the line are refused unsent, by every
    // method that takes one.
    let long = "k".repeat(251);
    for key in [
        "",
        "a b",
        "a\r\nflush_all",
        "a\nb",
        "a\0b",
        "a\x7fb",
        "a\x1fb",
        "\t",
        long.as_str(),
    ] {
        let refused = |r: Result<(), BackendError>| match r {
            Err(BackendError::InvalidKey { .. }) => "refused".to_string(),
            other => format!("{other:?}"),
        };
        note(
            &format!("get {key:?}"),
            refused(backend.get(key).await.map(drop)),
        );
        note(
            &format!("get_many {key:?}"),
            refused(backend.get_many(&["ok", key]).await.map(drop)),
        );
        note(
            &format!("set {key:?}"),
            refused(backend.set(key, "v".into(), 0, Lifetime::NEVER).await),
        );
        note(
            &format!("set_by_key {key:?}"),
            refused(
                backend
                    .set_by_key("route", key, "v".into(), 0, Lifetime::NEVER)
                    .await,
            ),
        );
        note(
            &format!("delete {key:?}"),
            refused(backend.delete(key).await.map(drop)),
        );
        note(
            &format!("touch {key:?}"),
            refused(backend.touch(key, Lifetime::NEVER).await.map(drop)),
        );
        note(
            &format!("incr {key:?}"),
            refused(backend.incr(key, 1).await.map(drop)),
        );
        note(
            &format!("set_on_every_server {key:?}"),
            refused(
                backend
                    .set_on_every_server(key, "v".into(), 0, Lifetime::NEVER)
                    .await,
            ),
        );
    }
    // The longest key in multi-byte characters, and values that hold protocol text.
    let wide = "é".repeat(125);
    let values: [&[u8]; 5] = [
        b"",
        b"\r\nEND\r\n",
        b"VALUE other 0 1\r\nx\r\nEND\r\n",
        b"x\r\nflush_all\r\nset y 0 0 1\r\nz",
        b"\0\xff\r\n\r\n",
    ];
    for (n, value) in values.iter().enumerate() {
        let key = if n == 0 {
            wide.clone()
        } else {
            format!("value-{n}")
        };
        let stored = backend
            .set(
                &key,
                Bytes::copy_from_slice(value),
                u32::MAX,
                Lifetime::from_secs(300),
            )
            .await;
        note(&format!("set value {n}"), format!("{stored:?}"));
        let got = backend
            .get(&key)
            .await
            .unwrap()
            .map(|item| (item.value, item.flags));
        note(
            &format!("value {n} back"),
            format!("{}", got == Some((Bytes::copy_from_slice(value), u32::MAX))),
        );
        let many = backend
            .get_many(&[&key, &key, "value-absent"])
            .await
            .unwrap();
        note(
            &format!("value {n} by get_many"),
            format!("{:?}", many.keys().collect::<Vec<_>>().len()),
        );
    }
    note(
        "no injected key",
        format!("{:?}", backend.get("y").await.unwrap()),
    );
    // Lifetimes at memcached's edges: past i32::MAX is negative (expired at once), a
    // time in the past is expired, 30 days is relative.
    for (name, lifetime) in [
        ("i32::MAX + 1", Lifetime::from_exptime(i32::MAX as u32 + 1)),
        ("u32::MAX", Lifetime::from_exptime(u32::MAX)),
        (
            "in the past",
            Lifetime::at(std::time::SystemTime::UNIX_EPOCH),
        ),
        ("30 days", Lifetime::from_secs(30 * 86_400)),
        ("u64::MAX", Lifetime::from_secs(u64::MAX)),
    ] {
        backend.set("ttl", "v".into(), 0, lifetime).await.unwrap();
        note(
            &format!("set for {name}, then"),
            format!("{}", backend.get("ttl").await.unwrap().is_some()),
        );
        backend
            .set("ttl", "v".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        let touched = backend.touch("ttl", lifetime).await.unwrap();
        note(
            &format!("touched for {name}, then"),
            format!("{touched} {}", backend.get("ttl").await.unwrap().is_some()),
        );
    }
    // A cas of a value never handed out.
    backend
        .set("cas", "v".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    for token in [0, u64::MAX] {
        let outcome = backend
            .cas("cas", "w".into(), 0, Lifetime::NEVER, token)
            .await;
        note(&format!("cas {token}"), format!("{outcome:?}"));
    }
    seen
}

/// Keys that would break the line are refused unsent by every method; values holding
/// protocol text, empty values, all-ones flags and the longest multi-byte key round-trip;
/// lifetimes at memcached's edges and foreign cas values behave alike on the fake, on
/// memcached and on memcached behind twemproxy. (A regression test: this held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_values_and_lifetimes_behave_alike_everywhere() {
    let Some(memcached) = support::Memcached::start("review_mm::hostile_inputs") else {
        return;
    };
    let Some(proxy) = Nutcracker::start("review_mm", std::slice::from_ref(&memcached)) else {
        return;
    };
    bounded("hostile inputs", async {
        let fake = hostile_inputs(&tower_memcache::backend::MemoryBackend::new()).await;
        let direct = crate::support::patient_backend([memcached.addr()]);
        let real = hostile_inputs(&direct).await;
        assert_eq!(fake, real);
        memcached.flush_all();
        let proxied = hostile_inputs(&through(&proxy)).await;
        assert_eq!(fake, proxied);
        assert!(
            fake.iter().any(|line| line == "no injected key: None"),
            "{fake:#?}"
        );
        // Nothing refused reached the server.
        let stats = direct.stats().await.unwrap();
        assert_eq!(stats[0].get_u64("curr_items").map(|n| n > 0), Some(true));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Bounds of one connection
// ---------------------------------------------------------------------------------------

/// Far more callers than a connection takes in flight: those past `max_in_flight` wait
/// for a slot (bounded by their deadline), none is lost or answered with another's value,
/// and the waiting is not taken for a failing server. (A regression test: this held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_past_max_in_flight_wait_their_turn_and_get_their_own_values() {
    let Some(memcached) = support::Memcached::start("review_mm::in_flight") else {
        return;
    };
    bounded("in flight", async {
        let backend = TcpBackend::builder()
            .server(memcached.addr())
            .connections_per_server(1)
            .max_in_flight(4)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let client = MemcacheClient::new(backend.clone()).with_namespace("bounds");
        for n in 0..50u32 {
            client.set(&n, &n).await;
        }
        let calls = (0..2000u32).map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i % 50, client.try_query::<u32>(&(i % 50)).await) })
        });
        for call in futures_util::future::join_all(calls).await {
            let (n, got) = call.unwrap();
            assert_eq!(got.unwrap(), Some(n));
        }
        assert!(!backend.is_server_down(0));
    })
    .await;
}
