//! The exchange with the origin when nothing fresh is stored: a conditional request when
//! a stored response can be revalidated, a 304 or HEAD refreshing it (through the
//! admission gate), stale responses standing in for a failed origin, and background
//! refreshes (RFC 5861).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::OriginUnreachable;
use super::answer::{Answered, Counted};
use super::body::ResponseBody;
use super::coalesce::Filler;
use super::exchange::{Exchange, Sent};
use super::fill::Refusal;
use super::own_request::{RequestHead, own_body};
use super::shared::Shared;
use super::status::{Detail, Outcome};
use super::storage::Lookup;
use super::stored::{self, header_map, now_ms};
use crate::backend::Backend;
use crate::cache::entry::{Entry, MAX_FIELDS};
use crate::cache::policy::A_IM;
use crate::cache::policy::conditional::{
    add_validators, has_preconditions, has_validators, names_another_representation,
    same_representation, selects_for_update,
};
use crate::cache::policy::freshness::Reuse;
use crate::cache::policy::is_hop_by_hop;
use crate::cache::policy::{NotStorable, PER_CLIENT_FIELDS};
use crate::cache::stats::CacheStats;

impl<B: Backend> Shared<B> {
    /// §4.3.4, §4.3.5: `entry` refreshed by a 304 or a HEAD response (its fields, its
    /// lifetime, new tags if it names any). The merged response passes the admission gate
    /// like a first store: admitted, it is published and put back in the background;
    /// refused for what the response now says (`private`, `no-store`, a new `Vary`, …)
    /// the stored entry is removed; refused for what this request says (its own
    /// `no-store`, `Authorization`) the stored entry is left as it was (and a `no-store`
    /// leader's followers get the refreshed entry all the same). Returns the refreshed
    /// entry, to answer this request with.
    pub(super) async fn refresh<T>(
        self: &Arc<Self>,
        ex: &Exchange,
        sent: &Sent,
        entry: &Entry,
        response: &mut Response<T>,
        filler: Filler<B>,
    ) -> Arc<Entry> {
        let (plan, request_headers) = (&ex.plan, &sent.request_headers);
        let tags = self.take_tags(response);
        let (chosen, handler_override) = self.response_lifetime(response, plan.lifetime);
        // Only the stored response's own history marks it authenticated: a refreshing
        // request's credentials (which anyone can make up) must not change how long
        // everyone else may reuse it.
        let admission = self.admission(
            chosen,
            handler_override,
            sent.request_time,
            entry.meta.authenticated,
        );
        let merged = admission.merged_headers(entry, response.headers());
        let refreshed = Arc::new(admission.refreshed(entry, &merged));
        let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        // A `no-store` request leading a flight of such requests (see `coordinate_idle`):
        // its refreshed response is stored for nobody, but handed to them as a new
        // response would be (see `Shared::on_response`). Refused for the backend by the
        // leader's own `no-store`, it went to nobody: each follower then asked the origin
        // on its own, and a flood of them cost a call per request again (review RP).
        let shares = plan.request_cc.no_store && filler.leader.is_some();
        // The refresh may not change which request headers select the response: the stored
        // one's values for any new name are unknown.
        let same_selection =
            self.selecting_names(&merged)
                .iter()
                .eq(entry.meta.vary.iter().map(|(name, _)| name));
        let verdict =
            if request_headers.contains_key(header::AUTHORIZATION) && !entry.meta.authenticated {
                // The merged response would answer an authenticated request now; leave the
                // stored one as it was.
                Err(Refusal::Policy(NotStorable::Authorization))
            } else if entry.meta.authenticated
                && !self
                    .policy()
                    .response_directives(&merged)
                    .cc
                    .allows_authenticated()
            {
                // §3.5 for an entry first stored for an authenticated request, whoever
                // refreshes it now.
                Err(Refusal::NoLongerShareable)
            } else if tags.is_none() {
                Err(Refusal::TagsUnkept)
            } else if same_selection {
                self.admit(
                    plan,
                    request_headers,
                    status,
                    &merged,
                    entry.meta.vary.clone(),
                    &admission,
                    !shares,
                )
            } else {
                Err(Refusal::VaryChanged)
            };
        match verdict {
            Ok(_) if shares => {
                // Its followers may have joined after a tag purge, which their lookups
                // cannot show (the item is unchanged): a tagged response (the stored tags
                // it keeps, at the generations read with it, or the 304's) goes only to
                // those that joined before a read shows none purged since (see
                // `publish_shared`), as a store's does.
                let mut checked: Vec<(String, Option<u64>)> = refreshed
                    .meta
                    .tags
                    .iter()
                    .map(|(tag, kept)| (tag.clone(), Some(*kept)))
                    .collect();
                for tag in tags.iter().flatten() {
                    if !checked.iter().any(|(kept, _)| kept == tag) {
                        checked.push((tag.clone(), None));
                    }
                }
                tracing::debug!(key = %plan.key, "refreshed response shared with the no-store flight, not stored");
                if checked.is_empty() {
                    filler.publish(Some((Arc::clone(&refreshed), None)));
                } else {
                    let tagged = (plan.key.clone(), checked, sent.request_time, sent.sent_at);
                    self.publish_shared(tagged, Arc::clone(&refreshed), filler);
                }
            }
            Ok((_, ttl)) => {
                // Storable again, as a first response admitted is (see `on_response`): its
                // requests wait for each other again.
                self.config
                    .passes
                    .forget(|| self.flight_key(ex, request_headers));
                let to = filler.target(ex, sent);
                let tags = tags.unwrap_or_default();
                self.store_in_background(to, tags, Arc::clone(&refreshed), ttl, filler);
            }
            Err(refusal) => {
                tracing::debug!(key = %plan.key, reason = refusal.reason(), "refreshed response not stored");
                if refusal.makes_entry_unusable(&plan.request_cc) {
                    if let Err(err) = self.storage.invalidate(&plan.key).await {
                        tracing::debug!(key = %plan.key, error = %err, "unstorable entry not removed");
                    }
                }
                let mut filler = filler;
                if refusal == Refusal::Policy(NotStorable::Authorization) {
                    // Refused only for this request's credentials, as a full answer to
                    // them is (see `Shared::on_response`): its followers without any elect
                    // another leader. Ended with nothing, each went to the origin on its
                    // own, so one made-up `Authorization` ahead of a burst of reloads cost
                    // an origin call per reload (review RP).
                    filler.decline(true);
                }
                filler.release().await;
            }
        }
        if refreshed.meta.headers.len() > MAX_FIELDS {
            // Refused above, and removed: too many fields for a response to be made from
            // (see `MAX_FIELDS`). This request gets the stored fields, which the 304
            // confirmed, rather than a panic.
            return Arc::new(admission.refreshed(entry, &header_map(&entry.meta)));
        }
        refreshed
    }
}

