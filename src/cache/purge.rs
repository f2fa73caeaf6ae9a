//! [`Purger`]: invalidation on demand, seen by every process sharing the backend.

use std::fmt;

use http::{Extensions, HeaderMap, Uri};

use super::config::Config;
use super::key::Canonical;
use super::storage::Storage;
use crate::backend::{Backend, BackendError};

/// Why a purge did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// The URI is not absolute (`http://host/path`), or a key function declined it.
    #[error("cannot purge {0:?}: an absolute http(s) URI is needed")]
    InvalidUri(String),
    /// The tag is not one tag as the tag header names them (empty, or holding white space
    /// or a comma): no entry can carry it, and the tag meant (`"news"` for `"news\n"`)
    /// would stay unpurged.
    #[error("cannot purge tag {0:?}: one tag is needed, with no white space or comma")]
    InvalidTag(String),
    /// The backend failed or timed out; nothing may have been purged.
    #[error("purge failed: {0}")]
    Backend(#[from] BackendError),
}

/// Purges entries of one layer's namespace: one URL (every variant), every entry with a
/// tag, the whole namespace, or everything in the backend. Cheap to clone; get one from
/// [`MemcacheLayer::purger`](super::MemcacheLayer::purger).
///
/// Tag and namespace purges give the tag (or namespace) a new generation in memcached, and
/// every read checks generations, so other processes see a purge at once (those with a
/// near tier within its `max_staleness`; this process's own tier before the purge returns).
///
/// ```
/// use tower_memcache::backend::MemoryBackend;
/// use tower_memcache::cache::MemcacheLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_memcache::cache::PurgeError> {
/// let layer = MemcacheLayer::new(MemoryBackend::new()).namespace("site");
/// let purger = layer.purger();
/// purger.purge_uri("http://example.com/news/1").await?;
/// purger.purge_tag("news").await?;
/// purger.purge_namespace().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Purger<B> {
    storage: Storage<B>,
    canonical: Canonical,
}

impl<B> fmt::Debug for Purger<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purger").finish_non_exhaustive()
    }
}

impl<B: Backend> Purger<B> {
    pub(crate) fn new(config: &Config<B>) -> Self {
        Self {
            storage: config.storage(),
            canonical: config.canonical.clone(),
        }
    }

    /// Invalidates the cached GET (and HEAD) responses of an absolute URI, every variant.
    ///
    /// The URI as spelled: where the origin answers other spellings with the same page
    /// (`/News/1`, `/news/1/`), each is an entry of its own; [`purge_tag`](Self::purge_tag)
    /// reaches them all when the page carries a tag.
    pub async fn purge_uri(&self, uri: &str) -> Result<(), PurgeError> {
        let invalid = || PurgeError::InvalidUri(uri.to_string());
        let parsed: Uri = uri.parse().map_err(|_| invalid())?;
        if parsed.authority().is_none() {
            return Err(invalid());
        }
        let canonical = self
            .canonical
            .key_for_get(&parsed, &HeaderMap::new(), &Extensions::new())
            .ok_or_else(invalid)?;
        let key = self.storage.primary_key(&canonical);
        self.storage.invalidate(&key).await?;
        tracing::debug!(%canonical, "purged");
        Ok(())
    }

    /// Invalidates every entry stored with `tag` (in this namespace).
    ///
    /// `tag` is one tag as the tag header names it: a value no header names as one tag
    /// (empty, holding white space or a comma) is refused with [`PurgeError::InvalidTag`]
    /// rather than purging nothing. A tag longer than 128 bytes is purged (an `Ok`): a
    /// response naming one is never stored, so no entry has it.
    pub async fn purge_tag(&self, tag: &str) -> Result<(), PurgeError> {
        // The tag header is read split on white space and commas: `"news\n"` from a file
        // or `"news sports"` would bump a generation no entry reads, and an `Ok` for it
        // would be a purge that returned and left the pages tagged `news` served.
        if !is_one_tag(tag) {
            return Err(PurgeError::InvalidTag(tag.to_string()));
        }
        self.storage.purge_tag(tag).await?;
        tracing::debug!(tag, "tag purged");
        Ok(())
    }

    /// Invalidates every entry of this namespace; other namespaces are untouched.
    pub async fn purge_namespace(&self) -> Result<(), PurgeError> {
        self.storage.purge_namespace().await?;
        tracing::debug!("namespace purged");
        Ok(())
    }

    /// Empties the whole backend (memcached's `flush_all`): every namespace, and anything
    /// else stored there.
    ///
    /// An error when a server missed it (`TcpBackend`: that server is marked down and
    /// flushed before it serves again) or refused it (memcached `-F`, a proxy).
    pub async fn purge_all(&self) -> Result<(), PurgeError> {
        let storage = &self.storage;
        // As long as the other purges wait: a server that does not answer is marked
        // down (its flush owed) before this returns.
        let flushed = storage.bounded_purge(storage.backend().flush_all()).await;
        if let Some(near) = storage.near() {
            near.forget_all();
        }
        flushed?;
        tracing::debug!("backend flushed");
        Ok(())
    }
}

/// Whether a tag header naming `tag` names it alone, as itself (split as
/// `storage::parse_tags` splits it; its length bound aside: that refuses to store, not to
/// name).
fn is_one_tag(tag: &str) -> bool {
    !tag.is_empty() && !tag.contains(|c: char| c.is_ascii_whitespace() || c == ',')
}
