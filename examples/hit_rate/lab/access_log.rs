//! Common and Combined Log Format lines (nginx's `combined`, Apache's `common` and
//! `combined`):
//!
//! ```text
//! 203.0.113.7 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://r/" "UA"
//! ```
//!
//! Client, ident, user, `[time]`, the quoted request line, status, body bytes (`-` for
//! none); whatever follows (Combined's referer and user agent, custom fields) is ignored.
//! Written by hand: the format is fixed, the parser is a few dozen lines over bytes, and no
//! crate in the lock parses it (nor the timestamp: no date crate is in the dependency tree).

use std::io::BufRead;

/// The longest line read; a longer one is skipped as malformed (and the reader resyncs at
/// the next newline), so one corrupt line cannot grow a buffer without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The client address as logged (IPv4, IPv6 or a host name).
    pub client: String,
    /// Seconds since the Unix epoch (the log's local time with its offset applied).
    pub time: i64,
    /// The request line, unescaped.
    pub request: Request,
    /// The response status.
    pub status: u16,
    /// Body bytes sent; `-` is `None`.
    pub bytes: Option<u64>,
}

/// The quoted request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `METHOD target [protocol]`, the target reduced to origin form (`/path?query`).
    Line {
        /// The method, as sent.
        method: String,
        /// Path and query.
        target: String,
    },
    /// Anything else (`"-"`, a TLS handshake sent to a plain-text port, garbage).
    Unparsed,
}

/// Why a line was not a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Nothing but whitespace.
    Empty,
    /// Client, ident or user missing.
    Fields,
    /// No `[time]`, or one that does not parse.
    Time,
    /// The request line is not quoted, or its quote never closes.
    Quote,
    /// The status is not three digits.
    Status,
    /// The size is neither digits nor `-`.
    Bytes,
    /// Not UTF-8 outside the request line.
    Encoding,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<LogLine, Malformed> {
    let mut rest = trim_end(line);
    if rest.iter().all(u8::is_ascii_whitespace) {
        return Err(Malformed::Empty);
    }
    let client = token(&mut rest).ok_or(Malformed::Fields)?;
    let _ident = token(&mut rest).ok_or(Malformed::Fields)?;
    let _user = token(&mut rest).ok_or(Malformed::Fields)?;
    let client = std::str::from_utf8(client)
        .map_err(|_| Malformed::Encoding)?
        .to_string();

    let time = bracketed(&mut rest).ok_or(Malformed::Time)?;
    let time = parse_time(time).ok_or(Malformed::Time)?;

    skip_spaces(&mut rest);
    let request = quoted(&mut rest).ok_or(Malformed::Quote)?;
    let request = parse_request(&request);

    let status = token(&mut rest).ok_or(Malformed::Status)?;
    let status = match status {
        [a, b, c] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(Malformed::Status),
    };
    let bytes = match token(&mut rest).ok_or(Malformed::Bytes)? {
        b"-" => None,
        digits if !digits.is_empty() && digits.len() <= 19 => {
            let text = std::str::from_utf8(digits).map_err(|_| Malformed::Bytes)?;
            Some(text.parse().map_err(|_| Malformed::Bytes)?)
        }
        _ => return Err(Malformed::Bytes),
    };
    Ok(LogLine {
        client,
        time,
        request,
        status,
        bytes,
    })
}

/// Reads the next line into `buf` (cleared first), at most [`MAX_LINE_BYTES`] of it;
/// `Ok(None)` at the end, `Ok(Some(false))` for a line that was too long (skipped up to
/// its newline).
pub fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(read_any.then_some(!too_long));
        }
        read_any = true;
        let (chunk, done) = match memchr::memchr(b'\n', available) {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(Some(!too_long));
        }
    }
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [head @ .., last] = line {
        if last.is_ascii_whitespace() {
            line = head;
        } else {
            break;
        }
    }
    line
}

fn skip_spaces(rest: &mut &[u8]) {
    while let [b' ' | b'\t', tail @ ..] = rest {
        *rest = tail;
    }
}

/// The next space-separated token.
fn token<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    skip_spaces(rest);
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let (token, tail) = rest.split_at(end);
    *rest = tail;
    Some(token)
}

/// `[...]`.
fn bracketed<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    skip_spaces(rest);
    let tail = rest.strip_prefix(b"[")?;
    let end = tail.iter().position(|&b| b == b']')?;
    let inside = &tail[..end];
    *rest = &tail[end + 1..];
    Some(inside)
}

