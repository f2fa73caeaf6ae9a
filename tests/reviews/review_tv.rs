//! Review TV: every field the cache writes itself, checked against its grammar by a strict
//! parser, across every outcome.
//!
//! Downstream caches, CDNs and clients parse these fields; a malformed one can be split,
//! ignored, or read as something else. `Cache-Status` (RFC 9211, an RFC 8941 List) is read
//! by `sfv` and each member's name and parameters are checked for their types; `Age`
//! (delta-seconds), a generated `Date` (IMF-fixdate), `Content-Length` and `Content-Range`
//! of 206 and 416 (RFC 9110 §14.4), `multipart/byteranges` bodies and the fields of a 304
//! built from a stored response (§15.4.5) are checked by hand against their ABNF.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

use support::{Answer, NearTier, Watch, send};

// ---------------------------------------------------------------------------------------
// The strict checkers
// ---------------------------------------------------------------------------------------

/// One `Cache-Status` member, its parameters read by their RFC 9211 types.
#[derive(Debug, Default, PartialEq)]
struct Member {
    name: String,
    hit: bool,
    fwd: Option<String>,
    fwd_status: Option<i64>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    key: Option<String>,
    detail: Option<String>,
}

/// RFC 9211 §2.2's `fwd` values.
const FWD: [&str; 8] = [
    "bypass",
    "method",
    "uri-miss",
    "vary-miss",
    "miss",
    "request",
    "stale",
    "partial",
];

/// The field lines of `name` as one value, as RFC 8941 §4.2 asks a parser to combine them.
fn combined(headers: &HeaderMap, name: &str) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The members of a `Cache-Status` value, read strictly: an RFC 8941 List (RFC 9651's
/// Dates and Display Strings refused, as an RFC 8941 parser does), each member an Item
/// whose value is a Token or a String, each known parameter of its type (§2.1–§2.8).
fn cache_status_members(value: &str) -> Result<Vec<Member>, String> {
    use sfv::{BareItem, ListEntry};
    let list = sfv::Parser::new(value)
        .with_version(sfv::Version::Rfc8941)
        .parse_list::<sfv::List>()
        .map_err(|err| format!("no RFC 8941 List ({err}): {value:?}"))?;
    let mut members = Vec::new();
    for entry in list {
        let ListEntry::Item(item) = entry else {
            return Err(format!("an inner list as a member: {value:?}"));
        };
        let name = match &item.bare_item {
            BareItem::Token(token) => token.as_str().to_owned(),
            BareItem::String(string) => string.as_str().to_owned(),
            other => return Err(format!("a member named by {other:?}: {value:?}")),
        };
        let mut member = Member {
            name,
            ..Member::default()
        };
        for (key, param) in &item.params {
            let wrong = || {
                format!(
                    "parameter {} of the wrong type {param:?}: {value:?}",
                    key.as_str()
                )
            };
            match key.as_str() {
                "hit" => member.hit = param.as_boolean().ok_or_else(wrong)?,
                "stored" => member.stored = param.as_boolean().ok_or_else(wrong)?,
                "collapsed" => member.collapsed = param.as_boolean().ok_or_else(wrong)?,
                "fwd" => {
                    let token = param.as_token().ok_or_else(wrong)?.as_str();
                    if !FWD.contains(&token) {
                        return Err(format!("fwd={token} is none of RFC 9211's: {value:?}"));
                    }
                    member.fwd = Some(token.to_owned());
                }
                "fwd-status" => {
                    let status = i64::from(param.as_integer().ok_or_else(wrong)?);
                    if !(100..=599).contains(&status) {
                        return Err(format!("fwd-status={status} is no status: {value:?}"));
                    }
                    member.fwd_status = Some(status);
                }
                "ttl" => member.ttl = Some(i64::from(param.as_integer().ok_or_else(wrong)?)),
                "key" => {
                    member.key = Some(param.as_string().ok_or_else(wrong)?.as_str().to_owned())
                }
                "detail" => {
                    let detail = match param {
                        BareItem::Token(token) => token.as_str(),
                        BareItem::String(string) => string.as_str(),
                        _ => return Err(wrong()),
                    };
                    member.detail = Some(detail.to_owned());
                }
                _ => {}
            }
        }
        members.push(member);
    }
    Ok(members)
}

/// The layer's own member of `headers`' `Cache-Status`, checked: the field parses, the
/// last member is the layer's (named `name`), no other member is, and its parameters are
/// ones RFC 9211 lets go together (`fwd-status`, `stored` and `collapsed` only beside
/// `fwd`; no `hit` beside `fwd`; the layer's own parameters only).
fn own_member(headers: &HeaderMap, name: &str) -> Result<Member, String> {
    let value = combined(headers, "cache-status").ok_or("no Cache-Status")?;
    let mut members = cache_status_members(&value)?;
    let own = members
        .pop()
        .ok_or_else(|| format!("an empty List: {value:?}"))?;
    if own.name != name {
        return Err(format!("the last member is not the layer's: {value:?}"));
    }
    if members.iter().any(|member| member.name == name) {
        return Err(format!("the layer's member twice: {value:?}"));
    }
    if own.fwd.is_none() && (own.fwd_status.is_some() || own.stored || own.collapsed) {
        return Err(format!(
            "fwd-status, stored or collapsed without fwd: {value:?}"
        ));
    }
    if own.hit && own.fwd.is_some() {
        return Err(format!("hit beside fwd: {value:?}"));
    }
    if own.key.is_some() {
        return Err(format!("a key the layer never sends: {value:?}"));
    }
    Ok(own)
}

/// RFC 9111 §5.1 `Age = delta-seconds`: one line, digits only, and no larger than the
/// 2^31 a cache sends for any overflow (§1.2.2; a recipient reading it into 32 bits
/// would wrap a larger one to a young age).
fn check_age(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let lines: Vec<_> = headers.get_all("age").iter().collect();
    match lines.as_slice() {
        [] => Ok(None),
        [one] => {
            let text = one.to_str().map_err(|_| format!("Age {one:?}"))?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Age {text:?} is no delta-seconds"));
            }
            let secs: u64 = text
                .parse()
                .map_err(|_| format!("Age {text:?} overflows"))?;
            if secs > 1 << 31 {
                return Err(format!("Age {text} past 2^31"));
            }
            Ok(Some(secs))
        }
        more => Err(format!("Age on {} lines: {more:?}", more.len())),
    }
}

