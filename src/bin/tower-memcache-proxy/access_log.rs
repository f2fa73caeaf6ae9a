//! The access log: one line per request on stdout, nginx's `combined` format followed by
//! the cache outcome and the time to the response head:
//!
//! ```text
//! 127.0.0.1 - - [03/Dec/2026:13:52:40 +0000] "GET /index.html HTTP/1.1" 200 6 "-" "curl/8.5.0" "tower-memcache; hit" 0.000
//! ```
//!
//! The cache outcome is the proxy's own member of the response's `Cache-Status` (RFC 9211:
//! the last one), `-` when the cache did not see the request (a 400 for a target the proxy
//! refuses); the members of caches nearer the origin go to the client but not here, so an
//! origin (or a client whose field it reflects) cannot make a miss read as a hit. The
//! size is the response's `Content-Length`, `-` when the body streams without one. A
//! request whose client hangs up before the response head is logged with status 499 and
//! `-` for size and outcome, as nginx does: a client cannot reach the origin unlogged by
//! closing its connection first. A request whose head the HTTP server refuses to parse
//! (malformed, or larger than the proxy takes) is logged with the server's 400 or 431 and
//! `"-"` for the request line. With `--access-log-query off`, the target is written
//! without its query (a bare `?` where one was) and the `Referer` without its query and
//! fragment, so that secrets sent in URLs stay out of the log. Quotes, backslashes and bytes
//! that are not printable ASCII are written as `\xHH`, as nginx does, so a client cannot
//! forge a line.
//!
//! The lines are written by a thread of their own ([`log_sink`]): a log reader that stops
//! reading then costs log lines, never requests.

use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Version};
use pin_project_lite::pin_project;
use tower::Service;

use crate::log_sink;

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Longest request target and header value written, in bytes: a line stays bounded.
const MAX_FIELD: usize = 2048;

/// Logs every request the inner service answers, when the response head is ready.
#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    pub(crate) inner: S,
    pub(crate) peer: IpAddr,
    /// `--access-log`: off, requests pass with nothing recorded.
    pub(crate) enabled: bool,
    /// `--access-log-query`: off, the target and the `Referer` are written without their
    /// query ([`without_query`]).
    pub(crate) queries: bool,
}

/// What the line needs from the request, kept until the response.
struct Pending {
    peer: IpAddr,
    request_line: String,
    referer: String,
    user_agent: String,
    started: Instant,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AccessLog<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = Infallible>,
{
    type Response = Response<ResB>;
    type Error = Infallible;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if !self.enabled {
            return Logged {
                inner: self.inner.call(request),
                pending: None,
            };
        }
        let mut request_line = String::with_capacity(64);
        escape_into(&mut request_line, request.method().as_str().as_bytes());
        request_line.push(' ');
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str())
            .as_bytes();
        escape_into(&mut request_line, self.kept(target));
        request_line.push(' ');
        request_line.push_str(version(request.version()));
        let pending = Pending {
            peer: self.peer,
            request_line,
            referer: field(request.headers(), &header::REFERER, |value| {
                self.kept(value)
            }),
            user_agent: field(request.headers(), &header::USER_AGENT, |value| value),
            started: Instant::now(),
        };
        Logged {
            inner: self.inner.call(request),
            pending: Some(pending),
        }
    }
}

impl<S> AccessLog<S> {
    /// What of a URL the log keeps: all of it, or without its query (`--access-log-query
    /// off`).
    fn kept<'a>(&self, url: &'a [u8]) -> &'a [u8] {
        if self.queries {
            url
        } else {
            without_query(url)
        }
    }
}

/// `url` without its query and fragment; a bare `?` stays where a query was, so that a
/// reader still tells `/search?` from `/search`. Secrets travel in queries (reset tokens,
/// signed links, API keys) and, from a browser on such a page, in `Referer`.
fn without_query(url: &[u8]) -> &[u8] {
    match memchr::memchr2(b'?', b'#', url) {
        Some(at) if url[at] == b'?' => &url[..=at],
        Some(at) => &url[..at],
        None => url,
    }
}

pin_project! {
    /// The inner service's future; writes the line when it completes, or with status 499
    /// when dropped before (its client gone).
    pub(crate) struct Logged<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for Logged<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                write_line(&pending, CLIENT_CLOSED, "-", "-");
            }
        }
    }
}

/// nginx's status for a request whose client closed the connection before the response.
const CLIENT_CLOSED: u16 = 499;

impl<F, B> Future for Logged<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            log_response(&pending, response);
        }
        Poll::Ready(result)
    }
}

