//! tower-memcache is an HTTP shared cache (RFC 9111) as a [tower] middleware, with
//! memcached as its store: [`MemcacheLayer`] wraps any `Service<Request>` (an axum
//! `Router`, a hyper service, a reverse proxy) and answers repeated requests from
//! memcached. Beside it, [`MemcacheClient`] is a plain memcache client for values of your
//! own.
//!
//! The crate descends from two Python memcached utilities for Zope, `lovely.memcached` and
//! `p01.memcache`. The client keeps their behaviour: keys are the lowercase hex md5 of a
//! namespace followed by the key, the default lifetime is 3600 s, and it offers set /
//! query / invalidate / invalidate all, server statistics, raw values readable by other
//! memcached clients, invalidation across named caches, and no error when the server is
//! gone (a query is a miss, a set stores nothing, and the server is used again as soon as
//! it is back). The HTTP cache builds its keys the same way.
//!
//! # Caching an axum app
//!
//! Route rules give lifetimes (routes no rule names get the default hour), and
//! [`CacheMode::Origin`] follows the origin's `Cache-Control` instead. A hit answers with
//! the stored status, headers and body plus `Age` and an RFC 9211 `Cache-Status`; a miss
//! streams the inner service's response to the client while a bounded copy is stored in
//! the background. A memcached that is down or slow means a miss, never an error.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, routing::get};
//! use http::Request;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_memcache::{MemcacheLayer, MemoryBackend, RouteMatch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = MemcacheLayer::new(MemoryBackend::new()) // or TcpBackend::new([…])?
//!     .route(RouteMatch::Prefix("/news/".into()), Duration::from_secs(30))
//!     .no_cache(RouteMatch::Exact("/health".into()));
//! let (stats, background) = (layer.stats(), layer.background());
//! let app = Router::new()
//!     .route("/news/{id}", get(|| async { "breaking" }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(layer);
//!
//! let request = || Request::get("http://example.com/news/1").body(Body::empty()).unwrap();
//! let miss = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(miss.headers()["cache-status"], "tower-memcache; fwd=uri-miss; stored");
//! assert_eq!(miss.into_body().collect().await.unwrap().to_bytes(), "breaking");
//!
//! // The entry is stored in the background once the body is complete: wait for it.
//! background.idle().await;
//! assert_eq!(stats.snapshot().stores, 1);
//! let hit = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(hit.headers()["cache-status"], "tower-memcache; hit");
//! assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), "breaking");
//! assert_eq!(stats.snapshot().hits, 1);
//! # }
//! ```
//!
//! With the `axum` feature and `Router::route_layer`, rules can also name axum's route
//! patterns (`RouteMatch::Pattern("/news/{id}")`). `examples/axum.rs` is a runnable demo.
//!
//! # On hyper, and as a reverse proxy
//!
//! The layer is plain tower, so it serves a hyper 1 server through `hyper-util`'s
//! `TowerToHyperService`: `examples/hyper.rs`. `examples/reverse_proxy.rs` puts it in front
//! of a hyper client, the smallest caching reverse proxy (in-process store, route mode, no
//! more than the stacking). The proxy to deploy is the `tower-memcache-proxy` binary
//! (feature `proxy`): it follows the origin's headers ([`CacheMode::Origin`]) over several
//! memcached servers and does what a server in front of the layer should (answer 400 to
//! requests whose authority cannot be keyed, replace forwarding headers).
//!
//! # The memcache client
//!
//! ```
//! use tower_memcache::{MemcacheClient, MemoryBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend = MemoryBackend::new();
//! let client = MemcacheClient::new(backend.clone());
//! let key = client.set("cache_key", &"cached value").await;
//! assert_eq!(key, "0a42907b589a309ad94f8874eacbc63f"); // md5("cache_key")
//! assert_eq!(client.query::<String>("cache_key").await.as_deref(), Some("cached value"));
//!
//! backend.set_unreachable(true); // the server goes away: a miss, not an error
//! assert_eq!(client.query::<String>("cache_key").await, None);
//! backend.set_unreachable(false); // and is used again as soon as it is back
//! client.invalidate("cache_key").await;
//! assert_eq!(client.query::<String>("cache_key").await, None);
//! # }
//! ```
//!
//! # Modules
//!
//! - [`cache`]: the HTTP cache: [`MemcacheLayer`], its service [`Memcache`], route rules
//!   ([`RouteMatch`]), modes ([`CacheMode`]), purges ([`Purger`](cache::Purger)),
//!   statistics ([`CacheStats`](cache::CacheStats)) and the validated request target keys
//!   are built from ([`RequestTarget`](cache::RequestTarget)).
//! - [`backend`]: the [`Backend`](backend::Backend) trait with memcached's semantics,
//!   [`MemoryBackend`] (an in-process fake that keeps memcached's rules) and, with the `tcp`
//!   feature, `TcpBackend` (memcached's text protocol, pipelined connections, ketama over
//!   many servers, per-server health).
//! - [`client`]: [`MemcacheClient`] and [`CacheRegistry`] for invalidation across named
//!   clients.
//! - [`key`]: the key formula, `md5_hex(namespace ++ key)`, and what a key's bytes are for
//!   text, integers, bytes and your own types.
//! - [`codec`]: how the client's values become bytes, and the flags that tell raw and
//!   encoded values apart.
//!
//! # Feature flags
//!
//! - `tcp` (default): `TcpBackend`, the client for real memcached servers (pulls in
//!   tokio's networking).
//! - `axum`: route rules by axum's `MatchedPath` (`RouteMatch::Pattern`).
//! - `metrics`: counters and timings through the `metrics` facade
//!   ([`METRIC_NAMES`](cache::METRIC_NAMES) lists them).
//! - `proxy`: the `tower-memcache-proxy` binary, a caching reverse proxy.
//!
//! # Minimum supported Rust version
//!
//! 1.85 (edition 2024).
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod cache;
pub mod client;
pub mod codec;
mod generation;
pub mod key;

#[doc(inline)]
pub use backend::MemoryBackend;
#[cfg(feature = "tcp")]
#[doc(inline)]
pub use backend::TcpBackend;
#[doc(inline)]
pub use cache::{CacheMode, Memcache, MemcacheLayer, RouteMatch};
#[doc(inline)]
pub use client::{CacheRegistry, MemcacheClient};

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
