//! Answers built from a stored entry: the response (or a 304, or a range of it), its
//! `Cache-Status`, how it is counted, and whether an entry another request published may
//! answer this one.

use std::borrow::Cow;

use http::{HeaderMap, Response};

use super::body::ResponseBody;
use super::exchange::Plan;
use super::range;
use super::shared::Shared;
use super::status::{self, CACHE_STATUS, Detail, Forward, Outcome};
use super::stored::{self, header_map, now_ms};
use crate::backend::Backend;
use crate::cache::entry::Entry;
use crate::cache::policy::conditional::{may_be_not_modified, not_modified};
use crate::cache::policy::freshness::{Freshness, Reuse};

/// Marks a response the layer built from a stored one.
#[derive(Clone, Copy, Debug)]
pub(super) struct FromCache;

/// How a request comes to be answered from a stored response.
#[derive(Clone, Copy, Debug)]
pub(super) enum Answered {
    /// Its own lookup found it: a hit, or a stale hit.
    Lookup,
    /// The near tier had it, fresh.
    Near,
    /// Another request's exchange for the same URL produced it.
    Collapsed(Forward),
    /// The origin's 304 to this request's revalidation refreshed it.
    Revalidated(Forward),
    /// It stands in, stale, for an origin that failed, after the request went forward
    /// for `fwd` (`fwd_status`: what the origin answered, if it did).
    StaleIfError {
        fwd: Forward,
        fwd_status: Option<u16>,
    },
    /// It stands in, stale, for an origin that could not be reached.
    StaleIfUnreachable { fwd: Forward },
    /// Stored by another request while this one was at the origin, which failed; usable
    /// for this request as it is (fresh, or within its `max-stale`).
    StoredMeanwhile {
        fwd: Forward,
        fwd_status: Option<u16>,
    },
}

/// How an answer from an entry is counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Counted {
    /// A hit (or stale hit): the request's one outcome.
    Hit,
    /// Served from the cache after the request was counted as a revalidation: a hit in
    /// the snapshot, but no second outcome in `tower_memcache_requests_total`.
    AfterRevalidation,
    /// The layer's own background work: it answers nobody.
    Nobody,
}

impl Answered {
    pub(super) fn outcome(self, freshness: &Freshness) -> Outcome {
        // Only a stale or stood-in answer says its `ttl` (a fresh hit, the common case,
        // skips it).
        let ttl = || freshness.ttl();
        match self {
            Self::Near => Outcome::NearHit,
            Self::Lookup if freshness.is_fresh() => Outcome::Hit,
            Self::Lookup => Outcome::StaleHit {
                ttl: ttl(),
                detail: None,
            },
            Self::StaleIfError { fwd, fwd_status } => Outcome::StoodIn {
                fwd,
                fwd_status,
                ttl: ttl(),
                detail: Detail::StaleIfError,
            },
            Self::StoredMeanwhile { fwd, fwd_status } => Outcome::StoodIn {
                fwd,
                fwd_status,
                ttl: ttl(),
                detail: Detail::StoredMeanwhile,
            },
            Self::StaleIfUnreachable { fwd } => Outcome::StoodIn {
                fwd,
                fwd_status: None,
                ttl: ttl(),
                detail: Detail::OriginUnreachable,
            },
            Self::Collapsed(fwd) => Outcome::Forwarded {
                fwd,
                fwd_status: None,
                stored: false,
                collapsed: true,
                detail: None,
            },
            Self::Revalidated(fwd) => Outcome::Forwarded {
                fwd,
                fwd_status: Some(304),
                stored: false,
                collapsed: false,
                detail: None,
            },
        }
    }
}

impl<B: Backend> Shared<B> {
    /// Says what the cache did in `Cache-Status` (when the layer sends it), after the
    /// members of the caches nearer the origin (RFC 9211 §2: "the last member represents
    /// the cache closest to the user", and "caches SHOULD preserve the existing field
    /// value"). Members that do not parse as a Structured List are dropped: appended to,
    /// they would make ours unreadable too.
    pub(super) fn set_status<T>(&self, response: &mut Response<T>, outcome: Outcome) {
        let Some(value) = self
            .status
            .as_ref()
            .and_then(|status| status.value(outcome))
        else {
            return;
        };
        match response.headers_mut().entry(CACHE_STATUS) {
            http::header::Entry::Vacant(slot) => {
                slot.insert(value);
            }
            http::header::Entry::Occupied(mut slot) => {
                let joined = status::appended(slot.iter(), &value);
                slot.insert(joined.unwrap_or(value));
            }
        }
    }

