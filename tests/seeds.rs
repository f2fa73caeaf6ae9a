//! The seed documents' examples, on every backend.

mod support;

use support::seeds;
use tower_memcache::backend::MemoryBackend;

mod memory {
    use super::*;

    #[tokio::test]
    async fn lovely_basics() {
        seeds::lovely_basics(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn namespaces() {
        seeds::namespaces(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn statistics() {
        seeds::statistics(MemoryBackend::new(), "memory").await;
    }

    #[tokio::test]
    async fn server_gone_and_back() {
        let dead = MemoryBackend::new();
        dead.set_unreachable(true);
        let live = MemoryBackend::new();
        let (l1, l2) = (live.clone(), live.clone());
        seeds::server_gone_and_back(
            dead,
            live,
            async move || l1.set_unreachable(true),
            async move || l2.set_unreachable(false),
        )
        .await;
    }

    #[tokio::test]
    async fn p01_basics() {
        seeds::p01_basics(MemoryBackend::new()).await;
    }

    #[test]
    fn p01_build_key() {
        seeds::p01_build_key();
    }

    #[tokio::test]
    async fn p01_encodings() {
        seeds::p01_encodings(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn p01_raw() {
        seeds::p01_raw(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn p01_invalidation_event() {
        seeds::p01_invalidation_event(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn namespace_invalidation() {
        seeds::namespace_invalidation(MemoryBackend::new()).await;
    }

    /// The seeds' `getFakeBackend(client).cache`: the fake shows exactly what is stored.
    #[tokio::test]
    async fn fake_backend_cache_is_inspectable() {
        use tower_memcache::MemcacheClient;
        let backend = MemoryBackend::new();
        let client = MemcacheClient::new(backend.clone());
        client.set("cache_key", "cached value ä").await;
        let entries = backend.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "0a42907b589a309ad94f8874eacbc63f");
        client.invalidate_all().await;
        assert!(backend.entries().is_empty());
    }
}

#[cfg(feature = "tcp")]
mod tcp {
    use super::*;
    use crate::memcached_or_skip;
    use tower_memcache::backend::TcpBackend;

    fn backend(server: &support::Memcached) -> TcpBackend {
        crate::support::patient_backend([server.addr()])
    }

    #[tokio::test]
    async fn lovely_basics() {
        let server = memcached_or_skip!("seeds::tcp::lovely_basics");
        seeds::lovely_basics(backend(&server)).await;
    }

    #[tokio::test]
    async fn namespaces() {
        let server = memcached_or_skip!("seeds::tcp::namespaces");
        seeds::namespaces(backend(&server)).await;
    }

    #[tokio::test]
    async fn statistics() {
        let server = memcached_or_skip!("seeds::tcp::statistics");
        seeds::statistics(backend(&server), &server.addr()).await;
    }

    #[tokio::test]
    async fn server_gone_and_back() {
        let server = memcached_or_skip!("seeds::tcp::server_gone_and_back");
        // The seeds' 127.0.0.1:8125: a port where nothing listens.
        let dead = TcpBackend::new([format!("127.0.0.1:{}", support::free_port())]).unwrap();
        let live = backend(&server);
        let server = std::sync::Arc::new(std::sync::Mutex::new(server));
        let (s1, s2) = (server.clone(), server.clone());
        let live_probe = live.clone();
        seeds::server_gone_and_back(
            dead,
            live,
            async move || s1.lock().unwrap().kill(),
            async move || {
                s2.lock().unwrap().restart();
                // "As soon as a server is back online it will immediately be used": the
                // probe (200 ms) puts it back if it had been marked down.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while live_probe.is_server_down(0) && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                assert!(!live_probe.is_server_down(0), "not back in use within 1 s");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn p01_basics() {
        let server = memcached_or_skip!("seeds::tcp::p01_basics");
        seeds::p01_basics(backend(&server)).await;
    }

    #[tokio::test]
    async fn p01_encodings() {
        let server = memcached_or_skip!("seeds::tcp::p01_encodings");
        seeds::p01_encodings(backend(&server)).await;
    }

    #[tokio::test]
    async fn p01_raw() {
        let server = memcached_or_skip!("seeds::tcp::p01_raw");
        seeds::p01_raw(backend(&server)).await;
    }

    #[tokio::test]
    async fn p01_invalidation_event() {
        let server = memcached_or_skip!("seeds::tcp::p01_invalidation_event");
        seeds::p01_invalidation_event(backend(&server)).await;
    }

    #[tokio::test]
    async fn namespace_invalidation() {
        let server = memcached_or_skip!("seeds::tcp::namespace_invalidation");
        seeds::namespace_invalidation(backend(&server)).await;
    }
}
