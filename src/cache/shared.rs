//! [`Shared`]: what a layer knows once, for every request (its configuration, storage
//! and `Cache-Status` name), and what it reads from a response for storing it: the
//! lifetime it asks, its tags, its selecting headers.

use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, Response};

use super::CacheLifetime;
use super::config::Config;
use super::entry::EntryMeta;
use super::status::CacheStatus;
use super::storage::{Storage, parse_tags};
use crate::backend::Backend;
use crate::cache::policy::cache_control::parse_delta_seconds;
use crate::cache::policy::{Policy, normalized_header, vary_names};

/// What the layer knows once, for every request.
pub(crate) struct Shared<B> {
    pub(crate) config: Config<B>,
    pub(crate) storage: Storage<B>,
    pub(super) status: Option<CacheStatus>,
    /// Response fields the layer consumes and never stores or sends on.
    pub(super) own_fields: Vec<HeaderName>,
}

impl<B: Backend> Shared<B> {
    pub(crate) fn new(config: Config<B>) -> Self {
        let status = config.cache_status.as_deref().and_then(CacheStatus::new);
        // `Cache-Status` is not among them: the members of caches nearer the origin are
        // stored with the response, and ours follows them on every answer.
        let own_fields = [config.lifetime_header.clone(), config.tag_header.clone()]
            .into_iter()
            .flatten()
            .collect();
        let storage = config.storage();
        Self {
            config,
            storage,
            status,
            own_fields,
        }
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.config.policy
    }
    /// The response's own lifetime (extension or header, the header removed) or the
    /// route's, and whether the handler chose it.
    pub(super) fn response_lifetime<T>(
        &self,
        response: &mut Response<T>,
        route: Duration,
    ) -> (Duration, bool) {
        let mut lifetime = (route, false);
        if let Some(name) = &self.config.lifetime_header {
            if response.headers().contains_key(name) {
                // Clamped like delta-seconds, so no lifetime overflows a time sum. As an
                // invalid `max-age` does (RFC 9111 §4.2.1), a value that is no number of
                // seconds (`0.5`, `-1`, `30s`) counts as 0 (a handler's 0 stores nothing):
                // ignored, the route's lifetime (an hour by default) outlived what the
                // handler asked. Of several values (lines or list members) the smallest
                // rules, as for `max-age`.
                let secs = response
                    .headers()
                    .get_all(name)
                    .iter()
                    .flat_map(|value| value.as_bytes().split(|b| *b == b','))
                    .map(<[u8]>::trim_ascii)
                    .filter(|member| !member.is_empty())
                    .map(|member| {
                        std::str::from_utf8(member)
                            .ok()
                            .and_then(parse_delta_seconds)
                            .unwrap_or_else(|| {
                                tracing::debug!(header = %name, "lifetime header is no number of seconds; counted as 0");
                                0
                            })
                    })
                    .min()
                    .unwrap_or(0);
                response.headers_mut().remove(name);
                lifetime = (Duration::from_secs(secs), true);
            }
        }
        if let Some(CacheLifetime(chosen)) = response.extensions_mut().remove::<CacheLifetime>() {
            lifetime = (chosen, true);
        }
        lifetime
    }

    /// Removes the fields the layer consumes (tag and lifetime headers) from a response
    /// passed on without being stored: they are instructions to the layer, never sent on.
    pub(super) fn drop_own_fields<T>(&self, response: &mut Response<T>) {
        for name in &self.own_fields {
            response.headers_mut().remove(name);
        }
    }

    /// Removes the tag header (it is never sent on) and returns its tags; `None` when they
    /// cannot all be kept (too many, too long, not UTF-8): a purge of one left out would
    /// not reach the entry, so the response must not be stored.
    pub(super) fn take_tags<T>(&self, response: &mut Response<T>) -> Option<Vec<String>> {
        let Some(name) = &self.config.tag_header else {
            return Some(Vec::new());
        };
        let values: Option<Vec<&str>> = response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .collect();
        let tags = values.and_then(parse_tags);
        response.headers_mut().remove(name);
        tags
    }
    /// The names of the selecting request headers: the response's `Vary` plus the
    /// configured key headers, sorted, once each; and `Accept-Encoding` for a response
    /// with a content coding. An origin that codes by the client's `Accept-Encoding` and
    /// forgets `Vary` (nginx's `gzip_vary` is off by default) had one client's `br` bytes
    /// stored as the page for everyone, clients that refused `br` too (review TJ); coded
    /// by `Accept-Encoding` or not, the answer is one that client's list chose. Likewise
    /// `Origin` for a response that allows one origin (`Access-Control-Allow-Origin` other
    /// than `*`): an origin that reflects the request's `Origin` and forgets `Vary` had one
    /// attacker's `Origin` served to every caller, whose browsers then refused the answer.
    pub(super) fn selecting_names(&self, response_headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = vary_names(response_headers).collect();
        if super::range::has_content_coding(response_headers) {
            names.push(http::header::ACCEPT_ENCODING.as_str().to_string());
        }
        if allows_one_origin(response_headers) {
            names.push(http::header::ORIGIN.as_str().to_string());
        }
        names.extend(
            self.config
                .key_headers
                .iter()
                .map(|n| n.as_str().to_string()),
        );
        names.sort();
        names.dedup();
        names
    }

    /// The selecting request headers with this request's normalised values.
    pub(super) fn vary_values(
        &self,
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
    ) -> Vec<(String, Option<String>)> {
        self.selecting_names(response_headers)
            .into_iter()
            .map(|name| {
                let value = normalized_header(request_headers, &name);
                (name, value)
            })
            .collect()
    }
}

