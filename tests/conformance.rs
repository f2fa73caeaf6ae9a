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
        let backend = crate::support::patient_backend([server.addr()]);
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
        let backend = crate::support::patient_backend([a.addr(), b.addr(), c.addr()]);
        conformance::get_many_returns_present_keys_only(backend.clone()).await;
        conformance::set_get_keeps_bytes_and_flags(backend.clone()).await;
        conformance::cas_replaces_only_an_unchanged_item(backend.clone()).await;
        conformance::routed_calls_keep_their_semantics(backend.clone()).await;
        conformance::ordered_reads_match_the_map(backend.clone()).await;
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

/// TcpBackend's commands beyond the Backend trait, against a real memcached.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn tcp_extra_commands() {
    use tower_memcache::backend::tcp::CasOutcome;
    use tower_memcache::backend::{Backend, Lifetime};

    let server = memcached_or_skip!("conformance::tcp_extra_commands");
    let backend = crate::support::patient_backend([server.addr()]);

    // cas is a Backend method now (the conformance suite runs it on every backend);
    // its outcome is still reachable under `backend::tcp`.
    backend
        .set("c", "v1".into(), 3, Lifetime::NEVER)
        .await
        .unwrap();
    let cas = backend.get("c").await.unwrap().unwrap().cas.unwrap();
    let outcome: CasOutcome = backend
        .cas("c", "v2".into(), 4, Lifetime::NEVER, cas)
        .await
        .unwrap();
    assert_eq!(outcome, CasOutcome::Stored);

    // replace / append / prepend: only for existing keys.
    assert!(
        !backend
            .replace("r", "x".into(), 0, Lifetime::NEVER)
            .await
            .unwrap()
    );
    assert!(backend.get("r").await.unwrap().is_none());
    backend
        .set("r", "mid".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert!(
        backend
            .replace("r", "middle".into(), 0, Lifetime::NEVER)
            .await
            .unwrap()
    );
    assert!(backend.append("r", "-end".into()).await.unwrap());
    assert!(backend.prepend("r", "start-".into()).await.unwrap());
    assert_eq!(
        &backend.get("r").await.unwrap().unwrap().value[..],
        b"start-middle-end"
    );
    assert!(!backend.append("absent", "x".into()).await.unwrap());

    // decr stops at zero, as memcached does.
    backend
        .set("n", "5".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(backend.decr("n", 3).await.unwrap(), Some(2));
    assert_eq!(backend.decr("n", 10).await.unwrap(), Some(0));
    assert_eq!(backend.decr("absent", 1).await.unwrap(), None);

    // version: one answer per server, named host:port.
    let versions = backend.versions().await;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].0, server.addr());
    assert!(versions[0].1.starts_with("1."), "{versions:?}");
}