/// RFC 9110 §5.6.7: an IMF-fixdate (what a sender generates), as `httpdate` formats it.
fn check_date(headers: &HeaderMap) -> Result<(), String> {
    let lines: Vec<_> = headers.get_all("date").iter().collect();
    match lines.as_slice() {
        [] => Ok(()),
        [one] => {
            let text = one.to_str().map_err(|_| format!("Date {one:?}"))?;
            let parsed = httpdate::parse_http_date(text).map_err(|_| format!("Date {text:?}"))?;
            if httpdate::fmt_http_date(parsed) != text {
                return Err(format!("Date {text:?} is no IMF-fixdate"));
            }
            Ok(())
        }
        more => Err(format!("Date on {} lines: {more:?}", more.len())),
    }
}

/// One `Content-Length` line of digits, equal to `length`.
fn check_length(headers: &HeaderMap, length: usize) -> Result<(), String> {
    let lines: Vec<_> = headers.get_all("content-length").iter().collect();
    match lines.as_slice() {
        [one] if one.as_bytes() == length.to_string().as_bytes() => Ok(()),
        other => Err(format!("Content-Length {other:?} for {length} bytes")),
    }
}

/// RFC 9110 §14.4: `bytes first-last/complete` of a 206 (its body `last - first + 1`
/// bytes), `bytes */complete` of a 416.
fn check_content_range(
    status: StatusCode,
    headers: &HeaderMap,
    body: usize,
    complete: usize,
) -> Result<(), String> {
    let lines: Vec<_> = headers.get_all("content-range").iter().collect();
    let [one] = lines.as_slice() else {
        return Err(format!("Content-Range {lines:?}"));
    };
    let text = one.to_str().map_err(|_| format!("{one:?}"))?;
    let rest = text
        .strip_prefix("bytes ")
        .ok_or_else(|| format!("Content-Range {text:?}"))?;
    let (range, len) = rest
        .split_once('/')
        .ok_or_else(|| format!("Content-Range {text:?}"))?;
    let digits = |s: &str| -> Result<usize, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Range {text:?}"));
        }
        s.parse().map_err(|_| format!("Content-Range {text:?}"))
    };
    if digits(len)? != complete {
        return Err(format!(
            "Content-Range {text:?}: complete length {complete}"
        ));
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        return (range == "*").then_some(()).ok_or(format!("416 {text:?}"));
    }
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| format!("Content-Range {text:?}"))?;
    let (first, last) = (digits(first)?, digits(last)?);
    if first > last || last >= complete || last - first + 1 != body {
        return Err(format!("Content-Range {text:?} for a body of {body}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------

const BODY: &str = "0123456789abcdefghij";
const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// `now + offset` as an IMF-fixdate.
fn date_in(offset: i64) -> String {
    let now = std::time::SystemTime::now();
    let delta = std::time::Duration::from_secs(offset.unsigned_abs());
    httpdate::fmt_http_date(if offset < 0 { now - delta } else { now + delta })
}

/// A body long enough for ranges that are not coalesced.
fn big_body() -> String {
    (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Marks a response as "the origin could not be reached".
fn unreachable() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"502 Bad Gateway\n")));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
        .extensions_mut()
        .insert(tower_memcache::cache::OriginUnreachable);
    response
}

/// An origin of many pages, each named for how it answers; its first call to a page
/// (per path) is its fill, later ones fail or revalidate as the page says.
fn pages() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let calls: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    tower::service_fn(move |request: Request<()>| {
        let path = request.uri().path().to_owned();
        let call = {
            let mut calls = calls.lock().unwrap();
            let n = calls.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let conditional = request.headers().contains_key("if-none-match")
            || request.headers().contains_key("if-modified-since");
        let head = request.method() == Method::HEAD;
        let range = request.headers().get("range").cloned();
        async move {
            let mut fields: Vec<(&str, String)> = vec![
                ("content-type", "text/plain".into()),
                ("etag", "\"v1\"".into()),
                ("last-modified", MODIFIED.into()),
            ];
            let mut status = 200;
            let stale = ("age", "120".to_string());
            match path.as_str() {
                "/plain" => fields.push(("cache-control", "max-age=600".into())),
                "/dated" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push(("date", date_in(0)));
                }
                "/slow" => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    fields.push(("cache-control", "max-age=600".into()));
                }
                "/swr" | "/swr2" | "/swr3" => {
                    fields.push((
                        "cache-control",
                        "max-age=60, stale-while-revalidate=600".into(),
                    ));
                    if call == 1 {
                        fields.push(stale);
                    }
                }
                "/reval" | "/reval2" => {
                    fields.push(("cache-control", "max-age=60".into()));
                    if conditional {
                        status = 304;
                        fields.retain(|(name, _)| *name != "content-type");
                        fields.push(("cache-control", "max-age=600".into()));
                    } else {
                        fields.push(stale);
                    }
                }
                "/sie" | "/sie-upstream" => {
                    if call > 1 {
                        return Ok(Response::builder()
                            .status(503)
                            .header("cache-status", "origin; fwd=miss")
                            .body(Full::new(Bytes::from_static(b"down")))
                            .unwrap());
                    }
                    fields.push(("cache-control", "max-age=60, stale-if-error=600".into()));
                    fields.push(stale);
                    if path == "/sie-upstream" {
                        fields.push(("cache-status", "\"Origin CDN\"; hit; ttl=-60".into()));
                    }
                }
                "/unreach" | "/mr" => {
                    if call > 1 {
                        return Ok(unreachable());
                    }
                    let cc = if path == "/mr" {
                        "max-age=60, must-revalidate"
                    } else {
                        "max-age=60"
                    };
                    fields.push(("cache-control", cc.into()));
                    fields.push(stale);
                }
                "/vary" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push(("vary", "accept-language".into()));
                }
                "/upstream" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push((
                        "cache-status",
                        "\"Origin CDN\"; fwd=uri-miss; stored, mid; hit; ttl=30".into(),
                    ));
                }
                "/upstream-lines" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push(("cache-status", "a; hit".into()));
                    fields.push(("cache-status", "b; fwd=miss; fwd-status=200".into()));
                }
                "/upstream-bad" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push(("cache-status", "Origin CDN; hit".into()));
                }
                "/ancient" => {
                    // A `Date` from another century: an apparent age past 2^31 s.
                    fields.push((
                        "cache-control",
                        "max-age=60, stale-if-error=2147483648".into(),
                    ));
                    fields.push(("date", "Mon, 01 Jan 1900 00:00:00 GMT".into()));
                    if call > 1 {
                        return Ok(Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::from_static(b"down")))
                            .unwrap());
                    }
                }
                "/century" => {
                    // An origin whose clock says 1900, with an `Expires` to match.
                    fields.push(("date", "Mon, 01 Jan 1900 00:00:00 GMT".into()));
                    fields.push(("expires", "Fri, 01 Jan 2100 00:00:00 GMT".into()));
                }
                "/future" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    fields.push(("date", date_in(365 * 24 * 3600)));
                }
                "/huge" => {
                    fields.push(("cache-control", "max-age=99999999999999999999999".into()));
                    fields.push(("age", "99999999999999999999".into()));
                }
                "/private" => fields.push(("cache-control", "private".into())),
                "/ranged" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    if let Some(range) = range {
                        fields.push(("content-range", format!("bytes 0-4/{}", BODY.len())));
                        let _ = range;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"01234")));
                        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                        for (name, value) in fields {
                            response.headers_mut().append(name, value.parse().unwrap());
                        }
                        return Ok(response);
                    }
                }
                "/empty" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    let mut response = Response::new(Full::new(Bytes::new()));
                    for (name, value) in fields {
                        response.headers_mut().append(name, value.parse().unwrap());
                    }
                    return Ok(response);
                }
                "/big" | "/big-gz" => {
                    fields.push(("cache-control", "max-age=600".into()));
                    if path == "/big-gz" {
                        fields.push(("content-encoding", "gzip".into()));
                    }
                    let mut response = Response::new(Full::new(Bytes::from(big_body())));
                    if head {
                        *response.body_mut() = Full::new(Bytes::new());
                    }
                    for (name, value) in fields {
                        response.headers_mut().append(name, value.parse().unwrap());
                    }
                    return Ok(response);
                }
                "/head-first" => fields.push(("cache-control", "max-age=600".into())),
                _ => {
                    status = 404;
                    fields.push(("cache-control", "max-age=600".into()));
                }
            }
            let body = if head || status == 304 {
                Bytes::new()
            } else {
                Bytes::from_static(BODY.as_bytes())
            };
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in fields {
                response.headers_mut().append(name, value.parse().unwrap());
            }
            Ok::<_, Infallible>(response)
        }
    })
}

