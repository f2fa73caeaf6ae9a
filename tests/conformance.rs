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

#[cfg(feature = "tcp")]
mod tcp {
    use super::*;
    use crate::memcached_or_skip;
    use tower_memcache::backend::{Backend, TcpBackend};

    #[tokio::test]
    async fn conformance_suite() {
        let server = memcached_or_skip!("conformance::tcp::conformance_suite");
        let backend = TcpBackend::new([server.addr()]).unwrap();
        let make = move || {
            let backend = backend.clone();
            let boxed: support::conformance::futures_like::BoxFuture<TcpBackend> =
                Box::pin(async move {
                    backend.flush_all().await.unwrap();
                    backend
                });
            boxed
        };
        conformance::all(make, 1024 * 1024).await;
    }

    /// Three servers: the suite holds when keys are spread by ketama.
    #[tokio::test]
    async fn conformance_suite_on_three_servers() {
        let a = memcached_or_skip!("conformance::tcp::three_servers");
        let b = memcached_or_skip!("conformance::tcp::three_servers");
        let c = memcached_or_skip!("conformance::tcp::three_servers");
        let backend = TcpBackend::new([a.addr(), b.addr(), c.addr()]).unwrap();
        conformance::get_many_returns_present_keys_only(backend.clone()).await;
        conformance::set_get_keeps_bytes_and_flags(backend.clone()).await;
        conformance::flush_all_empties_everything(backend.clone()).await;
        let stats = backend.stats().await.unwrap();
        assert_eq!(stats.len(), 3);
    }

    #[tokio::test]
    async fn smaller_item_limit_is_enforced() {
        let server = memcached_or_skip!("conformance::tcp::smaller_item_limit");
        let backend = TcpBackend::builder()
            .server(server.addr())
            .item_size_limit(64 * 1024)
            .build()
            .unwrap();
        conformance::oversized_values_are_refused(backend.clone(), 64 * 1024).await;
        conformance::client_bad_input(backend, 64 * 1024).await;
    }
}