    /// Answers from an entry, counted as a hit: the stored response, or a 304 when the
    /// client's own conditions hold (RFC 9110 §13.2.2). `freshness` is the entry's now, as
    /// the caller decided on it.
    pub(super) fn answer<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: &HeaderMap,
        is_head: bool,
        answered: Answered,
    ) -> Response<ResponseBody<ResBody>> {
        let counted = Counted::Hit;
        self.answer_counted(
            entry,
            freshness,
            request_headers,
            is_head,
            answered,
            counted,
        )
    }

    /// [`answer`](Self::answer) for a request that is done with: its field map, emptied,
    /// holds the response's fields: hyper hands each request the map of the previous
    /// response on its connection, so a hit then allocates no map of its own (over a KiB).
    pub(super) fn answer_taking<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: HeaderMap,
        is_head: bool,
        answered: Answered,
    ) -> Response<ResponseBody<ResBody>> {
        let fields = Cow::Owned(request_headers);
        self.answer_from(entry, freshness, fields, is_head, answered, Counted::Hit)
    }

    /// [`answer`](Self::answer), counted as `counted` says.
    pub(super) fn answer_counted<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: &HeaderMap,
        is_head: bool,
        answered: Answered,
        counted: Counted,
    ) -> Response<ResponseBody<ResBody>> {
        let fields = Cow::Borrowed(request_headers);
        self.answer_from(entry, freshness, fields, is_head, answered, counted)
    }

    fn answer_from<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        fields: Cow<'_, HeaderMap>,
        is_head: bool,
        answered: Answered,
        counted: Counted,
    ) -> Response<ResponseBody<ResBody>> {
        let meta = &entry.meta;
        let request_headers: &HeaderMap = &fields;
        // Only a request that may be answered 304 needs the stored headers as a map.
        let stored_headers = (meta.status == 200 && may_be_not_modified(request_headers))
            .then(|| header_map(meta))
            .filter(|map| not_modified(request_headers, map, stored::received_at(meta)));
        // Only a range request's fields are read once the response is built; otherwise an
        // owned map, emptied, holds the response's.
        let range_request = request_headers.contains_key(http::header::RANGE);
        let (map, fields) = match fields {
            Cow::Owned(mut map) if !range_request => {
                map.clear();
                (map, None)
            }
            fields => (HeaderMap::new(), Some(fields)),
        };
        let readers = match answered {
            Answered::Near => stored::Readers::Threads,
            _ => stored::Readers::One,
        };
        let mut response = stored::response(
            entry,
            is_head,
            stored_headers.as_ref(),
            freshness.age,
            readers,
            map,
        );
        // Built from the cache, not passed through from the origin: a range miss's whole
        // fill starts only for the origin's own 206. Only a range request can start one,
        // so only its answer is marked (a first extension allocates; a hit should not).
        if range_request {
            response.extensions_mut().insert(FromCache);
        }
        // A response the origin has just validated (its 304) is not served stale, however
        // short its lifetime (`max-age=0`, a stored `no-cache`).
        let stale = !freshness.is_fresh() && !matches!(answered, Answered::Revalidated(_));
        // §13.2.2: a `Range` applies once the other preconditions let the 200 through.
        let applies = range_request && !is_head && stored_headers.is_none() && meta.status == 200;
        let ranged = match fields {
            Some(fields) if applies => range::apply(&mut response, entry, &fields),
            _ => None,
        };
        self.set_status(&mut response, answered.outcome(freshness));
        let sent = if is_head || stored_headers.is_some() {
            0
        } else {
            ranged.unwrap_or(entry.body.len())
        };
        match counted {
            Counted::Hit => self.config.stats.record_hit(sent, stale),
            Counted::AfterRevalidation => self.config.stats.record_served(sent, stale),
            Counted::Nobody => {}
        }
        tracing::debug!(
            status = meta.status,
            bytes = sent,
            stale,
            "served from cache"
        );
        response
    }

    /// The freshness of an entry published by another request, if it may answer this one
    /// now. `validated`: its response was fetched after this request arrived, a validation
    /// made since, which satisfies the request's own `no-cache` and `max-age` (RFC 9111
    /// §5.2.1.1, §5.2.1.4); `min-fresh` and the response's freshness still rule, and so
    /// do the response's own `no-cache` or `must-revalidate`: those ask for each request
    /// to be forwarded (§5.2.2.4), so that the origin may judge it (a paywall answering
    /// each reader's cookie). Without it, a flood of `Pragma: no-cache` requests reached
    /// the origin once per request.
    pub(super) fn usable_now(
        &self,
        entry: &Entry,
        plan: &Plan,
        request_headers: &HeaderMap,
        validated: bool,
    ) -> Option<Freshness> {
        let meta = &entry.meta;
        if !stored::selects(meta, &plan.canonical, request_headers) {
            return None;
        }
        let freshness = stored::freshness(meta, now_ms());
        let usable = matches!(
            freshness.reuse(&plan.request_cc),
            Reuse::Fresh | Reuse::StaleAccepted
        ) || validated && {
            let mut relaxed = plan.request_cc.clone();
            relaxed.no_cache = false;
            relaxed.max_age = None;
            freshness.reuse(&relaxed) == Reuse::Fresh
        };
        usable.then_some(freshness)
    }
}

#[cfg(test)]
mod tests {
    use http::header::{self, HeaderValue};

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::shared::testing::{bare_entry, get, shared};

    #[test]
    fn an_answer_in_the_request_s_own_map_holds_the_response_s_fields_alone() {
        let shared = shared(&MemcacheLayer::new(MemoryBackend::new()));
        let mut entry = bare_entry();
        entry.meta.headers = vec![
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (header::ETAG, HeaderValue::from_static("\"v1\"")),
        ];
        let freshness = stored::freshness(&entry.meta, now_ms());
        let asks: [&[(&str, &str)]; 4] = [
            &[("accept", "*/*"), ("x-secret", "1"), ("age", "9")],
            &[("if-none-match", "\"v1\""), ("cookie", "a=b")],
            &[("range", "bytes=1-2"), ("x-secret", "1")],
            &[],
        ];
        for ask in asks {
            let mut request = get("/a");
            for (name, value) in ask {
                let value = HeaderValue::from_static(value);
                request.headers_mut().append(*name, value);
            }
            for is_head in [false, true] {
                let headers = request.headers();
                let fresh: Response<ResponseBody<()>> =
                    shared.answer(&entry, &freshness, headers, is_head, Answered::Near);
                let taking: Response<ResponseBody<()>> = shared.answer_taking(
                    &entry,
                    &freshness,
                    headers.clone(),
                    is_head,
                    Answered::Near,
                );
                assert_eq!(taking.status(), fresh.status(), "{ask:?}");
                assert_eq!(taking.headers(), fresh.headers(), "{ask:?}");
                assert!(!taking.headers().contains_key("x-secret"));
            }
        }
    }
}
