//! Review RF: host and path spellings the cache reads differently from origins and from
//! purges (a host's trailing dot, an IPv6 address's spellings, a `Location` in the other
//! scheme, Unicode letter case in a route rule's path). Each test names an attack or
//! defect and fails if it works.

use crate::support;

use support::path_origin::{self, decode_once};
use support::{HIT, Watch, assert_hit, send};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// An origin with name-based virtual hosts compared as strings (as an application that
/// matches `Host` against its site's name does): `example.com` is the site, any other
/// name its default site. Its GETs are cacheable pages that say which host they were made
/// for and which call made them; an unsafe request answers 201 naming the `Location` its
/// `x-location` field asks for.
fn virtual_hosts()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    let calls = Arc::new(AtomicUsize::new(0));
    service_fn(move |request: Request<()>| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let site = if host == "example.com" {
            "site"
        } else {
            "default site"
        };
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "{site} for Host {host}, call {call}"
        ))));
        if request.method() == Method::GET || request.method() == Method::HEAD {
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("max-age=600"),
            );
        } else {
            *response.status_mut() = StatusCode::CREATED;
            if let Some(location) = request.headers().get("x-location") {
                response
                    .headers_mut()
                    .insert(header::LOCATION, location.clone());
            }
        }
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// The same page for one client spelling its host with DNS's trailing dot (`Host:
/// example.com.`, a browser sends it for `http://example.com./p`) and one without it. The
/// key kept the dot, so the FQDN spelling had an entry of its own, which the origin
/// answered (with its default site, to an application that compares names as strings)
/// and which no purge of `http://example.com/p` reached. One name is one key now, and the
/// origin is asked with the key's spelling, so the entry is the named site's page.
#[tokio::test]
async fn a_trailing_dot_host_shares_the_entry_made_for_the_plain_host() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(virtual_hosts());
    let dotted = send(&svc, Method::GET, "/p", &[("host", "Example.COM.")]).await;
    assert_eq!(dotted.body, "site for Host example.com, call 1");
    watch.settled().await;
    let plain = send(&svc, Method::GET, "/p", &[("host", "example.com")]).await;
    assert_hit(plain.cache_status());
    assert_eq!(plain.body, dotted.body);
    // The absolute form and a port spell the same name.
    for (target, host) in [
        ("http://example.com./p", None),
        ("/p", Some("example.com.:80")),
        ("http://example.com./p", Some("example.com")),
    ] {
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let again = send(&svc, Method::GET, target, &headers).await;
        assert_eq!(again.body, dotted.body, "{target} {host:?}");
        assert_hit(again.cache_status());
    }
    // Only one trailing dot is DNS's: other names are still names of their own.
    for host in ["example.com..", "www.example.com."] {
        let other = send(&svc, Method::GET, "/p", &[("host", host)]).await;
        assert_ne!(other.body, dotted.body, "{host}");
    }
}

/// A purge that returned holds: `purge_uri("http://example.com/p")` returned `Ok` and left
/// the entry of `Host: example.com.` served, so an attacker who filled that spelling
/// before the purge (a takedown, a leaked page) kept reading the purged page there.
#[tokio::test]
async fn a_url_purge_reaches_the_trailing_dot_spelling_of_its_host() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(virtual_hosts());
    for (run, purge) in [
        "http://example.com/p",
        "https://example.com/p",
        "http://example.com./p",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/p?run={run}");
        let purge = format!("{purge}?run={run}");
        send(&svc, Method::GET, &path, &[("host", "example.com.")]).await;
        watch.settled().await;
        let before = send(&svc, Method::GET, &path, &[("host", "example.com.")]).await;
        assert_hit(before.cache_status());
        let purged = layer.purger().purge_uri(&purge).await;
        assert!(purged.is_ok(), "{purge}: {purged:?}");
        let after = send(&svc, Method::GET, &path, &[("host", "example.com.")]).await;
        assert_ne!(after.cache_status(), HIT, "{purge}");
        assert_ne!(after.body, before.body, "{purge}");
    }
}

/// RFC 9111 §4.4: a successful unsafe request invalidates its target. A `POST /p` to
/// `example.com` left the page stored for `Host: example.com.` (and one to
/// `example.com.` the plain host's page) answering as before the change.
#[tokio::test]
async fn an_unsafe_request_invalidates_the_other_spelling_of_its_host() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(virtual_hosts());
    for (stored, posted) in [
        ("example.com.", "example.com"),
        ("example.com", "Example.com."),
    ] {
        let path = format!("/page/{posted}");
        send(&svc, Method::GET, &path, &[("host", stored)]).await;
        watch.settled().await;
        let before = send(&svc, Method::GET, &path, &[("host", stored)]).await;
        assert_hit(before.cache_status());
        let post = send(&svc, Method::POST, &path, &[("host", posted)]).await;
        assert_eq!(post.status, StatusCode::CREATED);
        let after = send(&svc, Method::GET, &path, &[("host", stored)]).await;
        assert_ne!(
            after.cache_status(),
            HIT,
            "POST with Host {posted} left the entry of Host {stored}"
        );
    }
}

