//! Review JJ: attacks on the interplay of features, with the near tier on (staleness 0 and
//! above) and off: near tier × ranges, `Vary`, conditionals, HEAD, credentials, `Age` and
//! `Cache-Status`, revalidation directives, purges, targeted fields and route rules; and
//! through the reverse proxy, `Expect: 100-continue`, 1xx from the origin and the near
//! tier with a runtime per thread.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::Watch;
use support::personal::{Origin, Reply};
use tokio::sync::{Notify, Semaphore};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Item, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache, ResponseBody};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// A service of `layer` over `origin`, as the proxy makes one per connection.
fn connection<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let response = origin.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneSyncService::new(tower::Layer::layer(layer, inner))
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> support::Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

// ---------------------------------------------------------------------------------------
// The near tier and a backend that once marked a server down
// ---------------------------------------------------------------------------------------

/// `MemoryBackend` that says one server was marked down once (`outages`), and whose next
/// read, once armed, waits until the test lets it go.
#[derive(Clone)]
struct Blipped {
    inner: MemoryBackend,
    outages: Arc<AtomicU64>,
    hold: Arc<AtomicBool>,
    held: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Blipped {
    fn new(inner: MemoryBackend) -> Self {
        Self {
            inner,
            outages: Arc::new(AtomicU64::new(1)),
            hold: Arc::default(),
            held: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Backend for Blipped {
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        let read = self.inner.get_many_by_key_ordered(route, keys, limit).await;
        if self.hold.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            let permit = tokio::time::timeout(Duration::from_secs(5), self.release.acquire());
            let _ = permit.await;
        }
        read
    }
    fn server_of(&self, route: &str) -> Option<usize> {
        self.inner.server_of(route)
    }
    fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }
    forward_to_inner!(
        get, get_many, set, add, cas, delete, touch, incr, flush_all, stats
    );
}

/// A server of the backend was marked down once (a memcached restart, a blip). The proxy
/// builds a cache service per connection; each one's first lookup took the outage for a
/// new one, and made the shared near tier forget every generation it remembered and
/// refuse every lookup then under way, on every thread. A client opening connections
/// (each with one request that looks anything up) kept the near tier from keeping what
/// other clients' lookups found: every hit a memcached round trip, for good.
#[tokio::test]
async fn a_new_connection_after_an_outage_does_not_make_the_near_tier_forget() {
    let origin = Origin::new(|_, _| Reply::ok(&[("cache-control", b"max-age=600")], "page"));
    let backend = Blipped::new(MemoryBackend::new());
    let near = NearCache::new(16 << 20, Duration::from_secs(60));
    let layer = MemcacheLayer::new(backend.clone())
        .namespace("jj")
        .mode(CacheMode::Origin)
        .near_cache(near.clone());
    let watch = Watch::of(&layer);
    let victim = connection(&layer, &origin);
    // Stored (a miss keeps nothing in the near tier).
    let first = send(&victim, Method::GET, "/a", &[]).await;
    assert_eq!(first.body, "page");
    watch.settled().await;
    // The victim's lookup, which would keep the entry, is held after its read...
    backend.hold.store(true, Ordering::SeqCst);
    let lookup = {
        let victim = victim.clone();
        tokio::spawn(async move { send(&victim, Method::GET, "/a", &[]).await })
    };
    tokio::time::timeout(Duration::from_secs(5), backend.held.notified())
        .await
        .expect("the victim's lookup never read");
    // ... while another client opens a connection and looks something up (no store).
    let attacker = connection(&layer, &origin);
    let probe = send(
        &attacker,
        Method::GET,
        "/nothing",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(probe.status, http::StatusCode::GATEWAY_TIMEOUT);
    backend.release.add_permits(1);
    let found = lookup.await.unwrap();
    assert_eq!(found.cache_status(), "tower-memcache; hit");
    let again = send(&victim, Method::GET, "/a", &[]).await;
    assert_eq!(
        again.header("cache-status"),
        Some(NEAR_HIT),
        "the entry the victim's lookup found was not kept: another connection's first \
         lookup took the old outage for a new one"
    );
    // A new outage still empties the tier's memory of generations, whoever looks first:
    // a lookup under way then keeps nothing.
    send(&victim, Method::GET, "/b", &[]).await;
    watch.settled().await;
    backend.outages.store(2, Ordering::SeqCst);
    let after_outage = send(&connection(&layer, &origin), Method::GET, "/b", &[]).await;
    assert_eq!(after_outage.cache_status(), "tower-memcache; hit");
    let again = send(&victim, Method::GET, "/b", &[]).await;
    assert_eq!(again.cache_status(), "tower-memcache; hit", "kept across an outage");
}
