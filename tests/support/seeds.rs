//! Every `>>>` example of the two seed documents (lovely.memcached's README and
//! p01.memcache's README), as scenarios generic over the backend so the same steps run on
//! MemoryBackend and against a real memcached through TcpBackend.
//!
//! Each scenario starts from an empty store. Comments quote the seed line being mirrored.

use serde::{Deserialize, Serialize};
use tower_memcache::backend::{Backend, Lifetime};
use tower_memcache::key::{Encoded, KeyBase, build_key, md5_hex};
use tower_memcache::{CacheRegistry, MemcacheClient};

/// lovely.memcached: defaults, set / query / invalidate, unicode, invalidateAll.
pub async fn lovely_basics<B: Backend>(backend: B) {
    // >>> util = MemcachedClient(); util.defaultLifetime → 3600
    let util = MemcacheClient::new(backend.clone());
    assert_eq!(util.lifetime(), Lifetime::from_secs(3600));
    assert_eq!(util.namespace(), None);
    // >>> util.set('cached value', 'cache_key'); util.query('cache_key') → 'cached value'
    util.set("cache_key", "cached value").await;
    assert_eq!(
        util.query::<String>("cache_key").await.as_deref(),
        Some("cached value")
    );
    // >>> util.invalidate('cache_key'); util.query('cache_key') is None
    util.invalidate("cache_key").await;
    assert_eq!(util.query::<String>("cache_key").await, None);
    // >>> util.set(u'cached value ä', 'cache_key'); query == u'cached value ä'
    util.set("cache_key", "cached value ä").await;
    assert_eq!(
        util.query::<String>("cache_key").await.as_deref(),
        Some("cached value ä")
    );
    // >>> util.invalidateAll(); util.query('cache_key') is None
    util.invalidate_all().await;
    assert_eq!(util.query::<String>("cache_key").await, None);
}

/// lovely.memcached and p01.memcache: namespaces, and invalidateAll deleting all of them.
pub async fn namespaces<B: Backend>(backend: B) {
    // >>> util1 = MemcachedClient(defaultNS=u'1'); util2 = MemcachedClient(defaultNS=u'2')
    let util1 = MemcacheClient::new(backend.clone()).with_namespace("1");
    let util2 = MemcacheClient::new(backend.clone()).with_namespace("2");
    // >>> util1.set(1,1); util2.set(2,2)
    util1.set(&1, &1).await;
    util2.set(&2, &2).await;
    // >>> util1.query(1) → 1; util1.query(2) is None; util1.query(2, ns=u'2') → 2
    assert_eq!(util1.query::<i32>(&1).await, Some(1));
    assert_eq!(util1.query::<i32>(&2).await, None);
    assert_eq!(util1.with_namespace("2").query::<i32>(&2).await, Some(2));
    // >>> util2.query(2) → 2; util2.query(1) is None
    assert_eq!(util2.query::<i32>(&2).await, Some(2));
    assert_eq!(util2.query::<i32>(&1).await, None);
    // >>> util1.invalidateAll(); util1.query(1) is util2.query(2) is None
    util1.invalidate_all().await;
    assert_eq!(util1.query::<i32>(&1).await, None);
    assert_eq!(util2.query::<i32>(&2).await, None);
}

/// lovely.memcached / p01.memcache: statistics per server.
pub async fn statistics<B: Backend>(backend: B, expected_server: &str) {
    let util = MemcacheClient::new(backend);
    util.set("cache_key", "cached value").await;
    // >>> util.getStatistics() → [('127.0.0.1:11211 (1)', {'total_items':...]
    let stats = util.stats().await;
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].server, expected_server);
    assert!(stats[0].get_u64("total_items").unwrap() >= 1, "{stats:?}");
    assert!(stats[0].get_u64("curr_items").unwrap() >= 1, "{stats:?}");
}

