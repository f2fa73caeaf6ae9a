//! The readings of a request path route rules are matched against: the path as an
//! ordinary decoder sees it ([`rule_path`]), and as the most lenient origin might resolve
//! it ([`origin_reading`], every spelling some origin answers with the same page). Bounded
//! whatever the path holds: at most four readings, each a few times the path's length.

use std::borrow::Cow;

/// A request path as route rules see it: percent-encoded unreserved characters decoded
/// (RFC 3986 §6.2.2.2), other escapes kept with upper-case hex (§6.2.2.1), and runs of
/// `/` read as one. The cache key keeps the path byte for byte; this is only what a rule
/// is matched against.
pub(crate) fn rule_path(path: &str) -> Cow<'_, str> {
    let decoded = decode_unreserved(path);
    // Path normalisers answer `//account` and `/account//x` as `/account` (tower-http's
    // `NormalizePathLayer` trims leading slashes, nginx merges slashes): a `no_cache` rule
    // for `/account` must hold for them too, or a victim lured there fills an entry.
    if !decoded.contains("//") {
        return decoded;
    }
    let mut merged = String::with_capacity(decoded.len());
    let mut after_slash = false;
    for c in decoded.chars() {
        if !(c == '/' && after_slash) {
            merged.push(c);
        }
        after_slash = c == '/';
    }
    Cow::Owned(merged)
}

