//! Review II: a gap-finding consistency review. "A purge that returned holds" tried where
//! the earlier suites were thinnest: refreshes (a 304, a background revalidation) that
//! began before a tag or namespace purge, unsafe-method invalidations of a `Location`
//! target and of a varied URL racing their fills, and processes with near tiers sharing
//! memcached. The origin is a gated "database" (as in `tests/purges.rs`): a response says
//! which version it was produced from, read when the request arrives, and the test bumps
//! the version (and purges) while that request is held at the gate.

mod support;

use support::{Answer, Watch, assert_hit, stores};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::{Notify, Semaphore};
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, MemcacheLayer, ResponseBody};

/// Requests held at the origin until the test opens the gate; counts who arrived.
struct Gate {
    arrived: AtomicUsize,
    notify: Notify,
    open: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            notify: Notify::new(),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Waits until `n` requests in all have arrived (5 s at most).
    async fn arrivals(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.notify.notified();
            if self.arrived.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .unwrap_or_else(|_| panic!("{n} requests never reached the origin"));
        }
    }

    fn open(&self) {
        self.open.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

type Fields = Vec<(&'static str, &'static str)>;

/// The origin over a database: a response says which version it was produced from, and
/// its `ETag` is that version, so a revalidation of the current version gets a 304.
#[derive(Clone, Default)]
struct Db {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    gated: Arc<AtomicBool>,
    /// Extra response fields per path (default: `Cache-Control: max-age=600`).
    fields: Arc<Mutex<HashMap<String, Fields>>>,
}

impl Db {
    fn hold(&self) -> Arc<Gate> {
        self.gated.store(true, Ordering::SeqCst);
        Arc::clone(&self.gate)
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fields(&self, path: &str, fields: &[(&'static str, &'static str)]) {
        self.fields
            .lock()
            .unwrap()
            .insert(path.to_string(), fields.to_vec());
    }

    async fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let version = self.version.load(Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            self.gate.arrived.fetch_add(1, Ordering::SeqCst);
            self.gate.notify.notify_waiters();
            if let Ok(permit) = self.gate.open.acquire().await {
                permit.forget();
            }
        }
        let path = request.uri().path().to_string();
        let etag = format!("\"v{version}\"");
        let mut response = if request.method() != Method::GET && request.method() != Method::HEAD {
            Response::new(Full::new(Bytes::from("done")))
        } else if request
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let language = request
                .headers()
                .get("accept-language")
                .map(|v| format!(" {}", v.to_str().unwrap_or("?")))
                .unwrap_or_default();
            Response::new(Full::new(Bytes::from(format!(
                "{path} v{version}{language}"
            ))))
        };
        let headers = response.headers_mut();
        headers.insert("etag", HeaderValue::from_str(&etag).unwrap());
        let fields = self.fields.lock().unwrap().get(&path).cloned();
        match fields {
            Some(fields) => {
                for (name, value) in fields {
                    headers.append(name, HeaderValue::from_static(value));
                }
            }
            None => {
                headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
            }
        }
        response
    }
}

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn service<B: Backend>(layer: &MemcacheLayer<B>, db: &Db) -> Svc {
    let db = db.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let db = db.clone();
            async move { Ok::<_, Infallible>(db.respond(request).await) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("review-ii")
        .mode(CacheMode::Origin)
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

async fn get(svc: &Svc, path: &str) -> Answer {
    send(svc, Method::GET, path, &[]).await
}

/// Sends a request in a task of its own.
fn spawn_send(
    svc: &Svc,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<Answer> {
    let (svc, path) = (svc.clone(), path.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send(&svc, method, &path, &headers).await
    })
}

fn spawn_get(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> tokio::task::JoinHandle<Answer> {
    spawn_send(svc, Method::GET, path, headers)
}

async fn joined(handle: tokio::task::JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("request finished")
        .expect("request task")
}

/// After the purge, the page is the new version, from the origin and then from the cache.
async fn serves_only_the_new_version(
    svc: &Svc,
    watch: &Watch,
    path: &str,
    headers: &[(&str, &str)],
    new: &str,
) {
    watch.settled().await;
    let after = send(svc, Method::GET, path, headers).await;
    assert_eq!(after.body, new, "{}", after.cache_status());
    watch.settled().await;
    let again = send(svc, Method::GET, path, headers).await;
    assert_eq!(again.body, new);
    assert_hit(again.cache_status());
}

// ---------------------------------------------------------------------------------------
// Refreshes that began before a tag or namespace purge.

/// A 304 validates the stored body; when it names other tags than the stored response
/// (an origin that moved the page to another surrogate key), the refresh must still not
/// undo a purge of the tags the stored entry had when the purge ran: the body it keeps
/// was produced (and validated) before that purge.
async fn a_304_naming_other_tags_does_not_undo_a_purge_of_the_stored_ones<B: Backend>(backend: B) {
    let db = Db::default();
    // Stored with tag `old`, stale at once: every reuse is revalidated.
    db.fields(
        "/r",
        &[("cache-control", "max-age=0"), ("surrogate-key", "old")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/r").await.body, "/r v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    // The revalidation reaches the origin while version 0 is current (a 304 coming) ...
    let revalidating = spawn_get(&svc, "/r", &[]);
    gate.arrivals(1).await;
    // ... whose answer will name the tag `new` only, and be fresh.
    db.fields(
        "/r",
        &[("cache-control", "max-age=600"), ("surrogate-key", "new")],
    );
    db.bump();
    layer.purger().purge_tag("old").await.unwrap();
    gate.open();
    let answer = joined(revalidating).await;
    assert_eq!(answer.body, "/r v0", "{}", answer.cache_status());
    serves_only_the_new_version(&svc, &watch, "/r", &[], "/r v1").await;
}

on_every_backend!("review_ii";
    a_304_naming_other_tags_does_not_undo_a_purge_of_the_stored_ones,
);
