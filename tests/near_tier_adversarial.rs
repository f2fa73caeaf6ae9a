//! The near tier tried as an adversarial reviewer did: stores that fail half way or whose
//! reply is lost (memcached changed, the near tier must not keep the old response), a
//! purge racing lookups in flight (their entries and the generations they read), the
//! generations of two servers, and sizes that could panic. The first two failed before
//! `Storage::store` made the tier forget whatever the store's outcome.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::refused_writes::PlainWritesRefused;
use support::versioned::Svc;
use support::{Answer, Watch};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Item, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";

/// The origin: `/page` without Vary at version 0; from version 1 on it varies on
/// Accept-Encoding and (with `pad`) carries a header large enough that the encoded entry
/// exceeds memcached's item size.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    pad: Arc<AtomicBool>,
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        let version = self.version.load(Ordering::SeqCst);
        let path = request.uri().path();
        let body = format!("{path} v{version}");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
        headers.insert("surrogate-key", HeaderValue::from_static("news"));
        if version >= 1 && path == "/varies-later" {
            headers.insert("vary", HeaderValue::from_static("accept-encoding"));
        }
        if self.pad.load(Ordering::SeqCst) {
            // 1.1 MB of header: the entry's encoding exceeds the 1 MiB item size.
            let pad = "p".repeat(1_100_000);
            headers.insert("x-pad", HeaderValue::from_str(&pad).unwrap());
        }
        response
    }
}

fn layer<B: Backend>(backend: B, near: &NearCache) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("review")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")))
        .near_cache(near.clone())
}

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    support::versioned::serving(layer, move |request: &Request<()>| origin.respond(request))
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

async fn warm(svc: &Svc, watch: &Watch, path: &str) {
    send(svc, Method::GET, path, &[]).await;
    watch.settled().await;
    send(svc, Method::GET, path, &[]).await; // from memcached: kept
    let near = send(svc, Method::GET, path, &[]).await;
    assert_eq!(near.header("cache-status"), Some(NEAR_HIT), "warm {path}");
}

/// A no-cache refresh by this process whose response now varies: the store replaces the
/// URL's plain entry with a variant index (CAS, succeeds), then writes the variant, which
/// memcached refuses (too large). memcached no longer holds the old response (a lookup is
/// a vary miss and goes to the origin); the near tier keeps answering it.
async fn a_half_done_store_does_not_leave_the_old_response_in_the_near_tier<B: Backend>(
    backend: B,
) {
    let origin = Origin::default();
    let near = NearCache::new(16 << 20, Duration::from_secs(30));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    warm(&svc, &watch, "/varies-later").await;
    origin.version.store(1, Ordering::SeqCst);
    origin.pad.store(true, Ordering::SeqCst);
    let refreshed = send(
        &svc,
        Method::GET,
        "/varies-later",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refreshed.body, "/varies-later v1");
    watch.settled().await;
    // What memcached says now: another process (no near tier of its own here) misses.
    let elsewhere = MemcacheLayer::new(backend)
        .namespace("review")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    let other = service(&elsewhere, &origin);
    let from_memcached = send(&other, Method::GET, "/varies-later", &[]).await;
    assert_eq!(
        from_memcached.body, "/varies-later v1",
        "memcached no longer holds v0"
    );
    // This process, through its near tier.
    let here_now = send(&svc, Method::GET, "/varies-later", &[]).await;
    assert_eq!(
        here_now.body,
        "/varies-later v1",
        "the near tier answers what this process's store replaced in memcached ({})",
        here_now.header("cache-status").unwrap_or("")
    );
}

on_every_backend!("near_tier_adversarial";
    a_half_done_store_does_not_leave_the_old_response_in_the_near_tier,
    a_flush_by_another_process_shows_within_the_bound,
    a_variant_refreshed_by_another_process_shows_within_the_bound,
);

/// MemoryBackend whose next `cas` lands but whose reply is lost (a timeout after the
/// server applied it: what a slow network or a loaded server produces).
#[derive(Clone)]
struct LostReply {
    inner: MemoryBackend,
    lose: Arc<AtomicBool>,
}

