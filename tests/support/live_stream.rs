//! A live stream (server-sent events, server push) served under a layer: the scenario of
//! reviews QE and QW, where every client must get its own stream at once, never a wait
//! for another's nor a replay.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

use super::{Watch, bounded, layer};

/// The body of [`event_stream`]: each event as it is sent.
pub type Events = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, Infallible>>,
>;

/// A live stream with `content_type` as its one `Content-Type` line (no `Cache-Control`,
/// as a hand-written handler sends it), whose events come when the test sends them, and
/// which ends when the sender is dropped.
pub fn event_stream(
    events: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    content_type: &'static str,
) -> http::Response<Events> {
    use futures_util::StreamExt;
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok(http_body::Frame::data(Bytes::from(event))), events))
    })
    .boxed();
    http::Response::builder()
        .header("content-type", content_type)
        .body(http_body_util::StreamBody::new(stream))
        .unwrap()
}

/// Three clients of a stream with `content_type` under a layer with a long
/// `coalesce_timeout`: the second gets its own stream at once while the first runs, and
/// the third, after both ended, its own too (nothing stored, nothing replayed).
pub async fn each_client_gets_its_own(content_type: &'static str) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    bounded(content_type, async {
        let layer = layer(MemoryBackend::new())
            .default_lifetime(Duration::from_secs(60))
            .coalesce_timeout(Duration::from_secs(50));
        let watch = Watch::of(&layer);
        let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&senders);
        let service = layer.layer(tower::service_fn(move |_request: http::Request<()>| {
            let (send, events) = tokio::sync::mpsc::unbounded_channel();
            let mut kept = kept.lock().unwrap();
            let hello = ["data: first\n\n", "data: second\n\n", "data: third\n\n"];
            send.send(hello[kept.len().min(2)]).unwrap();
            kept.push(Some(send));
            async move { Ok::<_, Infallible>(event_stream(events, content_type)) }
        }));
        let get = || {
            http::Request::get("http://app.example/events")
                .body(())
                .unwrap()
        };
        let first = service.clone().oneshot(get()).await.unwrap();
        let mut first = first.into_body();
        let event = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&event[..], b"data: first\n\n");
        // Within 10 s, with `coalesce_timeout` at 50 s: not waiting for the first stream.
        let second = tokio::time::timeout(Duration::from_secs(10), service.clone().oneshot(get()))
            .await
            .unwrap_or_else(|_| {
                panic!("{content_type}: the second client waited for the first's stream")
            })
            .unwrap();
        let mut second = second.into_body();
        let event = second.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&event[..], b"data: second\n\n");

        // Both streams end; a third client gets a stream of its own, not a replay.
        senders
            .lock()
            .unwrap()
            .iter_mut()
            .for_each(|send| *send = None);
        let first = first.collect().await.unwrap().to_bytes();
        assert!(first.is_empty());
        drop(second);
        watch.settled().await;
        let third = service.clone().oneshot(get()).await.unwrap();
        let mut third = third.into_body();
        let event = third.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&event[..], b"data: third\n\n");
        assert_eq!(
            senders.lock().unwrap().len(),
            3,
            "the third stream is its own"
        );
        assert_eq!(watch.snapshot().stores, 0, "{content_type}");
    })
    .await;
}
