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