/// What memcached holds for the request now, for it to stand in for a failing origin: the
/// stale entry the exchange's lookup found, or what replaced it meanwhile. Read again
/// because the origin was asked in between, and a purge that returned meanwhile must hold
/// (a request that went out before it must not answer with what it removed): what the
/// read finds is what any lookup would answer with now, stored after such a purge or
/// untouched by it. Another process's refresh of the URL (no purge) leaves a newer
/// response, as good a stand-in: wanting the very entry first read answered the origin's
/// failure instead. Only a request whose lookup found an entry (a revalidation) stands
/// in. When memcached cannot be read, nothing is known to be held, and nothing stands in
/// (a backend failure is a miss, as it is for the lookup: the origin's answer passes). A
/// purge that returned took memcached's answer, and an unreadable server (dead since, or
/// slowed past the timeout, maybe on purpose) must not make up for it. With the entry,
/// whether it replaced the one first read.
async fn held_now<B: Backend>(
    shared: &Shared<B>,
    ex: &Exchange,
    request_headers: &http::HeaderMap,
) -> Option<(Arc<Entry>, bool)> {
    ex.found.entry.as_ref()?;
    let plan = &ex.plan;
    match shared
        .storage
        .lookup(&plan.canonical, &plan.key, request_headers)
        .await
    {
        Lookup::Found(found) => {
            let replaced = found.slot != ex.found.slot || found.generation != ex.found.generation;
            match &found.entry {
                None => {
                    tracing::debug!(key = %plan.key, "the stale entry was purged while the origin was asked; not stood in");
                }
                Some(_) if replaced => {
                    tracing::debug!(key = %plan.key, "the stale entry was replaced while the origin was asked; the replacement may stand in");
                }
                Some(_) => {}
            }
            found.entry.map(|entry| (entry, replaced))
        }
        Lookup::Unavailable => {
            tracing::debug!(key = %plan.key, "memcached unreadable: whether the stale entry was purged is unknown; not stood in");
            None
        }
    }
}

