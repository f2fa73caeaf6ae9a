//! The cache layer in front of a hyper client: the smallest caching reverse proxy. Every
//! request is forwarded to one origin; the layer answers what it may from its store.
//!
//! This shows the stacking only. The proxy to deploy is the crate's binary,
//! `tower-memcache-proxy` (`cargo install tower-memcache --features proxy`), which adds
//! what a real one needs: forwarding headers, hop-by-hop headers, Host checks, timeouts,
//! memcached, threads, logs, graceful shutdown.
//!
//! ```sh
//! python3 -m http.server 8080 --bind 127.0.0.1 &      # any origin
//! cargo run --example reverse_proxy -- http://127.0.0.1:8080   # listens on 127.0.0.1:3001
//! curl -si http://127.0.0.1:3001/ | grep -i cache-status      # twice: stored, then a hit
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::MemcacheLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `request` to `origin`, keeping its path and query.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    origin: Uri,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = origin.into_parts();
    parts.path_and_query = Some(path);
    *request.uri_mut() = Uri::from_parts(parts)?;
    Ok(client.request(request).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let origin: Uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string())
        .parse()?;
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3001".to_string())
        .parse()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();

    // Outermost first: the cache, then the client that goes to the origin. A real proxy
    // would use `TcpBackend` (memcached) and answer 502 rather than fail on origin errors.
    let service = ServiceBuilder::new()
        .layer(MemcacheLayer::new(MemoryBackend::new()).default_lifetime(Duration::from_secs(60)))
        .service_fn(move |request| forward(client.clone(), origin.clone(), request));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("caching proxy on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new());
            if let Err(err) = connection
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {err}");
            }
        });
    }
}
