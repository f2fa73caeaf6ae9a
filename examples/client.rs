//! The seed utility in a few lines: set, query, raw values, namespaces, a server that goes
//! away and comes back.
//!
//! Run with `cargo run --example client` (in-memory backend).

use tower_memcache::MemcacheClient;
use tower_memcache::backend::MemoryBackend;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let backend = MemoryBackend::new();
    let client = MemcacheClient::new(backend.clone());

    let key = client.set("cache_key", "cached value ä").await;
    println!("set cache_key -> memcache key {key}");
    println!(
        "query cache_key -> {:?}",
        client.query::<String>("cache_key").await
    );

    let users = client.with_namespace("users");
    users.set(&42, &vec!["alice", "bob"]).await;
    println!("users/42 -> {:?}", users.query::<Vec<String>>(&42).await);
    println!(
        "42 without namespace -> {:?}",
        client.query::<Vec<String>>(&42).await
    );

    client.set_raw("a", "value of a").await;
    println!("raw a -> {:?}", client.query_raw("a").await);

    backend.set_unreachable(true);
    println!(
        "server gone: query -> {:?} (no error)",
        client.query::<String>("cache_key").await
    );
    backend.set_unreachable(false);
    println!(
        "server back: query -> {:?}",
        client.query::<String>("cache_key").await
    );

    for server in client.stats().await {
        println!(
            "{}: {} items, {} hits, {} misses",
            server.server,
            server.stats["curr_items"],
            server.stats["get_hits"],
            server.stats["get_misses"]
        );
    }
}
