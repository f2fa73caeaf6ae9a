//! The lines of a reply: found within a bound, and read as a one-line reply, a `VALUE`
//! header or a `STAT` line; errors quote at most a short snippet of the line.

use std::ops::Range;

use super::*;

/// How much of an offending line is copied into an error, so errors stay small and printable.
pub(super) const SNIPPET_LEN: usize = 64;

/// Finds the line starting at `start`. Returns its content (without `\r\n`) and the offset just
/// past it, or `Ok(None)` if the terminator has not arrived yet.
///
/// Only the first `max_line_len + 2` bytes are searched, so a huge buffer without a newline is
/// rejected after bounded work rather than scanned in full on every retry.
pub(super) fn read_line(
    buf: &[u8],
    start: usize,
    max_line_len: usize,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(max_line_len.saturating_add(2))];
    if let Some(newline) = memchr::memchr(b'\n', window) {
        return match newline.checked_sub(1) {
            Some(cr) if window[cr] == b'\r' => Ok(Some((&window[..cr], start + newline + 1))),
            // Without its `\r`, content up to the newline is already too long: the same
            // error as when the newline has not arrived yet (below), however the bytes
            // were split into reads.
            _ if newline > max_line_len => Err(ProtocolError::LineTooLong { max: max_line_len }),
            _ => Err(ProtocolError::BareLineFeed {
                line: snippet(&window[..newline]),
            }),
        };
    }
    // No newline yet. Content of `max_line_len` bytes may still be followed by "\r\n", so only
    // fail once the bytes present already rule that out.
    let longest_prefix = max_line_len.saturating_add(1);
    let too_long = rest.len() > longest_prefix
        || (rest.len() == longest_prefix && rest.last() != Some(&b'\r'));
    if too_long {
        Err(ProtocolError::LineTooLong { max: max_line_len })
    } else {
        Ok(None)
    }
}

/// Parses a reply that is a single line (everything except `VALUE`/`STAT` listings).
pub(super) fn parse_single_line(line: &[u8]) -> Result<Reply, ProtocolError> {
    let reply = match line {
        b"END" => Reply::Values(Vec::new()),
        b"STORED" => Reply::Stored,
        b"NOT_STORED" => Reply::NotStored,
        b"EXISTS" => Reply::Exists,
        b"NOT_FOUND" => Reply::NotFound,
        b"DELETED" => Reply::Deleted,
        b"TOUCHED" => Reply::Touched,
        b"OK" => Reply::Ok,
        _ => {
            if let Some(reply) = parse_error_line(line) {
                reply
            } else if let Some(version) = after_keyword(line, b"VERSION") {
                let version = std::str::from_utf8(version)
                    .map_err(|_| ProtocolError::NonUtf8 { what: "version" })?;
                Reply::Version(version.to_owned())
            } else if line.first().is_some_and(u8::is_ascii_digit) {
                // protocol.txt: after a shrinking decr the number "MAY be space-padded at the end".
                let digits_end = line.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                let number =
                    parse_u64(&line[..digits_end]).ok_or_else(|| ProtocolError::InvalidNumber {
                        line: snippet(line),
                    })?;
                Reply::Number(number)
            } else {
                return Err(ProtocolError::UnknownLine {
                    line: snippet(line),
                });
            }
        }
    };
    Ok(reply)
}

/// Recognises `ERROR`, `CLIENT_ERROR <msg>` and `SERVER_ERROR <msg>`.
///
/// Messages are human-readable diagnostics, so odd bytes are replaced rather than rejected;
/// a bare `ERROR` may also carry a message (some admin commands send `ERROR <msg>`).
pub(super) fn parse_error_line(line: &[u8]) -> Option<Reply> {
    if after_keyword(line, b"ERROR").is_some() {
        Some(Reply::Error)
    } else if let Some(message) = after_keyword(line, b"CLIENT_ERROR") {
        Some(Reply::ClientError(
            String::from_utf8_lossy(message).into_owned(),
        ))
    } else {
        after_keyword(line, b"SERVER_ERROR")
            .map(|message| Reply::ServerError(String::from_utf8_lossy(message).into_owned()))
    }
}

/// The fields of a `VALUE <key> <flags> <bytes> [<cas>]` line.
pub(super) struct ValueHeader<'a> {
    /// The echoed key (checked against the keys asked, not decoded).
    pub(super) key: &'a [u8],
    /// Client flags.
    pub(super) flags: u32,
    /// Announced data length.
    pub(super) len: usize,
    /// Cas token, for gets.
    pub(super) cas: Option<u64>,
}