impl Backend for LostReply {
    async fn cas(
        &self,
        k: &str,
        v: Bytes,
        f: u32,
        l: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        let outcome = self.inner.cas(k, v, f, l, cas).await?;
        if self.lose.swap(false, Ordering::SeqCst) {
            return Err(BackendError::Timeout {
                server: "memory".into(),
                after: Duration::from_millis(100),
            });
        }
        Ok(outcome)
    }
    forward_to_inner!(
        get, get_many, set, add, delete, touch, incr, flush_all, stats
    );
}

/// A no-cache refresh by this process whose store's CAS lands in memcached but whose
/// reply is lost: memcached holds v1, the near tier keeps answering v0.
#[tokio::test]
async fn a_store_whose_reply_was_lost_does_not_leave_the_old_response_in_the_near_tier() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let backend = LostReply {
        inner: memory.clone(),
        lose: Arc::new(AtomicBool::new(false)),
    };
    let near = NearCache::new(16 << 20, Duration::from_secs(30));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    warm(&svc, &watch, "/page").await;
    origin.version.store(1, Ordering::SeqCst);
    backend.lose.store(true, Ordering::SeqCst);
    let refreshed = send(&svc, Method::GET, "/page", &[("cache-control", "no-cache")]).await;
    assert_eq!(refreshed.body, "/page v1");
    watch.settled().await;
    assert!(!backend.lose.load(Ordering::SeqCst), "the cas ran");
    let elsewhere = MemcacheLayer::new(memory)
        .namespace("review")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    let from_memcached = send(&service(&elsewhere, &origin), Method::GET, "/page", &[]).await;
    assert_eq!(
        (
            from_memcached.body.as_str(),
            from_memcached.header("cache-status")
        ),
        ("/page v1", Some("tower-memcache; hit"))
    );
    let here_now = send(&svc, Method::GET, "/page", &[]).await;
    assert_eq!(
        here_now.body,
        "/page v1",
        "near tier still answers v0 ({})",
        here_now.header("cache-status").unwrap_or("")
    );
}

/// Held? A lookup in flight when a purge by this process runs is not kept.
#[tokio::test]
async fn a_lookup_in_flight_during_a_purge_is_not_kept() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let near = NearCache::new(16 << 20, Duration::from_secs(30));
    let here = layer(memory.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    for round in 0..20u64 {
        let path = format!("/race{round}");
        send(&svc, Method::GET, &path, &[]).await;
        watch.settled().await;
        origin.version.store(round + 1, Ordering::SeqCst);
        memory.set_latency(Duration::from_millis(20));
        let svc2 = svc.clone();
        let p2 = path.clone();
        let lookup = tokio::spawn(async move { send(&svc2, Method::GET, &p2, &[]).await });
        tokio::time::sleep(Duration::from_millis(round % 25)).await;
        here.purger()
            .purge_uri(&format!("http://site.example{path}"))
            .await
            .unwrap();
        let _ = lookup.await.unwrap();
        memory.set_latency(Duration::ZERO);
        let after = send(&svc, Method::GET, &path, &[]).await;
        assert_ne!(
            after.header("cache-status"),
            Some(NEAR_HIT),
            "round {round}: {}",
            after.body
        );
        watch.settled().await;
    }
}

/// MemoryBackend whose multi-get replies arrive `slow_ms` after memcached read them.
#[derive(Clone)]
struct SlowReply {
    inner: MemoryBackend,
    slow_ms: Arc<AtomicU64>,
}

impl Backend for SlowReply {
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        let read = self.inner.get_many_by_key_ordered(route, keys, limit).await;
        let slow = self.slow_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(slow)).await;
        read
    }
    forward_to_inner!(
        get, get_many, server_of, set, add, cas, delete, touch, incr, flush_all, stats
    );
}

