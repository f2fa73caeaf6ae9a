//! A gate on a backend's writes: holds the first write (`set`, `add` or `cas`) to one key
//! once armed, until released (a write delayed on its way to the server), so that a test
//! orders it with others (reviews SX, TA and TC).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a held write waits for its release at most (a schedule that never releases
/// it must not hang the test).
const MOST: Duration = Duration::from_secs(2);

pub struct Gate {
    key: String,
    armed: AtomicBool,
    caught: Semaphore,
    release: Semaphore,
}

impl Gate {
    pub fn new(key: String) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            key,
            armed: AtomicBool::new(true),
            caught: Semaphore::new(0),
            release: Semaphore::new(0),
        })
    }

    /// Before a write to `key`: held there if it is the gate's first.
    pub async fn pass(&self, key: &str) {
        if key == self.key && self.armed.swap(false, Ordering::SeqCst) {
            self.caught.add_permits(1);
            let release = self.release.acquire();
            if let Ok(Ok(permit)) = tokio::time::timeout(MOST, release).await {
                permit.forget();
            }
        }
    }

    /// Until a write is held.
    pub async fn caught(&self) {
        let _ = self.caught.acquire().await.map(|permit| permit.forget());
    }

    /// Until a write is held; false if none was within `within`.
    pub async fn caught_within(&self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.caught.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                true
            }
            _ => false,
        }
    }

    pub fn release(&self) {
        self.release.add_permits(1);
    }
}