/// Logs a request that hyper answered itself before any service saw it, from the error its
/// connection ended with: a head it could not parse (400), too large (431) or with a target
/// too long (414). nginx logs these too; without a line, a client probing for request
/// smuggling with malformed heads would leave no trace. The request line is unknown (`-`);
/// hyper's answer has no body. Other connection errors (resets, timeouts, HTTP/2 protocol
/// errors) answered nothing and log nothing here.
pub(crate) fn log_refused_head(peer: IpAddr, error: &(dyn Error + Send + Sync + 'static)) {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        return;
    };
    let status = if error.is_parse_too_large() {
        // hyper tells a long target from a large head only in its message.
        if error.to_string().contains("URI") {
            414
        } else {
            431
        }
    } else if error.is_parse() && !error.is_parse_status() && !error.is_parse_version_h2() {
        400
    } else {
        return;
    };
    let pending = Pending {
        peer,
        request_line: "-".to_string(),
        referer: "-".to_string(),
        user_agent: "-".to_string(),
        started: Instant::now(),
    };
    write_line(&pending, status, "0", "-");
}

fn log_response<B>(pending: &Pending, response: &Response<B>) {
    let headers = response.headers();
    let size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("-");
    let outcome = match headers.get(CACHE_STATUS) {
        None => "-".to_string(),
        Some(value) => {
            let mut text = String::with_capacity(64);
            escape_into(&mut text, own_member(value.as_bytes()));
            text
        }
    };
    write_line(pending, response.status().as_u16(), size, &outcome);
}

/// The last member of a `Cache-Status` value: the layer appends its own after those of
/// the caches nearer the origin (which may be the origin's or its client's words), and
/// its own never holds a comma.
fn own_member(value: &[u8]) -> &[u8] {
    let last = value
        .iter()
        .rposition(|&b| b == b',')
        .map_or(value, |comma| &value[comma + 1..]);
    let start = last
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(last.len());
    &last[start..]
}

fn write_line(pending: &Pending, status: u16, size: &str, outcome: &str) {
    let mut line = String::with_capacity(
        160 + pending.request_line.len() + pending.referer.len() + pending.user_agent.len(),
    );
    let _ = write!(
        line,
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" \"{}\" {:.3}",
        pending.peer,
        clf_time(SystemTime::now()),
        pending.request_line,
        status,
        size,
        pending.referer,
        pending.user_agent,
        outcome,
        pending.started.elapsed().as_secs_f64(),
    );
    line.push('\n');
    log_sink::stdout().push(line);
}

/// A header's value (what `kept` keeps of it) escaped, `-` when absent.
fn field(headers: &HeaderMap, name: &HeaderName, kept: impl Fn(&[u8]) -> &[u8]) -> String {
    match headers.get(name) {
        None => "-".to_string(),
        Some(value) => {
            let value = kept(value.as_bytes());
            let mut text = String::with_capacity(value.len().min(MAX_FIELD));
            escape_into(&mut text, value);
            text
        }
    }
}

/// Appends `bytes` (at most [`MAX_FIELD`] of them) with `"`, `\` and anything but
/// printable ASCII as `\xHH`.
fn escape_into(out: &mut String, bytes: &[u8]) {
    for &byte in bytes.iter().take(MAX_FIELD) {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' || byte == b' ' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
}

fn version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// `03/Dec/2026:13:52:40 +0000`: the Common Log Format's time, in UTC.
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rest = secs % 86_400;
    let month_name = MONTHS
        .get(usize::from(month.saturating_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{day:02}/{month_name}/{year}:{:02}:{:02}:{:02} +0000",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31): Howard Hinnant's algorithm, for
/// days from the epoch on (all `SystemTime::now` gives on a working clock).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        year,
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clf_time_matches_known_dates() {
        let at = |secs| clf_time(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        // 2000-02-29 (a leap day) 13:55:36.
        assert_eq!(at(951_832_536), "29/Feb/2000:13:55:36 +0000");
        assert_eq!(at(1_796_305_960), "03/Dec/2026:13:52:40 +0000");
    }

    #[test]
    fn escapes_what_could_forge_a_line() {
        let mut out = String::new();
        escape_into(&mut out, b"a \"b\\\n\xff");
        assert_eq!(out, "a \\x22b\\x5C\\x0A\\xFF");
    }

    #[test]
    fn queries_and_fragments_are_cut_off() {
        assert_eq!(without_query(b"/a?token=1"), b"/a?");
        assert_eq!(without_query(b"/a"), b"/a");
        assert_eq!(without_query(b"http://h/a#x?y"), b"http://h/a");
        assert_eq!(without_query(b"http://h/a?y#x"), b"http://h/a?");
        assert_eq!(without_query(b"?"), b"?");
    }

    #[test]
    fn the_outcome_is_the_last_member() {
        assert_eq!(own_member(b"tower-memcache; hit"), b"tower-memcache; hit");
        assert_eq!(
            own_member(b"origin; hit, tower-memcache; fwd=uri-miss"),
            b"tower-memcache; fwd=uri-miss"
        );
        assert_eq!(own_member(b"a,"), b"");
    }
}