/// A lookup that read the namespace and tag generations before a namespace purge by this
/// process, and whose reply came after the purge returned, does not leave them
/// remembered: another URL's entry, orphaned by the purge, is not vouched for by them.
#[tokio::test]
async fn a_lookup_in_flight_during_a_purge_does_not_leave_its_generations() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let backend = SlowReply {
        inner: memory.clone(),
        slow_ms: Arc::new(AtomicU64::new(0)),
    };
    let near = NearCache::new(16 << 20, Duration::from_secs(30));
    let here = layer(backend.clone(), &near);
    let svc = service(&here, &origin);
    // Stored by another process: this tier has read (and remembers) nothing yet.
    let elsewhere = MemcacheLayer::new(memory)
        .namespace("review")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    let (elsewhere_svc, elsewhere_watch) = (service(&elsewhere, &origin), Watch::of(&elsewhere));
    for path in ["/a", "/b"] {
        send(&elsewhere_svc, Method::GET, path, &[]).await;
        elsewhere_watch.settled().await;
    }
    origin.version.store(1, Ordering::SeqCst);
    backend.slow_ms.store(50, Ordering::SeqCst);
    let in_flight = svc.clone();
    let lookup = tokio::spawn(async move { send(&in_flight, Method::GET, "/a", &[]).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    here.purger().purge_namespace().await.unwrap();
    // Read before the purge: it may answer what it read.
    let _ = lookup.await.unwrap();
    backend.slow_ms.store(0, Ordering::SeqCst);
    let after = send(&svc, Method::GET, "/b", &[]).await;
    assert_eq!(
        after.body,
        "/b v1",
        "{}",
        after.header("cache-status").unwrap_or("")
    );
}

/// Each memcached server holds its own namespace generation (each created its own): the
/// tier remembers them per server, so the checks of 20 URLs spread over two servers
/// confirm every entry (a value remembered for the other server would not match) and read
/// each server's generations once (2 + 2 for the tag), plus at most one store epoch per
/// URL, never the entries.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn generations_are_remembered_per_server() {
    let test = "near_tier_adversarial::generations_are_remembered_per_server";
    let one = memcached_or_skip!(test);
    let two = memcached_or_skip!(test);
    let backend = tower_memcache::backend::TcpBackend::builder()
        .server(one.addr())
        .server(two.addr())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let keys_read = || async {
        let stats = backend.stats().await.unwrap();
        assert_eq!(stats.len(), 2);
        stats
            .iter()
            .filter_map(|s| s.get_u64("cmd_get"))
            .sum::<u64>()
    };
    let origin = Origin::default();
    // A generation read is reused for `bound / 16`, which the 20 checks must fit in:
    // 375 ms, room for a loaded machine.
    let bound = Duration::from_secs(6);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let paths: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
    for path in &paths {
        warm(&svc, &watch, path).await;
    }
    tokio::time::sleep(bound + Duration::from_millis(100)).await;
    let before = keys_read().await;
    let t0 = Instant::now();
    for path in &paths {
        let answer = send(&svc, Method::GET, path, &[]).await;
        assert_eq!(
            answer.header("cache-status"),
            Some("tower-memcache; hit; detail=near")
        );
    }
    assert!(
        t0.elapsed() < bound / 16,
        "too slow a machine: {:?}",
        t0.elapsed()
    );
    // Entries carry the tag "news": its generation too, once per server.
    let read = keys_read().await - before;
    assert!((2 + 2 + 2..=20 + 2 + 2).contains(&read), "{read}");
}

#[test]
fn odd_sizes_do_not_panic() {
    for bytes in [0, 1, 100, u64::MAX] {
        let near = NearCache::new(bytes, Duration::from_secs(1));
        assert!(near.weight() <= near.capacity());
        let _ = near.max_entry_weight();
    }
    let _ = NearCache::new(1 << 20, Duration::MAX);
}

// ---------------------------------------------------------------------------------------
// Store epochs (a lapsed entry confirmed by its epoch and generations instead of read
// again), tried as an adversarial reviewer did: an epoch write that fails, an eviction, an
// epoch read in the same line as the entry, a flush, a variant refreshed elsewhere.
// ---------------------------------------------------------------------------------------

const HIT: &str = "tower-memcache; hit";

/// Another process: a layer over the same backend, without a near tier of its own.
fn plain<B: Backend>(backend: B) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("review")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")))
}

