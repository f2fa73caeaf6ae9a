//! A process whose clock runs off the host's, as the times it writes show it: its purges'
//! stamps, and the tag and mark generations it creates (`"{stamp}c"` or `"{stamp}"` under
//! `g:` keys), taken `offset` ns off (negative: behind). The offset may be stepped while
//! the process runs (reviews TC and TF).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use tower_memcache::backend::{Advanced, Backend, BackendError, Lifetime};

/// `inner`, with the times written through it shifted by `offset`.
#[derive(Clone)]
pub struct Skewed<B> {
    pub inner: B,
    pub offset: Arc<AtomicI64>,
}

impl<B> Skewed<B> {
    fn shift(&self, stamp: u64) -> u64 {
        stamp.saturating_add_signed(self.offset.load(Ordering::SeqCst))
    }

    /// A time-valued generation (`g:` keys: digits, maybe `c` for "created"), shifted.
    fn shift_value(&self, key: &str, value: Bytes) -> Bytes {
        if !key.starts_with("g:") {
            return value;
        }
        let text = std::str::from_utf8(&value).unwrap_or_default();
        let (digits, suffix) = match text.strip_suffix('c') {
            Some(digits) => (digits, "c"),
            None => (text, ""),
        };
        match digits.parse::<u64>() {
            Ok(stamp) => Bytes::from(format!("{}{suffix}", self.shift(stamp))),
            Err(_) => value,
        }
    }
}

impl<B: Backend> Backend for Skewed<B> {
    crate::forward_to_inner!(get, get_many, cas, delete, touch, incr, flush_all, stats);

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        let value = self.shift_value(key, value);
        self.inner.set(key, value, flags, lifetime).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        let value = self.shift_value(key, value);
        self.inner.add(key, value, flags, lifetime).await
    }

    async fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> Result<Advanced, BackendError> {
        let stamp = self.shift(stamp);
        self.inner
            .advance_on_every_server(key, stamp, lifetime)
            .await
    }
    // `server_of`, `outages` and `is_available` are the trait's defaults (one server
    // never marked down): a wrapper that knows more says so itself (review TF's).
}
