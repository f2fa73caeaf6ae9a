//! Review RY: web cache poisoning through request inputs the key does not hold (Kettle's
//! "Practical Web Cache Poisoning" and "Web Cache Entanglement", and the "cache poisoned
//! denial of service" of Nguyen et al.), against the reverse proxy: request fields that
//! a web server or framework behind a proxy takes as the proxy's word (where the page is
//! mounted, which scheme the client used, whether the proxy sends files or expands edge
//! side includes itself). A client's copy reaching the origin changed the page stored
//! under the URL for everyone.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use support::proxy::{raw, start_proxy, until_cached};

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// What an origin's servers and frameworks make of the fields below, each as its own code
/// reads them, in one handler; every answer `public, max-age=60`.
/// - Rack::Sendfile (in Rails' default middleware stack; before Rack 3.1.18, CVE-2025-61780)
///   takes `X-Sendfile-Type` (and `X-Accel-Mapping`) from the request when the application
///   configured none: a file's body is then left to the web server in front, which is
///   meant to set that field, and the response carries an empty body and the file's
///   path.
/// - Symfony's ESI (`Surrogate-Capability: …="ESI/1.0"`, which a surrogate such as Varnish
///   sets): the page is sent as `<esi:include>` tags for the surrogate to expand.
/// - gunicorn takes a `SCRIPT_NAME` field as the prefix the application is mounted at
///   (links and routes then follow it), and `X-Forwarded-Protocol: ssl` as `https` (one of
///   its default `secure_scheme_headers`); Tornado's `xheaders` reads `X-Scheme` before
///   `X-Forwarded-Proto`; the common "reverse proxied" WSGI recipe reads `X-Script-Name`.
fn framework_answer(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let field = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let public =
        |builder: http::response::Builder| builder.header("cache-control", "public, max-age=60");
    if let Some(kind) = field("x-sendfile-type") {
        return public(Response::builder())
            .header(kind, "/srv/app/public/app.js")
            .header("content-length", "0")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if field("surrogate-capability").is_some_and(|value| value.contains("ESI/1.0")) {
        return public(Response::builder())
            .header("surrogate-control", "content=\"ESI/1.0\"")
            .body(Full::new(Bytes::from_static(
                b"<esi:include src=\"/_fragment?_path=header\" />",
            )))
            .unwrap();
    }
    let scheme = match (field("x-scheme"), field("x-forwarded-protocol").as_deref()) {
        (Some(scheme), _) => scheme,
        (None, Some("ssl")) => "https".to_owned(),
        _ => field("x-forwarded-proto").unwrap_or_else(|| "http".into()),
    };
    let prefix = field("script_name")
        .or_else(|| field("x-script-name"))
        .unwrap_or_default();
    // As Rails and Express read it (the proxy sets its own, the key's authority).
    let host = field("x-forwarded-host")
        .or_else(|| field("host"))
        .unwrap_or_default();
    let body = format!("<a href=\"{scheme}://{host}{prefix}/next\">next</a>");
    public(Response::builder())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn framework_origin() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    support::origin::serve_http1(listener, move |request: Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            record.lock().unwrap().push(request.headers().clone());
            Ok::<_, Infallible>(framework_answer(request.headers()))
        }
    });
    (addr, seen)
}

const CLEAN: &str = "<a href=\"http://example.com/next\">next</a>";

