//! One Backend test suite, run on MemoryBackend and on TcpBackend against a real memcached,
//! so the fake cannot drift from the real thing. Each function starts from an empty store.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tower_memcache::backend::{Backend, BackendError, Lifetime};
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
    // Over the item limit: a clear error from try_set, nothing else lost.
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
    assert_eq!(client.set("keep", &huge).await, client.build_key("keep"));
    assert_eq!(client.query::<String>("keep").await.as_deref(), Some("old"));
    assert!(matches!(
        client
            .try_set_raw_with_lifetime("keep", huge.into_bytes(), Lifetime::NEVER)
            .await,
        Err(tower_memcache::client::Error::Backend(
            BackendError::ValueTooLarge { .. }
        ))
    ));
    assert_eq!(client.query_raw("foreign").await, None);
    assert_eq!(client.query::<String>("keep").await.as_deref(), Some("old"));
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
    lifetimes_expire(make().await).await;
}

pub mod futures_like {
    /// A boxed future, to pass backend factories around without another crate.
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}