/// Sends the request to the inner service (conditionally, when a stored response can be
/// revalidated) and turns its answer into the client's: a refreshed entry on 304, the
/// stale entry when the origin fails and that is allowed, or the new response on its way
/// into the cache.
pub(super) async fn exchange<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    mut inner: S,
    mut request: Request<ReqBody>,
    ex: &Exchange,
    filler: Filler<B>,
    caller: For,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
    ReqBody: 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let stats = &shared.config.stats;
    let (plan, is_head, fwd, detail) = (&ex.plan, ex.is_head, ex.fwd, ex.detail);
    let request_headers = request.headers().clone();
    let stale = ex.found.entry.clone();
    let stored_headers = stale.as_ref().map(|entry| header_map(&entry.meta));
    let ours = match &stored_headers {
        Some(stored) if !has_preconditions(&request_headers) => {
            add_validators(request.headers_mut(), stored)
        }
        _ => false,
    };
    if ours {
        // RFC 3229: a client's `A-IM` beside the cache's `If-None-Match` asks for a delta
        // (a 226) against the cache's instance, which the client does not hold and the
        // cache never stores. Without it the answer is a 304 or the whole page.
        request.headers_mut().remove(A_IM);
    }
    // A client's request is counted once, as a miss or a revalidation, whatever comes of
    // it. The layer's own exchanges (a background refresh, a range miss's whole fetch) were
    // counted with the request they run for; a refresh is still a conditional request sent.
    match (stale.is_some(), caller) {
        (true, For::Client) => stats.record_revalidation(),
        (true, For::Background) => stats.record_background_revalidation(),
        (false, For::Client) => stats.record_miss(),
        (false, For::Background) => {}
    }
    let counted = match caller {
        For::Client => Counted::AfterRevalidation,
        For::Background => Counted::Nobody,
    };
    // A client's revalidation ends as a hit (answered from the stored response) or, on
    // every other way out, errors and a client gone included, as a miss.
    let tally = Tally {
        stats: (stale.is_some() && caller == For::Client).then_some(stats),
        served: AtomicBool::new(false),
    };
    tracing::debug!(key = %plan.key, revalidating = stale.is_some(), conditional = ours, "calling the inner service");
    let sent = Sent {
        request_headers,
        request_time: SystemTime::now(),
        sent_at: std::time::Instant::now(),
    };
    let request_headers = &sent.request_headers;
    // What sending the client's request again takes, should the origin answer the cache's
    // validators with a 304 for another representation (below). Only for a client: the
    // layer's own exchanges (a stale-while-revalidate refresh, a range miss's whole fetch)
    // read only what they store, and the answer to a request sent again is not stored.
    let resend = (ours && caller == For::Client).then(|| RequestHead::of(&request));
    let outcome = inner.call(request).await;
    // `held`: what memcached holds for the request once the origin failed (see
    // `held_now`): the stale entry, or what replaced it (`true`); nothing once purged.
    // `fwd_status`: what the origin answered, when it answered (not a gateway's own
    // error for an origin it could not reach), said in `Cache-Status`.
    let stale_fallback = |unreachable: bool,
                          held: Option<(Arc<Entry>, bool)>,
                          fwd_status: Option<u16>| {
        let entry = stale.as_ref()?;
        if let Some((held, replaced)) = &held {
            let freshness = stored::freshness(&held.meta, now_ms());
            let reuse = freshness.reuse(&plan.request_cc);
            let answered = if *replaced && matches!(reuse, Reuse::Fresh | Reuse::StaleAccepted) {
                // Stored meanwhile (another process's refresh or fill) and good for this
                // request as it is, as any lookup now would answer it: no stale window
                // needed. (The entry first read never is: it sent the request forward,
                // and it only ages.)
                tracing::debug!(key = %plan.key, "a response stored while the origin was asked answers its failure");
                Some(Answered::StoredMeanwhile { fwd, fwd_status })
            } else if freshness.usable_on_error(&plan.request_cc) {
                Some(Answered::StaleIfError { fwd, fwd_status })
            } else {
                let bound = shared.config.stale_if_unreachable.filter(|_| unreachable);
                bound
                    .filter(|bound| freshness.usable_when_unreachable(&plan.request_cc, *bound))
                    .map(|_| {
                        tracing::debug!(key = %plan.key, "origin unreachable: stale entry served");
                        Answered::StaleIfUnreachable { fwd }
                    })
            };
            if let Some(answered) = answered {
                tally.served();
                // What it is: an answer from the cache (a hit in the snapshot), but no
                // validation; told apart for operators (an origin failing, hits holding).
                if caller == For::Client {
                    stats.record_stood_in();
                }
                return Some(shared.answer_counted(
                    held,
                    &freshness,
                    request_headers,
                    is_head,
                    answered,
                    counted,
                ));
            }
        }
        // Nothing stands in: a `must-revalidate` entry its lookup found answers 504.
        let freshness = stored::freshness(&entry.meta, now_ms());
        if unreachable && freshness.forbids_stale {
            let mut response = stored::gateway_timeout(is_head);
            // Why it went forward: stale, or fresh but the request asked (`no-cache`).
            let outcome = Outcome::forwarded(fwd, Some(Detail::MustRevalidate));
            shared.set_status(&mut response, outcome);
            return Some(response);
        }
        None
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(key = %plan.key, "inner service failed");
            // Something was learnt, as from a 5xx: the followers go on their own now.
            // Dropped without a word, they took it for a client gone and elected one
            // leader after another, each waiting out the failure in turn (an inner
            // timeout's, three rounds over).
            filler.release().await;
            let held = held_now(shared, ex, request_headers).await;
            return match stale_fallback(true, held, None) {
                Some(response) => Ok(response),
                None => Err(err),
            };
        }
    };
    let unreachable = response.extensions().get::<OriginUnreachable>().is_some();
    let failed = unreachable || matches!(response.status().as_u16(), 500 | 502 | 503 | 504);
    if failed {
        let held = held_now(shared, ex, request_headers).await;
        let fwd_status = (!unreachable).then(|| response.status().as_u16());
        if let Some(fallback) = stale_fallback(unreachable, held, fwd_status) {
            // As for an inner service error above: the followers go on their own now,
            // rather than take this for a client gone and wait out the failure in turn.
            filler.release().await;
            return Ok(fallback);
        }
        if stale.is_some() {
            // §4.3.3: a 5xx to a revalidation may be treated as no answer. It passes to
            // the client, and the stored response stays for later requests (and their
            // stale-if-error) instead of being replaced by an error page.
            tracing::debug!(key = %plan.key, status = %response.status(), "origin failed a revalidation; stored response kept");
            filler.release().await;
            shared.drop_own_fields(&mut response);
            let mut passed = response.map(ResponseBody::passthrough);
            shared.set_status(&mut passed, Outcome::forwarded(fwd, detail));
            return Ok(passed);
        }
    }
    if let (Some(entry), Some(stored)) = (&stale, &stored_headers) {
        let status = response.status();
        // §4.3.4: a 304 naming another representation than the one whose validators the
        // cache sent updates nothing ("MUST NOT use the new response to update any stored
        // responses"): relabelled, the stored body would go out under the new ETag. The
        // stored one is no longer current: removed, so the next request fetches the whole.
        // The client asked without conditions (the validators were the cache's), so a 304
        // is no answer to it: its request goes to the origin once more, as it came, and the
        // origin's answer passes to it unstored (the next request fills). Only when that
        // cannot be done (no request body of the inner service's type), or the origin
        // answers 304 again, does the client get a 502 it can retry: a 304 to a request
        // without conditions is an invalid response.
        let another = status == StatusCode::NOT_MODIFIED
            && ours
            && names_another_representation(response.headers(), stored);
        if another {
            tracing::debug!(key = %plan.key, "304 for another representation; stored response removed");
            stats.record_mismatched_not_modified();
            if let Err(err) = shared.storage.invalidate(&plan.key).await {
                tracing::debug!(key = %plan.key, error = %err, "superseded entry not removed");
            }
            filler.release().await;
            drop(response);
            let body = own_body::<ReqBody>(shared.config.own_request_body.as_ref());
            let answer = match resend.zip(body) {
                Some((resend, body)) => {
                    let again = resend.into_request(body, request_headers.clone());
                    futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    tracing::debug!(key = %plan.key, "the request sent again without the cache's validators");
                    Some(inner.call(again).await?)
                }
                None => None,
            };
            let mut outcome = Outcome::forwarded(fwd, detail);
            if let Outcome::Forwarded { fwd_status, .. } = &mut outcome {
                *fwd_status = Some(answer.as_ref().map_or(304, |a| a.status().as_u16()));
            }
            let mut answer = match answer {
                Some(mut answer) if answer.status() != StatusCode::NOT_MODIFIED => {
                    shared.drop_own_fields(&mut answer);
                    answer.map(ResponseBody::passthrough)
                }
                _ => stored::bad_gateway(is_head),
            };
            shared.set_status(&mut answer, outcome);
            return Ok(answer);
        }
        // A 304 to the client's own condition refreshes the stored response it selects
        // (§4.3.4, see `selects_for_update`: never one a validator-less 304 says nothing
        // of, as to `If-None-Match: *`, which would date an old body anew). Either way
        // it passes to its client.
        if status == StatusCode::NOT_MODIFIED
            && (ours || selects_for_update(response.headers(), stored, request_headers))
        {
            // §4.3.4: the stored response is still good; refresh its headers and lifetime.
            let refreshed = shared
                .refresh(ex, &sent, entry, &mut response, filler)
                .await;
            tracing::debug!(key = %plan.key, "revalidated: 304 refreshed the stored response");
            let answered = Answered::Revalidated(fwd);
            if ours {
                tally.served();
                let freshness = stored::freshness(&refreshed.meta, now_ms());
                let headers = request_headers;
                let mut answer = shared
                    .answer_counted(&refreshed, &freshness, headers, is_head, answered, counted);
                // The cookies the origin set in its 304, and its answer to this request's
                // credentials, are this client's, never stored (a cookie the operator
                // shares is in the refreshed entry already).
                for name in &PER_CLIENT_FIELDS {
                    if answer.headers().contains_key(name) {
                        continue;
                    }
                    for value in response.headers().get_all(name) {
                        answer.headers_mut().append(name.clone(), value.clone());
                    }
                }
                // And its `Negotiate` token, when the entry keeps none (see
                // `answers_credentials`).
                let challenge = header::WWW_AUTHENTICATE;
                if request_headers.contains_key(header::AUTHORIZATION)
                    && !answer.headers().contains_key(&challenge)
                {
                    for value in response.headers().get_all(&challenge) {
                        answer
                            .headers_mut()
                            .append(challenge.clone(), value.clone());
                    }
                }
                // So are the fields the stored response's own `private="…"` /
                // `no-cache="…"` keep out (see `merged_headers`), and those the 304's own
                // lists keep out (left out of the merge): not stored, but the 304 that
                // carried them answered this request. Never the 304's framing or
                // connection fields, nor the origin's words to the cache, whatever the
                // lists name: a `Content-Length: 1` appended to the stored body's 200
                // framed it short (the rest read as the next response on the connection).
                let stored_fields = header_map(&entry.meta);
                let stored_ruling = shared.policy().response_directives(&stored_fields);
                let (private, no_cache) = stored_ruling.kept_out_fields();
                let own_ruling = shared.policy().response_directives(response.headers());
                let (own_private, own_no_cache) = own_ruling.kept_out_fields();
                let named = private.iter().chain(&no_cache);
                for field in named.chain(&own_private).chain(&own_no_cache) {
                    let Ok(name) = http::HeaderName::from_bytes(field.as_bytes()) else {
                        continue;
                    };
                    if answer.headers().contains_key(&name)
                        || name == header::CONTENT_LENGTH
                        || name == header::CONTENT_RANGE
                        || is_hop_by_hop(&name, response.headers())
                        || shared.own_fields.contains(&name)
                    {
                        tracing::debug!(key = %plan.key, field = %name, "a kept-out field of the 304 not passed on");
                        continue;
                    }
                    for value in response.headers().get_all(&name) {
                        answer.headers_mut().append(name.clone(), value.clone());
                    }
                }
                return Ok(answer);
            }
            let mut passed = response.map(ResponseBody::passthrough);
            let freshness = stored::freshness(&refreshed.meta, now_ms());
            shared.set_status(&mut passed, answered.outcome(&freshness));
            return Ok(passed);
        }
        if is_head && status == StatusCode::OK {
            // §4.3.5: a HEAD response updates the stored GET response, or, when it
            // describes another representation, makes it unusable.
            let same_length = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none_or(|len| {
                    len.to_str().ok().and_then(|l| l.parse::<usize>().ok())
                        == Some(entry.body.len())
                });
            let same = same_representation(response.headers(), stored);
            // Its answer to credentials the stored response was not made for describes
            // that client's own page (RFC 9111 §3.5), not the shared one: taken as "the
            // stored response is not current", any account holder could evict it by asking.
            let own_answer =
                request_headers.contains_key(header::AUTHORIZATION) && !entry.meta.authenticated;
            if same && same_length && has_validators(stored) {
                shared
                    .refresh(ex, &sent, entry, &mut response, filler)
                    .await;
            } else if (same && same_length) || own_answer {
                // Neither carries a validator: nothing ties the HEAD's fields to the
                // stored body, which may be an old page of the same length. Freshened,
                // it would be served for the new lifetime (a monitor's HEAD each time it
                // goes stale would keep it forever); removed, anyone could evict it by
                // asking. Left as it was: the next GET that needs the origin fetches it.
                // (So is one whose HEAD answered credentials, see `own_answer`.)
                filler.release().await;
            } else if let Err(err) = shared.storage.invalidate(&plan.key).await {
                tracing::debug!(key = %plan.key, error = %err, "stale GET entry not removed");
            }
            shared.drop_own_fields(&mut response);
            let mut passed = response.map(ResponseBody::passthrough);
            shared.set_status(&mut passed, Outcome::forwarded(fwd, detail));
            return Ok(passed);
        }
    }
    let (response, unused) = shared.on_response(ex, &sent, response, filler);
    if let Some(filler) = unused {
        filler.release().await;
    }
    Ok(response)
}

