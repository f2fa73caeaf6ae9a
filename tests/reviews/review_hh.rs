//! Review HH: a gap-finding review of the surfaces the earlier reviews touched least: the
//! purge API's input (an operator's tags and URIs, spelled as scripts and files spell
//! them), the proxy's command line, 304s and HEADs that would relabel a stored body, and
//! the near tier's answers to conditional and ranged requests. Each test fails if the
//! attack (or the operator's slip) works.
//!
//! - A tag purge answered `Ok` for a tag no entry can carry (`"news\n"` read from a file,
//!   `" news"`, `"news,sports"`, `"news sports"`): the tag header is read split on white
//!   space and commas, so such a "tag" named no entry, and the purge that returned left
//!   every page tagged `news` served. A purge that returned must hold.
//!
//! - `--upstream http://user:secret@origin` was taken, and the secret went out in the
//!   `Host` of every request (`--upstream-host`) and into the proxy's log lines.

use crate::support;

use http::{Method, StatusCode};

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, PurgeError};

use support::Watch;
use support::personal::{Origin, Reply, Seen, Svc};

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(layer, origin, "review-hh")
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, method, "review-hh.test", path, headers).await
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, path, headers).await
}

fn cache_status(seen: &Seen) -> &str {
    seen.headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// The purge API's input
// ---------------------------------------------------------------------------------------

/// An operator's purge script reads the tag from a file or a form (`"news\n"`, `" news"`),
/// or passes the header's own list (`"news sports"`, `"news,sports"`). Each names no tag
/// an entry can carry (the tag header is split on white space and commas), so an `Ok` for
/// it is a purge that returned and did not hold: the pages tagged `news` stayed. Such a
/// tag is refused; a tag as the header carries it purges.
#[tokio::test]
async fn a_tag_purge_that_returns_ok_reaches_the_tagged_pages() {
    let origin = Origin::new(|_, n| {
        Reply::ok(
            &[
                ("cache-control", b"max-age=600"),
                ("surrogate-key", b"news sports"),
            ],
            &format!("version {n}"),
        )
    });
    let layer = MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin);
    let purger = layer.clone().namespace("review-hh").purger();
    let (svc, watch) = service_of(layer, &origin);
    for spelling in [
        "news\n",
        " news",
        "news ",
        "news,sports",
        "news sports",
        "",
        "\t",
    ] {
        let before = get(&svc, "/front", &[]).await;
        watch.settled().await;
        let cached = get(&svc, "/front", &[]).await;
        assert_eq!(cached.body, before.body, "{spelling:?}: not cached");
        match purger.purge_tag(spelling).await {
            Ok(()) => {
                let after = get(&svc, "/front", &[]).await;
                assert_ne!(
                    after.body,
                    before.body,
                    "purge_tag({spelling:?}) returned Ok and the page tagged news is still \
                     served ({})",
                    cache_status(&after)
                );
            }
            Err(PurgeError::InvalidTag(tag)) => assert_eq!(tag, spelling),
            Err(other) => panic!("{spelling:?}: {other}"),
        }
        watch.settled().await;
    }
    // The tags as the header names them purge.
    for tag in ["news", "sports"] {
        let before = get(&svc, "/front", &[]).await;
        watch.settled().await;
        purger.purge_tag(tag).await.unwrap();
        let after = get(&svc, "/front", &[]).await;
        assert_ne!(after.body, before.body, "{tag}");
        assert_eq!(after.status, StatusCode::OK);
        watch.settled().await;
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's command line
// ---------------------------------------------------------------------------------------

/// `--upstream http://user:secret@origin` was taken: the proxy sent no credentials (it
/// speaks no authentication to the origin) but carried them in the upstream's authority,
/// so `--upstream-host` sent `Host: user:secret@origin` (a `Host` RFC 9110 §7.2 forbids,
/// which origins log or refuse) and the startup line and every "upstream request failed"
/// warning printed the secret. Such a URL is refused at startup, as a path is.
#[test]
fn an_upstream_with_user_information_is_refused_at_startup() {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    for upstream in [
        "http://user:secret@127.0.0.1:9",
        "http://user@127.0.0.1:9",
        "http://@127.0.0.1:9",
    ] {
        let listen = format!("127.0.0.1:{}", support::free_port());
        let mut child = Command::new(support::proxy::proxy_binary())
            .args([
                "--listen",
                &listen,
                "--upstream",
                upstream,
                "--upstream-host",
            ])
            .args(["--threads", "1", "--access-log", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A refused flag exits at once; one taken leaves the proxy serving.
        let status = support::proxy::exit_within(&mut child, Duration::from_secs(10));
        let status = status.unwrap_or_else(|| panic!("--upstream {upstream} was taken"));
        assert_eq!(status.code(), Some(2), "--upstream {upstream}");
    }
}

// ---------------------------------------------------------------------------------------
// Held: a HEAD's error is never the GET's (a regression test)
// ---------------------------------------------------------------------------------------

/// GET and HEAD share a key. A framework that answers HEAD 405 on a GET route (Starlette's
/// `@app.get`), behind an origin stamping `public, max-age=600` on everything, must not
/// have that 405 stored for the GETs, on a miss or as the refresh of a stale entry.
#[tokio::test]
async fn a_heads_405_never_answers_the_gets() {
    let origin = Origin::new(|request, _| {
        let mut reply = Reply::ok(
            &[("cache-control", b"public, max-age=0"), ("etag", b"\"v1\"")],
            "page",
        );
        if request.method() == Method::HEAD {
            reply.status = 405;
            reply.headers = vec![("cache-control", b"public, max-age=600".to_vec())];
        }
        reply
    });
    let layer = MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin);
    let (svc, watch) = service_of(layer, &origin);
    // On a miss.
    assert_eq!(
        send(&svc, Method::HEAD, "/a", &[]).await.status.as_u16(),
        405
    );
    watch.settled().await;
    let page = get(&svc, "/a", &[]).await;
    assert_eq!((page.status, page.body.as_str()), (StatusCode::OK, "page"));
    watch.settled().await;
    // On a stale entry (max-age=0: every reuse revalidates).
    assert_eq!(
        send(&svc, Method::HEAD, "/a", &[]).await.status.as_u16(),
        405
    );
    watch.settled().await;
    let page = get(&svc, "/a", &[]).await;
    assert_eq!(
        (page.status, page.body.as_str()),
        (StatusCode::OK, "page"),
        "{}",
        cache_status(&page)
    );
}