/// RFC 9111 §4.4: the same-origin URI in `Location` is invalidated too. An origin that
/// names its own URLs with the FQDN (`Location: http://example.com./page/b`) was taken
/// for another site, so the page a client that follows it reads kept its old entry.
#[tokio::test]
async fn a_location_naming_the_fqdn_invalidates_its_page() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(virtual_hosts());
    let host = ("host", "example.com");
    send(&svc, Method::GET, "/page/b", &[host]).await;
    watch.settled().await;
    let before = send(&svc, Method::GET, "/page/b", &[host]).await;
    assert_hit(before.cache_status());
    let location = ("x-location", "http://example.com./page/b");
    let post = send(&svc, Method::POST, "/page/form", &[host, location]).await;
    assert_eq!(post.status, StatusCode::CREATED);
    let after = send(&svc, Method::GET, "/page/b", &[host]).await;
    assert_ne!(after.cache_status(), HIT, "{after:?}");
    // Another site's FQDN is still another site's.
    send(&svc, Method::GET, "/page/c", &[host]).await;
    watch.settled().await;
    let other = ("x-location", "http://other.example./page/c");
    send(&svc, Method::POST, "/page/form", &[host, other]).await;
    let kept = send(&svc, Method::GET, "/page/c", &[host]).await;
    assert_hit(kept.cache_status());
}

/// How an origin that compares paths without case by Unicode's rules reads one: decoded
/// once, then each character folded as some runtime folds it to ASCII letters: Java's
/// `equalsIgnoreCase` and JavaScript's and Python's `upper()` take `ſ` (U+017F) for `S`
/// and `ı` (U+0131) for `I`; their `lower()` takes the Kelvin sign (U+212A) for `k` and
/// Java's `İ` (U+0130) for `i`; JavaScript's `toUpperCase` and Python's `casefold` spell
/// `ß` as `ss` and the ligatures U+FB00..U+FB06 as their letters. Written apart from the
/// crate's own reading.
fn unicode_fold(path: &str) -> String {
    let decoded = decode_once(path.as_bytes());
    let mut folded = String::new();
    for c in String::from_utf8_lossy(&decoded).chars() {
        match c {
            '\u{17f}' => folded.push('s'),
            '\u{212a}' => folded.push('k'),
            '\u{131}' | '\u{130}' => folded.push('i'),
            '\u{df}' | '\u{1e9e}' => folded.push_str("ss"),
            '\u{fb00}' => folded.push_str("ff"),
            '\u{fb01}' => folded.push_str("fi"),
            '\u{fb02}' => folded.push_str("fl"),
            '\u{fb03}' => folded.push_str("ffi"),
            '\u{fb04}' => folded.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => folded.push_str("st"),
            other => folded.extend(other.to_lowercase()),
        }
    }
    folded
}

/// The origin: `/settings`, `/kiosk` and `/profile` are the page of the user whose cookie
/// came with the request, marked by nothing; everything else is public.
fn case_folding_origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = unicode_fold(path);
        if ["/settings", "/kiosk", "/profile", "/access"].contains(&path.as_str()) {
            format!("{user}'s private page")
        } else {
            format!("public page {path}")
        }
    })
}