/// Parses a `VALUE` header; its length is checked against the limits by the caller, before
/// any data is awaited.
pub(super) fn parse_value_header(line: &[u8]) -> Result<ValueHeader<'_>, ProtocolError> {
    let malformed = |reason: &'static str| ProtocolError::MalformedValueHeader {
        reason,
        line: snippet(line),
    };
    // Empty fields are skipped so that a doubled space is tolerated rather than misread.
    let mut fields = Fields { line, pos: 0 };
    // The caller only dispatches lines that start with the VALUE keyword.
    let _keyword = fields.next();
    let key = fields.next().ok_or_else(|| malformed("missing key"))?;
    let flags = fields.next().ok_or_else(|| malformed("missing flags"))?;
    let len = fields
        .next()
        .ok_or_else(|| malformed("missing data length"))?;
    let cas = fields.next();
    if fields.next().is_some() {
        return Err(malformed("unexpected trailing field"));
    }

    let flags = parse_u64(flags).ok_or_else(|| malformed("flags are not a decimal number"))?;
    let flags = u32::try_from(flags).map_err(|_| malformed("flags exceed 32 bits"))?;
    let len = parse_u64(len)
        .and_then(|len| usize::try_from(len).ok())
        .ok_or_else(|| malformed("data length is not a decimal number"))?;
    let cas = match cas {
        Some(cas) => Some(parse_u64(cas).ok_or_else(|| malformed("cas is not a decimal number"))?),
        None => None,
    };
    Ok(ValueHeader {
        key,
        flags,
        len,
        cas,
    })
}

/// The space-separated, non-empty fields of a line (what `split(' ')` without the empty
/// fields gives, found with `memchr` rather than a test per byte).
struct Fields<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Fields<'_> {
    /// Where the next field sits in the line.
    fn next_at(&mut self) -> Option<Range<usize>> {
        let rest = self.line.get(self.pos..)?;
        let start = self.pos + rest.iter().position(|&b| b != b' ')?;
        let field = self.line.get(start..)?;
        let end = start + memchr::memchr(b' ', field).unwrap_or(field.len());
        self.pos = end;
        Some(start..end)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let at = self.next_at()?;
        self.line.get(at)
    }
}

/// Splits `STAT <name> <value>`. The value is the rest of the line and may contain spaces
/// (`stats sizes` can report an error message) or be empty.
pub(super) fn parse_stat_line(line: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let rest = after_keyword(line, b"STAT").unwrap_or_default();
    let rest =
        std::str::from_utf8(rest).map_err(|_| ProtocolError::NonUtf8 { what: "STAT line" })?;
    let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
    if name.is_empty() {
        return Err(ProtocolError::MalformedStat {
            line: snippet(line),
        });
    }
    Ok((name, value))
}

/// If `line` is `keyword` alone or `keyword` followed by a space, returns what follows the
/// space (empty for the bare keyword). Requiring the space keeps `ERRORS` from matching `ERROR`.
pub(super) fn after_keyword<'a>(line: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(keyword)?;
    match rest.split_first() {
        None => Some(rest),
        Some((&b' ', tail)) => Some(tail),
        Some(_) => None,
    }
}

/// Parses a non-empty run of ASCII digits; rejects signs, spaces and overflow.
pub(super) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A lossy, truncated copy of `line` for error messages.
pub(super) fn snippet(line: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&line[..line.len().min(SNIPPET_LEN)]).into_owned();
    if line.len() > SNIPPET_LEN {
        text.push_str("...");
    }
    text
}

/// Builds the error for a line that has no place in the current multi-line reply.
pub(super) fn unexpected_line(section: Section, line: &[u8]) -> ProtocolError {
    ProtocolError::UnexpectedLine {
        section: section.name(),
        line: snippet(line),
    }
}

/// The two multi-line reply kinds; which one is fixed by the reply's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    /// `VALUE` blocks (get/gets).
    Values,
    /// `STAT` lines.
    Stats,
}

impl Section {
    /// Classifies a line as the start of a `VALUE` block or a `STAT` line.
    pub(super) fn of(line: &[u8]) -> Option<Section> {
        if after_keyword(line, b"VALUE").is_some() {
            Some(Section::Values)
        } else if after_keyword(line, b"STAT").is_some() {
            Some(Section::Stats)
        } else {
            None
        }
    }

    /// Name used in error messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Section::Values => "get",
            Section::Stats => "stats",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
    #[test]
    fn fields_are_the_non_empty_pieces_between_spaces(
        line in proptest::collection::vec(
            proptest::sample::select(vec![b' ', b'a', b'7', b'\xff']),
            0..40,
        ),
    ) {
        let fields: Vec<&[u8]> = Fields { line: &line, pos: 0 }.collect();
        let split: Vec<&[u8]> =
            line.split(|&b| b == b' ').filter(|field| !field.is_empty()).collect();
        proptest::prop_assert_eq!(fields, split);
    }
    }
}