// ---------------------------------------------------------------------------------------
// The audit of one answer
// ---------------------------------------------------------------------------------------

/// The fields a 304 from a stored 200 may carry (RFC 9110 §15.4.5, and the cache's own).
const NOT_MODIFIED_MAY: [&str; 9] = [
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
    "age",
    "cache-status",
];

/// Every field of `answer` the cache wrote, checked; `Err` names each that fails.
/// `complete` is the stored body's length; `origin_dated`, whether the origin sent the
/// `Date` (its own, not checked).
fn audit(
    answer: &Answer,
    method: &Method,
    name: &str,
    complete: usize,
    origin_dated: bool,
) -> Result<Member, String> {
    let mut problems = Vec::new();
    let own = own_member(&answer.headers, name);
    if let Err(problem) = &own {
        problems.push(problem.clone());
    }
    // A response passed on from the origin carries the origin's `Age`, not the cache's.
    let passed_on = own
        .as_ref()
        .is_ok_and(|own| own.fwd.is_some() && own.fwd_status.is_none() && own.ttl.is_none());
    if !passed_on {
        if let Err(problem) = check_age(&answer.headers) {
            problems.push(problem);
        }
    }
    if !origin_dated {
        if let Err(problem) = check_date(&answer.headers) {
            problems.push(problem);
        }
    }
    let body = answer.body.len();
    let head = method == Method::HEAD;
    match answer.status {
        StatusCode::PARTIAL_CONTENT if passed_on => {}
        StatusCode::PARTIAL_CONTENT => {
            let multipart = answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("multipart/byteranges"));
            if multipart {
                if let Err(problem) = check_multipart(answer, complete) {
                    problems.push(problem);
                }
            } else if let Err(problem) =
                check_content_range(answer.status, &answer.headers, body, complete)
            {
                problems.push(problem);
            }
            if !passed_on {
                if let Err(problem) = check_length(&answer.headers, body) {
                    problems.push(problem);
                }
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            if let Err(problem) =
                check_content_range(answer.status, &answer.headers, body, complete)
            {
                problems.push(problem);
            }
        }
        StatusCode::NOT_MODIFIED => {
            for field in answer.headers.keys() {
                if !NOT_MODIFIED_MAY.contains(&field.as_str()) {
                    problems.push(format!("304 with {field}"));
                }
            }
            if !answer.body.is_empty() {
                problems.push("304 with a body".into());
            }
        }
        _ => {}
    }
    if answer.headers.contains_key("content-length")
        && matches!(answer.status, StatusCode::OK | StatusCode::NOT_FOUND)
    {
        let expected = if head { complete } else { body };
        if let Err(problem) = check_length(&answer.headers, expected) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        own
    } else {
        Err(problems.join("; "))
    }
}

