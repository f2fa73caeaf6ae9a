//! Origins that answer by how they read a request's path (leniently, decoding, or as
//! sent), and greet the user whose cookie came with the request: the web cache deception
//! scenarios of `route_rules` and review QY.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};

/// "Cache only `/static/`": a layer whose default lifetime is 0 and whose one rule gives
/// `/static/` an hour, the set-up of the static-directory deception tests.
pub fn static_only_layer() -> tower_memcache::MemcacheLayer<tower_memcache::backend::MemoryBackend>
{
    super::layer(tower_memcache::backend::MemoryBackend::new())
        .default_lifetime(std::time::Duration::ZERO)
        .route(
            tower_memcache::RouteMatch::Prefix("/static/".into()),
            std::time::Duration::from_secs(3600),
        )
}

/// Every escape decoded once (bytes that are no escape kept).
pub fn decode_once(path: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        if let (b'%', Some(high), Some(low)) = (
            path[i],
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            out.push(u8::try_from(high * 16 + low).unwrap());
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// A decoded path's segments as Tomcat resolves them: each one's `;` parameters dropped,
/// dot segments resolved, empty segments (and a trailing slash) gone.
pub fn resolve_segments(text: &str) -> String {
    let mut resolved: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                resolved.pop();
            }
            other => resolved.push(other),
        }
    }
    format!("/{}", resolved.join("/"))
}

/// An origin whose answer to each request is `page(path as sent, user)`: the user is the
/// `user=` cookie's, or `anonymous`. Nothing marks a page private: the mistake route rules
/// exist to catch.
pub fn serving(
    page: fn(&str, &str) -> String,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |request: Request<Full<Bytes>>| async move {
        let user = request
            .headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("user="))
            .unwrap_or("anonymous");
        let body = page(request.uri().path(), user);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    })
}

/// A GET of `path` (with `cookie`, if any) through `service` (the layer, or an axum
/// router it is a route layer of): the body and the `Cache-Status`. Fails unless the
/// answer is a 200.
pub async fn get<S, B>(service: &S, path: &str, cookie: Option<&str>) -> (String, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let request = request.body(Full::default()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// The deception attempt at `spelling`: a victim (Alice's cookie) is lured there, then
/// the attacker (no cookie) asks for it once the layer has settled. Each must get the page
/// `page(user)` makes for them: the victim's was not stored for the attacker.
pub async fn assert_each_gets_own<S, B>(
    service: &S,
    watch: &super::Watch,
    spelling: &str,
    page: fn(&str) -> String,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (victim, _) = get(service, spelling, Some("user=alice")).await;
    assert_eq!(victim, page("alice"), "{spelling}");
    watch.settled().await;
    let (attacker, status) = get(service, spelling, None).await;
    assert_eq!(attacker, page("anonymous"), "{spelling}: {status}");
}

/// [`assert_each_gets_own`] at every spelling, then nothing stored at all (a `no_cache`
/// rule held for each, not only against the attacker's read).
pub async fn assert_none_stored<S, B>(
    service: &S,
    watch: &super::Watch,
    spellings: &[&str],
    page: fn(&str) -> String,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for spelling in spellings {
        assert_each_gets_own(service, watch, spelling, page).await;
    }
    assert_eq!(watch.snapshot().stores, 0);
}
