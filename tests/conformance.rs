//! The Backend conformance suite on every backend.

mod support;

use support::conformance;
use tower_memcache::backend::MemoryBackend;

mod memory {
    use super::*;

    #[tokio::test]
    async fn conformance_suite() {
        conformance::all(
            || Box::pin(async { MemoryBackend::new() }),
            MemoryBackend::new().item_size_limit(),
        )
        .await;
    }

    #[tokio::test]
    async fn smaller_item_limit_is_enforced() {
        let backend = MemoryBackend::builder().item_size_limit(64 * 1024).build();
        conformance::oversized_values_are_refused(backend.clone(), 64 * 1024).await;
        conformance::client_bad_input(backend, 64 * 1024).await;
    }
}