/// RFC 9110 §14.6, RFC 2046 §5.1.1: a `multipart/byteranges` body by its boundary, each
/// part with one valid `Content-Range`, the last delimiter closed.
fn check_multipart(answer: &Answer, complete: usize) -> Result<(), String> {
    let content_type = answer.header("content-type").unwrap_or("");
    let boundary = content_type
        .split(';')
        .find_map(|param| param.trim().strip_prefix("boundary="))
        .ok_or_else(|| format!("no boundary: {content_type:?}"))?;
    let bchars = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if boundary.is_empty()
        || boundary.len() > 70
        || !boundary.bytes().all(bchars)
        || boundary.ends_with(' ')
    {
        return Err(format!("boundary {boundary:?}"));
    }
    if answer.headers.contains_key("content-range") {
        return Err("a multipart 206 with a Content-Range of its own".into());
    }
    let delimiter = format!("--{boundary}");
    let body = &answer.body;
    let closing = format!("\r\n{delimiter}--\r\n");
    let inner = body
        .strip_suffix(&closing)
        .ok_or_else(|| format!("no closing delimiter: {body:?}"))?;
    let inner = inner
        .strip_prefix(&delimiter)
        .ok_or_else(|| format!("no first delimiter: {body:?}"))?;
    for part in inner.split(&format!("\r\n{delimiter}")) {
        let part = part
            .strip_prefix("\r\n")
            .ok_or_else(|| format!("part {part:?}"))?;
        let (head, data) = part
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("part {part:?}"))?;
        let mut fields = HeaderMap::new();
        for line in head.split("\r\n") {
            let (name, value) = line.split_once(':').ok_or_else(|| format!("{line:?}"))?;
            fields.append(
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                value.trim().parse().map_err(|_| format!("{line:?}"))?,
            );
        }
        check_content_range(StatusCode::PARTIAL_CONTENT, &fields, data.len(), complete)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Every outcome of the layer
// ---------------------------------------------------------------------------------------

/// One request of a scenario: method, path, request fields, and whether to wait for the
/// layer's background work after it.
type Step = (
    Method,
    &'static str,
    &'static [(&'static str, &'static str)],
    bool,
);

const GET: Method = Method::GET;
const HEAD: Method = Method::HEAD;

/// Requests that reach every outcome the layer has, in order (fills first).
fn steps() -> Vec<Step> {
    vec![
        (GET, "/plain", &[], true),
        (GET, "/plain", &[], false),
        (HEAD, "/plain", &[], false),
        (GET, "/plain", &[("if-none-match", "\"v1\"")], false),
        (HEAD, "/plain", &[("if-none-match", "\"v1\"")], false),
        (GET, "/plain", &[("if-modified-since", MODIFIED)], false),
        (GET, "/plain", &[("range", "bytes=0-4")], false),
        (GET, "/plain", &[("range", "bytes=-3")], false),
        (GET, "/plain", &[("range", "bytes=5-")], false),
        (GET, "/plain", &[("range", "bytes=0-1,4-5")], false),
        (GET, "/plain", &[("range", "bytes=0-0,-1")], false),
        (GET, "/plain", &[("range", "bytes=100-200")], false),
        (HEAD, "/plain", &[("range", "bytes=0-4")], false),
        (
            GET,
            "/plain",
            &[("range", "bytes=0-4"), ("if-range", "\"v1\"")],
            false,
        ),
        (
            GET,
            "/plain",
            &[("range", "bytes=0-4"), ("if-range", "\"v2\"")],
            false,
        ),
        (GET, "/plain", &[("cache-control", "no-cache")], true),
        (GET, "/plain", &[("cache-control", "max-age=0")], true),
        (Method::POST, "/plain", &[], true),
        (Method::DELETE, "/other", &[], true),
        (GET, "/plain", &[("authorization", "Bearer x")], true),
        (GET, "/dated", &[], true),
        (GET, "/dated", &[], false),
        (GET, "/swr", &[], true),
        (GET, "/swr", &[], true),
        (GET, "/swr", &[], false),
        (GET, "/reval", &[], true),
        (GET, "/reval", &[], true),
        (GET, "/reval", &[], false),
        (GET, "/sie", &[], true),
        (GET, "/sie", &[], true),
        (HEAD, "/sie", &[], true),
        (GET, "/sie-upstream", &[], true),
        (GET, "/sie-upstream", &[], true),
        (GET, "/unreach", &[], true),
        (GET, "/unreach", &[], true),
        (GET, "/mr", &[], true),
        (GET, "/mr", &[], true),
        (HEAD, "/mr", &[], true),
        (GET, "/vary", &[("accept-language", "en")], true),
        (GET, "/vary", &[("accept-language", "fr")], true),
        (GET, "/vary", &[("accept-language", "en")], false),
        (GET, "/upstream", &[], true),
        (GET, "/upstream", &[], false),
        (GET, "/upstream", &[("if-none-match", "\"v1\"")], false),
        (GET, "/upstream", &[("range", "bytes=1-2")], false),
        (GET, "/upstream-lines", &[], true),
        (GET, "/upstream-lines", &[], false),
        (GET, "/upstream-bad", &[], true),
        (GET, "/upstream-bad", &[], false),
        (GET, "/ancient", &[], true),
        (GET, "/ancient", &[], true),
        (GET, "/future", &[], true),
        (GET, "/future", &[], false),
        (GET, "/huge", &[], true),
        (GET, "/huge", &[], false),
        (GET, "/private", &[], true),
        (GET, "/missing", &[], true),
        (GET, "/missing", &[], false),
        (GET, "/never", &[("cache-control", "only-if-cached")], false),
        (
            HEAD,
            "/never",
            &[("cache-control", "only-if-cached")],
            false,
        ),
        (GET, "/empty", &[], true),
        (GET, "/empty", &[], false),
        (GET, "/empty", &[("range", "bytes=0-0")], false),
        (GET, "/plain", &[("cache-control", "only-if-cached")], false),
        (GET, "/plain", &[("range", "bytes=0-1,15-16")], false),
        (GET, "/plain", &[("range", "bytes=0-1,15-16,18-")], false),
        (HEAD, "/head-first", &[], true),
        (GET, "/head-first", &[], true),
        (GET, "/ranged", &[("range", "bytes=0-4")], true),
        (GET, "/ranged", &[("range", "bytes=0-4")], true),
        (GET, "/ranged", &[], false),
        (GET, "/swr2", &[], true),
        (GET, "/swr2", &[("if-none-match", "\"v1\"")], true),
        (GET, "/swr3", &[], true),
        (GET, "/swr3", &[("range", "bytes=0-1")], true),
        (GET, "/reval2", &[], true),
        (GET, "/reval2", &[("if-none-match", "\"v1\"")], true),
        (GET, "/plain", &[("cache-control", "no-store")], true),
        (
            GET,
            "/plain",
            &[("cache-control", "max-stale, min-fresh=100000")],
            true,
        ),
        (GET, "/century", &[], true),
        (GET, "/century", &[], false),
        (GET, "/big", &[], true),
        (GET, "/big", &[("range", "bytes=0-9,500-509")], false),
        (GET, "/big", &[("range", "bytes=-5,0-9,500-509")], false),
        (HEAD, "/big", &[], false),
        (GET, "/big-gz", &[], true),
        (GET, "/big-gz", &[("range", "bytes=0-9,500-509")], false),
        (GET, "/big-gz", &[("range", "bytes=0-9")], false),
    ]
}

/// Runs [`steps`] through a layer on `backend`, then two requests collapsed onto one
/// exchange; every answer audited. Returns what failed, one line each.
async fn audit_layer<B>(backend: B, name: &str) -> Vec<String>
where
    B: tower_memcache::backend::Backend + Clone,
{
    let mut layer = support::layer(backend)
        .mode(CacheMode::Origin)
        .stale_if_unreachable(Some(std::time::Duration::from_secs(3600)));
    if name != "tower-memcache" {
        layer = layer.cache_status_name(name);
    }
    let watch = Watch::of(&layer);
    let svc = layer.layer(pages());
    let mut failures = Vec::new();
    let base = "http://tv.example";
    for (method, path, fields, settle) in steps() {
        let url = format!("{base}{path}");
        let answer = support::bounded(path, send(&svc, method.clone(), &url, fields)).await;
        if settle {
            watch.settled().await;
        }
        let complete = match path {
            "/empty" => 0,
            "/big" | "/big-gz" => 1000,
            _ => BODY.len(),
        };
        let dated = ["/ancient", "/future", "/dated", "/century"].contains(&path);
        if let Err(problem) = audit(&answer, &method, name, complete, dated) {
            failures.push(format!(
                "{method} {path} {fields:?} → {}: {problem}",
                answer.status
            ));
        }
    }
    let url = format!("{base}/slow");
    let (a, b) = tokio::join!(send(&svc, GET, &url, &[]), send(&svc, GET, &url, &[]));
    for answer in [a, b] {
        if let Err(problem) = audit(&answer, &GET, name, BODY.len(), false) {
            failures.push(format!(
                "GET /slow (collapsed) → {}: {problem}",
                answer.status
            ));
        }
    }
    watch.settled().await;
    failures
}

/// Guard: every outcome of the layer (fills, hits, near hits, HEAD, 304s, one range, several,
/// none satisfiable, stale hits, revalidations, stand-ins, 504s, bypasses, a `Vary` miss,
/// collapsed requests, the origin's own `Cache-Status` kept or dropped, skewed `Date`s),
/// with the near tier off and on, under a Token name and a String one, and with memcached
/// down: every field the cache writes parses as its grammar says.
#[tokio::test]
async fn every_field_the_layer_writes_parses_strictly() {
    let mut all = Vec::new();
    for near in [false, true] {
        for name in ["tower-memcache", "Example \"CDN\""] {
            let _near = near.then(NearTier::on);
            for failure in audit_layer(MemoryBackend::new(), name).await {
                all.push(format!("near={near} name={name:?}: {failure}"));
            }
        }
    }
    let down = tower_memcache::backend::TcpBackend::builder()
        .server(format!("127.0.0.1:{}", support::free_port()).as_str())
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    for failure in audit_layer(down, "tower-memcache").await {
        all.push(format!("memcached down: {failure}"));
    }
    assert!(all.is_empty(), "\n{}", all.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------

/// A raw HTTP/1.1 response as text: its status, its fields, its body (read to the end of
/// a `Connection: close` exchange); `Err` when the status line or a field line is not as
/// RFC 9112 §4, §5 write them.
fn parse_raw(text: &str) -> Result<(u16, HeaderMap, String), String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if version != Some("HTTP/1.1") {
        return Err(format!("status line {status_line:?}"));
    }
    let code = code
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("field line {line:?}"))?;
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("field name {name:?}"))?;
        let value = value.trim_matches([' ', '\t']);
        headers.append(name, value.parse().map_err(|_| format!("{line:?}"))?);
    }
    Ok((code.parse().unwrap_or(0), headers, body.to_string()))
}