/// Fills `path` and reads it from memcached twice quickly: the second lookup knows its
/// stripe's store epoch (the first read it), so the entry it keeps can be confirmed.
/// Then checks that it is: past the bound it is answered from the tier.
async fn keep_confirmable(svc: &Svc, watch: &Watch, path: &str, bound: Duration) {
    send(svc, Method::GET, path, &[]).await;
    watch.settled().await;
    let hit = send(svc, Method::GET, path, &[]).await;
    assert_eq!(hit.header("cache-status"), Some(HIT), "{path}");
    tokio::time::sleep(bound + Duration::from_millis(30)).await;
    let confirmed = send(svc, Method::GET, path, &[]).await;
    assert_eq!(
        confirmed.header("cache-status"),
        Some(NEAR_HIT),
        "{path}: confirmed from its epoch"
    );
}

/// An invalidation (a POST) and a refresh (no-cache) by another process whose store epoch
/// write is refused once (the delete or the store itself succeeded): the change must show
/// in this process's tier within the bound all the same, not after eight windows.
#[tokio::test]
async fn a_change_whose_epoch_write_was_refused_shows_within_the_bound() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let bound = Duration::from_millis(400);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(memory.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let writer_backend = PlainWritesRefused {
        inner: memory,
        fail: Arc::new(AtomicU64::new(0)),
    };
    let writer = plain(writer_backend.clone());
    let (writer_svc, writer_watch) = (service(&writer, &origin), Watch::of(&writer));
    for (round, change) in ["post", "refresh"].into_iter().enumerate() {
        let path = format!("/{change}");
        keep_confirmable(&svc, &watch, &path, bound).await;
        let version = round as u64 + 1;
        origin.version.store(version, Ordering::SeqCst);
        writer_backend.fail.store(1, Ordering::SeqCst);
        let headers: &[(&str, &str)] = match change {
            "post" => &[],
            _ => &[("cache-control", "no-cache")],
        };
        let method = if change == "post" {
            Method::POST
        } else {
            Method::GET
        };
        let changed = send(&writer_svc, method, &path, headers).await;
        assert!(changed.status.is_success());
        writer_watch.settled().await;
        assert_eq!(
            writer_backend.fail.load(Ordering::SeqCst),
            0,
            "{change}: the epoch write was refused"
        );
        let at = Instant::now();
        tokio::time::sleep_until((at + bound + Duration::from_millis(50)).into()).await;
        let now = send(&svc, Method::GET, &path, &[]).await;
        assert_eq!(
            now.body,
            format!("{path} v{version}"),
            "{change} by another process, its epoch write refused: still answered ({})",
            now.header("cache-status").unwrap_or("")
        );
        watch.settled().await;
    }
}

/// An entry memcached evicted (its server keeps the epoch and generations: nothing tells
/// the tier) is answered from the tier, confirmed by its epoch, for at most eight windows
/// after its last full read, not a window more (README: "read in full again at least every
/// 8 × max_staleness"): a confirmation just before that must not extend it.
#[tokio::test]
async fn an_evicted_entry_is_answered_no_longer_than_eight_windows() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let bound = Duration::from_millis(250);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(memory.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    send(&svc, Method::GET, "/evicted", &[]).await;
    watch.settled().await;
    let read = Instant::now();
    let hit = send(&svc, Method::GET, "/evicted", &[]).await;
    assert_eq!(hit.header("cache-status"), Some(HIT));
    // Evicted: the entry goes, the epoch and generations (flags 0) stay.
    for (key, item) in memory.entries() {
        if item.flags != 0 {
            memory.delete(&key).await.unwrap();
        }
    }
    origin.version.store(1, Ordering::SeqCst);
    // Nobody asks until just before the eighth window ends, then once just after it.
    let margin = Duration::from_millis(60);
    tokio::time::sleep_until((read + bound * 8 - margin).into()).await;
    let before = send(&svc, Method::GET, "/evicted", &[]).await;
    watch.settled().await;
    tokio::time::sleep_until((read + bound * 8 + margin).into()).await;
    let after = send(&svc, Method::GET, "/evicted", &[]).await;
    assert_eq!(
        after.body,
        "/evicted v1",
        "evicted, answered from the tier {:?} after its read ({}; before: {} {})",
        read.elapsed(),
        after.header("cache-status").unwrap_or(""),
        before.body,
        before.header("cache-status").unwrap_or("")
    );
}

