//! The personalising origin of reviews I and R: it answers each user (named by
//! `Authorization: Bearer <user>` or `Cookie: user=<user>`) with a page and header fields
//! carrying the user's name, scripted per test; and the layer and requests around it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::Backend;
use tower_memcache::cache::ResponseBody;

use super::Watch;

/// The user a request is from: `Authorization: Bearer <user>`, else `Cookie: user=<user>`,
/// else `anonymous`.
pub fn user_of(headers: &HeaderMap) -> String {
    let text = |name| {
        headers
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(auth) = text(http::header::AUTHORIZATION) {
        return auth.trim_start_matches("Bearer ").to_string();
    }
    if let Some(cookie) = text(http::header::COOKIE) {
        if let Some(user) = cookie
            .split(';')
            .find_map(|c| c.trim().strip_prefix("user="))
        {
            return user.to_string();
        }
    }
    "anonymous".into()
}

/// How the origin answers one request: status, raw header lines (bytes, so obs-text can
/// be sent as origins do) and body. `{user}` in a value or the body is the user's name.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: String,
}

impl Reply {
    pub fn ok(headers: &[(&'static str, &[u8])], body: &str) -> Self {
        Self {
            status: 200,
            headers: headers.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
            body: body.into(),
        }
    }
}

pub type Script = Arc<dyn Fn(&Request<()>, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct Origin {
    pub script: Arc<Mutex<Script>>,
    pub calls: Arc<AtomicUsize>,
    /// How long the origin takes to answer, in milliseconds.
    pub delay_ms: Arc<AtomicU64>,
}

impl Origin {
    pub fn new(script: impl Fn(&Request<()>, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            script: Arc::new(Mutex::new(Arc::new(script))),
            calls: Arc::default(),
            delay_ms: Arc::default(),
        }
    }

    /// From now on, the origin answers this way.
    pub fn then(&self, script: impl Fn(&Request<()>, usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let script = Arc::clone(&self.script.lock().unwrap());
        let reply = script(request, n);
        let user = user_of(request.headers());
        let fill = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            if text.contains("{user}") {
                text.replace("{user}", &user).into_bytes()
            } else {
                bytes.to_vec()
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(fill(reply.body.as_bytes()))));
        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
        for (name, value) in reply.headers {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(&fill(&value)).unwrap(),
            );
        }
        response
    }
}

pub type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

pub fn service_of<B: Backend>(
    layer: MemcacheLayer<B>,
    origin: &Origin,
    namespace: &str,
) -> (Svc, Watch) {
    let layer = layer.namespace(namespace);
    let watch = Watch::of(&layer);
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let response = origin.respond(&request);
        let delay = Duration::from_millis(origin.delay_ms.load(Ordering::SeqCst));
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(response)
        }
    });
    (
        tower::util::BoxCloneSyncService::new(tower::Layer::layer(&layer, inner)),
        watch,
    )
}

/// An answer read to its end, header values as bytes.
#[derive(Debug)]
pub struct Seen {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Seen {
    /// Every header line and the body, as text: where a marker must not be.
    pub fn everything(&self) -> String {
        let mut all = String::new();
        for (name, value) in &self.headers {
            all.push_str(name.as_str());
            all.push_str(": ");
            all.push_str(&String::from_utf8_lossy(value.as_bytes()));
            all.push('\n');
        }
        all.push_str(&self.body);
        all
    }
}

pub async fn send(
    svc: &Svc,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Seen {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .body(())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = svc.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(svc: &Svc, host: &str, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, host, path, headers).await
}

pub const ALICE: &[(&str, &[u8])] = &[("cookie", b"user=alice")];
pub const BOB: &[(&str, &[u8])] = &[("cookie", b"user=bob")];

#[track_caller]
pub fn assert_no_alice(seen: &Seen) {
    let all = seen.everything();
    assert!(
        !all.contains("alice"),
        "user A's marker reached user B:\n{all}"
    );
}

/// A conditional request: one the cache made to revalidate its entry.
pub fn conditional(request: &Request<()>) -> bool {
    request.headers().contains_key("if-none-match")
}

pub fn not_modified(headers: &[(&'static str, &[u8])]) -> Reply {
    Reply {
        status: 304,
        headers: headers.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
        body: String::new(),
    }
}
