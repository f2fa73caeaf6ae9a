//! Floods: many requests for one URL at once, as a client's burst of reloads sends them.

use tokio::task::JoinHandle;

use super::Answer;

/// Header lines of one request.
pub type Fields = &'static [(&'static str, &'static str)];

/// A GET of `url` with `headers` sent through `service` on a task of its own: its answer.
pub fn spawn_get<S, RB>(service: &S, url: &'static str, headers: Fields) -> JoinHandle<Answer>
where
    S: tower::Service<http::Request<()>, Response = http::Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: std::fmt::Debug + Send,
{
    let service = service.clone();
    tokio::spawn(async move { super::send(&service, http::Method::GET, url, headers).await })
}

/// `count` GETs of `url` sent through `service` at once, the `i`-th with `headers(i)`:
/// their answers, in that order.
pub async fn burst<S, RB>(
    service: &S,
    url: &'static str,
    count: usize,
    headers: impl Fn(usize) -> Fields,
) -> Vec<Answer>
where
    S: tower::Service<http::Request<()>, Response = http::Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: std::fmt::Debug + Send,
{
    let requests: Vec<_> = (0..count)
        .map(|i| spawn_get(service, url, headers(i)))
        .collect();
    let mut answers = Vec::with_capacity(count);
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}
