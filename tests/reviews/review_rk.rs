//! Review RK: an adversarial second look at review RG (a replacement standing in for a
//! failing origin, bounded placement rounds, `ttl`, deadlines on tokio's clock).
//!
//! Each test names a defect and fails if it is there.

use crate::support;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use support::stand_in;

/// Process A's revalidation of a stale entry (a validator, no `stale-if-error`), held at its
/// origin while process B (same memcached) refreshes the URL with a fresh response that
/// says `refreshed_with`, then failed with a 503: A's answer to a request with `headers`.
async fn a_revalidation_failing_after_a_refresh(
    refreshed_with: &'static str,
    headers: &[(&str, &str)],
) -> support::Answer {
    let first = || {
        // Stale as stored: its revalidation goes to the origin.
        let mut page = Response::new(Full::new(Bytes::from("before")));
        let fields = page.headers_mut();
        fields.insert("cache-control", HeaderValue::from_static("max-age=60"));
        fields.insert("age", HeaderValue::from_static("120"));
        // Kept for its revalidation.
        fields.insert("etag", HeaderValue::from_static("\"1\""));
        page
    };
    stand_in::revalidation_failing_across_processes(
        first,
        stand_in::Meanwhile::Refreshed,
        refreshed_with,
        headers,
    )
    .await
}

/// Defect: review RG let what memcached holds once the origin failed stand in, but only
/// when it was usable *stale* (`stale-if-error`, `stale_if_unreachable`). Another
/// process's refresh that stored a fresh response without `stale-if-error` over the
/// stale entry still left the client the origin's 503, though any request arriving at
/// that moment was given that fresh response as a hit. A response the request's own
/// directives accept as it is now answers (the request's `no-cache` still gets the 503,
/// see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_response_stored_during_a_failing_revalidation_answers_it() {
    let answer = a_revalidation_failing_after_a_refresh("max-age=600", &[]).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "refreshed"),
        "the origin's failure, though memcached held a fresh response ({})",
        answer.cache_status()
    );
    let status = answer.cache_status();
    assert!(
        status.contains("fwd=stale; fwd-status=503; ttl=") && status.contains("stored-meanwhile"),
        "{status}"
    );
}

/// The request's own directives still rule what may answer it: with `no-cache` (it wants
/// the origin's word) or a `min-fresh` the refreshed response does not meet, the origin's
/// failure passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replacement_does_not_answer_a_request_its_directives_refuse() {
    for directives in ["no-cache", "min-fresh=3600", "max-age=0"] {
        let headers = [("cache-control", directives)];
        let answer = a_revalidation_failing_after_a_refresh("max-age=600", &headers).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{directives}: {answer:?}"
        );
        assert_eq!(answer.body, "origin down", "{directives}");
    }
}
