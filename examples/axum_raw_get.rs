//! The "no cache logic at all" baseline for `examples/axum.rs`: an axum handler that does
//! one raw memcached `get` per request through the crate's own `TcpBackend` (pipelined,
//! shared by every request) and answers the value's bytes. No key hashing, no entry
//! format, no freshness, no `Cache-Status`: what a cache hit over memcached costs in axum
//! before any HTTP caching is done. `bench/axum/run.sh` measures `examples/axum.rs`'s hit
//! against it.
//!
//! ```sh
//! memcached -p 11211 &
//! printf 'set raw 0 0 5\r\nhello\r\n' | nc -q1 127.0.0.1 11211
//! MEMCACHE_SERVERS=127.0.0.1:11211 cargo run --release --example axum_raw_get
//! curl -i http://127.0.0.1:3001/      # 200 with the value of `raw`
//! ```
//!
//! Environment: `MEMCACHE_SERVERS` (default `127.0.0.1:11211`), `LISTEN` (default
//! `127.0.0.1:3001`), `RAW_KEY` (the memcached key every request reads, default `raw`).
//! A missing key answers 404, an unreachable memcached 502.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_memcache::backend::{Backend, TcpBackend};

#[derive(Clone)]
struct Raw {
    backend: TcpBackend,
    key: Arc<str>,
}

/// One `get`, its bytes as the body (shared with the reply buffer, not copied).
async fn raw_get(State(raw): State<Raw>) -> Response {
    match raw.backend.get(&raw.key).await {
        Ok(Some(item)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            item.value,
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            tracing::debug!(error = %err, "memcached get failed");
            StatusCode::BAD_GATEWAY.into_response()
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3001".to_string())
        .parse()?;
    let servers =
        std::env::var("MEMCACHE_SERVERS").unwrap_or_else(|_| "127.0.0.1:11211".to_string());
    let key: Arc<str> = std::env::var("RAW_KEY")
        .unwrap_or_else(|_| "raw".to_string())
        .into();
    let backend = TcpBackend::builder().server_list(&servers).build()?;
    println!(
        "backend: memcached at {}; every request reads key {key:?}",
        backend.server_names().join(", ")
    );
    let router = Router::new()
        .route("/", get(raw_get))
        .with_state(Raw { backend, key });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