/// Whether a response's `Access-Control-Allow-Origin` names an origin (anything but the
/// wildcard `*`, which allows every caller alike; the Fetch standard's CORS
/// check compares any other value with the caller's own `Origin`).
fn allows_one_origin(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .iter()
        .any(names_one_origin)
}

/// Whether one `Access-Control-Allow-Origin` line names an origin (see
/// [`allows_one_origin`]).
fn names_one_origin(value: &http::HeaderValue) -> bool {
    value.as_bytes().trim_ascii() != b"*"
}

/// Whether a stored response is selected by each request field its own fields call for
/// without `Vary` naming it (`Accept-Encoding` for a coding, `Origin` for one allowed
/// origin; see [`Shared::selecting_names`]). Not so for an entry stored before a rule was
/// added: kept with no such value, it answered every request, the poisoned answer the
/// rule closes included, for its lifetime (review TX). One pass over the stored fields,
/// on every read of an entry.
pub(super) fn selects_as_its_fields_call_for(meta: &EntryMeta) -> bool {
    let selected_by = |name: &http::HeaderName| {
        meta.vary
            .iter()
            .any(|(selecting, _)| selecting == name.as_str())
    };
    meta.headers.iter().all(|(name, value)| {
        if name == http::header::CONTENT_ENCODING {
            !super::range::names_a_coding(value) || selected_by(&http::header::ACCEPT_ENCODING)
        } else if name == http::header::ACCESS_CONTROL_ALLOW_ORIGIN {
            !names_one_origin(value) || selected_by(&http::header::ORIGIN)
        } else {
            true
        }
    })
}

/// Helpers for the lifecycle modules' unit tests: one layer's `Shared` over
/// `MemoryBackend`, and a request's `Exchange` after its lookup, without the service.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;

    use super::Shared;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::entry::{Entry, EntryMeta};
    use crate::cache::exchange::Exchange;
    use crate::cache::status::Forward;
    use crate::cache::storage::{Found, Lookup};
    use crate::cache::stored::now_ms;

    pub(crate) fn shared(layer: &MemcacheLayer<MemoryBackend>) -> Arc<Shared<MemoryBackend>> {
        Arc::new(Shared::new(layer.config().clone()))
    }

    pub(crate) fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    /// The request planned and looked up, as `handle` does before deciding.
    pub(crate) async fn exchange_for(
        shared: &Shared<MemoryBackend>,
        request: &Request<()>,
    ) -> Exchange {
        let plan = shared.plan(request).expect("a cacheable request");
        let found = match shared
            .storage
            .lookup(&plan.canonical, &plan.key, request.headers())
            .await
        {
            Lookup::Found(found) => found,
            Lookup::Unavailable => Found::default(),
        };
        Exchange {
            plan,
            found,
            fwd: Forward::UriMiss,
            detail: None,
            is_head: false,
        }
    }

    /// Stores `entry` for `request` as a fill would: a placeholder first, then the entry
    /// in its place.
    pub(crate) async fn put(shared: &Shared<MemoryBackend>, request: &Request<()>, entry: &Entry) {
        let ex = exchange_for(shared, request).await;
        let placed = shared
            .storage
            .place(
                &ex.plan.key,
                crate::cache::storage::unique(),
                std::time::SystemTime::now(),
            )
            .await;
        let crate::cache::storage::Placed::Mine(placeholder, _) = placed else {
            panic!("no placeholder placed")
        };
        let to = crate::cache::storage::Target {
            key: ex.plan.key.clone(),
            slot: crate::cache::storage::Slot::Placeholder {
                cas: 0,
                placeholder,
            },
            index: ex.found.index.clone(),
            variants: ex.found.variants.clone(),
            generation: ex.found.generation,
            requested: std::time::SystemTime::now(),
            sent: std::time::Instant::now(),
        };
        let (stored, _) = shared.store(&to, &[], entry, Duration::from_secs(60)).await;
        assert_eq!(stored, crate::cache::storage::StoreOutcome::Stored);
    }

    /// What a lookup for `request` finds stored now.
    pub(crate) async fn stored_entry(
        shared: &Shared<MemoryBackend>,
        request: &Request<()>,
    ) -> Option<Arc<Entry>> {
        exchange_for(shared, request).await.found.entry
    }

    /// A fresh 200 entry for no URL in particular.
    pub(crate) fn bare_entry() -> Entry {
        entry_for(String::new(), &[])
    }

    /// A fresh 200 entry for `ex`'s URL, with `headers`.
    pub(crate) fn entry(ex: &Exchange, headers: &[(&'static str, &'static str)]) -> Entry {
        entry_for(ex.plan.canonical.clone(), headers)
    }

    fn entry_for(canonical_key: String, headers: &[(&'static str, &'static str)]) -> Entry {
        Entry {
            meta: EntryMeta {
                canonical_key,
                status: 200,
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            http::HeaderName::from_static(n),
                            http::HeaderValue::from_static(v),
                        )
                    })
                    .collect(),
                vary: Vec::new(),
                stored_at_ms: now_ms(),
                initial_age_ms: 0,
                fresh_for_ms: Duration::from_secs(60).as_millis() as u64,
                stale_while_revalidate_ms: 0,
                stale_if_error_ms: 0,
                forbids_stale: false,
                no_cache: false,
                authenticated: false,
                generation: 0,
                tags: Vec::new(),
                judged_by: 0,
            },
            body: Bytes::from_static(b"stored"),
        }
    }
}