/// A client's revalidation, counted in the snapshot when it ends: a hit when the stored
/// response answered it (counted by [`Shared::answer_counted`]), else a miss: the origin
/// answered. Counted on drop, so that no way out (an error, a client gone) leaves it out.
struct Tally<'a> {
    /// `None`: nothing to count (no revalidation, or the layer's own request).
    stats: Option<&'a CacheStats>,
    served: AtomicBool,
}

impl Tally<'_> {
    /// The stored response answers the request: counted as a hit, where it is built.
    fn served(&self) {
        self.served.store(true, Ordering::Relaxed);
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let (Some(stats), false) = (self.stats, *self.served.get_mut()) {
            stats.record_revalidation_miss();
        }
    }
}

/// Whom an [`exchange`] with the origin is for, which decides how it is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum For {
    /// A client's request: counted once, as a miss or a revalidation.
    Client,
    /// The layer's own request (a background refresh, a range miss's whole fetch), made
    /// for a request already counted: no request outcome of its own.
    Background,
}

/// RFC 5861 §3: the stale entry was served; refresh it with this same request in the
/// background, once per key at a time in this process. Processes are not coordinated (no
/// placeholder: N processes serving the stale entry send N refreshes); each guards its
/// store by the stale entry's CAS value, so one store wins.
pub(super) fn revalidate_in_background<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    inner: S,
    request: Request<ReqBody>,
    ex: Exchange,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let plan = &ex.plan;
    // Bounded per layer: a sweep over stale URLs gets a few refreshes at a time, the
    // others are served stale and refreshed by a later request within the window.
    let Ok(permit) = Arc::clone(&shared.config.refreshes).try_acquire_owned() else {
        tracing::debug!(key = %plan.key, "stale served; enough refreshes under way, not refreshed now");
        return;
    };
    // A refresh (or a miss) already under way for the variant will do.
    let flight = shared.flight_key(&ex, request.headers());
    let Some(leader) = shared.config.flights.try_lead(&flight) else {
        tracing::debug!(key = %plan.key, "stale served; a refresh is already under way");
        return;
    };
    tracing::debug!(key = %plan.key, "stale served; refreshing in the background");
    let background = shared.config.background.clone();
    let shared = Arc::clone(shared);
    let deadline = shared.config.background_timeout;
    background.spawn(async move {
        let _permit = permit;
        let refresh = async {
            // The refresh replaces the stale entry its lookup saw, by compare-and-swap;
            // other processes may refresh it at the same time (one of them stores).
            let filler = Filler::refreshing(leader, &ex.found);
            let mut inner = inner;
            let inner = match futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => inner,
                Err(_) => return,
            };
            let limit = shared.storable_body_size();
            if let Ok(response) =
                exchange(&shared, inner, request, &ex, filler, For::Background).await
            {
                drain_stored(response.into_body(), limit).await;
            }
        };
        // Dropped at the deadline (its lead, placeholder and place released): no client
        // waits for it, so nothing else would end a refresh the inner service never
        // answers.
        if tokio::time::timeout(deadline, refresh).await.is_err() {
            tracing::debug!(key = %ex.plan.key, ?deadline, "background refresh dropped at its deadline");
        }
    });
}

