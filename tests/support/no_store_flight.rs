//! The scenario reviews RL and RP play against `no-store` flights: a tag purge while one
//! such request is at the origin, and another joining its flight after the purge.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::Backend;

use super::flood::Spawnable;
use super::{Answer, Watch};

/// Through `service` (over `layer`), for `url` whose origin counts its calls in `calls`
/// and answers only once `gate` has permits, with pages tagged `news`: a first request
/// stores the page; a `no-cache, no-store` request goes to the origin; the tag is purged;
/// a `no-store` request asked after the purge returned joins that request's flight; then
/// the origin answers. Returns the first `no-store` request's answer and the later one's.
pub async fn tag_purge_during_flight<B: Backend, S: Spawnable>(
    layer: &MemcacheLayer<B>,
    service: S,
    url: &'static str,
    calls: &AtomicUsize,
    gate: &Semaphore,
) -> (Answer, Answer) {
    let watch = Watch::of(layer);
    let get = |headers| super::flood::spawn_get(&service, url, headers);
    assert_eq!(get(&[]).await.unwrap().body, "call 1");
    super::stores(&watch, 1).await;
    let leading = get(&[("cache-control", "no-cache, no-store")]);
    super::eventually("the no-store request reached the origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    layer.purger().purge_tag("news").await.unwrap();
    // Asked after the purge returned, with `no-store` too: it joins the flight under way.
    let after = get(&[("cache-control", "no-store")]);
    super::eventually("the later request joined the flight", || {
        watch.snapshot().coalesced >= 1
    })
    .await;
    gate.add_permits(16);
    (leading.await.unwrap(), after.await.unwrap())
}
