//! An origin whose pages say which version of the data they were produced from
//! (`/path vN`, `max-age=600`), behind a cache layer: the cluster, rejoin and per-thread
//! tests tell a page from before a purge from one after it by the version.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{MemcacheLayer, ResponseBody};

/// The versioned origin behind its layer.
pub type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// `layer` in front of an origin answering with the current `version`.
pub fn service<B: Backend>(layer: &MemcacheLayer<B>, version: &Arc<AtomicU64>) -> Svc {
    let version = Arc::clone(version);
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let version = version.load(Ordering::SeqCst);
            async move {
                let body = format!("{} v{version}", request.uri().path());
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert("cache-control", "max-age=600".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

/// GET `url`: the body, and the `Cache-Status` (empty when absent).
pub async fn get(svc: &Svc, url: &str) -> (String, String) {
    let request = Request::get(url).body(()).unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8_lossy(&body).into_owned(), status)
}

/// `layer` in front of an origin that answers each request as `respond` says.
pub fn serving<B: Backend>(
    layer: &MemcacheLayer<B>,
    respond: impl Fn(&Request<()>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> Svc {
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let response = respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}
