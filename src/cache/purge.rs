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
    /// The backend failed or timed out; nothing, or only part, may have been purged.
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
    /// Scheme and host are compared without case, and a name's trailing dot and the
    /// scheme's default port are dropped (`HTTPS://Example.com.:443/a` is
    /// `https://example.com/a`, and purges what clients that sent `Host: example.com.`
    /// were answered, which is keyed as `example.com`'s). Whichever scheme
    /// the URI names, the page is purged in the layer's own scheme too
    /// ([`default_scheme`](super::MemcacheLayer::default_scheme), the only one it stores):
    /// behind a TLS terminator the layer keys pages `http://`, while the URL purged is the
    /// public `https://` one. (The other scheme's page, if another layer sharing the
    /// namespace stores it, is purged as well: a miss at most.)
    ///
    /// Otherwise the URI as spelled: where the origin answers other spellings with the
    /// same page (`/News/1`, `/news/1/`, `/%6Eews/1`, `?b=2&a=1`),
    /// each is an entry of its own; [`purge_tag`](Self::purge_tag) reaches them all when
    /// the page carries a tag. A fragment (`#top`) is ignored, as clients never send one.
    /// The entry of a request that named no host (HTTP/1.0 without `Host`: its key has an
    /// empty authority, which no URI can name) is purged with every URI of its path.
    ///
    /// Each of these spellings is purged even when an earlier one failed; the first
    /// error is returned once all were tried.
    pub async fn purge_uri(&self, uri: &str) -> Result<(), PurgeError> {
        let invalid = || PurgeError::InvalidUri(uri.to_string());
        let parsed: Uri = uri.parse().map_err(|_| invalid())?;
        if parsed.authority().is_none() {
            return Err(invalid());
        }
        let canonical = self.purge_key(&parsed).ok_or_else(invalid)?;
        // The layer only stores keys of its own scheme (`Canonical::request_key`): a URI
        // of the other one, purged alone, returned `Ok` and reached nothing it stores.
        // (A key function that declines the respelled URI stores nothing under it.)
        let own = in_scheme(&parsed, &self.canonical.default_scheme)
            .and_then(|respelled| self.purge_key(&respelled));
        // A request without `Host` (HTTP/1.0) is keyed with an empty authority, which no
        // absolute URI names: purged with every URI of its path, or never (the origin
        // answered it with its default site, maybe this page; if not, a miss).
        let host_less = parsed
            .path_and_query()
            .and_then(|path| Uri::try_from(path.as_str()).ok())
            .and_then(|origin_form| self.purge_key(&origin_form))
            .filter(|key| *key != canonical && Some(key) != own.as_ref());
        // Every spelling, whatever an earlier one did: the first is often one the layer
        // never stores (the public `https://` URL), and stopping at its error left the
        // page the layer serves in memcached and the near tier, retry after retry. The
        // first error is returned once all were tried.
        let mut failed = None;
        for canonical in std::iter::once(&canonical)
            .chain(own.as_ref())
            .chain(host_less.as_ref())
        {
            let key = self.storage.primary_key(canonical);
            match self.storage.invalidate(&key).await {
                Ok(()) => tracing::debug!(%canonical, "purged"),
                Err(err) => {
                    tracing::debug!(%canonical, error = %err, "purge failed");
                    failed.get_or_insert(err);
                }
            }
        }
        match failed {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }

    fn purge_key(&self, uri: &Uri) -> Option<String> {
        self.canonical
            .key_for_get(uri, &HeaderMap::new(), &Extensions::new())
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

/// `uri` in `scheme` when it names another one (any case), its port dropped when it was
/// the default of the scheme it named (`https://a:443/` is `http://a/`); `None` when it
/// names `scheme` already, or cannot be respelled (then only the URI as given is purged).
fn in_scheme(uri: &Uri, scheme: &str) -> Option<Uri> {
    let given = uri.scheme_str()?;
    if given.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let given_default = if given.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let mut parts = uri.clone().into_parts();
    let authority = parts.authority.as_ref()?;
    if authority.port_u16() == Some(given_default) {
        // `host()` keeps an IPv6 literal's brackets.
        parts.authority = Some(authority.host().parse().ok()?);
    }
    parts.scheme = Some(scheme.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Whether a tag header naming `tag` names it alone, as itself (split as
/// `storage::parse_tags` splits it; its length bound aside: that refuses to store, not to
/// name).
fn is_one_tag(tag: &str) -> bool {
    !tag.is_empty() && !tag.contains(|c: char| c.is_ascii_whitespace() || c == ',')
}