/// The proxy's answer to `head`, each field it wrote checked (`Cache-Status` when the
/// answer came through the cache layer); what fails is added to `failures`.
async fn proxy_audit(proxy: &support::proxy::Proxy, head: &str, failures: &mut Vec<String>) {
    let text = support::proxy::raw_text(proxy, head).await;
    let (status, headers, body) = match parse_raw(&text) {
        Ok(parsed) => parsed,
        Err(problem) => return failures.push(format!("{head:?}: {problem}")),
    };
    let is_head = head.starts_with("HEAD ");
    let mut problems = Vec::new();
    if headers.contains_key("cache-status") {
        if let Err(problem) = own_member(&headers, "tower-memcache") {
            problems.push(problem);
        }
    }
    if let Err(problem) = check_age(&headers) {
        problems.push(problem);
    }
    if let Err(problem) = check_date(&headers) {
        problems.push(problem);
    }
    let framed = !(is_head || status == 304 || status == 204 || (100..200).contains(&status));
    if framed {
        if let Err(problem) = check_length(&headers, body.len()) {
            if !headers.contains_key("transfer-encoding") {
                problems.push(problem);
            }
        }
    }
    if !problems.is_empty() {
        failures.push(format!("{head:?} → {status}: {}", problems.join("; ")));
    }
}

