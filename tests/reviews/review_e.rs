//! Review E: web cache poisoning and deception (Kettle's "Practical Web Cache Poisoning",
//! "Web Cache Entanglement"; the "Web Cache Deception" papers) against the layer and the
//! proxy. Each test is one attack: a request an attacker can send with an ordinary HTTP
//! client, then an innocent request that must not be answered with what the attacker's
//! produced.
//!
//! The origin here behaves like common real ones:
//! - it reads a singleton field by its first line (axum's `headers.get`, Node's http
//!   module, which drops repeated `User-Agent` lines);
//! - it reads cookies from every `Cookie` line, split on `;` (axum-extra's `CookieJar`);
//! - on `/links` and `/item` it sees headers as a CGI-style gateway shows them (WSGI,
//!   Rack: `HTTP_` + the name upper-cased with `-` read as `_`, repeated names joined
//!   with `,`), so `X_Forwarded_Host` and `X-Forwarded-Host` are one variable to it.

use crate::support;

use support::proxy::{raw, start_proxy, until_cached};
use support::{Watch, send};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::MemcacheLayer;

/// The headers as a CGI-style gateway hands them to the application.
fn cgi_env(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut env = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        env.entry(key)
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    env
}

/// The origin's answer (see the module docs). Every answer is `public, max-age=60`.
fn answer(method: &Method, uri: &Uri, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let path = uri.path();
    let first = |name: &str| {
        headers.get(name).map_or(String::new(), |v| {
            String::from_utf8_lossy(v.as_bytes()).into()
        })
    };
    let (vary, body) = match path {
        // User-agent sniffing, as sites that serve old browsers another page do.
        "/ua" => {
            let modern = first("user-agent").contains("Chrome/");
            let page = if modern {
                "modern page"
            } else {
                "upgrade your browser"
            };
            (Some("user-agent"), page.to_string())
        }
        // A consent banner, shown until the `consent` cookie says yes.
        "/consent" => {
            let consent = headers
                .get_all("cookie")
                .iter()
                .filter_map(|line| line.to_str().ok())
                .flat_map(|line| line.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| *name == "consent")
                .map(|(_, value)| value.to_string());
            let page = if consent.as_deref() == Some("yes") {
                "welcome back"
            } else {
                "cookie banner"
            };
            (Some("cookie"), page.to_string())
        }
        // Every `Cookie` line the origin received, as it received them.
        "/cookies" => {
            let lines: Vec<_> = headers
                .get_all("cookie")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (Some("cookie"), lines.join(" | "))
        }
        // Absolute links built from the forwarded host, as frameworks behind a proxy do.
        "/links" => {
            let env = cgi_env(headers);
            let host = env
                .get("HTTP_X_FORWARDED_HOST")
                .or_else(|| env.get("HTTP_HOST"))
                .cloned()
                .unwrap_or_default();
            (None, format!("<a href=\"http://{host}/next\">next</a>"))
        }
        // A resource whose handler follows a method override, as Rails, Laravel and
        // Symfony do (they read it from the CGI variable).
        "/item" => {
            let env = cgi_env(headers);
            let method = env
                .get("HTTP_X_HTTP_METHOD_OVERRIDE")
                .cloned()
                .unwrap_or_else(|| method.to_string());
            let page = if method.eq_ignore_ascii_case("DELETE") {
                "item deleted"
            } else {
                "the item"
            };
            (None, page.to_string())
        }
        // Content negotiation as a CGI-style origin sees it: where two fields make one
        // variable, the later line wins (old Puma let the `_` spelling overwrite).
        "/lang" => {
            let env = cgi_env(headers);
            let language = env
                .get("HTTP_ACCEPT_LANGUAGE")
                .and_then(|joined| joined.rsplit(',').next())
                .unwrap_or("none")
                .trim()
                .to_string();
            (Some("accept-language"), format!("lang={language}"))
        }
        // The names of the fields the origin received.
        "/names" => {
            let mut names: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
            names.sort_unstable();
            (None, names.join(" "))
        }
        // Virtual hosts, told apart by the `Host` field as it came (a string comparison,
        // as an application matching its configured names does).
        "/home" => {
            // `Host`, else the target's authority (HTTP/2), as axum's `Host` reads them.
            let host = headers.get("host").map(|v| v.as_bytes());
            let host = host.or(uri.authority().map(|a| a.as_str().as_bytes()));
            let site = match host {
                Some(b"api.shop.example") => "the API's home",
                _ => "the default site's home",
            };
            (None, site.to_string())
        }
        _ => (None, format!("{method} {path}")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let fields = response.headers_mut();
    fields.insert("cache-control", "public, max-age=60".parse().unwrap());
    if let Some(vary) = vary {
        fields.insert("vary", vary.parse().unwrap());
    }
    response
}

// ---------------------------------------------------------------------------------------
// The layer in an application.

fn layer() -> MemcacheLayer<MemoryBackend> {
    support::layer(MemoryBackend::new()).namespace("review-e")
}

fn app(
    layer: &MemcacheLayer<MemoryBackend>,
) -> tower::util::BoxCloneService<
    Request<()>,
    Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
    Infallible,
> {
    let inner = tower::service_fn(|request: Request<()>| {
        let response = answer(request.method(), request.uri(), request.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

/// A browser's `User-Agent`: its comment holds a comma.
const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/126.0.0.0 Safari/537.36";

/// The same text cut at the comma into two `User-Agent` lines: to an origin that reads the
/// field's first line (there is only one `User-Agent`) this is no Chrome at all.
const CHROME_SPLIT: [&str; 2] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML",
    "like Gecko) Chrome/126.0.0.0 Safari/537.36",
];

/// "Web Cache Entanglement": the cache compared `Vary` values after joining a field's
/// lines with `, `, so two `User-Agent` lines the origin reads as one browser selected the
/// variant of a single line it reads as another. `User-Agent` is no list: the lines are
/// not that line. The attacker's page was stored for every Chrome user.
#[tokio::test]
async fn a_user_agent_split_into_two_lines_poisons_the_variant_of_the_whole_one() {
    let layer = layer();
    let svc = app(&layer);
    let url = "http://shop.example/ua";
    let attack = [
        ("user-agent", CHROME_SPLIT[0]),
        ("user-agent", CHROME_SPLIT[1]),
    ];
    let attacker = send(&svc, Method::GET, url, &attack).await;
    assert_eq!(attacker.body, "upgrade your browser");
    Watch::of(&layer).settled().await;
    let victim = send(&svc, Method::GET, url, &[("user-agent", CHROME)]).await;
    assert_eq!(
        victim.body,
        "modern page",
        "a Chrome user was served the page made for the attacker's split field ({})",
        victim.cache_status()
    );
    // The whole line still hits its own variant.
    let again = send(&svc, Method::GET, url, &[("user-agent", CHROME)]).await;
    support::assert_hit(again.cache_status());
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into one field per cookie
/// ("crumbs"); their meaning is the `; `-joined line. The cache joined them with `, `, so
/// one `Cookie: consent=yes, ab=B` line (one cookie named `consent` whose value is
/// `yes, ab=B` to the origin) selected the variant of the crumbs `consent=yes` and
/// `ab=B`: a banner stored by the attacker for every user who has consented.
#[tokio::test]
async fn a_cookie_line_with_a_comma_poisons_the_variant_of_http2_crumbs() {
    let layer = layer();
    let svc = app(&layer);
    let url = "http://shop.example/consent";
    let attacker = send(&svc, Method::GET, url, &[("cookie", "consent=yes, ab=B")]).await;
    assert_eq!(attacker.body, "cookie banner");
    Watch::of(&layer).settled().await;
    let crumbs = [("cookie", "consent=yes"), ("cookie", "ab=B")];
    let victim = send(&svc, Method::GET, url, &crumbs).await;
    assert_eq!(
        victim.body,
        "welcome back",
        "the crumbs selected the attacker's one-line variant ({})",
        victim.cache_status()
    );
}

/// The layer bypasses a GET with a method override, whose answer may be another method's.
/// A CGI-style origin reads `X_HTTP_Method_Override` as that very field; the layer stored
/// the DELETE handler's answer under the GET's key.
#[tokio::test]
async fn a_method_override_spelled_with_underscores_is_stored_as_the_get() {
    let layer = layer();
    let svc = app(&layer);
    let url = "http://shop.example/item";
    let attack = [("x_http_method_override", "DELETE")];
    let attacker = send(&svc, Method::GET, url, &attack).await;
    assert_eq!(attacker.body, "item deleted");
    Watch::of(&layer).settled().await;
    let victim = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(
        victim.body,
        "the item",
        "a GET was answered with the overridden method's page ({})",
        victim.cache_status()
    );
}

/// The key lower-cases the host and drops the default port ("`Example.COM:80` and
/// `example.com` are one key, while nothing an origin could tell apart is merged"), but
/// the layer passed the `Host` on as the client spelled it: an application matching its
/// virtual hosts by name answered `API.shop.example:80` with the default site, stored
/// under the API's key for every API client. (The proxy sends the key's spelling.)
#[tokio::test]
async fn a_host_spelled_in_capitals_or_with_its_port_poisons_a_virtual_host() {
    for spelling in [
        "API.shop.example",
        "api.shop.example:80",
        "api.shop.example:",
    ] {
        let layer = layer();
        let svc = app(&layer);
        let attacker = send(&svc, Method::GET, "/home", &[("host", spelling)]).await;
        Watch::of(&layer).settled().await;
        let victim = send(&svc, Method::GET, "/home", &[("host", "api.shop.example")]).await;
        assert_eq!(
            victim.body,
            "the API's home",
            "after `Host: {spelling}` ({}, {:?})",
            victim.cache_status(),
            attacker.body
        );
    }
    // The same through an HTTP/2 `:authority` (the target's authority, no `Host`).
    let layer = layer();
    let svc = app(&layer);
    let url = "http://API.shop.example:80/home";
    let attacker = send(&svc, Method::GET, url, &[]).await;
    Watch::of(&layer).settled().await;
    let victim = send(&svc, Method::GET, "http://api.shop.example/home", &[]).await;
    assert_eq!(
        victim.body,
        "the API's home",
        "after the target {url} ({}, {:?})",
        victim.cache_status(),
        attacker.body
    );
}

// ---------------------------------------------------------------------------------------
// The proxy.

struct Origin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = support::origin::serve_http1(listener, |request: Request<Incoming>| {
        let response = answer(request.method(), request.uri(), request.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    Origin { addr, task }
}

/// The original poisoning of "Practical Web Cache Poisoning", through the one door the
/// proxy left: it replaces `X-Forwarded-Host`, but passed `X_Forwarded_Host` on, which a
/// CGI-style gateway reads as the same variable (Puma before 6.4.3, CVE-2024-45614;
/// gunicorn before 22; nginx and Apache drop such fields for this reason). The links to
/// the attacker's host were stored for everyone.
#[tokio::test]
async fn x_forwarded_host_spelled_with_underscores_poisons_links_for_everyone() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let (status, _) = raw(
        &proxy,
        "GET /links HTTP/1.1\r\nHost: shop.example\r\nX_Forwarded_Host: evil.example\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let page = until_cached(&proxy, "GET /links HTTP/1.1\r\nHost: shop.example\r\n").await;
    assert!(
        !page.contains("evil.example"),
        "the attacker's host is in the stored page: {page}"
    );
}

/// The proxy drops method overrides from GET and HEAD; `X_HTTP_Method_Override` reached a
/// CGI-style origin as the override, and the DELETE handler's page was stored as the GET's.
#[tokio::test]
async fn a_method_override_spelled_with_underscores_reaches_the_origin() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let head = "GET /item HTTP/1.1\r\nHost: shop.example\r\nX_HTTP_Method_Override: DELETE\r\n";
    let (status, _) = raw(&proxy, head).await;
    assert_eq!(status, 200);
    let page = until_cached(&proxy, "GET /item HTTP/1.1\r\nHost: shop.example\r\n").await;
    assert_eq!(page, "the item", "a GET was answered with a DELETE's page");
}

/// The split `User-Agent` of the layer's test, through the proxy: Node's http module (and
/// axum's `headers.get`) keep the first of repeated `User-Agent` lines.
#[tokio::test]
async fn a_split_user_agent_through_the_proxy_poisons_the_variant_of_the_whole_one() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let attack = format!(
        "GET /ua HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: {}\r\nUser-Agent: {}\r\n",
        CHROME_SPLIT[0], CHROME_SPLIT[1]
    );
    let (status, page) = raw(&proxy, &attack).await;
    assert_eq!((status, page.as_str()), (200, "upgrade your browser"));
    let victim = format!("GET /ua HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: {CHROME}\r\n");
    // Stored in the background: wait until the attacker's variant is there.
    until_cached(&proxy, &attack).await;
    let (status, page) = raw(&proxy, &victim).await;
    assert_eq!(
        (status, page.as_str()),
        (200, "modern page"),
        "a Chrome user was served the page made for the split field"
    );
}

/// RFC 9113 §8.2.3: crumbs "MUST be concatenated into a single octet string using the
/// two-octet delimiter of 0x3b, 0x20 ("; ") before being passed into a non-HTTP/2
/// context, such as an HTTP/1.1 connection". The proxy sent them as separate lines,
/// which HTTP/1.1 forbids for `Cookie` (RFC 6265 §5.4) and which gateways that join
/// repeated lines with `,` turn into one cookie holding the others.
#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_origin_as_one_line() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{}/cookies", proxy.addr))
        .header("cookie", "consent=yes")
        .header("cookie", "ab=B")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), "consent=yes; ab=B");
}

/// `Accept_Language` beside `Accept-Language`: the cache chooses the variant by the real
/// field, a CGI-style origin answers by the variable both make. The proxy drops every
/// field whose name holds `_` (nginx's `underscores_in_headers off`), so the French page
/// is not stored as the English one; `--underscores-in-headers` passes them on.
#[tokio::test]
async fn an_underscored_twin_of_a_varied_field_poisons_its_variant() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let attack = "GET /lang HTTP/1.1\r\nHost: shop.example\r\nAccept-Language: en\r\nAccept_Language: fr\r\n";
    let (status, page) = raw(&proxy, attack).await;
    assert_eq!((status, page.as_str()), (200, "lang=en"));
    let page = until_cached(
        &proxy,
        "GET /lang HTTP/1.1\r\nHost: shop.example\r\nAccept-Language: en\r\n",
    )
    .await;
    assert_eq!(
        page, "lang=en",
        "the French page was stored as the English one"
    );

    let passing = start_proxy(origin.addr, &["--underscores-in-headers"]);
    let (status, page) = raw(
        &passing,
        "GET /lang HTTP/1.1\r\nHost: other.example\r\nAccept_Language: de\r\n",
    )
    .await;
    assert_eq!(
        (status, page.as_str()),
        (200, "lang=de"),
        "the flag passed nothing"
    );
}

/// Other proxies' names for the original target, host and client (Traefik's
/// `X-Forwarded-Uri`, nginx `auth_request`'s `X-Original-URI`, ASP.NET's
/// `X-Original-For`, …) are dropped like the `X-Forwarded-*` family: frameworks that
/// trust them route or build links by them.
#[tokio::test]
async fn other_proxies_forwarding_fields_never_reach_the_origin() {
    let origin = start_origin().await;
    let proxy = start_proxy(origin.addr, &[]);
    let sent = [
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Original-URI",
        "X-HTTP-Host-Override",
        "X-Original-For",
        "X-Original-Proto",
    ];
    let mut head = String::from("GET /names HTTP/1.1\r\nHost: shop.example\r\n");
    for name in sent {
        head.push_str(&format!("{name}: /admin\r\n"));
    }
    let (status, names) = raw(&proxy, &head).await;
    assert_eq!(status, 200);
    for name in sent {
        assert!(
            !names.contains(&name.to_ascii_lowercase()),
            "{name} reached the origin: {names}"
        );
    }
    assert!(names.contains("x-forwarded-host"), "{names}");
}
