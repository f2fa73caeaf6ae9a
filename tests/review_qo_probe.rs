mod support;
use bytes::Bytes;
use std::time::Duration;
use support::Memcached;
use tower_memcache::backend::{Backend, Lifetime};
use tower_memcache::cache::CacheMode;

#[tokio::test]
async fn probe_m() {
    let Some(server) = Memcached::start_with_args(
        "probe",
        &["-M", "-m", "2", "-o", "slab_reassign,slab_automove=0"],
    ) else {
        return;
    };
    let backend = support::one_connection_backend(&server.addr(), Duration::from_secs(2));
    let layer = support::layer(backend.clone())
        .namespace("probe")
        .mode(CacheMode::Origin);
    let value = Bytes::from_static(b"1234567890123456789");
    let mut refused = 0;
    for n in 0..200_000u32 {
        let k = format!("g:flood-{n:08}-0123456789abcdef01");
        if let Err(e) = backend.set(&k, value.clone(), 0, Lifetime::NEVER).await {
            refused += 1;
            if refused == 1 {
                eprintln!("first refusal at {n}: {e}");
            }
            if refused > 10 {
                break;
            }
        }
    }
    eprintln!("refused {refused}");
    let tag = layer.purger().purge_tag("news").await;
    eprintln!("purge_tag: {tag:?}");
    let ns = layer.purger().purge_namespace().await;
    eprintln!("purge_namespace: {ns:?}");
    let uri = layer.purger().purge_uri("http://site.example/p").await;
    eprintln!("purge_uri: {uri:?}");
    drop(server);
}