/// Guard: the proxy's answers, from its cache and of its own (400, 431, 502, 504 for an
/// origin gone or too slow, 504 for `only-if-cached`), to GET and HEAD: a valid status
/// line, one `Content-Length` that frames the body, a `Date`, and a `Cache-Status` that
/// parses, the origin's own kept when it parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_the_proxy_writes_parses_strictly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let origin =
        support::origin::serve_http1(listener, |request: Request<hyper::body::Incoming>| {
            let path = request.uri().path().to_owned();
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                let headers = response.headers_mut();
                headers.insert("cache-control", "max-age=600".parse().unwrap());
                headers.insert("etag", "\"v1\"".parse().unwrap());
                match path.as_str() {
                    "/cs-bad" => {
                        headers.insert("cache-status", "Origin CDN; hit".parse().unwrap());
                    }
                    "/cs-good" => {
                        headers.append("cache-status", "origin; fwd=miss".parse().unwrap());
                        headers.append("cache-status", "\"mid, cdn\"; hit".parse().unwrap());
                    }
                    "/slow" => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
                    "/nostore" => {
                        headers.insert("cache-control", "no-store".parse().unwrap());
                    }
                    _ => {}
                }
                Ok::<_, Infallible>(response)
            }
        });
    let proxy = support::proxy::start_proxy(origin_addr, &["--upstream-timeout", "400ms"]);
    let mut failures = Vec::new();
    for head in [
        "GET /plain HTTP/1.1\r\nHost: a.example\r\n",
        "GET /plain HTTP/1.1\r\nHost: a.example\r\n",
        "HEAD /plain HTTP/1.1\r\nHost: a.example\r\n",
        "GET /plain HTTP/1.1\r\nHost: a.example\r\nIf-None-Match: \"v1\"\r\n",
        "GET /plain HTTP/1.1\r\nHost: a.example\r\nRange: bytes=0-3\r\n",
        "GET /plain HTTP/1.1\r\nHost: a.example\r\nRange: bytes=90-\r\n",
        "GET /cs-bad HTTP/1.1\r\nHost: a.example\r\n",
        "GET /cs-bad HTTP/1.1\r\nHost: a.example\r\n",
        "GET /cs-good HTTP/1.1\r\nHost: a.example\r\n",
        "GET /cs-good HTTP/1.1\r\nHost: a.example\r\n",
        "GET /nostore HTTP/1.1\r\nHost: a.example\r\n",
        "GET /never HTTP/1.1\r\nHost: a.example\r\nCache-Control: only-if-cached\r\n",
        "HEAD /never HTTP/1.1\r\nHost: a.example\r\nCache-Control: only-if-cached\r\n",
        "GET /slow HTTP/1.1\r\nHost: a.example\r\n",
        "HEAD /slow HTTP/1.1\r\nHost: a.example\r\n",
        "POST /slow HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n",
        "GET http://other.example:99999/ HTTP/1.1\r\nHost: a.example\r\n",
        "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n",
        "BREW /x HTTP/1.1\r\nHost: a.example\r\n",
        "GET /x HTTP/1.1\r\nHost: a.example\r\nX-Big: {big}\r\n",
    ] {
        let head = head.replace("{big}", &"x".repeat(200_000));
        proxy_audit(&proxy, &head, &mut failures).await;
    }
    origin.abort();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for head in [
        "GET /gone HTTP/1.1\r\nHost: a.example\r\n",
        "HEAD /gone HTTP/1.1\r\nHost: a.example\r\n",
        "GET /plain HTTP/1.1\r\nHost: a.example\r\n",
    ] {
        proxy_audit(&proxy, head, &mut failures).await;
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Age
// ---------------------------------------------------------------------------------------

/// Attack (an origin whose clock is a century behind, or an entry in memcached another
/// writer dated so): the stored response's `Date` says 1900 and its `Expires` 2100, so it
/// is fresh, and its age is the time since 1900. Every hit went out with `Age: 4005677069`
/// and more: past 2^31, and past 2^32 for a `Date` a few decades earlier. RFC 9111 §1.2.2
/// has a cache write 2^31 for any age it cannot represent (the "infinity" of delta-seconds);
/// a downstream cache or client that reads `Age` into 32 bits (signed, as most C code
/// does) wraps a larger one, and takes a century-old response for a young, or a
/// negative, one. `Age` is written as 2^31 at most.
#[tokio::test]
async fn an_age_past_2_31_seconds_is_written_as_2_31() {
    for date in [
        "Mon, 01 Jan 1900 00:00:00 GMT",
        "Wed, 01 Jan 1800 00:00:00 GMT",
    ] {
        let origin = support::scripted_service::Origin::new(move |_| {
            let lines = vec![
                ("date", date.to_owned()),
                ("expires", "Fri, 01 Jan 2100 00:00:00 GMT".to_owned()),
            ];
            (200, lines, "a century old")
        });
        let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
        let watch = Watch::of(&layer);
        let svc = origin.service(&layer);
        let url = "http://tv.example/century";
        send(&svc, GET, url, &[]).await;
        watch.settled().await;
        for (method, fields) in [
            (GET, &[][..]),
            (HEAD, &[]),
            (GET, &[("if-none-match", "*")]),
            (GET, &[("range", "bytes=0-1")]),
        ] {
            let hit = send(&svc, method.clone(), url, fields).await;
            assert_eq!(
                hit.cache_status(),
                support::HIT,
                "{date} {method} {fields:?}"
            );
            assert_eq!(
                check_age(&hit.headers),
                Ok(Some(1 << 31)),
                "{date} {method} {fields:?}: {hit:?}"
            );
        }
        assert_eq!(origin.calls(), 1);
    }
}

/// The checkers can fail: values a strict reader refuses, made by hand.
#[test]
fn the_checkers_refuse_malformed_fields() {
    let field = |name: &'static str, value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.append(name, http::HeaderValue::from_static(value));
        headers
    };
    for bad in [
        "tower-memcache; hit=1",
        "tower-memcache; fwd=nowhere",
        "tower-memcache; fwd=\"uri-miss\"",
        "tower-memcache; fwd-status=200",
        "tower-memcache; hit; fwd=stale",
        "tower-memcache; ttl=1.5",
        "tower-memcache; stored",
        "tower-memcache; hit, tower-memcache; hit",
        "Example CDN; hit",
        "1; hit",
        "(tower-memcache); hit",
        "tower-memcache; hit,",
        "other; hit",
    ] {
        assert!(
            own_member(&field("cache-status", bad), "tower-memcache").is_err(),
            "{bad}"
        );
    }
    assert!(
        own_member(
            &field("cache-status", "a, tower-memcache; fwd=stale; ttl=-3"),
            "tower-memcache"
        )
        .is_ok()
    );
    for bad in ["-1", "1.0", "", "0x10", "2147483649", "1, 2"] {
        assert!(check_age(&field("age", bad)).is_err(), "{bad:?}");
    }
    assert!(check_date(&field("date", "Sunday, 06-Nov-94 08:49:37 GMT")).is_err());
    let range = |value| field("content-range", value);
    let ok = StatusCode::PARTIAL_CONTENT;
    assert!(check_content_range(ok, &range("bytes 0-4/20"), 5, 20).is_ok());
    for bad in [
        "bytes 0-4/21",
        "bytes 4-0/20",
        "bytes 0-5/20",
        "bytes */20",
        "bytes 0-4/*",
    ] {
        assert!(
            check_content_range(ok, &range(bad), 5, 20).is_err(),
            "{bad}"
        );
    }
}
