//! Floods: many requests for one URL at once, as a client's burst of reloads sends them.

use tokio::task::JoinHandle;

use super::Answer;

/// A service a test sends requests through from tasks of their own (a layer over an
/// origin).
pub trait Spawnable:
    tower::Service<
        http::Request<()>,
        Response = http::Response<Self::Body>,
        Future: Send,
        Error: std::fmt::Debug + Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
    type Body: http_body::Body<Data: Send, Error: std::fmt::Debug + Send> + Send + 'static;
}

impl<S, RB> Spawnable for S
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
    type Body = RB;
}

/// Header lines of one request.
pub type Fields = &'static [(&'static str, &'static str)];

/// A GET of `url` with `headers` sent through `service` on a task of its own: its answer.
pub fn spawn_get<S: Spawnable>(
    service: &S,
    url: &'static str,
    headers: Fields,
) -> JoinHandle<Answer> {
    let service = service.clone();
    tokio::spawn(async move { super::send(&service, http::Method::GET, url, headers).await })
}

/// `count` GETs of `url` sent through `service` at once, the `i`-th with `headers(i)`:
/// their answers, in that order.
pub async fn burst<S: Spawnable>(
    service: &S,
    url: &'static str,
    count: usize,
    headers: impl Fn(usize) -> Fields,
) -> Vec<Answer> {
    let requests: Vec<_> = (0..count)
        .map(|i| spawn_get(service, url, headers(i)))
        .collect();
    let mut answers = Vec::with_capacity(count);
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}
