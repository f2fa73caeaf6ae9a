//! Review SY: the near tier's memory bound, as an attacker tests it. README ("The near
//! tier") promises the tier is bounded in bytes (bodies, headers and metadata, plus
//! `NEAR_ENTRY_OVERHEAD` per entry; `NearCache::weight`). A tenant controls its pages'
//! responses (header fields, bodies, `Vary`), a client the URLs and request fields: here
//! they try to make the tier hold more real memory than its weight says.
//!
//! A test binary of its own: it counts every heap allocation the process holds (a
//! counting `#[global_allocator]`, `stats_alloc`'s: the package forbids the `unsafe` one
//! of its own would need), bytes asked for and allocations live, so that the memory the
//! tier holds is measured, not guessed from timings or RSS. Its tests run one at a time
//! (a lock), each on a current-thread runtime, over a memcached of its own (so memcached's
//! memory is another process's, and the reads are `TcpBackend`'s: entries decoded from
//! shared reply buffers, which the tier must copy out of).
//!
//! Found: the map's tables, sized for the most entries the tier ever held, were not
//! counted (a scan of small pages, then big pages filling the whole size beside them); and
//! the smallest allocations were weighed as mimalloc rounds them, not glibc.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use support::scripted_service::{Origin, Reply};
use support::{Memcached, Watch, patient_backend, send};
use tower_memcache::MemcacheLayer;
use tower_memcache::cache::{NEAR_ENTRY_OVERHEAD, NearCache};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// What an allocation costs the allocator beyond the bytes asked for, on average: glibc's
/// chunk header (8) and its rounding to 16 (8 on average; mimalloc, the proxy's, has no
/// header and rounds within an eighth). Small allocations cost more (glibc's smallest
/// chunk is 32 bytes), so this is on the low side for them.
const PER_ALLOCATION: i64 = 16;

/// Heap the process holds: bytes asked for, and allocations live.
fn heap() -> (i64, i64) {
    let stats = ALLOCATOR.stats();
    // (A reallocation's growth is in `bytes_allocated`, its shrinking in
    // `bytes_deallocated`: `bytes_reallocated` only sums them again.)
    let bytes = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
    let blocks = stats.allocations as i64 - stats.deallocations as i64;
    (bytes, blocks)
}

/// One test at a time: the counter is the whole process's, and what another test builds
/// or holds meanwhile would be counted as the tier's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Taken first by every test, held to its end.
fn alone() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the tier holds after a fill: real bytes against its own count.
#[derive(Debug)]
struct Held {
    /// Heap bytes asked for and held beyond the same layer and backend before the tier
    /// kept anything.
    bytes: i64,
    /// Allocations held beyond them.
    blocks: i64,
    /// `NearCache::weight` then.
    weight: u64,
    entries: usize,
    capacity: u64,
}

impl Held {
    /// The bytes held as the allocator spends them (on average).
    fn real(&self) -> i64 {
        self.bytes + PER_ALLOCATION * self.blocks
    }

    /// Real bytes per byte of weight.
    fn ratio(&self) -> f64 {
        self.real() as f64 / self.weight as f64
    }
}

/// A request: its path and fields.
type Ask = (String, Vec<(String, String)>);

/// Stores every request of `asks` in a memcached of its own (through a layer without a
/// near tier), then sends them twice through a layer with a near tier of `capacity`: the
/// first finds them in memcached (the tier keeps them), the second is answered from the
/// tier (hits share what it holds). Returns what the tier then holds, in real heap bytes
/// (from before the second layer's first request) and by its own count.
fn fill(test: &str, capacity: u64, origin: Origin, asks: &[Ask]) -> Option<Held> {
    fill_in_turn(test, capacity, origin, &[asks])
}

