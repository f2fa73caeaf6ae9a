//! The near tier's map, chosen by measurement: `quick_cache` (what `NearCache` uses) against
//! `moka`, both bounded by weight in bytes, on what the near tier does.
//!
//! - **Hit ratio** (printed before the timings): a Zipf stream (s = 0.8, 1.0, 1.2) over
//!   100 000 URLs of 1 KiB into a tier that holds 5 000, then the same hot set
//!   interleaved with one-hit scans (half the requests are URLs never seen again), with an
//!   insert after every miss, as the layer does.
//! - **Read cost** of a hit: `get` of a present key, one thread and two threads at once
//!   (the proxy's per-thread runtimes share one tier).
//!
//! ```text
//! cargo bench --bench near_tier
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};

const KEYS: u64 = 100_000;
const VALUE: usize = 1024;
const HELD: u64 = 5_000;
const REQUESTS: usize = 400_000;

type Value = Arc<Vec<u8>>;

trait Map: Send + Sync {
    fn get(&self, key: &str) -> Option<Value>;
    fn insert(&self, key: String, value: Value);
}

struct Quick(quick_cache::sync::Cache<String, Value, ByLen>);

#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<String, Value> for ByLen {
    fn weight(&self, key: &String, value: &Value) -> u64 {
        (key.len() + value.len()) as u64
    }
}

impl Map for Quick {
    fn get(&self, key: &str) -> Option<Value> {
        self.0.get(key)
    }
    fn insert(&self, key: String, value: Value) {
        self.0.insert(key, value);
    }
}

struct Moka(moka::sync::Cache<String, Value>);

impl Map for Moka {
    fn get(&self, key: &str) -> Option<Value> {
        self.0.get(key)
    }
    fn insert(&self, key: String, value: Value) {
        self.0.insert(key, value);
    }
}

fn capacity() -> u64 {
    HELD * (VALUE as u64 + 40)
}

fn maps() -> Vec<(&'static str, Arc<dyn Map>)> {
    let quick = quick_cache::sync::Cache::with_weighter(HELD as usize, capacity(), ByLen);
    let moka = moka::sync::Cache::builder()
        .max_capacity(capacity())
        .weigher(|key: &String, value: &Value| (key.len() + value.len()) as u32)
        .build();
    vec![
        ("quick_cache", Arc::new(Quick(quick)) as Arc<dyn Map>),
        ("moka", Arc::new(Moka(moka))),
    ]
}

fn key(k: u64) -> String {
    format!("tower-memcache:{k:032x}")
}

/// The hit ratio of `map` over `stream`, inserting after each miss.
fn hit_ratio(map: &dyn Map, stream: &[u64], value: &Value) -> f64 {
    let mut hits = 0usize;
    for &k in stream {
        let key = key(k);
        if map.get(&key).is_some() {
            hits += 1;
        } else {
            map.insert(key, Arc::clone(value));
        }
    }
    hits as f64 / stream.len() as f64
}

fn streams() -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    for s in [0.8, 1.0, 1.2] {
        let zipf = Zipf::new(KEYS as f64, s).expect("valid Zipf");
        let stream: Vec<u64> = (0..REQUESTS)
            .map(|_| zipf.sample(&mut rng) as u64)
            .collect();
        out.push((format!("zipf {s}"), stream));
    }
    let zipf = Zipf::new(KEYS as f64, 1.0).expect("valid Zipf");
    let mut scan = KEYS;
    let mixed: Vec<u64> = (0..REQUESTS)
        .map(|i| {
            if i % 2 == 0 {
                zipf.sample(&mut rng) as u64
            } else {
                scan += 1;
                scan
            }
        })
        .collect();
    out.push(("zipf 1.0 + scans".to_string(), mixed));
    out
}

fn print_hit_ratios() {
    let value: Value = Arc::new(vec![b'x'; VALUE]);
    println!(
        "near-tier map hit ratio: {KEYS} keys of {VALUE} B, room for {HELD}, {REQUESTS} requests"
    );
    for (name, stream) in streams() {
        let mut line = format!("  {name:18}");
        for (map_name, map) in maps() {
            let started = Instant::now();
            let ratio = hit_ratio(&*map, &stream, &value);
            line.push_str(&format!(
                "  {map_name} {ratio:.3} ({:.0} ns/request)",
                started.elapsed().as_nanos() as f64 / stream.len() as f64
            ));
        }
        println!("{line}");
    }
}

fn reads(c: &mut Criterion) {
    print_hit_ratios();
    let value: Value = Arc::new(vec![b'x'; VALUE]);
    let mut group = c.benchmark_group("near_tier_get_hit");
    group.measurement_time(Duration::from_secs(3));
    for (name, map) in maps() {
        let keys: Vec<String> = (0..1000).map(key).collect();
        for key in &keys {
            map.insert(key.clone(), Arc::clone(&value));
        }
        group.bench_function(format!("{name}/1 thread"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(map.get(&keys[i]))
            })
        });
        group.bench_function(format!("{name}/2 threads"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..2 {
                        let (map, keys) = (&map, &keys);
                        scope.spawn(move || {
                            for n in 0..iters {
                                let i = (n as usize * 7 + t) % keys.len();
                                black_box(map.get(&keys[i]));
                            }
                        });
                    }
                });
                // Per read of one thread: both ran `iters` reads in this time.
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
