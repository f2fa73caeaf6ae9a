//! The client's own cost over the in-memory backend: key building, typed and raw round
//! trips.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_memcache::MemcacheClient;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::key::build_key;

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_key/namespace+str", |b| {
        b.iter(|| {
            build_key(
                Some("namespace"),
                std::hint::black_box("/some/path?query=1"),
            )
        })
    });
    group.finish();
}

fn client(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let client = MemcacheClient::new(MemoryBackend::new());
    let value = "x".repeat(1024);
    runtime.block_on(client.set("bench", &value));
    runtime.block_on(client.set_raw("raw", value.clone()));

    let mut group = c.benchmark_group("client/memory");
    group.throughput(Throughput::Elements(1));
    group.bench_function("query 1 KiB string", |b| {
        b.to_async(&runtime)
            .iter(|| async { client.query::<String>("bench").await })
    });
    group.bench_function("query_raw 1 KiB", |b| {
        b.to_async(&runtime)
            .iter(|| async { client.query_raw("raw").await })
    });
    group.bench_function("set 1 KiB string", |b| {
        b.to_async(&runtime)
            .iter(|| async { client.set("bench", &value).await })
    });
    group.finish();
}

criterion_group!(benches, keys, client);
criterion_main!(benches);