/// lovely.memcached: "If we use a server which doesn't exist we can still use the cache but
/// nothing will be stored … As soon as a server is back online it will immediately used."
/// `dead` is a backend whose server is gone; `down` / `up` take the live one away and back.
pub async fn server_gone_and_back<B: Backend>(
    dead: B,
    live: B,
    down: impl AsyncFnOnce(),
    up: impl AsyncFnOnce(),
) {
    // >>> util.servers = ['127.0.0.1:8125']
    let util = MemcacheClient::new(dead);
    // >>> util.set('cached value', 'cache_object')  (no error; still returns the key)
    let key = util.set("cache_object", "cached value").await;
    assert_eq!(key, build_key(None, "cache_object"));
    // >>> util.query('cache_object') is None
    assert_eq!(util.query::<String>("cache_object").await, None);
    assert!(util.try_query::<String>("cache_object").await.is_err());
    assert!(util.stats().await.is_empty());
    util.invalidate("cache_object").await;
    util.invalidate_all().await;

    // And with a server that goes away and comes back: used again at once.
    let util = MemcacheClient::new(live);
    down().await;
    util.set("cache_object", "while down").await;
    assert_eq!(util.query::<String>("cache_object").await, None);
    up().await;
    util.set("cache_object", "cached value").await;
    assert_eq!(
        util.query::<String>("cache_object").await.as_deref(),
        Some("cached value")
    );
}

/// p01.memcache: buildKey, set returning the key, query, invalidate, unicode, invalidateAll
/// emptying the store.
pub async fn p01_basics<B: Backend>(backend: B) {
    // >>> client = UltraMemcacheClient(); client.lifetime → 3600
    let client = MemcacheClient::new(backend.clone());
    assert_eq!(client.lifetime().exptime(), 3600);
    // >>> client.buildKey('cache_key') → '0a42907b589a309ad94f8874eacbc63f'
    assert_eq!(
        client.build_key("cache_key"),
        "0a42907b589a309ad94f8874eacbc63f"
    );
    // >>> k = client.set('cache_key', 'cached value'); k == client.buildKey('cache_key')
    let k = client.set("cache_key", "cached value").await;
    assert_eq!(k, "0a42907b589a309ad94f8874eacbc63f");
    assert_eq!(k, client.build_key("cache_key"));
    // >>> client.query('cache_key') → 'cached value'
    assert_eq!(
        client.query::<String>("cache_key").await.as_deref(),
        Some("cached value")
    );
    // >>> client.invalidate('cache_key'); client.query('cache_key') is None
    client.invalidate("cache_key").await;
    assert_eq!(client.query::<String>("cache_key").await, None);
    // >>> key = client.set('cache_key', u'cached value ä'); query == u'cached value ä'
    client.set("cache_key", "cached value ä").await;
    assert_eq!(
        client.query::<String>("cache_key").await.as_deref(),
        Some("cached value ä")
    );
    // >>> backend.cache → {'0a42907b…': ('Vcached value \xc3\xa4\np1\n.', 0)}
    let item = backend
        .get(&k)
        .await
        .unwrap()
        .expect("stored under the seed key");
    assert_eq!(item.flags, tower_memcache::codec::FLAG_BINCODE);
    let decoded: String = tower_memcache::codec::decode_value(&item.value).unwrap();
    assert_eq!(decoded, "cached value ä");
    // >>> client.invalidateAll(); backend.cache → {}; client.query('cache_key') is None
    client.invalidate_all().await;
    assert!(backend.get(&k).await.unwrap().is_none());
    assert_eq!(client.query::<String>("cache_key").await, None);
}

/// A persistent object of the seeds: keyed by its `_p_oid`.
struct Object {
    p_oid: &'static str,
}

impl KeyBase for Object {
    fn key_base(&self) -> std::borrow::Cow<'_, [u8]> {
        self.p_oid.as_bytes().into()
    }
}

/// The seeds' `Pickable`: keyed by its encoding.
#[derive(Serialize, Deserialize)]
struct Pickable {
    name: String,
    values: Vec<u32>,
}