/// [`fill`] with each of `phases` in turn, measured after the last.
fn fill_in_turn(test: &str, capacity: u64, origin: Origin, phases: &[&[Ask]]) -> Option<Held> {
    let server = Memcached::start_with_args(test, &["-m", "512"])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = runtime.block_on(async {
        let backend = patient_backend([server.addr()]);
        let storing = MemcacheLayer::new(backend.clone());
        let near = NearCache::new(capacity, Duration::from_secs(600));
        let layer = MemcacheLayer::new(backend).near_cache(near.clone());
        let ask = |layer: &MemcacheLayer<_>, (path, fields): &Ask| {
            let service = origin.service(layer);
            let path = path.clone();
            let fields = fields.clone();
            async move {
                let fields: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                send(&service, Method::GET, &path, &fields)
                    .await
                    .header("cache-status")
                    .map(str::to_owned)
            }
        };
        // Everything stored first: the origin (the test's, which keeps every request it
        // gets) is called no more.
        for asks in phases {
            for request in asks.iter() {
                ask(&storing, request).await;
            }
        }
        Watch::of(&storing).settled().await;
        // The measured layer warmed (connections, buffers, its own state) on a page that is
        // no phase's.
        for _ in 0..3 {
            ask(&layer, &("/warm".to_owned(), Vec::new())).await;
        }
        let (bytes, blocks) = heap();
        let weight = near.weight();
        for asks in phases {
            for _ in 0..2 {
                for request in asks.iter() {
                    ask(&layer, request).await;
                }
            }
        }
        let last = phases[phases.len() - 1];
        let last = ask(&layer, &last[last.len() - 1]).await;
        assert_eq!(
            last.as_deref(),
            Some("tower-memcache; hit; detail=near"),
            "{test}: the tier answers the last page filled"
        );
        let (bytes_now, blocks_now) = heap();
        Held {
            bytes: bytes_now - bytes,
            blocks: blocks_now - blocks,
            weight: near.weight() - weight,
            entries: near.entries(),
            capacity: near.capacity(),
        }
    });
    eprintln!(
        "{test}: {held:?}: {} real, {:.2} real bytes per byte of weight",
        held.real(),
        held.ratio()
    );
    Some(held)
}

