//! Filling the cache: the admission gate every write of an entry passes, the copy of a
//! response on its way to the client, and the store in the background.

pub(super) mod reader;

pub(crate) use reader::FillBudget;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self};
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;

use super::body::{ResponseBody, Tee, declared_size};
use super::coalesce::Filler;
use super::exchange::{Exchange, Plan, Sent};
use super::shared::Shared;
use super::status::Outcome;
use super::storage::{StoreOutcome, Target};
use super::stored::{Admission, backend_ttl};
use crate::backend::Backend;
use crate::cache::entry::{Entry, EntryMeta, MAX_FIELDS, MAX_SELECTING_FIELDS};
use crate::cache::policy::conditional::has_preconditions;
use crate::cache::policy::{A_IM, CacheControl, NotStorable};

/// Why a response, or a stored response refreshed by one, does not become an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A HEAD response has no body to store.
    Head,
    /// The request was not looked up (it has preconditions only the origin evaluates):
    /// nothing read before it went out guards a store.
    NotLookedUp,
    /// The backend is marked down: the write would fail.
    BackendUnavailable,
    /// The storing rules refuse it.
    Policy(NotStorable),
    /// A refresh names other selecting request headers than the stored response, whose
    /// values for them are unknown.
    VaryChanged,
    /// A response stored for an authenticated request lost the directives that let a
    /// shared cache keep it (RFC 9111 §3.5).
    NoLongerShareable,
    /// The response names tags the layer cannot all keep (too many, too long, not UTF-8):
    /// a purge of one left out would not reach the entry.
    TagsUnkept,
    /// More header fields than an entry holds ([`MAX_FIELDS`]): served, it would panic.
    TooManyFields,
    /// Varies on more request fields than an entry is selected by
    /// ([`MAX_SELECTING_FIELDS`]): each is read on every lookup.
    TooManySelectingFields,
    /// Nothing to reuse only because the request carried `Authorization`: RFC 9111 §3.5
    /// leaves its response no lifetime but its own, and it has none, where the route's
    /// would have kept the same response to a request without credentials.
    CredentialsLifetime,
}

impl Refusal {
    /// Whether the response itself is why (its directives, cookies or fields), so that the
    /// URL's next response is likely refused too: its requests stop waiting for each
    /// other (see `Passes`). Not what the request was (its method, credentials, range,
    /// conditions), a status (an error passes) or the backend.
    fn is_the_responses(self) -> bool {
        matches!(
            self,
            Self::Policy(
                NotStorable::Private
                    | NotStorable::NoStore
                    | NotStorable::NoCache
                    | NotStorable::SetCookie
                    | NotStorable::VaryStar
                    | NotStorable::ZeroLifetime
                    | NotStorable::LiveStream
            ) | Self::TagsUnkept
                | Self::TooManyFields
                | Self::TooManySelectingFields
        )
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Head => "a HEAD response has no body to store",
            Self::NotLookedUp => "the request was not looked up",
            Self::BackendUnavailable => "backend unavailable",
            Self::VaryChanged => "the refresh changes Vary",
            Self::NoLongerShareable => "authenticated and no longer shareable",
            Self::TagsUnkept => "tags that cannot all be kept",
            Self::TooManyFields => "more header fields than an entry holds",
            Self::TooManySelectingFields => "varies on more fields than an entry is selected by",
            Self::CredentialsLifetime => {
                "nothing to reuse for an authenticated request (no lifetime of its own)"
            }
            Self::Policy(NotStorable::Status) => "status not stored",
            Self::Policy(NotStorable::NoStore) => "no-store",
            Self::Policy(NotStorable::Private) => "private",
            Self::Policy(NotStorable::NoCache) => "no-cache without a validator",
            Self::Policy(NotStorable::SetCookie) => "sets a cookie",
            Self::Policy(NotStorable::Authorization) => "authenticated and not shareable",
            Self::Policy(NotStorable::VaryStar) => "Vary: *",
            Self::Policy(NotStorable::Partial) => "partial content",
            Self::Policy(NotStorable::LiveStream) => "a live stream",
            Self::Policy(NotStorable::ZeroLifetime) => {
                "nothing to reuse: no freshness, stale window or validator"
            }
        }
    }

    /// Whether a refused refresh leaves the stored entry unusable: the response now says
    /// it must not be stored. A refusal that comes from the refreshing request alone (its
    /// own `no-store`, its credentials, a backend that is down) leaves the entry as it was,
    /// so no client can evict what others use just by asking.
    pub(super) fn makes_entry_unusable(self, request_cc: &CacheControl) -> bool {
        match self {
            Self::Head | Self::NotLookedUp | Self::BackendUnavailable => false,
            Self::Policy(NotStorable::NoStore) => !request_cc.no_store,
            Self::Policy(NotStorable::Authorization) => false,
            Self::Policy(_)
            | Self::VaryChanged
            | Self::NoLongerShareable
            | Self::TagsUnkept
            | Self::TooManyFields
            | Self::TooManySelectingFields
            | Self::CredentialsLifetime => true,
        }
    }
}