/// MemoryBackend whose next multi-get of more than one key (a lookup that reads the entry,
/// the namespace generation and the store epoch in one line) reads its first key, then
/// waits for `resume` before it reads the others: another process's refresh lands between
/// them, as it may between two keys of one line in memcached.
#[derive(Clone)]
struct SplitRead {
    inner: MemoryBackend,
    armed: Arc<AtomicBool>,
    paused: Arc<tokio::sync::Notify>,
    resume: Arc<tokio::sync::Notify>,
}

impl Backend for SplitRead {
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        if keys.len() < 2 || !self.armed.swap(false, Ordering::SeqCst) {
            return self.inner.get_many_by_key_ordered(route, keys, limit).await;
        }
        let first = self
            .inner
            .get_many_by_key_ordered(route, &keys[..1], limit)
            .await?;
        self.paused.notify_one();
        self.resume.notified().await;
        let rest = self
            .inner
            .get_many_by_key_ordered(route, &keys[1..], limit)
            .await?;
        Ok(first.into_iter().chain(rest).collect())
    }
    forward_to_inner!(
        get, get_many, server_of, set, add, cas, delete, touch, incr, flush_all, stats
    );
}

/// The first lookup of this tier reads the entry and its stripe's epoch in one line;
/// another process's refresh lands between the two reads, its epoch write too. The epoch
/// read is newer than the entry, so it must not vouch for it: past the bound the entry is
/// read again (the refresh shows), not confirmed for eight windows.
#[tokio::test]
async fn an_epoch_read_after_the_entry_in_its_line_does_not_vouch_for_it() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let split = SplitRead {
        inner: memory.clone(),
        armed: Arc::new(AtomicBool::new(false)),
        paused: Arc::new(tokio::sync::Notify::new()),
        resume: Arc::new(tokio::sync::Notify::new()),
    };
    let bound = Duration::from_millis(300);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(split.clone(), &near).lookup_timeout(Duration::from_secs(5));
    let svc = service(&here, &origin);
    let writer = plain(memory);
    let (writer_svc, writer_watch) = (service(&writer, &origin), Watch::of(&writer));
    // Stored by the other process, refreshed once so that the stripe has an epoch.
    send(&writer_svc, Method::GET, "/line", &[]).await;
    writer_watch.settled().await;
    send(
        &writer_svc,
        Method::GET,
        "/line",
        &[("cache-control", "no-cache")],
    )
    .await;
    writer_watch.settled().await;
    split.armed.store(true, Ordering::SeqCst);
    let lookup = {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, Method::GET, "/line", &[]).await })
    };
    split.paused.notified().await;
    origin.version.store(1, Ordering::SeqCst);
    let refreshed = send(
        &writer_svc,
        Method::GET,
        "/line",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refreshed.body, "/line v1");
    writer_watch.settled().await;
    split.resume.notify_one();
    let first = lookup.await.unwrap();
    // Read before the refresh: it may answer v0, and the tier keeps it.
    assert_eq!(
        (first.body.as_str(), first.header("cache-status")),
        ("/line v0", Some(HIT))
    );
    assert!(!split.armed.load(Ordering::SeqCst), "the line was split");
    let kept = send(&svc, Method::GET, "/line", &[]).await;
    assert_eq!(kept.header("cache-status"), Some(NEAR_HIT));
    tokio::time::sleep(bound + Duration::from_millis(50)).await;
    let now = send(&svc, Method::GET, "/line", &[]).await;
    assert_eq!(
        now.body,
        "/line v1",
        "confirmed by an epoch read after it ({})",
        now.header("cache-status").unwrap_or("")
    );
}

