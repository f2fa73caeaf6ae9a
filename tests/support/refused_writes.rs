//! A `MemoryBackend` whose working server refuses plain writes for a while, as memcached
//! run with `-M` does once full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};

/// MemoryBackend that refuses the next `fail` plain writes with flags 0 (store epochs and
/// generations) with `SERVER_ERROR out of memory storing object`: nothing written, and the
/// writer told so. Other writes, and reads, go through.
#[derive(Clone)]
pub struct PlainWritesRefused {
    pub inner: MemoryBackend,
    pub fail: Arc<AtomicU64>,
}

impl Backend for PlainWritesRefused {
    async fn set(&self, k: &str, v: Bytes, f: u32, l: Lifetime) -> Result<(), BackendError> {
        let refuse = f == 0
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if refuse {
            return Err(BackendError::Server(
                "SERVER_ERROR out of memory storing object".into(),
            ));
        }
        self.inner.set(k, v, f, l).await
    }
    crate::forward_to_inner!(
        get, get_many, server_of, add, cas, delete, touch, incr, flush_all, stats
    );
}
