//! A tower `Service` origin that answers each request as a script of the request says
//! (status, header lines, body; no body to HEAD) and counts its calls.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

/// What an origin answers a request with: status, header lines, body.
pub type Answer = (u16, Vec<(&'static str, String)>, &'static str);

/// How an origin answers a request.
pub type Script = dyn Fn(&Request<()>) -> Answer + Send + Sync;

/// An origin run by a script of the request; counts calls.
#[derive(Clone)]
pub struct Origin {
    script: Arc<Script>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    pub fn new(script: impl Fn(&Request<()>) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            script: Arc::new(script),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
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
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (status, lines, body) = (self.script)(&request);
        let body = if request.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from_static(body.as_bytes())
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in lines {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        std::future::ready(Ok(response))
    }
}