/// A double-quoted field, unescaped: Apache writes `\"` and `\\`, nginx `\x22` and other
/// `\xHH` for bytes outside printable ASCII.
fn quoted(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let tail = rest.strip_prefix(b"\"")?;
    let mut out = Vec::with_capacity(tail.len().min(256));
    let mut i = 0;
    while i < tail.len() {
        match tail[i] {
            b'"' => {
                *rest = &tail[i + 1..];
                return Some(out);
            }
            b'\\' => match tail.get(i + 1) {
                Some(b'x') => {
                    match (tail.get(i + 2).and_then(hex), tail.get(i + 3).and_then(hex)) {
                        (Some(high), Some(low)) => {
                            out.push(high << 4 | low);
                            i += 4;
                        }
                        _ => {
                            out.push(b'\\');
                            i += 1;
                        }
                    }
                }
                Some(b'n') => {
                    out.push(b'\n');
                    i += 2;
                }
                Some(b't') => {
                    out.push(b'\t');
                    i += 2;
                }
                Some(&escaped) => {
                    out.push(escaped);
                    i += 2;
                }
                None => return None,
            },
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    None
}

fn hex(byte: &u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `METHOD target [protocol]`; the target in origin form.
fn parse_request(line: &[u8]) -> Request {
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Unparsed;
    };
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Request::Unparsed;
    };
    let protocol_ok = match (parts.next(), parts.next()) {
        (None, None) => true,
        (Some(protocol), None) => protocol.starts_with("HTTP/"),
        _ => false,
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !(protocol_ok && method_ok) {
        return Request::Unparsed;
    }
    let Some(target) = origin_form(target) else {
        return Request::Unparsed;
    };
    Request::Line {
        method: method.to_string(),
        target: target.to_string(),
    }
}

/// `/path?query` from origin form or absolute form (`http://host/path`, sent to proxies).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let after_scheme = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    match after_scheme.find(['/', '?']) {
        Some(at) if after_scheme[at..].starts_with('/') => Some(&after_scheme[at..]),
        Some(_) => None,
        None => Some("/"),
    }
}