/// A response shared with a flight but stored for nobody whose tags must be checked before
/// its followers may have it: the URL's primary key, the tags (with the generation a
/// refreshed entry was read under), and when the response's request went out.
pub(super) type SharedTags = (String, Vec<(String, Option<u64>)>, SystemTime, Instant);

impl<B: Backend> Shared<B> {
    /// What happens when a body shared but not stored (memcached cannot take it, or the
    /// request's `no-store`) is complete: the followers get it, each as its own request's
    /// answer (they joined before any purge this process started since the leader went
    /// out, or while memcached held what the leader's lookup saw; see
    /// `single_flight::Mark::admits`). `tagged`: a tagged response, whose tags no
    /// follower's lookup could check (see [`publish_shared`](Self::publish_shared)).
    fn share_on_complete(
        self: &Arc<Self>,
        meta: EntryMeta,
        filler: Filler<B>,
        tagged: Option<SharedTags>,
    ) -> super::body::OnComplete {
        let shared = Arc::clone(self);
        Box::new(move |body: Option<Bytes>| match body {
            Some(body) => {
                let entry = Arc::new(Entry { meta, body });
                match tagged {
                    Some(tagged) => shared.publish_shared(tagged, entry, filler),
                    None => filler.publish(Some((entry, None))),
                }
            }
            None => filler.publish(None),
        })
    }

    /// Hands a tagged response stored for nobody to the followers that may have it: those
    /// that joined before a read of its tags that shows none purged since its request
    /// went out, else only those that joined before it went out (see
    /// `Storage::share_cutoff`). Cut off at the request alone, the followers of a flood
    /// (which join while the leader's request is out) were each sent back to their
    /// lookups, and then to the origin (review RP).
    pub(super) fn publish_shared(
        self: &Arc<Self>,
        (key, tags, requested, sent): SharedTags,
        entry: Arc<Entry>,
        filler: Filler<B>,
    ) {
        let shared = Arc::clone(self);
        let published = self.config.background.spawn(async move {
            let cutoff = shared
                .storage
                .share_cutoff(&key, &tags, requested, sent)
                .await;
            filler.publish(Some((entry, Some(cutoff))));
        });
        if !published {
            // A body polled outside a tokio runtime: its followers go on their own.
            tracing::debug!("no tokio runtime to check the shared response's tags; skipped");
        }
    }