/// `path` with percent-encoded unreserved characters decoded, other escapes upper-cased.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(byte) => {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(byte));
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 0xf)]));
                }
                i += 3;
            }
            None => {
                // The rest up to the next '%' as it is (a `Uri` path is ASCII).
                let next = path[i + 1..].find('%').map_or(path.len(), |at| i + 1 + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

/// The byte `%XY` at `at` stands for, if `bytes[at..]` starts with an escape.
fn escape_at(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// Whether an origin might read `path` as another path than its rule reading: it holds
/// an escape, a `\`, a `;`, an upper-case letter, a non-ASCII byte, a dot segment, a
/// segment ending in `.`, an empty segment or a trailing slash. Most paths hold none: they are their own origin reading.
pub(super) fn may_read_otherwise(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() > 1 && bytes.last() == Some(&b'/')
        || bytes.iter().enumerate().any(|(i, byte)| match byte {
            // Non-ASCII: UTF-8 sent raw, which may spell an ASCII character.
            b'%' | b'\\' | b';' | b'A'..=b'Z' | 0x80.. => true,
            b'/' => matches!(bytes.get(i + 1), Some(b'/' | b'.')),
            // A segment's trailing dot, which Windows drops (`/account.`).
            b'.' => matches!(bytes.get(i + 1), None | Some(b'/')),
            _ => false,
        })
}

/// How many times the origin reading decodes escapes: an origin that decodes twice (a
/// proxy and a framework, each decoding once) reads `%252F` as `/`; a third layer of
/// escapes is no spelling any origin we know of resolves.
const DECODING_PASSES: usize = 2;

/// `path` as the most lenient origin might resolve it: escapes decoded (up to
/// [`DECODING_PASSES`] times, IIS's `%uXXXX` too, with overlong UTF-8 and fullwidth
/// forms of ASCII characters read as those characters, and the text normalised as NFKC), `\` as `/` (IIS, Windows file
/// servers), white space around a segment (Spring) and its trailing dots and spaces
/// (Windows) dropped, cut at a decoded
/// `?`, `#`, NUL (OpenLiteSpeed) or line break (nginx regex locations), letters in lower
/// case (case-insensitive routers and file systems; non-ASCII letters too, and those
/// whose case mapping is ASCII, such as `ſ`, as that ASCII), each segment's `;` parameters
/// dropped (Tomcat, Spring, Jetty), dot segments resolved (RFC 3986 §5.2.4), empty
/// segments and a trailing slash dropped. Only ever used to turn caching off or shorten
/// a lifetime.
///
/// A path NFKC would swell past [`SWELL_LIMIT`] has no reading (see
/// [`compatibility_form`]): here, for a rule's own path, it is read as written.
pub(crate) fn origin_reading(path: &str) -> String {
    origin_readings(path).map_or_else(|| path.to_owned(), |(cut, _)| cut)
}

/// Every reading of `path` by a lenient origin: [`origin_readings`]', and where the path
/// holds `;` parameters, those of the path with each one dropped as it came, up to the
/// next `/` as sent, before anything is decoded. Tomcat (and Spring's `UrlPathHelper`)
/// cut them so: an escaped `/` or `\` inside one is part of the parameter, so
/// `/account;%2F..%2Fnews` is their `/account` and `/static/x/..;%2Fb/..;/account` their
/// `/static/x/../../account`, where decoding first read `/news` and `/static/account`
/// (review SD). The first reading is [`origin_reading`]'s. `None` as for
/// [`origin_readings`].
pub(super) fn every_origin_reading(path: &str) -> Option<Vec<String>> {
    let (cut, read_on) = origin_readings(path)?;
    let mut readings = Vec::with_capacity(4);
    readings.push(cut);
    readings.extend(read_on);
    if path.contains(';') {
        let dropped = path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/");
        let (cut, read_on) = origin_readings(&dropped)?;
        readings.push(cut);
        readings.extend(read_on);
    }
    Some(readings)
}

/// [`origin_reading`], and where it cut the path, the reading of an origin that reads
/// on: nginx keeps an escaped `?`, `#` or line break as a byte of its segment and
/// resolves the dot segments after it, so `/static/x%3F/../../account` is its `/account`
/// (the cut alone read `/static/x`). `None` for a path NFKC would swell past
/// [`SWELL_LIMIT`]: a request's is not cached where rules read paths so.
pub(super) fn origin_readings(path: &str) -> Option<(String, Option<String>)> {
    // Raw too: a request line may hold UTF-8 (`/x/．．/account`), which `Uri` keeps.
    let mut bytes = compatibility_form(fold_to_ascii(path.as_bytes().to_vec()))?;
    for _ in 0..DECODING_PASSES {
        if !bytes.contains(&b'%') {
            break;
        }
        bytes = compatibility_form(fold_to_ascii(decode_all(&bytes)))?;
    }
    bytes.make_ascii_lowercase();
    let end = bytes
        .iter()
        // A newline too: PCRE's `$` (nginx regex locations) matches before a final one.
        .position(|byte| matches!(byte, b'?' | b'#' | 0 | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    let read_on = (end < bytes.len()).then(|| lower_case(resolve_segments(&bytes)));
    Some((lower_case(resolve_segments(&bytes[..end])), read_on))
}

/// A reading with its non-ASCII letters in lower case too (`Ü` as `ü`), as routers that
/// compare without case by Unicode's rules read them (ASP.NET Core's `OrdinalIgnoreCase`,
/// Java's `equalsIgnoreCase`). What is left after [`fold_to_ascii`] lower-cases to no
/// ASCII byte but a letter before a combining mark (`ǰ`'s upper case is `J̌`), so no `/`
/// or `.` appears here that the segments were not resolved with.
///
/// Each character on its own, as those routers compare: `str::to_lowercase` writes `Σ`
/// as `ς` at a word's end and `σ` elsewhere, so a rule's `/ΛΟΓΑΡΙΑΣ` read `/λογαριας`,
/// no prefix of `/λογαριασμος`. And through its upper case: letters that upper-case
/// alike are one to them (`ς` and `σ`, `µ` and `μ`, `ϐ` and `β`), as `Ü` and `ü` are.
/// An upper case of several letters is read as those letters (`և` is `ԵՒ`, so `եւ`;
/// `ᾳ` is `ΑΙ`, so `αι`; `ŉ` is `ʼN`), as routers that compare in full upper case
/// (JavaScript's `toUpperCase`, Python's `casefold`) read it, the way `ß` is `ss`:
/// kept as it was, `/երևան` and `/երեւան` (two spellings of one Armenian word) were two
/// paths, and a `no_cache` rule written with one missed the other (review RL). Those
/// letters are never `/`, `.` or an escape, so no segment changes.
fn lower_case(reading: String) -> String {
    if reading.is_ascii() {
        return reading;
    }
    // Rarely longer: a few letters' upper cases are two or three (`ΐ` is three).
    let mut folded = String::with_capacity(reading.len());
    for c in reading.chars() {
        for upper in c.to_uppercase() {
            folded.extend(upper.to_lowercase());
        }
    }
    folded
}

/// Decoded, lower-cased path bytes resolved as [`origin_reading`] says: `\` as `/`, `;`
/// parameters, trailing dots and spaces, dot segments, empty segments and a trailing
/// slash gone.
fn resolve_segments(bytes: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in bytes.split(|byte| matches!(byte, b'/' | b'\\')) {
        let segment = match segment.iter().position(|byte| *byte == b';') {
            Some(at) => &segment[..at],
            None => segment,
        };
        let segment = trimmed(segment);
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut reading = Vec::with_capacity(bytes.len() + 1);
    for segment in &segments {
        reading.push(b'/');
        reading.extend_from_slice(segment);
    }
    if reading.is_empty() {
        reading.push(b'/');
    }
    String::from_utf8_lossy(&reading).into_owned()
}

/// A segment as lenient origins trim it: white space and control bytes around it gone
/// (Java's `String.trim`, as Spring's `trimTokens` applies it: CVE-2016-5007), then,
/// unless it is a dot segment, the dots and spaces it ends with (Win32 path
/// normalisation: IIS serves `/account.` and `/account%20` as `/account`).
fn trimmed(segment: &[u8]) -> &[u8] {
    let kept = |byte: &u8| *byte > b' ';
    let start = segment.iter().position(kept).unwrap_or(segment.len());
    let end = segment
        .iter()
        .rposition(kept)
        .map_or(start, |last| last + 1);
    let segment = &segment[start..end];
    if matches!(segment, b"." | b"..") {
        return segment;
    }
    let end = segment
        .iter()
        .rposition(|byte| !matches!(byte, b'.' | b' '))
        .map_or(0, |last| last + 1);
    &segment[..end]
}

/// Every escape in `bytes` decoded once: `%XY`, and IIS's `%uXXXX` (as UTF-8).
fn decode_all(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(byte) = escape_at(bytes, i) {
            out.push(byte);
            i += 3;
        } else if let Some(c) = wide_escape_at(bytes, i) {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            i += 6;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The character IIS's `%uXXXX` at `at` stands for (U+FFFD for a lone surrogate), if
/// `bytes[at..]` starts with one.
fn wide_escape_at(bytes: &[u8], at: usize) -> Option<char> {
    if bytes.get(at) != Some(&b'%') || !matches!(bytes.get(at + 1), Some(b'u' | b'U')) {
        return None;
    }
    let mut code = 0u32;
    for offset in 2..6 {
        code = (code << 4) | u32::from(hex_value(*bytes.get(at + offset)?)?);
    }
    Some(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
}

/// Decoded bytes as an origin that normalises Unicode by compatibility (NFKC: Python's
/// `unicodedata.normalize`, Java's `Normalizer`, applied before routing) reads them:
/// every compatibility form as its letters (`𝐚`, `ⓐ` and `ᵃ` as `a`, `ｱ` as `ア`, `①` as
/// `1`) and a letter followed by combining marks as the one letter they compose
/// (`e` + U+0301 as `é`, which a rule for `/café` is written with). [`fold_to_ascii`]'s
/// list has the delimiters among these; this is the rest (review RL's note), by Unicode's
/// own tables. Only the text that is UTF-8 is normalised, each run apart:
/// a byte that is not (an overlong form, half an escape yet to be decoded) stays as it
/// is, so a later pass still reads it.
///
/// `None` when the normal form is more than [`SWELL_LIMIT`] bytes longer: one character
/// may be 18 (U+FDFA), and a 64 KiB path of them took 49 ms to normalise and lower-case,
/// thirty times its plain reading, on every request an attacker sends. No path a route is
/// written for grows so (a halfwidth or fullwidth form is no longer, `㍿` is four
/// characters).
fn compatibility_form(bytes: Vec<u8>) -> Option<Vec<u8>> {
    use unicode_normalization::UnicodeNormalization;
    if bytes.is_ascii() {
        return Some(bytes);
    }
    let normal = |text: &str| {
        unicode_normalization::is_nfkc_quick(text.chars())
            == unicode_normalization::IsNormalized::Yes
    };
    if bytes.utf8_chunks().all(|chunk| normal(chunk.valid())) {
        return Some(bytes);
    }
    let limit = bytes.len().saturating_add(SWELL_LIMIT);
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().nfkc() {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            if out.len() > limit {
                return None;
            }
        }
        out.extend_from_slice(chunk.invalid());
    }
    // What it composed may be one of the fold's letters: `I` and a combining dot above
    // are `İ`, which the fold reads as `i`.
    Some(fold_to_ascii(out))
}

/// How many bytes NFKC may add to a path before [`compatibility_form`] gives up on it.
const SWELL_LIMIT: usize = 1024;

/// Decoded bytes with the non-ASCII spellings of ASCII characters that lenient decoders
/// read as those characters: overlong UTF-8 (`C0 AE` is `.` to IIS 4/5 and old Java
/// decoders, CVE-2000-0884, CVE-2008-2938), the fullwidth forms U+FF01 to U+FF5E (`．`,
/// `／`, `＼`: Windows' best-fit mapping and NFKC read them as `.`, `/`, `\`), the other
/// characters NFKC writes as path delimiters (`‥` U+2025 as `..`, `﹒` U+FE52 as `.`,
/// `﹨` U+FE68 as `\`, `;` U+037E as `;`, `﹪` U+FE6A as `%`, `℀` U+2100 as `a/c`: an
/// origin that normalises so before it resolves reads `/static/‥/account` as
/// `/account`), and the letters Unicode case mappings take to ASCII ones, which an origin that compares paths
/// without case by Unicode's rules reads as those letters: `ſ` (U+017F) upper-cases to `S`
/// and `ı` (U+0131) to `I` (Java's `equalsIgnoreCase`, JavaScript's and Python's
/// `upper()`), the Kelvin sign (U+212A) lower-cases to `k` and `İ` (U+0130) to `i`
/// (Java's `toLowerCase`), and `ß`, `ẞ` and the ligatures U+FB00 to U+FB06 case-fold to
/// their letters (`ss`, `ff`, `fi`, ...: JavaScript's `toUpperCase`, Python's `casefold`).
/// A fold is never longer than the bytes it replaces.
fn fold_to_ascii(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes
        .iter()
        .any(|byte| matches!(byte, 0xc0..=0xc5 | 0xcd | 0xe0..=0xe2 | 0xef | 0xf0))
    {
        return bytes;
    }
    const LIGATURES: [&[u8]; 7] = [b"ff", b"fi", b"fl", b"ffi", b"ffl", b"st", b"st"];
    const DOTS: [&[u8]; 3] = [b".", b"..", b"..."];
    let continues = |byte: u8| byte & 0xc0 == 0x80;
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // The ASCII byte an overlong or fullwidth form stands for.
        let mut one = [0u8];
        let (ascii, len): (&[u8], usize) = match bytes[i..] {
            [lead @ (0xc0 | 0xc1), second, ..] if continues(second) => {
                one[0] = ((lead & 0x1f) << 6) | (second & 0x3f);
                (&one, 2)
            }
            [0xe0, second @ (0x80 | 0x81), third, ..] if continues(third) => {
                one[0] = ((second & 0x3f) << 6) | (third & 0x3f);
                (&one, 3)
            }
            [0xf0, 0x80, third @ (0x80 | 0x81), fourth, ..] if continues(fourth) => {
                one[0] = ((third & 0x3f) << 6) | (fourth & 0x3f);
                (&one, 4)
            }
            // U+FF01..U+FF3F (EF BC 81..BF) and U+FF40..U+FF5E (EF BD 80..9E): the
            // character 0xFEE0 below.
            [0xef, 0xbc, third @ 0x81..=0xbf, ..] => {
                one[0] = third - 0x60;
                (&one, 3)
            }
            [0xef, 0xbd, third @ 0x80..=0x9e, ..] => {
                one[0] = third - 0x20;
                (&one, 3)
            }
            // Case mappings to ASCII letters: ß, İ and ı, ſ, ẞ, the Kelvin sign, and
            // the ligatures U+FB00..U+FB06.
            [0xc3, 0x9f, ..] => (b"ss", 2),
            [0xc4, 0xb0 | 0xb1, ..] => (b"i", 2),
            [0xc5, 0xbf, ..] => (b"s", 2),
            [0xe1, 0xba, 0x9e, ..] => (b"ss", 3),
            [0xe2, 0x84, 0xaa, ..] => (b"k", 3),
            [0xef, 0xac, third @ 0x80..=0x86, ..] => (LIGATURES[usize::from(third - 0x80)], 3),
            // NFKC's path delimiters beyond the fullwidth forms (review RL): `;`
            // (U+037E, `;` even to NFC), the dot leaders and ellipses, `⁇`, the
            // account-of signs (`℀` is `a/c`), and the small and vertical forms.
            [0xcd, 0xbe, ..] => (b";", 2),
            [0xe2, 0x80, third @ 0xa4..=0xa6, ..] => (DOTS[usize::from(third - 0xa4)], 3),
            [0xe2, 0x81, 0x87, ..] => (b"??", 3),
            [0xe2, 0x84, third @ (0x80 | 0x81 | 0x85 | 0x86), ..] => {
                let sign: &[u8] = match third {
                    0x80 => b"a/c",
                    0x81 => b"a/s",
                    0x85 => b"c/o",
                    _ => b"c/u",
                };
                (sign, 3)
            }
            [0xef, 0xb8, third @ (0x94 | 0x96 | 0x99 | 0xb0), ..] => {
                let form: &[u8] = match third {
                    0x94 => b";",
                    0x96 => b"?",
                    0x99 => b"...",
                    _ => b"..",
                };
                (form, 3)
            }
            [
                0xef,
                0xb9,
                third @ (0x92 | 0x94 | 0x96 | 0x9f | 0xa8 | 0xaa),
                ..,
            ] => {
                let form: &[u8] = match third {
                    0x92 => b".",
                    0x94 => b";",
                    0x96 => b"?",
                    0x9f => b"#",
                    0xa8 => b"\\",
                    _ => b"%",
                };
                (form, 3)
            }
            _ => (&bytes[i..=i], 1),
        };
        out.extend_from_slice(ascii);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_paths_decode_unreserved_escapes_and_merge_slashes() {
        assert_eq!(rule_path("/account"), "/account");
        assert_eq!(rule_path("/%61ccount"), "/account");
        assert_eq!(rule_path("/a%2fb%7E%2D"), "/a%2Fb~-");
        // Runs of `/` read as one; an escaped `/` is no `/`.
        assert_eq!(rule_path("//account"), "/account");
        assert_eq!(rule_path("/account///x//"), "/account/x/");
        assert_eq!(rule_path("/%2F/%2Faccount"), "/%2F/%2Faccount");
        assert_eq!(rule_path("/%2f%2F/%61"), "/%2F%2F/a");
        assert_eq!(rule_path("/%zz%4"), "/%zz%4");
        assert_eq!(rule_path("%"), "%");
        // One pass, like the inner service's decoder: a stray `%` stays as it is.
        assert_eq!(rule_path("/%a%30"), "/%a0");
    }

    #[test]
    fn origin_readings_resolve_what_lenient_origins_resolve() {
        for (path, reading) in [
            ("/account", "/account"),
            ("/", "/"),
            ("", "/"),
            ("/Account/", "/account"),
            ("//account//x/", "/account/x"),
            ("/x/../account", "/account"),
            ("/x/..%2Faccount", "/account"),
            ("/x/%2e%2E/account", "/account"),
            ("/%2Faccount", "/account"),
            ("/%252Faccount", "/account"),
            ("/x\\..\\account", "/account"),
            ("/x/..;/account", "/account"),
            ("/account;jsessionid=1", "/account"),
            ("/account;/x.css", "/account/x.css"),
            ("/account%3F.css", "/account"),
            ("/account%23.css", "/account"),
            ("/account%00.css", "/account"),
            ("/account%0A", "/account"),
            ("/account%0d%0a.css", "/account"),
            ("/./account/.", "/account"),
            ("/../../account", "/account"),
            ("/%zz%4", "/%zz%4"),
            ("/caf%C3%A9", "/caf\u{e9}"),
            ("/%ff", "/\u{fffd}"),
            // Windows drops a segment's trailing dots and spaces (review RC).
            ("/account.", "/account"),
            ("/Account.%20./x", "/account/x"),
            ("/a.b/...", "/a.b"),
            ("/x/../.", "/"),
            // Spring trims white space around a segment (review RC).
            ("/%20Account%09/%0b%0c", "/account"),
            ("/x/%20..%20/account", "/account"),
            // IIS's `%u` escapes, overlong UTF-8 and fullwidth forms (review RC).
            ("/x/%u002e%U002E/account", "/account"),
            ("/x/..%u002Faccount", "/account"),
            ("/%u00e9%ud800", "/\u{e9}\u{fffd}"),
            ("/%u00", "/%u00"),
            ("/x/%c0%ae%c0%ae%c0%afaccount", "/account"),
            ("/x/..%c1%9caccount", "/account"),
            ("/x/%e0%80%ae%e0%80%ae/%f0%80%80%aeaccount", "/.account"),
            ("/x/..%ef%bc%8f%EF%BD%81ccount", "/account"),
            ("/%c0%80x", "/"),
            ("/%c0", "/\u{fffd}"),
            ("/%ef%bc%80", "/\u{ff00}"),
            ("/x/\u{ff0e}\u{ff0e}\u{ff0f}\u{ff21}ccount", "/account"),
            // NFKC's other path delimiters (review RL).
            ("/x/\u{2025}/account", "/account"),
            (
                "/x/%E2%80%A4%E2%80%A4/y/\u{fe52}\u{fe52}/\u{fe30}/account",
                "/account",
            ),
            ("/x\u{fe68}..\u{fe68}account\u{37e}.css", "/account"),
            ("/x/%EF%B9%AA2e%ef%b9%aa2E/account%EF%B9%94x", "/account"),
            ("/account\u{2026}/\u{fe19}", "/account"),
            (
                "/account\u{fe56}x/\u{fe5f}/\u{2047}\u{fe14}\u{fe16}",
                "/account",
            ),
            (
                "/dat\u{2100}ache/\u{2101}\u{2105}\u{2106}",
                "/data/cache/a/sc/oc/u",
            ),
            // Every other compatibility form, and letters with combining marks composed
            // (NFKC).
            ("/\u{1d41a}ccount", "/account"),
            ("/%F0%9D%90%9Account/%E2%93%90", "/account/a"),
            ("/\u{24b6}CCOUNT/\u{1d43}\u{1d2c}", "/account/aa"),
            ("/caf\u{65}\u{301}/CAF%45%CC%81", "/caf\u{e9}/caf\u{e9}"),
            ("/%C3%A9/\u{ff71}/\u{2460}", "/\u{e9}/\u{30a2}/1"),
            ("/x/\u{1d7ce}/../\u{1d41a}ccount", "/x/account"),
            ("/SETTI\u{307}NGS/I%CC%87", "/settings/i"),
            ("/%c1%81%CC%81ccount", "/\u{e1}ccount"),
            // Non-ASCII letters in lower case, and Unicode case mappings to ASCII letters
            // (review RF).
            ("/%C3%9Cbersicht/\u{dc}BER", "/\u{fc}bersicht/\u{fc}ber"),
            ("/%C5%BFettings", "/settings"),
            // Each letter on its own, through its upper case: `Σ`, `ς` and `σ` alike
            // wherever they stand, `µ` as `μ` (review RJ).
            (
                "/\u{39b}\u{3a3}/\u{3bb}\u{3c2}x",
                "/\u{3bb}\u{3c3}/\u{3bb}\u{3c3}x",
            ),
            (
                "/%CE%A3%CF%82%CF%83/%C2%B5",
                "/\u{3c3}\u{3c3}\u{3c3}/\u{3bc}",
            ),
            // An upper case of several letters is those letters (review RL).
            (
                "/\u{587}/%D4%B5%D5%92/\u{1fb3}/\u{1fbc}/\u{149}",
                "/\u{565}\u{582}/\u{565}\u{582}/\u{3b1}\u{3b9}/\u{3b1}\u{3b9}/\u{2bc}n",
            ),
            ("/\u{17f}ETTINGS", "/settings"),
            ("/%u017Fettings", "/settings"),
            ("/%25C5%25BFettings", "/settings"),
            ("/SETT%C4%B0NGS/sett%c4%b1ngs", "/settings/settings"),
            ("/%E2%84%AAiosk", "/kiosk"),
            ("/acce%C3%9F/acce\u{1e9e}", "/access/access"),
            (
                "/%EF%AC%80%EF%AC%81%EF%AC%82%EF%AC%83%EF%AC%84%EF%AC%85%EF%AC%86",
                "/fffiflffifflstst",
            ),
            (
                "/%EF%AC%87%C3%9E%C5%BE%E2%84%AB",
                "/\u{fb07}\u{fe}\u{17e}\u{e5}",
            ),
        ] {
            assert_eq!(origin_reading(path), reading, "{path:?}");
        }
        // Where the path is cut, an origin that reads on is a reading too.
        for (path, cut, read_on) in [
            ("/account", "/account", None),
            ("/account%3F.css", "/account", Some("/account?.css")),
            ("/static/x%3F/../../account", "/static/x", Some("/account")),
            (
                "/static/X%23/..%2F../Account",
                "/static/x",
                Some("/account"),
            ),
            ("/static/x%0a/../../account", "/static/x", Some("/account")),
        ] {
            let readings = origin_readings(path).unwrap();
            assert_eq!(
                (readings.0.as_str(), readings.1.as_deref()),
                (cut, read_on),
                "{path:?}"
            );
        }
    }

    /// What a path holds (`;` parameters, escaped slashes, dot segments, in any number)
    /// never multiplies its readings: at most four, none longer than three times the path
    /// and NFKC's allowance (a letter's lower case may be three), so the rules cost what
    /// the path's length does, whatever an attacker puts in it (review SF).
    #[test]
    fn a_path_has_few_readings_whatever_it_holds() {
        for unit in [
            ";",
            ";%2F..%2F",
            "/..;/",
            "/./",
            "%2F..",
            ";a=%5C..%5C/",
            "%3F/../",
            "%252F..%252F",
            "/\u{ff0e}\u{ff0e}/",
            ";%0A/..",
            "\u{390}",
        ] {
            for count in [1, 64, 4096] {
                let path = format!("/static/{}", unit.repeat(count));
                let readings = every_origin_reading(&path).expect("no NFKC swell");
                assert!(readings.len() <= 4, "{unit:?} x {count}: {readings:?}");
                let bound = 3 * (path.len() + SWELL_LIMIT);
                assert!(
                    readings.iter().all(|reading| reading.len() <= bound),
                    "{unit:?} x {count}"
                );
            }
        }
    }

    #[test]
    fn only_odd_paths_are_read_again() {
        for odd in [
            "/a/", "/A", "/%61", "/a\\b", "/a;b", "/a/./b", "/a/../b", "//a", "/a/.b", "/a.",
            "/a./b", "/\u{e9}",
        ] {
            assert!(may_read_otherwise(odd), "{odd:?}");
        }
        for plain in ["/", "/a", "/a/b.css", "/a.b/c-d_e~f", "/a/b.c.d", ""] {
            assert!(!may_read_otherwise(plain), "{plain:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any path: no panic. A path whose every `%` starts an escape: a rule path is its
            /// own rule path. (A stray `%` can meet a decoded hex digit, `%a%30` → `%a0`, as
            /// in any single-pass decoder, the inner service's included: rules match what one
            /// decoding pass sees, never a second.)
            #[test]
            fn rule_paths_are_stable(
                path in "[/a-zA-Z0-9%._~-]{0,24}",
                escaped in "([/a-zA-Z0-9._~-]|%[0-9a-fA-F]{2}){0,12}",
            ) {
                let _ = rule_path(&path);
                let once = rule_path(&escaped).into_owned();
                prop_assert_eq!(rule_path(&once), once.as_str());
            }

            /// A path the layer does not read again (most paths) is its own origin reading,
            /// so skipping the reading changes no decision.
            #[test]
                        fn plain_paths_are_their_own_origin_reading(path in "(/[a-z0-9._~-]{1,6}){1,5}") {
                if !may_read_otherwise(&path) {
                    prop_assert_eq!(origin_reading(&path), path);
                }
            }

            /// Any bytes, any text: decoding and folding never panic, and folding only
            /// shortens; the origin reading of any text is a path (review RC's `%u`,
            /// overlong and fullwidth forms, trimming).
            #[test]
            fn any_input_is_read_without_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..48),
                text in "([/%uUcCeEfF0-9a-fA-F.;\\\\ \t]|\\PC){0,40}",
            ) {
                let folded = fold_to_ascii(bytes.clone());
                prop_assert!(folded.len() <= bytes.len());
                let _ = decode_all(&bytes);
                let reading = origin_reading(&text);
                prop_assert!(reading.starts_with('/'));
                let _ = may_read_otherwise(&text);
            }

            /// Any path: no panic, and the origin reading is its own origin reading when
            /// it holds no escape (escapes are decoded a bounded number of times).
            #[test]
            fn origin_readings_are_stable(path in "[/a-zA-Z0-9%._~;\\\\-]{0,32}") {
                let reading = origin_reading(&path);
                if !reading.contains('%') {
                    prop_assert_eq!(origin_reading(&reading), reading);
                }
            }
        }
    }
}