/// p01.memcache "build key": strings, unicode, integers, persistent objects, anything else.
pub fn p01_build_key() {
    let md5 = |s: &[u8]| md5_hex(&[s]);
    let client = MemcacheClient::new(tower_memcache::backend::MemoryBackend::new());
    let n = client.with_namespace("n");
    // >>> client.buildKey('foo') == md5('foo').hexdigest(); with namespace 'n': md5('nfoo')
    assert_eq!(client.build_key("foo"), md5(b"foo"));
    assert_eq!(n.build_key("foo"), md5(b"nfoo"));
    // >>> unicode is UTF-8: md5(u'bar'.encode('UTF-8')), md5(u'nbar'…)
    assert_eq!(client.build_key("bar"), md5("bar".as_bytes()));
    assert_eq!(n.build_key("bar"), md5(b"nbar"));
    // >>> client.buildKey(123) == md5('123'); namespace 'n': md5('n123')
    assert_eq!(client.build_key(&123), md5(b"123"));
    assert_eq!(n.build_key(&123), md5(b"n123"));
    // >>> obj._p_oid = 'abc123'; buildKey(obj) == md5(obj._p_oid); 'n' → md5('nabc123')
    let obj = Object { p_oid: "abc123" };
    assert_eq!(client.build_key(&obj), md5(b"abc123"));
    assert_eq!(n.build_key(&obj), md5(b"nabc123"));
    // >>> anything else: md5 of its pickle (here: of its codec bytes)
    let pickable = Encoded::new(&Pickable {
        name: "pickable".into(),
        values: vec![1, 2],
    })
    .unwrap();
    assert_eq!(client.build_key(&pickable), md5(pickable.as_bytes()));
    assert_eq!(
        n.build_key(&pickable),
        md5_hex(&[b"n", pickable.as_bytes()])
    );
    // >>> client.namespace = None; client.namespace is None
    assert_eq!(n.with_namespace(None).namespace(), None);
}

/// p01.memcache "pickle protocol": two encodings of one value give different stored bytes,
/// each read back by its reader. Our two encodings are the codec and raw bytes.
pub async fn p01_encodings<B: Backend>(backend: B) {
    let client = MemcacheClient::new(backend.clone());
    // >>> client.set('foo', u'bar') → 'acbd18db4cc2f85cedef654fccc4a4d8'
    let key = client.set("foo", "bar").await;
    assert_eq!(key, "acbd18db4cc2f85cedef654fccc4a4d8");
    let p1 = backend.get(&key).await.unwrap().unwrap();
    // >>> pc.set('foo', u'bar') with another protocol → same key, different bytes
    assert_eq!(client.set_raw("foo", "bar").await, key);
    let p2 = backend.get(&key).await.unwrap().unwrap();
    // >>> p1 != p2
    assert_ne!((p1.value.clone(), p1.flags), (p2.value.clone(), p2.flags));
    // Each encoding is read by its own reader, and never mistaken for the other.
    assert_eq!(client.query_raw("foo").await.as_deref(), Some(&b"bar"[..]));
    assert_eq!(client.query::<String>("foo").await, None);
    client.set("foo", "bar").await;
    assert_eq!(client.query::<String>("foo").await.as_deref(), Some("bar"));
    assert_eq!(client.query_raw("foo").await, None);
}

/// p01.memcache "Raw Data" and "Expiration".
pub async fn p01_raw<B: Backend>(backend: B) {
    let client = MemcacheClient::new(backend.clone());
    // >>> client.set('a', u'value of a', raw=True) → ValueError: the Rust API only takes
    // bytes for raw values (a compile-time error; see the compile_fail doc test on set_raw).
    // >>> client.invalidateAll(); backend.cache → {}
    client.invalidate_all().await;
    // >>> client.set('a', 'value of a', raw=True) → '0cc175b9c0f1b6a831c399e269772661'
    let key = client.set_raw("a", "value of a").await;
    assert_eq!(key, "0cc175b9c0f1b6a831c399e269772661");
    // >>> backend.cache['0cc175b9c0f1b6a831c399e269772661'][0] → 'value of a'
    let item = backend.get(&key).await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.flags), (&b"value of a"[..], 0));
    // >>> client.query('a', raw=True) → 'value of a'
    assert_eq!(
        client.query_raw("a").await.as_deref(),
        Some(&b"value of a"[..])
    );
    // >>> client.set('abc', 'foo bar', lifetime=0, raw=True) → '900150983cd24fb0d6963f7d28e17f72'
    let key = client
        .set_raw_with_lifetime("abc", "foo bar", Lifetime::from_secs(0))
        .await;
    assert_eq!(key, "900150983cd24fb0d6963f7d28e17f72");
    // >>> client.query('abc', raw=True) → 'foo bar'
    assert_eq!(
        client.query_raw("abc").await.as_deref(),
        Some(&b"foo bar"[..])
    );
}

