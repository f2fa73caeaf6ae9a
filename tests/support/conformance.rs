//! One Backend test suite, run on MemoryBackend and on TcpBackend against a real memcached,
//! so the fake cannot drift from the real thing. Each function starts from an empty store.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Lifetime};
use tower_memcache::{MemcacheClient, codec};

pub async fn set_get_keeps_bytes_and_flags<B: Backend>(b: B) {
    let binary = Bytes::from_static(b"\0\r\nEND\r\nVALUE x 0 1\r\n\xff");
    b.set("k1", binary.clone(), 0xdead_beef, Lifetime::NEVER)
        .await
        .unwrap();
    let item = b.get("k1").await.unwrap().unwrap();
    assert_eq!(item.value, binary);
    assert_eq!(item.flags, 0xdead_beef);
    assert!(b.get("absent").await.unwrap().is_none());
    b.set("k1", "new".into(), 1, Lifetime::NEVER).await.unwrap();
    assert_eq!(&b.get("k1").await.unwrap().unwrap().value[..], b"new");
    b.set("empty", Bytes::new(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(b.get("empty").await.unwrap().unwrap().value.len(), 0);
}

pub async fn get_many_returns_present_keys_only<B: Backend>(b: B) {
    for i in 0..20 {
        if i % 3 != 0 {
            b.set(
                &format!("many{i}"),
                format!("v{i}").into(),
                i,
                Lifetime::NEVER,
            )
            .await
            .unwrap();
        }
    }
    let keys: Vec<String> = (0..20).map(|i| format!("many{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = b.get_many(&refs).await.unwrap();
    assert_eq!(found.len(), 13);
    for i in 0..20u32 {
        let item = found.get(&format!("many{i}"));
        if i % 3 == 0 {
            assert!(item.is_none());
        } else {
            let item = item.unwrap();
            assert_eq!(item.value, Bytes::from(format!("v{i}")));
            assert_eq!(item.flags, i);
        }
    }
    assert!(b.get_many(&[]).await.unwrap().is_empty());
}

pub async fn add_only_when_absent<B: Backend>(b: B) {
    assert!(b.add("a", "1".into(), 0, Lifetime::NEVER).await.unwrap());
    assert!(!b.add("a", "2".into(), 0, Lifetime::NEVER).await.unwrap());
    assert_eq!(&b.get("a").await.unwrap().unwrap().value[..], b"1");
}

pub async fn delete_and_touch<B: Backend>(b: B) {
    b.set("d", "x".into(), 0, Lifetime::NEVER).await.unwrap();
    assert!(b.delete("d").await.unwrap());
    assert!(!b.delete("d").await.unwrap());
    assert!(b.get("d").await.unwrap().is_none());
    assert!(!b.touch("d", Lifetime::from_secs(10)).await.unwrap());
    b.set("t", "x".into(), 0, Lifetime::NEVER).await.unwrap();
    assert!(b.touch("t", Lifetime::from_secs(100)).await.unwrap());
}

pub async fn incr_counts_and_wraps<B: Backend>(b: B) {
    assert_eq!(b.incr("n", 1).await.unwrap(), None);
    b.set("n", "41".into(), 0, Lifetime::NEVER).await.unwrap();
    assert_eq!(b.incr("n", 1).await.unwrap(), Some(42));
    assert_eq!(&b.get("n").await.unwrap().unwrap().value[..], b"42");
    b.set("max", u64::MAX.to_string().into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(b.incr("max", 1).await.unwrap(), Some(0));
    b.set("text", "abc".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert!(matches!(
        b.incr("text", 1).await,
        Err(BackendError::Server(_))
    ));
    // The error did not break anything.
    assert_eq!(b.incr("n", 8).await.unwrap(), Some(50));
}

pub async fn flush_all_empties_everything<B: Backend>(b: B) {
    for i in 0..10 {
        b.set(&format!("f{i}"), "x".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
    }
    b.flush_all().await.unwrap();
    for i in 0..10 {
        assert!(b.get(&format!("f{i}")).await.unwrap().is_none());
    }
}

/// memcached's expiry has one-second granularity, so the waits are generous.
pub async fn lifetimes_expire<B: Backend>(b: B) {
    b.set("short", "x".into(), 0, Lifetime::from_secs(1))
        .await
        .unwrap();
    b.set("never", "x".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    b.set("long", "x".into(), 0, Lifetime::from_secs(3600))
        .await
        .unwrap();
    // Over 30 days: becomes an absolute time; must not be taken for a past absolute time.
    b.set("month", "x".into(), 0, Lifetime::from_secs(40 * 86_400))
        .await
        .unwrap();
    b.set("touched", "x".into(), 0, Lifetime::from_secs(1))
        .await
        .unwrap();
    assert!(b.touch("touched", Lifetime::from_secs(3600)).await.unwrap());
    // An absolute time in the past: gone at once.
    let past = SystemTime::now() - Duration::from_secs(3600);
    b.set("past", "x".into(), 0, Lifetime::at(past))
        .await
        .unwrap();
    assert!(b.get("past").await.unwrap().is_none());
    assert!(b.get("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        b.get("short").await.unwrap().is_none(),
        "1 s item still there"
    );
    for key in ["never", "long", "month", "touched"] {
        assert!(b.get(key).await.unwrap().is_some(), "{key} expired");
    }
}

pub async fn bad_keys_are_refused_before_sending<B: Backend>(b: B) {
    let long = "k".repeat(251);
    for key in [
        "",
        "with space",
        "new\nline",
        "tab\t",
        "nul\0",
        long.as_str(),
    ] {
        let err = b.get(key).await.unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        let err = b
            .set(key, "x".into(), 0, Lifetime::NEVER)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        assert!(matches!(
            b.delete(key).await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(matches!(
            b.get_many(&["ok", key]).await,
            Err(BackendError::InvalidKey { .. })
        ));
    }
    // A 250-byte key is fine, and the backend still works after all that.
    let max = "k".repeat(250);
    b.set(&max, "x".into(), 0, Lifetime::NEVER).await.unwrap();
    assert!(b.get(&max).await.unwrap().is_some());
}

/// `limit` is the item size limit the backend under test was given (1 MiB by default).
pub async fn oversized_values_are_refused<B: Backend>(b: B, limit: usize) {
    b.set("big", "keep me".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let too_big = Bytes::from(vec![b'x'; limit + 1]);
    let err = b
        .set("big", too_big.clone(), 0, Lifetime::NEVER)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::ValueTooLarge { .. }), "{err:?}");
    assert!(matches!(
        b.add("other", too_big, 0, Lifetime::NEVER).await,
        Err(BackendError::ValueTooLarge { .. })
    ));
    // The old value is not lost, and a value comfortably under the limit is stored whole.
    assert_eq!(&b.get("big").await.unwrap().unwrap().value[..], b"keep me");
    let fits = Bytes::from(vec![b'y'; limit - 4096]);
    b.set("fits", fits.clone(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(b.get("fits").await.unwrap().unwrap().value, fits);
}

pub async fn stats_use_memcached_names<B: Backend>(b: B) {
    b.set("s", "x".into(), 0, Lifetime::NEVER).await.unwrap();
    b.get("s").await.unwrap();
    b.get("absent").await.unwrap();
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    for name in [
        "curr_items",
        "total_items",
        "bytes",
        "get_hits",
        "get_misses",
        "evictions",
        "cmd_get",
        "cmd_set",
        "limit_maxbytes",
        "uptime",
        "time",
    ] {
        assert!(s.get_u64(name).is_some(), "stat {name} missing: {s:?}");
    }
    // memcached counts flushed items in curr_items until it reclaims them, so only a lower
    // bound holds across backends.
    assert!(s.get_u64("curr_items").unwrap() >= 1);
    assert!(s.get_u64("get_hits").unwrap() >= 1);
    assert!(s.get_u64("get_misses").unwrap() >= 1);
    assert!(s.stats.contains_key("version"));
}

/// Bad input through the client: undecodable bytes, unknown flags, oversized values.
pub async fn client_bad_input<B: Backend>(b: B, limit: usize) {
    let client = MemcacheClient::new(b.clone());
    let key = client.build_key("garbage");
    // Bytes under our flags that do not decode: a miss, and deleted.
    b.set(
        &key,
        "\u{ff}not bincode".into(),
        codec::FLAG_BINCODE,
        Lifetime::NEVER,
    )
    .await
    .unwrap();
    assert_eq!(client.query::<Vec<String>>("garbage").await, None);
    assert!(
        b.get(&key).await.unwrap().is_none(),
        "undecodable value not deleted"
    );
    // A value read as a type it cannot decode into: a miss. (The format carries no type
    // name, so only values whose bytes do not fit the type are caught.)
    client.set("typed", &u64::MAX).await;
    assert_eq!(client.query::<String>("typed").await, None);
    // Unknown flags (another client's format): a miss, left alone.
    let foreign = client.build_key("foreign");
    b.set(&foreign, "pickle".into(), 1, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(client.query::<String>("foreign").await, None);
    assert_eq!(client.query_raw("foreign").await, None);
    assert!(b.get(&foreign).await.unwrap().is_some());
    // Over the item limit: a clear error from try_set, and the value it was to replace is
    // gone, as memcached drops it when it refuses such a set (a caller must not read back
    // what it meant to replace).
    client.set("keep", "old").await;
    let huge = "x".repeat(limit + 1);
    let err = client.try_set("keep", &huge).await.unwrap_err();
    assert!(
        matches!(
            err,
            tower_memcache::client::Error::Backend(BackendError::ValueTooLarge { .. })
        ),
        "{err:?}"
    );
    assert_eq!(client.query::<String>("keep").await, None);
    client.set("keep", "old").await;
    assert_eq!(client.set("keep", &huge).await, client.build_key("keep"));
    assert_eq!(client.query::<String>("keep").await, None);
    client.set("keep", "old").await;
    assert!(matches!(
        client
            .try_set_raw_with_lifetime("keep", huge.into_bytes(), Lifetime::NEVER)
            .await,
        Err(tower_memcache::client::Error::Backend(
            BackendError::ValueTooLarge { .. }
        ))
    ));
    assert_eq!(client.query_raw("foreign").await, None);
    assert_eq!(client.query::<String>("keep").await, None);
}

/// `cas` stores only while the item is unchanged since it was read; a stored value gets a
/// new CAS value; a missing item is `NotFound`, a changed one `Exists`.
pub async fn cas_replaces_only_an_unchanged_item<B: Backend>(b: B) {
    b.set("c", "v1".into(), 3, Lifetime::NEVER).await.unwrap();
    let first = b.get("c").await.unwrap().unwrap().cas.expect("a CAS value");
    assert_eq!(
        b.cas("c", "v2".into(), 4, Lifetime::NEVER, first)
            .await
            .unwrap(),
        CasOutcome::Stored
    );
    let item = b.get("c").await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.flags), (&b"v2"[..], 4));
    let second = item.cas.expect("a CAS value");
    assert_ne!(second, first, "a stored cas must change the CAS value");
    // The value read before the swap is stale now.
    assert_eq!(
        b.cas("c", "v3".into(), 5, Lifetime::NEVER, first)
            .await
            .unwrap(),
        CasOutcome::Exists
    );
    assert_eq!(&b.get("c").await.unwrap().unwrap().value[..], b"v2");
    // Any other store changes it too.
    b.set("c", "v4".into(), 0, Lifetime::NEVER).await.unwrap();
    assert_eq!(
        b.cas("c", "v5".into(), 0, Lifetime::NEVER, second)
            .await
            .unwrap(),
        CasOutcome::Exists
    );
    assert_eq!(
        b.cas("gone", "x".into(), 0, Lifetime::NEVER, first)
            .await
            .unwrap(),
        CasOutcome::NotFound
    );
    assert!(
        b.get("gone").await.unwrap().is_none(),
        "cas created an item"
    );
    // Deleted or expired since read: NotFound.
    let third = b.get("c").await.unwrap().unwrap().cas.unwrap();
    b.delete("c").await.unwrap();
    assert_eq!(
        b.cas("c", "v6".into(), 0, Lifetime::NEVER, third)
            .await
            .unwrap(),
        CasOutcome::NotFound
    );
    let past = SystemTime::now() - Duration::from_secs(3600);
    b.set("e", "x".into(), 0, Lifetime::NEVER).await.unwrap();
    let cas = b.get("e").await.unwrap().unwrap().cas.unwrap();
    b.touch("e", Lifetime::at(past)).await.unwrap();
    assert_eq!(
        b.cas("e", "y".into(), 0, Lifetime::NEVER, cas)
            .await
            .unwrap(),
        CasOutcome::NotFound
    );
    // Bad input is refused like any store's.
    assert!(matches!(
        b.cas("bad key", "x".into(), 0, Lifetime::NEVER, 1).await,
        Err(BackendError::InvalidKey { .. })
    ));
    let huge = Bytes::from(vec![b'x'; b.item_size_limit() + 1]);
    assert!(matches!(
        b.cas("huge", huge, 0, Lifetime::NEVER, 1).await,
        Err(BackendError::ValueTooLarge { .. })
    ));
}

/// The `*_by_key` methods keep the semantics of the plain ones (on one server, or routed to
/// one): what is stored under a route is read back under it; an empty route and bad keys
/// are refused.
pub async fn routed_calls_keep_their_semantics<B: Backend>(b: B) {
    let route = "entry-route";
    b.set_by_key(route, "r1", "one".into(), 7, Lifetime::NEVER)
        .await
        .unwrap();
    assert!(
        b.add_by_key(route, "r2", "two".into(), 0, Lifetime::NEVER)
            .await
            .unwrap()
    );
    assert!(
        !b.add_by_key(route, "r2", "again".into(), 0, Lifetime::NEVER)
            .await
            .unwrap()
    );
    let found = b
        .get_many_by_key(route, &["r1", "r2", "r-absent"])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        (&found["r1"].value[..], found["r1"].flags),
        (&b"one"[..], 7)
    );
    assert_eq!(&found["r2"].value[..], b"two");
    let cas = found["r1"].cas.expect("a CAS value");
    assert_eq!(
        b.cas_by_key(route, "r1", "uno".into(), 8, Lifetime::NEVER, cas)
            .await
            .unwrap(),
        CasOutcome::Stored
    );
    assert_eq!(
        b.cas_by_key(route, "r1", "eins".into(), 8, Lifetime::NEVER, cas)
            .await
            .unwrap(),
        CasOutcome::Exists
    );
    assert_eq!(
        b.cas_by_key(route, "r-absent", "x".into(), 0, Lifetime::NEVER, cas)
            .await
            .unwrap(),
        CasOutcome::NotFound
    );
    let item = &b.get_many_by_key(route, &["r1"]).await.unwrap()["r1"];
    assert_eq!((&item.value[..], item.flags), (&b"uno"[..], 8));
    assert!(b.delete_by_key(route, "r2").await.unwrap());
    assert!(!b.delete_by_key(route, "r2").await.unwrap());
    assert!(b.get_many_by_key(route, &[]).await.unwrap().is_empty());
    // A route is never sent: spaces are fine in it.
    b.set_by_key("a route with spaces", "r3", "x".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert!(
        b.get_many_by_key("a route with spaces", &["r3"])
            .await
            .unwrap()
            .contains_key("r3")
    );

    let invalid = |result: Result<(), BackendError>, what: &str| {
        assert!(
            matches!(result, Err(BackendError::InvalidKey { .. })),
            "{what}: {result:?}"
        );
    };
    invalid(
        b.set_by_key("", "k", "x".into(), 0, Lifetime::NEVER).await,
        "set_by_key, empty route",
    );
    invalid(
        b.add_by_key("", "k", "x".into(), 0, Lifetime::NEVER)
            .await
            .map(drop),
        "add_by_key, empty route",
    );
    invalid(
        b.cas_by_key("", "k", "x".into(), 0, Lifetime::NEVER, 1)
            .await
            .map(drop),
        "cas_by_key, empty route",
    );
    invalid(
        b.delete_by_key("", "k").await.map(drop),
        "delete_by_key, empty route",
    );
    invalid(
        b.get_many_by_key("", &["k"]).await.map(drop),
        "get_many_by_key, empty route",
    );
    invalid(
        b.set_by_key(route, "bad key", "x".into(), 0, Lifetime::NEVER)
            .await,
        "set_by_key, bad key",
    );
    invalid(
        b.get_many_by_key(route, &["ok", "bad key"]).await.map(drop),
        "get_many_by_key, bad key",
    );
    invalid(
        b.delete_by_key(route, "bad key").await.map(drop),
        "delete_by_key, bad key",
    );
    let huge = Bytes::from(vec![b'x'; b.item_size_limit() + 1]);
    assert!(matches!(
        b.set_by_key(route, "huge", huge, 0, Lifetime::NEVER).await,
        Err(BackendError::ValueTooLarge { .. })
    ));
}

/// `get_many_by_key_ordered` answers what `get_many_by_key` does, in the order of the keys
/// asked: `None` for a miss, a repeated key at each of its places, past one `gets` line
/// (100 keys) too; bad input is refused alike.
pub async fn ordered_reads_match_the_map<B: Backend>(b: B) {
    let route = "ordered-route";
    let limit = Duration::from_secs(5);
    b.set_by_key(route, "o1", "one".into(), 7, Lifetime::NEVER)
        .await
        .unwrap();
    b.set_by_key(route, "o2", "two".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let keys = ["o-absent", "o1", "o2", "o1"];
    let ordered = b
        .get_many_by_key_ordered(route, &keys, limit)
        .await
        .unwrap();
    let map = b.get_many_by_key(route, &keys).await.unwrap();
    assert_eq!(ordered.len(), keys.len());
    for (key, item) in keys.iter().zip(&ordered) {
        assert_eq!(item.as_ref(), map.get(*key), "{key}");
    }
    assert!(ordered[0].is_none());
    let one = ordered[1].as_ref().expect("o1 stored");
    assert_eq!((&one.value[..], one.flags), (&b"one"[..], 7));
    assert!(one.cas.is_some(), "a CAS value");
    assert_eq!(ordered[3], ordered[1]);
    assert_eq!(
        ordered[2].as_ref().map(|item| &item.value[..]),
        Some(&b"two"[..])
    );

    let many: Vec<String> = (0..150).map(|i| format!("o-many-{i}")).collect();
    for key in many.iter().step_by(3) {
        b.set_by_key(route, key, key.clone().into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
    }
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let ordered = b
        .get_many_by_key_ordered(route, &refs, limit)
        .await
        .unwrap();
    assert_eq!(ordered.len(), many.len());
    for (i, (key, item)) in many.iter().zip(&ordered).enumerate() {
        let expected = (i % 3 == 0).then_some(key.as_bytes());
        assert_eq!(item.as_ref().map(|item| &item.value[..]), expected, "{key}");
    }

    assert!(
        b.get_many_by_key_ordered(route, &[], limit)
            .await
            .unwrap()
            .is_empty()
    );
    for (route, keys) in [("", &["k"][..]), (route, &["ok", "bad key"][..])] {
        let result = b.get_many_by_key_ordered(route, keys, limit).await;
        assert!(
            matches!(result, Err(BackendError::InvalidKey { .. })),
            "{route:?} {keys:?}: {result:?}"
        );
    }
}

/// `advance_on_every_server` is a max-register on a backend of one server: the stamp
/// where the key is absent or holds no number, else the larger of the stamp and the value
/// plus one (review SX); bad input is refused.
pub async fn advance_on_every_server_is_a_max_register<B: Backend>(b: B) {
    let advance = |stamp| b.advance_on_every_server("advanced", stamp, Lifetime::NEVER);
    let held = || async { b.get("advanced").await.unwrap().unwrap().value };
    let first = advance(500).await.unwrap();
    assert_eq!((first.value, first.absorbed), (500, None));
    let later = advance(900).await.unwrap();
    assert_eq!((later.value, later.absorbed), (900, Some(500)));
    let earlier = advance(700).await.unwrap();
    assert_eq!((earlier.value, earlier.absorbed), (901, Some(900)));
    assert_eq!(&held().await[..], b"901");
    b.set("advanced", "123c".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let over = advance(5).await.unwrap();
    assert_eq!((over.value, over.absorbed), (5, None));
    assert_eq!(&held().await[..], b"5");
    assert!(matches!(
        b.advance_on_every_server("bad key", 1, Lifetime::NEVER)
            .await,
        Err(BackendError::InvalidKey { .. })
    ));
}

/// `set_on_every_server` stores like `set` on a backend of one server; bad input is refused.
pub async fn set_on_every_server_stores_everywhere<B: Backend>(b: B) {
    b.set_on_every_server("everywhere", "g1".into(), 9, Lifetime::NEVER)
        .await
        .unwrap();
    let item = b.get("everywhere").await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.flags), (&b"g1"[..], 9));
    b.set_on_every_server("everywhere", "g2".into(), 9, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(
        &b.get("everywhere").await.unwrap().unwrap().value[..],
        b"g2"
    );
    assert!(matches!(
        b.set_on_every_server("bad key", "x".into(), 0, Lifetime::NEVER)
            .await,
        Err(BackendError::InvalidKey { .. })
    ));
    let huge = Bytes::from(vec![b'x'; b.item_size_limit() + 1]);
    assert!(matches!(
        b.set_on_every_server("huge", huge, 0, Lifetime::NEVER)
            .await,
        Err(BackendError::ValueTooLarge { .. })
    ));
    // Registering keys to reset is accepted (and repeated or bad keys are harmless).
    b.reset_on_rejoin("everywhere");
    b.reset_on_rejoin("everywhere");
    b.reset_on_rejoin("bad key");
    assert!(b.get("everywhere").await.unwrap().is_some());
}

/// The backend reports the item size limit it enforces: `limit`, the one it was given
/// (the servers under test accept at least that much).
pub async fn item_size_limit_is_reported<B: Backend>(b: B, limit: usize) {
    // Once connected too: a TcpBackend learns its servers' limits on connecting.
    b.set("limit", "x".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(b.item_size_limit(), limit);
    let key = "at-limit";
    let largest = limit - key.len() - tower_memcache::backend::ITEM_OVERHEAD;
    assert!(matches!(
        b.set(
            key,
            Bytes::from(vec![b'x'; largest + 1]),
            0,
            Lifetime::NEVER
        )
        .await,
        Err(BackendError::ValueTooLarge { .. })
    ));
}

/// Runs every scenario above that does not sleep, then the one that does.
pub async fn all<B: Backend>(make: impl Fn() -> futures_like::BoxFuture<B>, limit: usize) {
    set_get_keeps_bytes_and_flags(make().await).await;
    get_many_returns_present_keys_only(make().await).await;
    add_only_when_absent(make().await).await;
    delete_and_touch(make().await).await;
    incr_counts_and_wraps(make().await).await;
    flush_all_empties_everything(make().await).await;
    bad_keys_are_refused_before_sending(make().await).await;
    oversized_values_are_refused(make().await, limit).await;
    stats_use_memcached_names(make().await).await;
    client_bad_input(make().await, limit).await;
    cas_replaces_only_an_unchanged_item(make().await).await;
    routed_calls_keep_their_semantics(make().await).await;
    ordered_reads_match_the_map(make().await).await;
    set_on_every_server_stores_everywhere(make().await).await;
    advance_on_every_server_is_a_max_register(make().await).await;
    item_size_limit_is_reported(make().await, limit).await;
    lifetimes_expire(make().await).await;
}

pub mod futures_like {
    /// A boxed future, to pass backend factories around without another crate.
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}