/// Reads the body of a response the layer asked for itself (a background refresh, a
/// range miss's whole representation), so that it is stored: to its end, or until it is
/// longer than `limit`, the entry size limit. Nobody reads the rest: a response that is
/// not being stored (refused, a 304's stored body) is not read at all, and one that
/// outgrew the limit no longer is, so an endless or huge body costs no more than an entry.
pub(super) async fn drain_stored<T: Body<Data = Bytes>>(body: ResponseBody<T>, limit: usize)
where
    T::Error: 'static,
{
    if !body.is_filling() {
        return;
    }
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    while let Some(frame) = futures_util::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(data.len());
            if read > limit {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::shared::testing::{entry, exchange_for, get, put, shared, stored_entry};

    /// Stores `entry` for the request, then answers a refresh of it with a 304 carrying
    /// `fields`; whether an entry is stored afterwards, and the refreshed entry.
    async fn refresh_with(fields: &[(&'static str, &'static str)]) -> (bool, Arc<Entry>) {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/r");
        let ex = exchange_for(&shared, &request).await;
        let stored = entry(&ex, &[("etag", "\"1\""), ("x-old", "1")]);
        put(&shared, &request, &stored).await;
        let ex = exchange_for(&shared, &request).await;
        let stale = ex.found.entry.clone().expect("stored");
        let mut not_modified = Response::new(());
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        for (name, value) in fields {
            not_modified
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        let sent = Sent {
            request_headers: request.headers().clone(),
            request_time: SystemTime::now(),
            sent_at: std::time::Instant::now(),
        };
        let filler = Filler::none();
        let refreshed = shared
            .refresh(&ex, &sent, &stale, &mut not_modified, filler)
            .await;
        layer.background().idle().await;
        (stored_entry(&shared, &request).await.is_some(), refreshed)
    }

    #[tokio::test]
    async fn a_304_refreshes_fields_but_never_stores_a_cookie() {
        let (kept, refreshed) = refresh_with(&[("x-new", "2"), ("set-cookie", "sid=A")]).await;
        assert!(kept);
        let names: Vec<_> = refreshed
            .meta
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert!(
            names.contains(&"x-new") && names.contains(&"x-old"),
            "{names:?}"
        );
        assert!(!names.contains(&"set-cookie"), "{names:?}");
    }

    #[tokio::test]
    async fn a_304_that_makes_the_response_unstorable_removes_it() {
        for fields in [
            &[("cache-control", "private")][..],
            &[("cache-control", "no-store")][..],
            &[("vary", "x-user")][..],
        ] {
            let (kept, _) = refresh_with(fields).await;
            assert!(!kept, "{fields:?}");
        }
    }
}