/// p01.memcache "Invalidation Event": named caches, invalidate in all or in one.
pub async fn p01_invalidation_event<B: Backend>(backend: B) {
    let registry = CacheRegistry::new();
    // >>> cacheOne = UltraMemcacheClient(namespace='one'); provideUtility(…, name='cacheOne')
    let cache_one = MemcacheClient::new(backend.clone()).with_namespace("one");
    registry.register("cacheOne", cache_one.clone());
    // >>> cacheOne.set('key1', 'Value1') → '7d701cfc74a8bfe87fe6d448bf23c8f2'
    assert_eq!(
        cache_one.set("key1", "Value1").await,
        "7d701cfc74a8bfe87fe6d448bf23c8f2"
    );
    assert_eq!(
        cache_one.query::<String>("key1").await.as_deref(),
        Some("Value1")
    );
    // >>> event.notify(InvalidateCacheEvent('key1')); cacheOne.query('key1') is None
    registry.invalidate("key1").await;
    assert_eq!(cache_one.query::<String>("key1").await, None);
    // >>> cacheTwo = UltraMemcacheClient(namespace='two'); registered as 'two'
    let cache_two = MemcacheClient::new(backend.clone()).with_namespace("two");
    registry.register("two", cache_two.clone());
    cache_one.set("key", "v1").await;
    cache_two.set("key", "v2").await;
    assert_eq!(
        cache_one.query::<String>("key").await.as_deref(),
        Some("v1")
    );
    assert_eq!(
        cache_two.query::<String>("key").await.as_deref(),
        Some("v2")
    );
    // >>> event.notify(InvalidateCacheEvent('key')) → both None
    registry.invalidate("key").await;
    assert_eq!(cache_one.query::<String>("key").await, None);
    assert_eq!(cache_two.query::<String>("key").await, None);
    // >>> InvalidateCacheEvent('key', cacheName='cacheOne') → only cacheOne loses it
    cache_one.set("key", "v1").await;
    cache_two.set("key", "v2").await;
    assert!(registry.invalidate_in("cacheOne", "key").await);
    assert_eq!(cache_one.query::<String>("key").await, None);
    assert_eq!(
        cache_two.query::<String>("key").await.as_deref(),
        Some("v2")
    );
    // Unknown names invalidate nothing and say so.
    assert!(!registry.invalidate_in("nope", "key").await);
    assert_eq!(
        cache_two.query::<String>("key").await.as_deref(),
        Some("v2")
    );
}

/// Beyond the seeds: dropping one namespace without touching the others.
pub async fn namespace_invalidation<B: Backend>(backend: B) {
    let users = MemcacheClient::new(backend.clone())
        .with_namespace("users")
        .with_versioned_namespace(true);
    let posts = MemcacheClient::new(backend.clone())
        .with_namespace("posts")
        .with_versioned_namespace(true);
    let plain = MemcacheClient::new(backend.clone()).with_namespace("plain");
    users.set("alice", &1).await;
    users.set_raw("bob", "raw").await;
    posts.set("hello", &2).await;
    plain.set("x", &3).await;
    assert_eq!(users.query::<i32>("alice").await, Some(1));

    users.try_invalidate_namespace().await.unwrap();
    assert_eq!(users.query::<i32>("alice").await, None);
    assert_eq!(users.query_raw("bob").await, None);
    assert_eq!(posts.query::<i32>("hello").await, Some(2));
    assert_eq!(plain.query::<i32>("x").await, Some(3));
    // A second client of the same namespace (another process) sees the same generation.
    let users_elsewhere = MemcacheClient::new(backend.clone())
        .with_namespace("users")
        .with_versioned_namespace(true);
    users.set("alice", &10).await;
    assert_eq!(users_elsewhere.query::<i32>("alice").await, Some(10));
    users_elsewhere.try_invalidate_namespace().await.unwrap();
    assert_eq!(users.query::<i32>("alice").await, None);
    // Without versioning the call is refused clearly.
    assert!(matches!(
        plain.try_invalidate_namespace().await,
        Err(tower_memcache::client::Error::NamespaceNotVersioned)
    ));
}
