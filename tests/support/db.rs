//! An origin over a "database", gated: a response says which version it was produced
//! from (read when the request arrives) and carries that version as its `ETag`, so a
//! revalidation of the current version gets a 304; the test bumps the version, and purges,
//! while a request is held at the gate. What the purge suites (`purges.rs`, `review_ii.rs`)
//! share.

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
use tower_memcache::cache::{MemcacheLayer, ResponseBody};

use super::{Answer, Watch, assert_hit};

/// Requests held at the origin until the test opens the gate; counts who arrived.
pub struct Gate {
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
    pub async fn arrivals(&self, n: usize) {
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

    pub fn open(&self) {
        self.open.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

pub type Fields = Vec<(&'static str, &'static str)>;

/// The origin over a database: a response says which version it was produced from, and
/// its `ETag` is that version, so a revalidation of the current version gets a 304.
#[derive(Clone, Default)]
pub struct Db {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    gated: Arc<AtomicBool>,
    /// Extra response fields per path (default: `Cache-Control: max-age=600`).
    fields: Arc<Mutex<HashMap<String, Fields>>>,
}

impl Db {
    pub fn hold(&self) -> Arc<Gate> {
        self.gated.store(true, Ordering::SeqCst);
        Arc::clone(&self.gate)
    }

    pub fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn fields(&self, path: &str, fields: &[(&'static str, &'static str)]) {
        self.fields
            .lock()
            .unwrap()
            .insert(path.to_string(), fields.to_vec());
    }

    pub async fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
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
            let cors = if request.headers().contains_key("origin") {
                " cors"
            } else {
                ""
            };
            Response::new(Full::new(Bytes::from(format!(
                "{path} v{version}{language}{cors}"
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
        // CORS answers name one more selecting header than the others.
        if request.headers().contains_key("origin") {
            headers.insert("vary", HeaderValue::from_static("accept-encoding, origin"));
        }
        response
    }
}

/// The layered origin, boxed so that every test names one type.
pub type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// `db` behind `layer`.
pub fn service<B: Backend>(layer: &MemcacheLayer<B>, db: &Db) -> Svc {
    let db = db.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let db = db.clone();
            async move { Ok::<_, Infallible>(db.respond(request).await) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

/// Sends `method path` (on `http://site.example`) with `headers`.
pub async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    super::send(svc, method, &format!("http://site.example{path}"), headers).await
}

pub async fn get(svc: &Svc, path: &str) -> Answer {
    send(svc, Method::GET, path, &[]).await
}

/// Sends a request in a task of its own.
pub fn spawn_send(
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

/// Sends a GET in a task of its own.
pub fn spawn_get(
    svc: &Svc,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<Answer> {
    spawn_send(svc, Method::GET, path, headers)
}

/// The answer of a spawned request (10 s at most).
pub async fn joined(handle: tokio::task::JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("request finished")
        .expect("request task")
}

/// After the purge, the page (sent with `headers`) is the new version, from the origin and
/// then from the cache.
pub async fn serves_only_the_new_version(
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
