//! A tower `Service` origin that answers each request as a script of the request says
//! (status, header lines, body; no body to HEAD) and counts its calls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use tower_memcache::backend::Backend;
use tower_memcache::{Memcache, MemcacheLayer};

/// What an origin answers a request with: status, header lines, body.
pub type Answer = (u16, Vec<(&'static str, String)>, &'static str);

/// How an origin answers a request.
pub type Script = dyn Fn(&Request<()>) -> Answer + Send + Sync;

/// What an origin answers a request with, owned: for an answer that names the request or
/// the call (see [`Origin::replying`]).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Header lines, appended in order.
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    /// A `200` with `headers` and `body`.
    pub fn ok(headers: Vec<(&'static str, String)>, body: impl Into<Bytes>) -> Self {
        Self::with_status(200, headers, body)
    }

    pub fn with_status(
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            status,
            headers,
            body: body.into(),
        }
    }

    /// The response it describes.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap();
        for (name, value) in self.headers {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        response
    }
}

/// Header lines as a [`Reply`] holds them.
pub fn lines(fields: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    fields
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect()
}

/// How an origin answers a request, given the call's number (the first is 1).
pub type Replies = dyn Fn(&Request<()>, usize) -> Reply + Send + Sync;

/// An origin run by a script of the request; counts calls and keeps the requests' fields.
#[derive(Clone)]
pub struct Origin {
    script: Arc<Replies>,
    calls: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Origin {
    pub fn new(script: impl Fn(&Request<()>) -> Answer + Send + Sync + 'static) -> Self {
        Self::replying(move |request, _| {
            let (status, lines, body) = script(request);
            let body = if request.method() == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from_static(body.as_bytes())
            };
            Reply::with_status(status, lines, body)
        })
    }

    /// An origin that answers each request as `script` says, given the call's number,
    /// body and all (to HEAD too).
    pub fn replying(script: impl Fn(&Request<()>, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            script: Arc::new(script),
            calls: Arc::default(),
            requests: Arc::default(),
        }
    }

    /// An origin that answers every request with `status`, `headers` and a body naming
    /// its call (`call 1`, `call 2`, …).
    pub fn numbered(status: u16, headers: &[(&'static str, &'static str)]) -> Self {
        let headers = lines(headers);
        Self::replying(move |_, call| {
            Reply::with_status(status, headers.clone(), format!("call {call}"))
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The field `name` of the last request the origin got (lossy text).
    pub fn last_request_header(&self, name: &str) -> Option<String> {
        let requests = self.requests.lock().unwrap();
        let value = requests.last()?.get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }

    /// This origin behind `layer`.
    pub fn service<B: Backend>(&self, layer: &MemcacheLayer<B>) -> Memcache<Self, B> {
        tower::Layer::layer(layer, self.clone())
    }

    /// An origin whose `/page/*` are cacheable pages, and whose unsafe requests answer 201
    /// naming what the request's `x-location` / `x-content-location` say.
    pub fn naming_locations() -> Self {
        Self::new(|request: &Request<()>| {
            if request.method() == Method::GET || request.method() == Method::HEAD {
                return (
                    200,
                    vec![("cache-control", "max-age=600".to_owned())],
                    "page",
                );
            }
            let mut lines = Vec::new();
            for (field, name) in [
                ("x-location", "location"),
                ("x-content-location", "content-location"),
            ] {
                if let Some(value) = request.headers().get(field) {
                    lines.push((name, value.to_str().unwrap_or("").to_owned()));
                }
            }
            (201, lines, "done")
        })
    }
}

impl tower::Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.requests
            .lock()
            .unwrap()
            .push(request.headers().clone());
        let reply = (self.script)(&request, call);
        std::future::ready(Ok(reply.into_response()))
    }
}
