//! The cache layer on a plain hyper 1 server, through tower and hyper-util.
//!
//! ```sh
//! cargo run --example hyper          # listens on 127.0.0.1:3002
//! curl -i http://127.0.0.1:3002/hello   # twice: miss, then hit
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::MemcacheLayer;

async fn origin(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let body = format!("hello from hyper: {}\n", request.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3002".to_string())
        .parse()?;
    let service = ServiceBuilder::new()
        .layer(MemcacheLayer::new(MemoryBackend::new()).default_lifetime(Duration::from_secs(60)))
        .service_fn(origin);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
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