/// `10/Oct/2000:13:55:36 -0700` (`$time_local`, `%t`) to seconds since the epoch.
pub fn parse_time(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let (stamp, zone) = text.split_once(' ')?;
    let mut fields = stamp.splitn(4, ':');
    let date = fields.next()?;
    let hour: i64 = number(fields.next()?, 0, 23)?;
    let minute: i64 = number(fields.next()?, 0, 59)?;
    let second: i64 = number(fields.next()?, 0, 60)?;
    let mut date = date.split('/');
    let day: i64 = number(date.next()?, 1, 31)?;
    let month = match date.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = number(date.next()?, 1970, 9999)?;
    if date.next().is_some() {
        return None;
    }
    let zone = zone.trim();
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    // Four ASCII digits, checked before slicing by byte: `+1é1` is four bytes too.
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let offset = sign
        * (number::<i64>(&digits[..2], 0, 23)? * 3600 + number::<i64>(&digits[2..], 0, 59)? * 60);
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn number<T: std::str::FromStr + PartialOrd + Copy>(text: &str, min: T, max: T) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: T = text.parse().ok()?;
    (min <= n && n <= max).then_some(n)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March is 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Result<LogLine, Malformed> {
        parse_line(text.as_bytes())
    }

    fn get(target: &str) -> Request {
        Request::Line {
            method: "GET".into(),
            target: target.into(),
        }
    }

    #[test]
    fn common_log_format() {
        let parsed =
            line(r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#)
                .unwrap();
        assert_eq!(
            parsed,
            LogLine {
                client: "127.0.0.1".into(),
                // 2000-10-10 20:55:36 UTC
                time: 971_211_336,
                request: get("/apache_pb.gif"),
                status: 200,
                bytes: Some(2326),
            }
        );
    }

    #[test]
    fn combined_log_format() {
        let parsed = line(
            r#"198.51.100.4 - - [01/Jan/2024:00:00:01 +0000] "HEAD /news/?page=2 HTTP/1.1" 304 0 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)""#,
        )
        .unwrap();
        assert_eq!(parsed.time, 1_704_067_201);
        assert_eq!(
            parsed.request,
            Request::Line {
                method: "HEAD".into(),
                target: "/news/?page=2".into()
            }
        );
        assert_eq!((parsed.status, parsed.bytes), (304, Some(0)));
    }

    #[test]
    fn dash_size_is_none() {
        let parsed =
            line(r#"10.0.0.1 - - [01/Jan/2024:00:00:01 +0000] "GET / HTTP/1.1" 204 - "-" "-""#)
                .unwrap();
        assert_eq!(parsed.bytes, None);
        assert_eq!(parsed.status, 204);
    }

    #[test]
    fn ipv6_client() {
        let parsed = line(
            r#"2001:db8::8a2e:370:7334 - - [29/Feb/2024:23:59:59 +0100] "GET /x HTTP/2.0" 200 10 "-" "curl/8.5.0""#,
        )
        .unwrap();
        assert_eq!(parsed.client, "2001:db8::8a2e:370:7334");
        // 2024-02-29 22:59:59 UTC
        assert_eq!(parsed.time, 1_709_247_599);
        let parsed =
            line(r#"::1 - - [01/Jan/2024:00:00:00 +0000] "GET /y HTTP/1.1" 200 1"#).unwrap();
        assert_eq!(parsed.client, "::1");
    }

    #[test]
    fn escaped_quotes_in_request_and_user_agent() {
        // Apache: \" and \\ ; nginx: \x22.
        let parsed = line(
            r#"10.0.0.2 - - [01/Jan/2024:00:00:00 +0000] "GET /search?q=\"a\\b\" HTTP/1.1" 200 5 "-" "Agent \"quoted\"""#,
        )
        .unwrap();
        assert_eq!(parsed.request, get(r#"/search?q="a\b""#));
        assert_eq!(parsed.bytes, Some(5));
        let parsed = line(
            r#"10.0.0.2 - - [01/Jan/2024:00:00:00 +0000] "GET /q?x=\x22y\x22 HTTP/1.1" 200 6 "-" "ua""#,
        )
        .unwrap();
        assert_eq!(parsed.request, get(r#"/q?x="y""#));
    }

    #[test]
    fn absolute_form_target_becomes_origin_form() {
        let parsed = line(
            r#"10.0.0.3 - - [01/Jan/2024:00:00:00 +0000] "GET http://example.com/a/b?c HTTP/1.1" 200 1"#,
        )
        .unwrap();
        assert_eq!(parsed.request, get("/a/b?c"));
    }

    #[test]
    fn unparsed_request_lines_are_lines_still() {
        for request in [
            r#""-""#,
            r#""\x16\x03\x01\x00\xA5\x01""#,
            r#""GET""#,
            r#""get / HTTP/1.1""#,
        ] {
            let text =
                format!("10.0.0.4 - - [01/Jan/2024:00:00:00 +0000] {request} 400 157 \"-\" \"-\"");
            let parsed = line(&text).unwrap();
            assert_eq!(parsed.request, Request::Unparsed, "{text}");
            assert_eq!(parsed.status, 400);
        }
    }

    #[test]
    fn malformed_lines() {
        let cases = [
            ("", Malformed::Empty),
            ("   ", Malformed::Empty),
            ("10.0.0.5 -", Malformed::Fields),
            (r#"10.0.0.5 - - "GET / HTTP/1.1" 200 1"#, Malformed::Time),
            (
                r#"10.0.0.5 - - [32/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
                Malformed::Time,
            ),
            (
                r#"10.0.0.5 - - [01/Foo/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1"#,
                Malformed::Time,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00] "GET / HTTP/1.1" 200 1"#,
                Malformed::Time,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] GET / HTTP/1.1 200 1"#,
                Malformed::Quote,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1 200 1"#,
                Malformed::Quote,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 2000 1"#,
                Malformed::Status,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" OK 1"#,
                Malformed::Status,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200"#,
                Malformed::Bytes,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 12ab"#,
                Malformed::Bytes,
            ),
            (
                r#"10.0.0.5 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 99999999999999999999"#,
                Malformed::Bytes,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(line(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn trailing_carriage_return_and_extra_fields() {
        let parsed = line(
            "10.0.0.6 - - [01/Jan/2024:00:00:00 +0000] \"GET /z HTTP/1.1\" 200 3 \"-\" \"ua\" rt=0.001 uct=\"0.000\"\r",
        )
        .unwrap();
        assert_eq!((parsed.status, parsed.bytes), (200, Some(3)));
    }

    #[test]
    fn read_line_bounds_long_lines() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("first\n{long}\nlast");
        let mut reader = std::io::BufReader::with_capacity(1000, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut reader, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"first");
        assert_eq!(read_line(&mut reader, &mut buf).unwrap(), Some(false));
        assert!(buf.is_empty());
        assert_eq!(read_line(&mut reader, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut reader, &mut buf).unwrap(), None);
    }

    #[test]
    fn timestamps_across_the_calendar() {
        assert_eq!(parse_time(b"01/Jan/1970:00:00:00 +0000"), Some(0));
        assert_eq!(parse_time(b"01/Mar/2000:00:00:00 +0000"), Some(951_868_800));
        assert_eq!(
            parse_time(b"31/Dec/2023:23:00:00 -0100"),
            Some(1_704_067_200)
        );
        assert_eq!(
            parse_time(b"01/Jan/2024:05:30:00 +0530"),
            Some(1_704_067_200)
        );
    }
}