/// Web cache deception through Unicode case folding: a `no_cache` rule for `/settings`
/// read `/%C5%BFettings` (`ſettings`) as a path no rule names, so a victim lured there
/// had the page a case-folding origin answered (the victim's own settings) stored with
/// the default lifetime, for the attacker to read. Likewise the Kelvin sign in `/kiosk`,
/// the dotted and dotless `i`, `ß` and the `ﬁ` ligature, escaped, `%u`-escaped or raw.
#[tokio::test]
async fn no_cache_holds_for_unicode_case_folds_of_its_path() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/settings".into()))
        .no_cache(RouteMatch::Exact("/kiosk".into()))
        .no_cache(RouteMatch::Exact("/profile".into()))
        .no_cache(RouteMatch::Prefix("/access".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(case_folding_origin());
    path_origin::assert_none_stored(
        &app,
        &watch,
        &[
            "/%C5%BFettings",
            "/%c5%bfETTINGS",
            "/\u{17f}ettings",
            "/sett%C4%B1ngs",
            "/SETT%C4%B0NGS",
            "/%E2%84%AAiosk",
            "/\u{212a}iosk",
            "/pro%EF%AC%81le",
            "/acce%C3%9F",
            "/acce\u{1e9e}",
        ],
        |user| format!("{user}'s private page"),
    )
    .await;
    // Paths that fold to no rule's path are cached as before.
    let (first, _) = path_origin::get(&app, "/caf%C3%A9", None).await;
    assert_eq!(first, "public page /caf\u{e9}");
    watch.settled().await;
    let (_, status) = path_origin::get(&app, "/caf%C3%A9", None).await;
    assert_hit(&status);
}

/// The same IPv6 address spelled with its zeros written out (`[0:0:0:0:0:0:0:1]`,
/// `[::0001]`) or in the RFC 5952 form (`[::1]`) was keyed apart: a purge of
/// `http://[::1]:8080/p` left the other spellings' entries served, which an attacker
/// fills to keep a purged page readable on a site reached by its address. The key holds
/// the address in RFC 5952 form, and the origin is asked with it.
#[tokio::test]
async fn a_url_purge_reaches_every_spelling_of_an_ipv6_address() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(virtual_hosts());
    let first = send(
        &svc,
        Method::GET,
        "/p",
        &[("host", "[0:0:0:0:0:0:0:1]:8080")],
    )
    .await;
    assert_eq!(first.body, "default site for Host [::1]:8080, call 1");
    watch.settled().await;
    for host in ["[::1]:8080", "[::0001]:8080", "[0::1]:08080"] {
        let again = send(&svc, Method::GET, "/p", &[("host", host)]).await;
        assert_hit(again.cache_status());
        assert_eq!(again.body, first.body, "{host}");
    }
    let purged = layer.purger().purge_uri("http://[::1]:8080/p").await;
    assert!(purged.is_ok(), "{purged:?}");
    let after = send(
        &svc,
        Method::GET,
        "/p",
        &[("host", "[0:0:0:0:0:0:0:1]:8080")],
    )
    .await;
    assert_ne!(after.cache_status(), HIT, "{after:?}");
    assert_ne!(after.body, first.body);
}

/// RFC 9111 §4.4 behind a TLS terminator: the layer keys its pages in its own scheme
/// (`http://`, the connections it serves), while the application, told the public scheme
/// by the terminator (`X-Forwarded-Proto: https`), names its URLs `https://`
/// (`Location: https://example.com/page/b` after a form's POST). Such a Location was
/// taken for another origin's, so the page a client that follows it reads kept
/// answering as before the change; and the same for an `https` layer whose application
/// names `http://` URLs. The same host in the other scheme now invalidates the layer's
/// own spelling, as `purge_uri` of the public URL purges it; another host or port does not.
#[tokio::test]
async fn a_location_in_the_other_scheme_invalidates_the_page_the_layer_keys() {
    for (scheme, other) in [("http", "https"), ("https", "http")] {
        let layer = support::layer(MemoryBackend::new()).default_scheme(scheme);
        let watch = Watch::of(&layer);
        let svc = layer.layer(virtual_hosts());
        let host = ("host", "example.com");
        for path in ["/page/b", "/page/c", "/page/d"] {
            send(&svc, Method::GET, path, &[host]).await;
        }
        watch.settled().await;
        let named = format!("{other}://Example.com/page/b");
        let location = ("x-location", named.as_str());
        let post = send(&svc, Method::POST, "/page/form", &[host, location]).await;
        assert_eq!(post.status, StatusCode::CREATED);
        let after = send(&svc, Method::GET, "/page/b", &[host]).await;
        assert_ne!(after.cache_status(), HIT, "{scheme} layer, {named}");
        // Another host, or another port, is another origin.
        for (path, named) in [
            ("/page/c", format!("{other}://other.example/page/c")),
            ("/page/d", format!("{other}://example.com:8443/page/d")),
        ] {
            let location = ("x-location", named.as_str());
            send(&svc, Method::POST, "/page/form", &[host, location]).await;
            let kept = send(&svc, Method::GET, path, &[host]).await;
            assert_hit(kept.cache_status());
        }
    }
}

/// The origin: `/übersicht` is the page of the user whose cookie came with the request,
/// found as ASP.NET Core's router finds routes (`OrdinalIgnoreCase`: any letter in any
/// case, `Ü` as `ü`); everything else is public.
fn unicode_router() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = String::from_utf8_lossy(&decode_once(path.as_bytes())).to_lowercase();
        if path == "/\u{fc}bersicht" {
            format!("{user}'s private page")
        } else {
            format!("public page {path}")
        }
    })
}

/// Web cache deception through a non-ASCII letter's case: the origin reading lower-cased
/// ASCII letters only, so a `no_cache` rule for `/übersicht` (`/%C3%BCbersicht`) read
/// `/%C3%9Cbersicht` (`/Übersicht`) as a path no rule names, and a victim lured there
/// had the page a case-insensitive router answered (the victim's own) stored for the
/// attacker.
#[tokio::test]
async fn no_cache_holds_for_a_non_ascii_letter_in_another_case() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/%C3%BCbersicht".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(unicode_router());
    path_origin::assert_none_stored(
        &app,
        &watch,
        &[
            "/%C3%BCbersicht",
            "/%C3%9Cbersicht",
            "/%C3%9CBERSICHT",
            "/\u{dc}bersicht",
        ],
        |user| format!("{user}'s private page"),
    )
    .await;
}
