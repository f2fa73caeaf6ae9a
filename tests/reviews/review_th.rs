//! Review TH: what an unsafe request's invalidation keeps once its client is gone. The
//! invalidation runs to its end as uncapped background work (reviews SU and SW), so what
//! each one holds is what a client that sends unsafe requests and leaves at once makes
//! the process hold, for as long as memcached takes.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;

use support::lossy_network::{Fault, Network, Through};

/// Every call reaches the store late while `slow` is set: a memcached slow to answer.
#[derive(Clone, Default)]
struct SlowWhenAsked {
    slow: Arc<AtomicBool>,
}

impl Network for SlowWhenAsked {
    fn fault(&self) -> Fault {
        if self.slow.load(Ordering::SeqCst) {
            Fault::Late(300)
        } else {
            Fault::None
        }
    }
}

/// A POST whose client leaves before memcached took its invalidation: the invalidation
/// still runs, but it held a copy of the request's whole head and extensions (up to
/// 64 KiB of fields and whatever a server put in extensions) until memcached answered, so
/// that a client sending large heads and leaving at once made the process hold rate ×
/// memcached's delay of them, uncapped. It now holds the keys it invalidates only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_whose_client_left_holds_nothing_of_its_request() {
    let network = SlowWhenAsked::default();
    let backend = Through {
        inner: MemoryBackend::new(),
        network: network.clone(),
    };
    let layer = MemcacheLayer::new(backend).namespace("review-th");
    let background = layer.background();
    let served = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn({
        let served = Arc::clone(&served);
        move |request: Request<()>| {
            let served = Arc::clone(&served);
            async move {
                if request.method() == Method::GET {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                let response = Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Full::new(Bytes::from("page")))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    });
    let svc = tower::Layer::layer(&layer, inner);
    const URL: &str = "http://review-th.test/item";
    support::send(&svc, Method::GET, URL, &[]).await;
    assert_eq!(
        support::send(&svc, Method::GET, URL, &[]).await.body,
        "page"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1, "the page was not stored");

    network.slow.store(true, Ordering::SeqCst);
    let held = Arc::new(());
    let mut request = Request::post(URL)
        .header("x-large", "x".repeat(32 * 1024))
        .body(())
        .unwrap();
    request.extensions_mut().insert(Arc::clone(&held));
    let left = tokio::time::timeout(Duration::from_millis(100), svc.clone().oneshot(request)).await;
    assert!(
        left.is_err(),
        "the POST came back before memcached answered"
    );
    assert!(background.running() >= 1, "no invalidation runs on");
    // The request and its response future are gone: what still holds the extensions is
    // the invalidation (its headers went with them).
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the invalidation still holds the request's extensions (and head)"
    );

    tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .expect("the invalidation ended once memcached answered");
    network.slow.store(false, Ordering::SeqCst);
    support::send(&svc, Method::GET, URL, &[]).await;
    assert_eq!(
        served.load(Ordering::SeqCst),
        2,
        "the page was still answered after the POST's invalidation"
    );
}