/// Each field an origin takes as the proxy's word, sent by a client on a page's first
/// request: what the proxy stored is what every later client is answered. The field
/// must not reach the origin, so that what is stored is the page the URL names.
#[tokio::test]
async fn fields_an_origin_takes_from_its_proxy_never_poison_the_stored_page() {
    let (origin, seen) = framework_origin().await;
    let attacks: [&[(&str, &str)]; 6] = [
        &[("X-Sendfile-Type", "X-Sendfile")],
        // Rack's X-Accel-Redirect variant needs the mapping beside it.
        &[
            ("X-Sendfile-Type", "X-Accel-Redirect"),
            ("X-Accel-Mapping", "/srv/app/=/files/"),
        ],
        &[("Surrogate-Capability", "abc=\"ESI/1.0\"")],
        &[("X-Scheme", "https")],
        &[("X-Forwarded-Protocol", "ssl")],
        &[("X-Script-Name", "/evil")],
    ];
    let proxy = start_proxy(origin, &[]);
    for (n, fields) in attacks.iter().enumerate() {
        let page = format!("GET /page{n} HTTP/1.1\r\nHost: example.com\r\n");
        let mut head = page.clone();
        for (name, value) in *fields {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let (status, _) = raw(&proxy, &head).await;
        assert_eq!(status, 200, "{fields:?}");
        let stored = until_cached(&proxy, &page).await;
        assert_eq!(stored, CLEAN, "{fields:?} poisoned /page{n}");
    }
    for headers in seen.lock().unwrap().iter() {
        for (name, _) in attacks.iter().flat_map(|fields| fields.iter()) {
            assert!(!headers.contains_key(*name), "{name} reached the origin");
        }
    }
}

/// With `--underscores-in-headers`, fields whose names hold `_` pass on, but not the
/// spellings a CGI-style gateway reads as a dropped field. gunicorn takes a `SCRIPT_NAME`
/// field as the application's mount point (that very name: it is no `HTTP_` variable), so
/// a client's `SCRIPT_NAME: /evil` had every link of the page stored under the URL point
/// below `/evil`; WSGI and Rack read `X_Sendfile_Type` and `Surrogate_Capability` as the
/// fields above.
#[tokio::test]
async fn their_underscore_spellings_are_dropped_when_underscores_pass() {
    let (origin, seen) = framework_origin().await;
    let attacks = [
        ("SCRIPT_NAME", "/evil"),
        ("X_Script_Name", "/evil"),
        ("X_Scheme", "https"),
        ("X_Sendfile_Type", "X-Sendfile"),
        ("Surrogate_Capability", "abc=\"ESI/1.0\""),
    ];
    let proxy = start_proxy(origin, &["--underscores-in-headers"]);
    for (n, (name, value)) in attacks.iter().enumerate() {
        let page = format!("GET /under{n} HTTP/1.1\r\nHost: example.com\r\n");
        let (status, _) = raw(&proxy, &format!("{page}{name}: {value}\r\n")).await;
        assert_eq!(status, 200, "{name}");
        let stored = until_cached(&proxy, &page).await;
        assert_eq!(stored, CLEAN, "{name}: {value} poisoned /under{n}");
    }
    // Other `_` fields still pass on with the flag.
    let (status, _) = raw(
        &proxy,
        "GET /other HTTP/1.1\r\nHost: example.com\r\nX_Custom_Field: 1\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|headers| headers.contains_key("x_custom_field")),
        "{seen:?}"
    );
    for headers in seen.iter() {
        for (name, _) in attacks {
            assert!(
                !headers.contains_key(name.to_ascii_lowercase().as_str()),
                "{name} reached the origin"
            );
        }
    }
}

/// The spellings of Kettle's and the CPDoS papers' requests that smuggle a forwarding
/// field past a filter that matches names: another case, a duplicate line, white space
/// before the colon or at the value's ends, an obs-folded continuation line that reads as
/// a field of its own to a lenient origin. Each is refused (400, never stored) or reaches
/// the origin without the client's value; the page stored is the URL's.
#[tokio::test]
async fn odd_spellings_of_a_forwarding_field_never_reach_the_origin() {
    let (origin, seen) = framework_origin().await;
    let proxy = start_proxy(origin, &[]);
    let spellings = [
        "X-FORWARDED-HOST: evil.example\r\n",
        "x-forwarded-host: example.com\r\nX-Forwarded-Host: evil.example\r\n",
        "X-Forwarded-Host:\tevil.example \t\r\n",
        "X-Forwarded-Host : evil.example\r\n",
        "X-Forwarded-Host\t: evil.example\r\n",
        "Accept: */*\r\n X-Forwarded-Host: evil.example\r\n",
        "Accept: */*\r\n\tX-Scheme: https\r\n",
        "Forwarded: for=1.2.3.4;host=evil.example;proto=https\r\n",
        "Forwarded: for=1.2.3.4\r\nFORWARDED: host=evil.example\r\n",
    ];
    for (n, spelling) in spellings.iter().enumerate() {
        let page = format!("GET /odd{n} HTTP/1.1\r\nHost: example.com\r\n");
        let (status, body) = raw(&proxy, &format!("{page}{spelling}")).await;
        match status {
            400 => {}
            200 => assert_eq!(body, CLEAN, "{spelling:?}"),
            other => panic!("{spelling:?}: {other}"),
        }
        let (status, body) = raw(&proxy, &page).await;
        assert_eq!((status, body.as_str()), (200, CLEAN), "{spelling:?}");
    }
    for headers in seen.lock().unwrap().iter() {
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains("evil") && !value.contains("1.2.3.4"),
                "{name}: {value} reached the origin"
            );
        }
    }
}

/// The fields a TLS terminator in front passes a client certificate (or its verdict) in,
/// as origins read them: ASP.NET Core's certificate forwarding (`X-Client-Cert`, Azure's
/// `X-ARR-ClientCert`), Envoy's `X-Forwarded-Client-Cert`, Traefik's
/// `X-Forwarded-Tls-Client-Cert`, the nginx recipes' `X-SSL-Client-Cert`,
/// `X-SSL-Client-Verify` and `X-SSL-Client-S-DN`, Tomcat's SSLValve's `ssl_client_cert`.
/// This proxy speaks no TLS: a client's copy can only be forged. An origin signing the
/// client in by it answered a page of that user's, with no credential the cache knows
/// of (no `Authorization`, no cookie), and the route's lifetime stored it for everyone.
#[tokio::test]
async fn client_certificate_fields_never_reach_the_origin() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    const FIELDS: [&str; 8] = [
        "x-client-cert",
        "x-arr-clientcert",
        "x-forwarded-client-cert",
        "x-forwarded-tls-client-cert",
        "x-ssl-client-cert",
        "x-ssl-client-verify",
        "x-ssl-client-s-dn",
        "ssl-client-cert",
    ];
    support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        let user = FIELDS
            .iter()
            .find_map(|name| request.headers().get(*name))
            .map_or("anonymous".to_owned(), |value| {
                format!("account of {}", value.to_str().unwrap_or("?"))
            });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(user))))
    });
    let proxy = start_proxy(
        origin,
        &[
            "--underscores-in-headers",
            "--mode",
            "routes",
            "--ttl",
            "60",
        ],
    );
    for (n, name) in FIELDS.iter().enumerate() {
        let page = format!("GET /home{n} HTTP/1.1\r\nHost: example.com\r\n");
        let field = if *name == "ssl-client-cert" {
            "ssl_client_cert".to_owned()
        } else {
            name.to_string()
        };
        let (status, body) = raw(&proxy, &format!("{page}{field}: CN=alice\r\n")).await;
        assert_eq!((status, body.as_str()), (200, "anonymous"), "{field}");
        let stored = until_cached(&proxy, &page).await;
        assert_eq!(stored, "anonymous", "{field} had alice's page stored");
    }
}