    pub(super) fn admission(
        &self,
        chosen: Duration,
        handler_override: bool,
        request_time: SystemTime,
        authenticated: bool,
    ) -> Admission<'_> {
        Admission {
            policy: self.policy(),
            chosen,
            handler_override,
            own_fields: &self.own_fields,
            request_time,
            response_time: SystemTime::now(),
            authenticated,
        }
    }

    /// Decides whether the inner service's response is stored, and sets it on its way.
    pub(super) fn on_response<ResBody>(
        self: &Arc<Self>,
        ex: &Exchange,
        sent: &Sent,
        mut response: Response<ResBody>,
        filler: Filler<B>,
    ) -> (Response<ResponseBody<ResBody>>, Option<Filler<B>>)
    where
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let (plan, request_headers) = (&ex.plan, &sent.request_headers);
        let tags = self.take_tags(&mut response);
        let (chosen, handler_override) = self.response_lifetime(&mut response, plan.lifetime);
        let authenticated = request_headers.contains_key(header::AUTHORIZATION);
        let admission = self.admission(chosen, handler_override, sent.request_time, authenticated);
        // Shared with the requests waiting for it, not stored: memcached is down, or its
        // lookup read no namespace generation (memcached hung), so no store can succeed.
        // A flight that could not read memcached still coalesces: its followers get the
        // response if it could have been stored (the same rules), or every request for a
        // hot URL would go to the origin while memcached is gone or hung, each follower
        // after waiting for the leader.
        let mut share_only = filler.leads_unguarded() && ex.found.generation.is_none();
        // A `no-store` request's response is stored for nobody, but shared with the
        // requests waiting for it (see `coordinate_idle`). Its followers may have joined
        // after a tag purge, which their lookups cannot show: a tagged response goes only
        // to those that joined before a read of its tags shows none purged since its
        // request went out (see `publish_shared`), as a store's does.
        let no_store_share = plan.request_cc.no_store && filler.leader.is_some();
        share_only |= no_store_share;
        let share_tags = tags
            .as_ref()
            .filter(|tags| no_store_share && !tags.is_empty())
            .map(|tags| {
                let tags = tags.iter().map(|tag| (tag.clone(), None)).collect();
                (plan.key.clone(), tags, sent.request_time, sent.sent_at)
            });
        let decision = if ex.is_head {
            Err(Refusal::Head)
        } else if !plan.from_cache {
            Err(Refusal::NotLookedUp)
        } else if tags.is_none() {
            Err(Refusal::TagsUnkept)
        } else {
            let (status, headers) = (response.status(), response.headers());
            let admit = |to_backend| {
                let vary = self.vary_values(request_headers, headers);
                let admission = &admission;
                self.admit(
                    plan,
                    request_headers,
                    status,
                    headers,
                    vary,
                    admission,
                    to_backend,
                )
            };
            match admit(!share_only) {
                Err(Refusal::BackendUnavailable) if filler.leads_unguarded() => {
                    share_only = true;
                    admit(false)
                }
                decision => decision,
            }
        };
        let (tee, unused) = match decision {
            Ok((meta, _)) if share_only => {
                let on_stall = filler.on_stall();
                let on_complete = self.share_on_complete(meta, filler, share_tags);
                // Whole bodies only, as for a store: followers take it as complete.
                let declared = declared_size(
                    response.status(),
                    response.headers(),
                    response.body().size_hint(),
                );
                let tee = Tee::new(self.storable_body_size(), declared.as_ref(), on_complete)
                    .map(|tee| tee.on_stall(on_stall));
                (tee, None)
            }
            Ok((meta, ttl)) => {
                // Storable again: its requests wait for each other again.
                self.config
                    .passes
                    .forget(|| self.flight_key(ex, request_headers));
                let to = filler.target(ex, sent);
                let tags = tags.unwrap_or_default();
                let on_stall = filler.on_stall();
                let on_complete = self.store_on_complete(to, meta, tags, ttl, filler);
                let declared = declared_size(
                    response.status(),
                    response.headers(),
                    response.body().size_hint(),
                );
                let tee = Tee::new(self.storable_body_size(), declared.as_ref(), on_complete)
                    .map(|tee| tee.on_stall(on_stall));
                (tee, None)
            }
            Err(refusal) => {
                tracing::debug!(key = %plan.key, status = %response.status(), reason = refusal.reason(), "response not stored");
                let mut filler = filler;
                // Refused only for what this request was: the requests waiting for it
                // that are unlike it elect another leader rather than all going at once.
                let status = response.status();
                match refusal {
                    Refusal::Policy(NotStorable::Authorization) | Refusal::CredentialsLifetime => {
                        filler.decline(true);
                    }
                    // A part or a delta (`A-IM`) asked for: another request gets the whole.
                    Refusal::Policy(NotStorable::Partial)
                        if request_headers.contains_key(header::RANGE)
                            || request_headers.contains_key(A_IM) =>
                    {
                        filler.decline(false);
                    }
                    Refusal::Policy(NotStorable::Status)
                        if status == StatusCode::NOT_MODIFIED
                            && has_preconditions(request_headers) =>
                    {
                        filler.decline(false);
                    }
                    _ => {}
                }
                // A `no-store` refusal may be the request's own directive.
                let requests_own = matches!(refusal, Refusal::Policy(NotStorable::NoStore))
                    && plan.request_cc.no_store;
                if refusal.is_the_responses() && !requests_own {
                    self.config
                        .passes
                        .remember(&self.flight_key(ex, request_headers));
                }
                (None, Some(filler))
            }
        };
        // RFC 9211 §2.5: `stored` says the response was stored, yet the header goes out
        // before the body is read. Claimed only when storing is certain now but for what
        // this client would see fail too (or the write): a body of unknown length may
        // outgrow the limit, and one may end with trailers (announced by `Trailer`, or
        // framed chunked), which abandon the store.
        let certain = tee.as_ref().is_some_and(Tee::length_declared)
            && !response.headers().contains_key(header::TRAILER);
        let outcome = Outcome::Forwarded {
            fwd: ex.fwd,
            fwd_status: None,
            stored: certain && !share_only,
            collapsed: false,
            detail: ex.detail,
        };
        self.set_status(&mut response, outcome);
        (
            response.map(|body| {
                ResponseBody::teeing(body, tee, &self.config.fill_budget, &self.config.background)
            }),
            unused,
        )
    }

    /// The largest body worth copying: the layer's entry size limit, or less when the
    /// backend's item size limit (learnt from the servers) leaves less room, so a body
    /// memcached would refuse is neither buffered nor sent.
    pub(super) fn storable_body_size(&self) -> usize {
        // Room for the key and the entry's metadata (status, headers, times).
        const ENVELOPE: usize = crate::backend::MAX_KEY_LEN + crate::backend::ITEM_OVERHEAD + 8192;
        let backend = self.config.backend.item_size_limit();
        self.config
            .max_entry_size
            .min(backend.saturating_sub(ENVELOPE))
    }

    /// The admission gate: every write of an entry passes here, judged on the header set
    /// it would store (a first response, or a stored one merged with a 304 or HEAD
    /// response), for the backend (`to_backend`) or only for the requests waiting for it
    /// in this process (memcached cannot take it, or the request's own `no-store`).
    /// Admitted, the entry's metadata and backend lifetime.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit(
        &self,
        plan: &Plan,
        request_headers: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        vary: Vec<(String, Option<String>)>,
        admission: &Admission<'_>,
        to_backend: bool,
    ) -> Result<(EntryMeta, Duration), Refusal> {
        let routes_mode = self.policy().mode() == crate::cache::policy::CacheMode::Routes;
        if admission.chosen.is_zero() && (admission.handler_override || routes_mode) {
            return Err(Refusal::Policy(NotStorable::ZeroLifetime));
        }
        if to_backend && !self.config.backend.is_available(&plan.key) {
            return Err(Refusal::BackendUnavailable);
        }
        // RFC 9213: a targeted field on the policy's list rules instead of Cache-Control
        // and Expires.
        let ruling = self.policy().response_directives(headers);
        // Shared only with the requests waiting for it: the request's own `no-store`
        // forbids storing its response (RFC 9111 §5.2.1.5), not handing it to others
        // who asked alike, for whom it is judged as if stored.
        let shared_only;
        let request_cc = if to_backend || !plan.request_cc.no_store {
            &plan.request_cc
        } else {
            let mut cc = plan.request_cc.clone();
            cc.no_store = false;
            shared_only = cc;
            &shared_only
        };
        self.policy()
            .storable(
                request_headers,
                request_cc,
                status,
                &ruling.headers,
                &ruling.cc,
            )
            .map_err(|reason| {
                if let Some(field) = &ruling.target {
                    tracing::debug!(key = %plan.key, %field, ?reason, "not stored, as the targeted field says");
                }
                Refusal::Policy(reason)
            })?;
        let meta = admission.meta(plan.canonical.clone(), status, headers, vary);
        if meta.headers.len() > MAX_FIELDS {
            return Err(Refusal::TooManyFields);
        }
        if meta.vary.len() > MAX_SELECTING_FIELDS {
            return Err(Refusal::TooManySelectingFields);
        }
        let ttl = |meta: &EntryMeta| {
            backend_ttl(
                meta,
                self.config.keep_stale,
                self.config.stale_if_unreachable,
            )
        };
        let kept = ttl(&meta);
        if kept.is_zero() {
            // §3.5's limit on an authenticated request's response may be all that left it
            // nothing: that is the request's doing, not the response's (a made-up
            // `Authorization` must not get the URL remembered as never stored, nor send
            // the leader's followers to the origin one each; see `on_response`).
            let anonymous = Admission {
                authenticated: false,
                ..*admission
            };
            if admission.authenticated
                && !ttl(&anonymous.meta(
                    meta.canonical_key.clone(),
                    status,
                    headers,
                    meta.vary.clone(),
                ))
                .is_zero()
            {
                return Err(Refusal::CredentialsLifetime);
            }
            return Err(Refusal::Policy(NotStorable::ZeroLifetime));
        }
        Ok((meta, kept))
    }

    /// What happens when a stored body is complete: followers get the entry at once, and
    /// the backend gets it in the background.
    pub(super) fn store_on_complete(
        self: &Arc<Self>,
        to: Target,
        meta: EntryMeta,
        tags: Vec<String>,
        ttl: Duration,
        filler: Filler<B>,
    ) -> super::body::OnComplete {
        let shared = Arc::clone(self);
        Box::new(move |body: Option<Bytes>| match body {
            Some(body) => {
                let entry = Arc::new(Entry { meta, body });
                shared.store_in_background(to, tags, entry, ttl, filler);
            }
            // Not storable after all: the followers go on their own (they would get the
            // same), and the placeholder is released in the background.
            None => filler.publish(None),
        })
    }

    /// Writes `entry` to the backend in the background, then publishes it to this
    /// process's followers (those that joined before a purge that overtook it) and ends
    /// the flight, so later requests find it stored. `tags` are the response's (none: the
    /// entry keeps the tags it has, which must still be current).
    pub(super) fn store_in_background(
        self: &Arc<Self>,
        to: Target,
        tags: Vec<String>,
        entry: Arc<Entry>,
        ttl: Duration,
        filler: Filler<B>,
    ) {
        let shared = Arc::clone(self);
        let stored = self.config.background.spawn(async move {
            let (outcome, cutoff) = shared.store(&to, &tags, &entry, ttl).await;
            filler.publish(Some((entry, cutoff)));
            if outcome == StoreOutcome::Stored {
                filler.fulfilled();
            }
        });
        if !stored {
            // A body polled outside a tokio runtime cannot be stored in the background.
            tracing::debug!("no tokio runtime to store the entry; skipped");
        }
    }

    pub(super) async fn store(
        &self,
        to: &Target,
        tags: &[String],
        entry: &Entry,
        ttl: Duration,
    ) -> (StoreOutcome, Option<Instant>) {
        let stats = &self.config.stats;
        let key = &to.key;
        let (outcome, cutoff) = self
            .storage
            .store(to, &entry.meta, &entry.body, tags, ttl)
            .await;
        match outcome {
            StoreOutcome::Stored => {
                stats.record_store();
                tracing::debug!(%key, bytes = entry.body.len(), ?ttl, "response stored");
            }
            StoreOutcome::Superseded { .. } | StoreOutcome::Overtaken => {
                tracing::debug!(%key, "response not stored: the URL was purged or refilled since its request went out");
            }
            StoreOutcome::Failed => stats.record_store_failure(),
        }
        (outcome, cutoff)
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Response, StatusCode};
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::coalesce::{Coordinated, Waiting};
    use crate::cache::exchange::Sent;
    use crate::cache::shared::testing::{exchange_for, get, shared, stored_entry};

    fn sent() -> Sent {
        Sent {
            request_headers: HeaderMap::new(),
            request_time: std::time::SystemTime::now(),
            sent_at: std::time::Instant::now(),
        }
    }

    fn response(fields: &[(&'static str, &'static str)]) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(b"page")));
        for (name, value) in fields {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        response
    }

    #[tokio::test]
    async fn the_gate_refuses_what_a_shared_cache_must_not_store() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let ex = exchange_for(&shared, &get("http://site.example/x")).await;
        let sent = sent();
        let admission = shared.admission(Duration::from_secs(60), false, sent.request_time, false);
        let verdict = |fields: &[(&'static str, &'static str)]| {
            let response = response(fields);
            let (status, headers) = (response.status(), response.headers());
            shared
                .admit(
                    &ex.plan,
                    &sent.request_headers,
                    status,
                    headers,
                    Vec::new(),
                    &admission,
                    true,
                )
                .map(|_| ())
        };
        assert_eq!(verdict(&[]), Ok(()));
        for (fields, refusal) in [
            (&[("cache-control", "private")][..], NotStorable::Private),
            (&[("cache-control", "no-store")][..], NotStorable::NoStore),
            (&[("set-cookie", "sid=1")][..], NotStorable::SetCookie),
            (&[("vary", "*")][..], NotStorable::VaryStar),
            (
                &[("content-range", "bytes 0-1/4")][..],
                NotStorable::Partial,
            ),
        ] {
            assert_eq!(verdict(fields), Err(Refusal::Policy(refusal)));
        }
        let zero = shared.admission(Duration::ZERO, false, sent.request_time, false);
        let response = response(&[]);
        let refused = shared.admit(
            &ex.plan,
            &sent.request_headers,
            StatusCode::OK,
            response.headers(),
            Vec::new(),
            &zero,
            true,
        );
        assert!(matches!(
            refused,
            Err(Refusal::Policy(NotStorable::ZeroLifetime))
        ));
    }

    #[tokio::test]
    async fn a_stored_response_never_keeps_its_cookie() {
        let layer = MemcacheLayer::new(MemoryBackend::new()).store_set_cookie(true);
        let shared = shared(&layer);
        let request = get("http://site.example/c");
        let ex = exchange_for(&shared, &request).await;
        let response = response(&[("set-cookie", "sid=A"), ("x-kept", "1")]);
        let Coordinated::Go(filler) = shared
            .coordinate(&ex, request.headers(), false, &mut Waiting::default())
            .await
        else {
            panic!("a miss goes to the origin")
        };
        assert!(filler.lease.is_some(), "with a placeholder in place");
        let (response, unused) = shared.on_response(&ex, &sent(), response, filler);
        assert!(unused.is_none(), "stored");
        // The client that asked still gets its cookie.
        assert_eq!(response.headers()["set-cookie"], "sid=A");
        response.into_body().collect().await.unwrap();
        layer.background().idle().await;
        let entry = stored_entry(&shared, &request).await.expect("stored");
        let names: Vec<_> = entry.meta.headers.iter().map(|(n, _)| n.as_str()).collect();
        // `date`: the response had none, so it is dated when received (RFC 9110 §6.6.1).
        assert_eq!(names, ["x-kept", "date"]);
    }

    /// Review RO's judging of an entry read back runs only for entries another layer's
    /// settings admitted: each entry carries the number of the settings that stored it,
    /// and settings that judge otherwise have another.
    #[tokio::test]
    async fn an_entry_carries_the_settings_that_admitted_it() {
        use crate::cache::shared::testing::{entry, put};
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/judged");
        let ex = exchange_for(&shared, &request).await;
        put(&shared, &request, &entry(&ex, &[])).await;
        let stored = stored_entry(&shared, &request).await.expect("stored");
        assert_eq!(stored.meta.judged_by, shared.storage.reader());
        assert_ne!(stored.meta.judged_by, 0);
        let narrower = super::super::shared::testing::shared(
            &MemcacheLayer::new(MemoryBackend::new()).statuses([200]),
        );
        assert_ne!(narrower.storage.reader(), shared.storage.reader());
        let alike =
            super::super::shared::testing::shared(&MemcacheLayer::new(MemoryBackend::new()));
        assert_eq!(alike.storage.reader(), shared.storage.reader());
    }
}
