//! The HTTP cache middleware: [`MemcacheLayer`] and its service [`Memcache`].
//!
//! A GET or HEAD request is keyed by the key formula of [`crate::key`] over a canonical request key
//! (method with HEAD as GET, scheme, authority, path, query; responses that vary on request
//! headers, by `Vary` or the headers you name, are variants under that key), looked up in
//! the backend and, on a hit, answered with the stored status, headers and body plus
//! `Age` and an RFC 9211 `Cache-Status`. On a miss the inner service answers; its body
//! streams to the client while a bounded copy is taken, and when it completes within the
//! entry size limit and the policy allows, the entry is stored in the background.
//!
//! Cache trouble is never an error: a backend that is down, slow or returns bytes that are
//! not ours means a miss, and the request goes to the inner service.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_memcache::backend::MemoryBackend;
//! use tower_memcache::cache::{MemcacheLayer, RouteMatch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = MemcacheLayer::new(MemoryBackend::new())
//!     .route(RouteMatch::Prefix("/news/".into()), Duration::from_secs(30));
//! let (stats, background) = (layer.stats(), layer.background());
//! let mut service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//! });
//!
//! for expected in ["fwd=uri-miss; stored", "hit"] {
//!     let request = Request::get("http://example.com/news/1").body(()).unwrap();
//!     let response = service.ready().await.unwrap().call(request).await.unwrap();
//!     let status = response.headers()["cache-status"].to_str().unwrap().to_string();
//!     assert_eq!(status, format!("tower-memcache; {expected}"));
//!     let body = response.into_body().collect().await.unwrap().to_bytes();
//!     assert_eq!(body, "hello");
//!     // Stores happen in the background: wait for this one.
//!     background.idle().await;
//! }
//! assert_eq!(stats.snapshot().hits, 1);
//! # }
//! ```

mod answer;
mod background;
mod body;
mod coalesce;
mod config;
mod entry;
mod exchange;
mod fill;
mod future;
mod invalidate;
mod key;
mod layer;
mod lease;
mod near;
mod own_request;
mod passes;
mod policy;
mod purge;
mod range;
mod revalidate;
mod service;
mod shared;
mod single_flight;
mod stats;
mod status;
mod storage;
mod stored;
mod target;

use std::time::Duration;

#[doc(inline)]
pub use background::Background;
#[doc(inline)]
pub use body::ResponseBody;
/// The memcached flags of a stored HTTP entry, for tools that inspect the backend.
#[doc(hidden)]
pub use entry::FLAG_HTTP_ENTRY;
#[doc(inline)]
pub use future::ResponseFuture;
#[doc(inline)]
pub use key::{InvalidTarget, KeyFn, RequestHead, RequestTarget};
#[doc(inline)]
pub use layer::{
    CDN_CACHE_CONTROL, DEFAULT_LIFETIME_HEADER, DEFAULT_MAX_ENTRY_SIZE, DEFAULT_TAG_HEADER,
    MemcacheLayer,
};
#[doc(inline)]
pub use near::{NEAR_ENTRY_OVERHEAD, NearCache};
#[doc(inline)]
pub use policy::{CacheMode, DEFAULT_LIFETIME, RouteMatch, decides_caching, is_hop_by_hop};
#[doc(inline)]
pub use purge::{PurgeError, Purger};
#[doc(inline)]
pub use service::Memcache;
#[cfg(feature = "metrics")]
#[doc(inline)]
pub use stats::record_backend_gauges;
#[doc(inline)]
pub use stats::{CacheStats, METRIC_NAMES, StatsSnapshot};
#[doc(inline)]
pub use status::InvalidCacheStatusName;

/// A response extension a handler sets to choose how long this one response is cached;
/// `Duration::ZERO` keeps it out of the cache.
///
/// ```
/// use std::time::Duration;
/// use http::Response;
/// use tower_memcache::cache::CacheLifetime;
///
/// let mut response = Response::new("fresh for ten seconds");
/// response.extensions_mut().insert(CacheLifetime(Duration::from_secs(10)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLifetime(pub Duration);

/// A response extension an inner service sets on a response it generated because the origin
/// could not be reached (a proxy's 502 or 504). The layer then treats the exchange as an
/// origin failure: it serves a stale entry inside its `stale-if-error` window, and answers
/// 504 for a `must-revalidate` entry (RFC 9111 §4.2.4, §5.2.2.2). An inner service error
/// (`Err`) counts the same.
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_memcache::cache::OriginUnreachable;
///
/// let mut response = Response::new("origin unreachable");
/// *response.status_mut() = StatusCode::BAD_GATEWAY;
/// response.extensions_mut().insert(OriginUnreachable);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginUnreachable;
