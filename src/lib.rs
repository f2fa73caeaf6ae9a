//! tower-memcache caches HTTP responses in memcached as a tower middleware, and carries
//! the memcache utility it descends from: namespaced md5 keys, a default lifetime of an
//! hour, set / query / invalidate / invalidate all, statistics, raw values, named
//! invalidation, and a cache that keeps working while the server is gone.
//!
//! # The memcache client
//!
//! ```
//! use tower_memcache::{MemcacheClient, backend::MemoryBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = MemcacheClient::new(MemoryBackend::new());
//! let key = client.set("cache_key", &"cached value").await;
//! assert_eq!(key, "0a42907b589a309ad94f8874eacbc63f");
//! assert_eq!(client.query::<String>("cache_key").await.as_deref(), Some("cached value"));
//! client.invalidate("cache_key").await;
//! assert_eq!(client.query::<String>("cache_key").await, None);
//! # }
//! ```
//!
//! # Modules
//!
//! - [`key`]: the seeds' key formula.
//! - [`backend`]: the [`Backend`](backend::Backend) trait, the in-memory fake and (feature
//!   `tcp`, on by default) the TCP client for real memcached servers.
//! - [`codec`]: how values become bytes.
//! - [`client`]: the seed utility, [`MemcacheClient`], and [`CacheRegistry`] for named
//!   invalidation.
//!
//! # Feature flags
//!
//! - `tcp` (default): `TcpBackend`, the memcached client over TCP.
//!
//! # Minimum supported Rust version
//!
//! 1.85 (edition 2024).

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod cache;
pub mod client;
pub mod codec;
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