/// Everything flushed by another process (`Purger::purge_all`): the epochs and generations
/// the tier confirms with are gone, which confirms nothing; the flush shows within the
/// bound.
async fn a_flush_by_another_process_shows_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let bound = Duration::from_millis(400);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    keep_confirmable(&svc, &watch, "/flushed", bound).await;
    origin.version.store(1, Ordering::SeqCst);
    plain(backend).purger().purge_all().await.unwrap();
    let at = Instant::now();
    tokio::time::sleep_until((at + bound + Duration::from_millis(50)).into()).await;
    let now = send(&svc, Method::GET, "/flushed", &[]).await;
    assert_eq!(
        now.body,
        "/flushed v1",
        "{}",
        now.header("cache-status").unwrap_or("")
    );
}

/// A variant this tier keeps, refreshed by another process (a store over the URL's
/// variant index, not over the entry itself): the refresh writes the epoch of the URL's
/// primary key and shows within the bound.
async fn a_variant_refreshed_by_another_process_shows_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.version.store(1, Ordering::SeqCst); // /varies-later varies from version 1 on
    let bound = Duration::from_millis(400);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let gzip: &[(&str, &str)] = &[("accept-encoding", "gzip")];
    send(&svc, Method::GET, "/varies-later", gzip).await;
    watch.settled().await;
    let hit = send(&svc, Method::GET, "/varies-later", gzip).await;
    assert_eq!(hit.header("cache-status"), Some(HIT));
    tokio::time::sleep(bound + Duration::from_millis(30)).await;
    let confirmed = send(&svc, Method::GET, "/varies-later", gzip).await;
    assert_eq!(confirmed.header("cache-status"), Some(NEAR_HIT));
    origin.version.store(2, Ordering::SeqCst);
    let writer = plain(backend);
    let (writer_svc, writer_watch) = (service(&writer, &origin), Watch::of(&writer));
    let refreshed = send(
        &writer_svc,
        Method::GET,
        "/varies-later",
        &[("accept-encoding", "gzip"), ("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refreshed.body, "/varies-later v2");
    writer_watch.settled().await;
    let at = Instant::now();
    tokio::time::sleep_until((at + bound + Duration::from_millis(50)).into()).await;
    let now = send(&svc, Method::GET, "/varies-later", gzip).await;
    assert_eq!(
        now.body,
        "/varies-later v2",
        "{}",
        now.header("cache-status").unwrap_or("")
    );
}

/// This process invalidates a URL (a POST) while a request's confirmation of the URL's
/// lapsed entry is in flight, its epoch already read: the confirmation may answer the
/// request it serves (which overlapped the POST) but must not renew the entry: the next
/// request, which starts after the POST returned, gets what the POST left.
#[tokio::test]
async fn a_local_invalidation_during_a_confirmation_applies_at_once() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let split = SplitRead {
        inner: memory,
        armed: Arc::new(AtomicBool::new(false)),
        paused: Arc::new(tokio::sync::Notify::new()),
        resume: Arc::new(tokio::sync::Notify::new()),
    };
    let bound = Duration::from_millis(300);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(split.clone(), &near).lookup_timeout(Duration::from_secs(5));
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    keep_confirmable(&svc, &watch, "/confirming", bound).await;
    // Lapsed again, and nothing it relies on remembered: the confirmation reads the epoch,
    // the namespace generation and the tag's in one line.
    tokio::time::sleep(bound + Duration::from_millis(50)).await;
    split.armed.store(true, Ordering::SeqCst);
    let confirming = {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, Method::GET, "/confirming", &[]).await })
    };
    split.paused.notified().await;
    origin.version.store(1, Ordering::SeqCst);
    let posted = send(&svc, Method::POST, "/confirming", &[]).await;
    assert!(posted.status.is_success());
    split.resume.notify_one();
    let overlapped = confirming.await.unwrap();
    assert!(
        !split.armed.load(Ordering::SeqCst),
        "the confirmation was split"
    );
    assert_eq!(
        overlapped.header("cache-status"),
        Some(NEAR_HIT),
        "the confirmation read the epoch before the POST"
    );
    let after = send(&svc, Method::GET, "/confirming", &[]).await;
    assert_eq!(
        after.body,
        "/confirming v1",
        "{}",
        after.header("cache-status").unwrap_or("")
    );
}
