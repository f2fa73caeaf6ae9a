//! The cache layer's own cost, side by side in one run:
//! - a hit through the layer vs. the same `MemoryBackend::get` called directly (the
//!   difference is what the layer adds to a hit: planning, key hashing, entry decoding,
//!   response building);
//! - a miss through the layer vs. the inner service alone.
//!
//! Target (issue 4): under 5 µs per hit on top of the backend get, for a 1 KiB body.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::MemcacheLayer;
use tower_memcache::key::build_key;

fn origin() -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let body = Bytes::from(vec![b'x'; 1024]);
    service_fn(move |_req: Request<()>| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    })
}

/// One GET through `service`, body read to the end.
async fn round_trip<S, B>(service: S, uri: &str) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service
        .oneshot(Request::get(uri).body(()).unwrap())
        .await
        .unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

fn layer_cost(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = MemoryBackend::new();
    let layer = MemcacheLayer::new(backend.clone());
    let service = tower::Layer::layer(&layer, origin());
    let uri = "http://bench.example/item/1";

    // Warm the cache, and find the stored entry's key for the direct backend get.
    runtime.block_on(async {
        let response = service
            .clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    let key = build_key(Some(""), &format!("GET {uri}"));
    assert!(
        runtime.block_on(backend.get(&key)).unwrap().is_some(),
        "entry not stored"
    );

    let mut group = c.benchmark_group("layer/hit 1 KiB");
    group.throughput(Throughput::Elements(1));
    group.bench_function("backend get alone", |b| {
        b.to_async(&runtime)
            .iter(|| async { backend.get(&key).await.unwrap() })
    });
    group.bench_function("hit through the layer", |b| {
        b.to_async(&runtime)
            .iter(|| round_trip(service.clone(), uri))
    });
    group.finish();

    let mut group = c.benchmark_group("layer/miss 1 KiB");
    group.throughput(Throughput::Elements(1));
    let bypass = tower::Layer::layer(
        &MemcacheLayer::new(MemoryBackend::new()).default_lifetime(Duration::ZERO),
        origin(),
    );
    group.bench_function("inner service alone", |b| {
        b.to_async(&runtime).iter(|| round_trip(origin(), uri))
    });
    group.bench_function("miss through the layer (not stored)", |b| {
        b.to_async(&runtime)
            .iter(|| round_trip(bypass.clone(), uri))
    });
    group.finish();
}

criterion_group!(benches, layer_cost);
criterion_main!(benches);