/// Pages answered by `fields` and `body`, fresh for ten minutes.
fn pages(fields: Vec<(&'static str, String)>, body: &'static [u8]) -> Origin {
    Origin::replying(move |_: &Request<()>, _| {
        let mut lines = vec![("cache-control", "max-age=600".to_owned())];
        lines.extend(fields.iter().cloned());
        Reply::ok(lines, body)
    })
}

fn urls(n: usize) -> Vec<Ask> {
    (0..n).map(|i| (format!("/page/{i}"), Vec::new())).collect()
}

/// What the tier may hold beyond what it counts, whatever the pages: the generations and
/// store epochs it remembers, and its own few fixed structures.
const SLACK: i64 = 32 << 10;

/// The tier's real memory stays within its weight (what it counts of each entry, with
/// `NEAR_ENTRY_OVERHEAD` for the map's share) and within its size.
#[track_caller]
fn assert_within_weight(test: &str, held: &Held) {
    assert!(
        held.real() <= held.weight as i64 + SLACK,
        "{test}: the tier holds {} bytes for a weight of {} ({} entries; capacity {}, \
         {NEAR_ENTRY_OVERHEAD} per entry counted)",
        held.real(),
        held.weight,
        held.entries,
        held.capacity
    );
    assert_within_size(test, held);
}

/// The tier's real memory stays within its configured size.
#[track_caller]
fn assert_within_size(test: &str, held: &Held) {
    assert!(
        held.real() <= held.capacity as i64 + SLACK,
        "{test}: the tier holds {} bytes, configured for {} ({} entries, weighing {})",
        held.real(),
        held.capacity,
        held.entries,
        held.weight
    );
}

/// Ordinary pages: 1 KiB bodies, a few fields. The reference the others compare with.
#[test]
fn ordinary_pages_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::ordinary_pages";
    let origin = pages(
        vec![("content-type", "text/html".to_owned())],
        &[b'x'; 1024],
    );
    let Some(held) = fill(test, 2 << 20, origin, &urls(3000)) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// Pages of six hundred one-byte fields under a one-byte name (an entry light enough for
/// one shard of the map however many there are): each field is a slot of
/// the entry's field list, a name and a value, each of them an allocation of its own.
#[test]
fn many_tiny_fields_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::many_tiny_fields";
    let origin = pages(vec![("x", "y".to_owned()); 600], b"tiny");
    let Some(held) = fill(test, 2 << 20, origin, &urls(20)) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// Long header names: a name outside `http`'s standard set is a copy of its own.
#[test]
fn long_field_names_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::long_field_names";
    let name: &'static str = Box::leak(format!("x-{}", "n".repeat(4000)).into_boxed_str());
    let origin = pages(vec![(name, "v".to_owned()); 10], b"tiny");
    let Some(held) = fill(test, 2 << 20, origin, &urls(100)) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// Empty pages: the smallest entries, so the most of them, where the map's own share of
/// each (`NEAR_ENTRY_OVERHEAD`) weighs most; three times more URLs than fit (a scan: the
/// map keeps the keys of those it evicted, its ghosts).
#[test]
fn empty_pages_in_a_scan_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::empty_pages";
    let origin = pages(Vec::new(), b"");
    let Some(held) = fill(test, 1 << 20, origin, &urls(4000)) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// Eight variants of each URL (a slot's list of variants kept), selected by a long
/// request field (each variant keeps its value).
#[test]
fn variants_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::variants";
    let origin = pages(vec![("vary", "accept-language".to_owned())], b"tiny");
    let asks: Vec<Ask> = (0..60)
        .flat_map(|i| {
            (0..8).map(move |v| {
                let language = format!("{v}{}", "l".repeat(2000));
                (
                    format!("/page/{i}"),
                    vec![("accept-language".to_owned(), language)],
                )
            })
        })
        .collect();
    let Some(held) = fill(test, 2 << 20, origin, &asks) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// Long URLs: each entry keeps its canonical key (the URL) to compare on every read.
#[test]
fn long_urls_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::long_urls";
    let origin = pages(Vec::new(), b"tiny");
    let asks: Vec<Ask> = (0..300)
        .map(|i| (format!("/page/{i}?{}", "q".repeat(6000)), Vec::new()))
        .collect();
    let Some(held) = fill(test, 2 << 20, origin, &asks) else {
        return;
    };
    assert_within_weight(test, &held);
}

/// A scan of empty pages, then big pages: the map's tables grew to hold the most entries
/// the tier ever held (the smallest), and keep that size.
#[test]
fn the_map_grown_by_small_pages_is_counted_after_big_ones() {
    let _alone = alone();
    let test = "review_sy::grown_then_big";
    let big: &'static [u8] = Box::leak(vec![b'b'; 60 << 10].into_boxed_slice());
    let origin = Origin::replying(move |request: &Request<()>, _| {
        let lines = vec![("cache-control", "max-age=600".to_owned())];
        if request.uri().path().starts_with("/big/") {
            Reply::ok(lines, big)
        } else {
            Reply::ok(lines, "")
        }
    });
    let small = urls(4000);
    // Asked for again and again: they take the place of the small ones.
    let big: Vec<Ask> = (0..300)
        .map(|i| (format!("/big/{}", i % 60), Vec::new()))
        .collect();
    let Some(held) = fill_in_turn(test, 2 << 20, origin, &[&small, &big]) else {
        return;
    };
    assert!(held.entries < 100, "{test}: the small pages stayed");
    assert_within_weight(test, &held);
}

/// Pages of six hundred fields with empty values under a one-byte name: each field is a
/// slot of the entry's field list and a name of its own (a byte, and the count of its
/// sharers), the smallest allocations there are.
#[test]
fn many_empty_fields_hold_no_more_than_their_weight() {
    let _alone = alone();
    let test = "review_sy::many_empty_fields";
    let origin = pages(vec![("x", String::new()); 600], b"tiny");
    let Some(held) = fill(test, 2 << 20, origin, &urls(20)) else {
        return;
    };
    assert_within_weight(test, &held);
}
