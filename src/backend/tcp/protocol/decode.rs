//! Reply parsing: a byte slice read as one reply, bounded by the request it answers.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use super::asked::KeyCheck;
use super::lines::{
    Section, ValueHeader, parse_error_line, parse_single_line, parse_stat_line, parse_value_header,
    read_line, snippet, unexpected_line,
};
use super::*;

/// The largest value a memcached can hold: its `-I` goes up to 1 GiB. A value announced
/// larger is refused as broken; one between [`Limits::max_value_len`] and this is skipped
/// (see [`Decoder`]).
const MAX_ITEM: usize = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Reply parsing
// ---------------------------------------------------------------------------------------------

/// Parses one reply to a request that asked `asked` from the front of `buf`.
///
/// Value data is copied out of `buf`, since a plain slice cannot be shared; the connection uses
/// [`decode`], which shares its buffer instead. Errors are returned as soon as a violation is
/// visible, even if the rest of the reply has not arrived. The connection uses [`decode`];
/// this copying twin exists for tests and fuzzing, which have only a slice.
#[cfg(test)]
pub(crate) fn parse_reply(
    buf: &[u8],
    limits: &Limits,
    asked: &Asked,
) -> Result<Frame, ProtocolError> {
    let mut values = Vec::new();
    let skipping = Skipping {
        done: &[],
        stop: None,
    };
    let parsed = parse_raw(buf, limits, asked, &mut values, skipping, &mut 0)?;
    Ok(match parsed {
        None => Frame::Incomplete,
        Some((raw, len)) => Frame::Complete {
            reply: raw.into_reply(&mut values, |range| Bytes::copy_from_slice(&buf[range])),
            len,
        },
    })
}

/// Takes one complete reply, to a request that asked `asked`, off the front of `buf`, with
/// a fresh [`Decoder`] (tests; a connection keeps one).
#[cfg(test)]
pub(crate) fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    asked: &Asked,
) -> Result<Option<Reply>, ProtocolError> {
    Decoder::default().decode(buf, limits, asked)
}

/// Decodes a connection's replies, keeping the scratch space of its parses: the offsets of
/// a get reply's values are found before its bytes are split off, and would otherwise take
/// an allocation of their own per reply.
///
/// A value over [`Limits::max_value_len`] (and within [`MAX_ITEM`]) is another client's
/// on a shared memcached (one configured for larger items, or a server started with a
/// larger `-I`): refusing it would drop the connection, every caller pipelined on it,
/// on each read of the key. It is skipped instead, never buffered: its bytes are cut out
/// of the buffer as they arrive, and the reply goes on without it, its key read as a miss.
#[derive(Default)]
pub(crate) struct Decoder {
    values: Vec<PendingValue>,
    /// How many bytes the incomplete reply at the front of the buffer needs at least, as
    /// far as its last value header says ([`wanted`](Self::wanted)).
    wanted: usize,
    /// The value over the limit whose bytes are being cut out of the buffer, if any.
    skip: Option<Oversized>,
    /// The positions of the asked keys whose values were skipped in the reply being read:
    /// the reply's bytes left in the buffer continue its values, and those keys were
    /// answered.
    skipped: Vec<usize>,
}

impl Decoder {
    /// Most value offsets kept between replies (a larger multi-get's go with it).
    const KEPT: usize = 64;

    /// The largest allocation a small value may share with the reply it came in: past
    /// it, a value under an eighth of it is copied (see [`Decoder::decode`]). Four times
    /// a connection's first read buffer, so a hit on a small entry never copies.
    const SHARED: usize = 64 * 1024;

    /// Takes one complete reply, to a request that asked `asked`, off the front of `buf`;
    /// called again with the same `asked` until it is complete.
    ///
    /// Returns `Ok(None)` and leaves `buf` untouched when the reply is incomplete, but for
    /// the bytes of a value over the limit, which are cut out as they arrive. After an error
    /// the stream is out of step: the decoder goes with its connection. Value data are
    /// zero-copy slices of the bytes split off `buf`.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        asked: &Asked,
    ) -> Result<Option<Reply>, ProtocolError> {
        self.values.clear();
        if self.values.capacity() > Self::KEPT {
            self.values = Vec::new();
        }
        self.wanted = 0;
        let (raw, len) = loop {
            if self.skip.is_some() && !self.skip_on(buf)? {
                return Ok(None);
            }
            let mut oversized = None;
            let skipping = Skipping {
                done: &self.skipped,
                stop: Some(&mut oversized),
            };
            match parse_raw(
                buf,
                limits,
                asked,
                &mut self.values,
                skipping,
                &mut self.wanted,
            )? {
                Some(parsed) => break parsed,
                None => match oversized {
                    None => return Ok(None),
                    Some(value) => {
                        self.skipped.push(value.index);
                        self.skip = Some(value);
                    }
                },
            }
        };
        self.skipped.clear();
        Ok(Some(match raw {
            // Nothing refers to the consumed bytes, so skip them without creating a shared
            // handle.
            RawReply::Ready(reply) => {
                buf.advance(len);
                reply
            }
            RawReply::Values => {
                // At least what the frame's allocation holds: the frame and the room after.
                let allocation = buf.capacity();
                let frame = buf.split_to(len).freeze();
                RawReply::Values.into_reply(&mut self.values, |range| {
                    if allocation > Self::SHARED && range.len() < allocation / 8 {
                        // A small value beside a large one (in this reply, or in the buffer
                        // a large reply grew) would keep all of it alive as long as it is
                        // kept: a copy of its own. Only right after large replies.
                        Bytes::copy_from_slice(&frame[range])
                    } else {
                        frame.slice(range)
                    }
                })
            }
        }))
    }

    /// After [`decode`](Self::decode) found the reply at the front of the buffer
    /// incomplete: the buffer length it needs at least, as the header of the value being
    /// read declares it (0 when nothing is known). A reader that reserves this much reads a
    /// large value into one allocation, rather than growing its buffer by doubling, a copy
    /// each time. Bounded by the limits the header was checked against.
    pub(crate) fn wanted(&self) -> usize {
        self.wanted
    }

    /// Cuts the bytes of the value being skipped out of `buf`, as far as they are in, then
    /// its terminator: whether it is all gone (the reply goes on where it began).
    fn skip_on(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let Some(skip) = self.skip.as_mut() else {
            return Ok(true);
        };
        let here = buf.len().saturating_sub(skip.at).min(skip.len);
        cut_out(buf, skip.at, here);
        skip.len -= here;
        if skip.len > 0 {
            return Ok(false);
        }
        match buf.get(skip.at..skip.at + CRLF.len()) {
            None => Ok(false),
            Some(terminator) if terminator == CRLF => {
                cut_out(buf, skip.at, CRLF.len());
                self.skip = None;
                Ok(true)
            }
            Some(_) => Err(ProtocolError::DataNotTerminated {
                key: std::mem::take(&mut skip.key),
            }),
        }
    }
}

/// Removes the `len` bytes at `at` from `buf` (`at + len` within it); the bytes after them
/// move up, at most what the last read brought past them.
fn cut_out(buf: &mut BytesMut, at: usize, len: usize) {
    let end = at + len;
    if end < buf.len() {
        buf.copy_within(end.., at);
    }
    buf.truncate(buf.len() - len);
}

/// A value over [`Limits::max_value_len`] a parse stopped at, or the rest of it still to
/// be cut out of the buffer ([`Decoder::skip`]).
struct Oversized {
    /// Where its header line begins in the buffer.
    at: usize,
    /// The position of the asked key it answers.
    index: usize,
    /// The length of its header line and data block, the block's terminator excluded:
    /// what is left of them.
    len: usize,
    /// Its key, for the error when its block is not terminated.
    key: String,
}

/// What a parse does at a value over [`Limits::max_value_len`], and those skipped so far.
struct Skipping<'s> {
    /// The positions of the asked keys whose values were skipped before: the buffer holds
    /// the rest of a get reply, which begins inside its values.
    done: &'s [usize],
    /// Where to report the next one: the parse stops there, the reply incomplete, for the
    /// [`Decoder`] to cut its bytes out. `None`: it jumps over them (all in the slice by
    /// then), as over any value, keeping none (the slice twin, `parse_reply`, a test helper).
    stop: Option<&'s mut Option<Oversized>>,
}

/// A parsed reply whose value data are still offsets into the parsed buffer, so the caller
/// decides whether to copy them (`parse_reply`, in tests) or share them ([`decode`]).
enum RawReply {
    /// A get reply with at least one value, found in the values [`parse_raw`] was given.
    Values,
    /// Any reply that holds no buffer data.
    Ready(Reply),
}

/// A [`Value`] whose data is still a byte range of the parsed buffer.
struct PendingValue {
    /// Which key of the request it answers.
    asked: usize,
    /// Client flags.
    flags: u32,
    /// Cas token, for gets.
    cas: Option<u64>,
    /// Where the data block sits in the buffer.
    data: Range<usize>,
}

impl RawReply {
    /// Resolves the data ranges of `values` (taken) into `Bytes` with `data`.
    fn into_reply(
        self,
        values: &mut Vec<PendingValue>,
        mut data: impl FnMut(Range<usize>) -> Bytes,
    ) -> Reply {
        match self {
            RawReply::Ready(reply) => reply,
            RawReply::Values => Reply::Values(
                values
                    .drain(..)
                    .map(|value| Value {
                        asked: value.asked,
                        flags: value.flags,
                        cas: value.cas,
                        data: data(value.data),
                    })
                    .collect(),
            ),
        }
    }
}

/// One entry of a multi-line reply, borrowed from the buffer.
enum Entry<'a> {
    /// A `VALUE` header, the position of the asked key it answers and the range of its
    /// data block.
    Value(ValueHeader<'a>, usize, Range<usize>),
    /// A `STAT` line's name and value.
    Stat(&'a str, &'a str),
}

/// How a multi-line reply ended.
enum Ending {
    /// With `END`.
    End,
    /// With an error line. memcached can abort a multi-get this way (for example when it runs
    /// out of memory writing the reply); the framing is still intact, so this is a reply.
    Error(Reply),
}

/// Parses one reply into offsets. `Ok(None)` means incomplete.
fn parse_raw(
    buf: &[u8],
    limits: &Limits,
    asked: &Asked,
    values: &mut Vec<PendingValue>,
    mut skipping: Skipping<'_>,
    wanted: &mut usize,
) -> Result<Option<(RawReply, usize)>, ProtocolError> {
    let Some((first, next)) = read_line(buf, 0, limits.max_line_len)? else {
        return Ok(None);
    };
    let section = match Section::of(first) {
        Some(section) => section,
        // The rest of a get reply, after a value cut out.
        None if !skipping.done.is_empty() => Section::Values,
        None => {
            let reply = asked.check_line(parse_single_line(first)?)?;
            return Ok(Some((RawReply::Ready(reply), next)));
        }
    };

    if section == Section::Values {
        // One pass: values are recorded as offsets, so a "not all here yet" retry of a large
        // multi-get costs at most the vector's allocation, and a complete reply is walked
        // once.
        values.clear();
        let walked = walk(
            buf,
            section,
            limits,
            asked,
            wanted,
            &mut skipping,
            |entry| {
                if let Entry::Value(header, index, data) = entry {
                    if values.is_empty() {
                        // Room for every key asked (the walk refuses more), allocated once.
                        values.reserve(asked.max_entries(Section::Values, limits));
                    }
                    values.push(PendingValue {
                        asked: index,
                        flags: header.flags,
                        cas: header.cas,
                        data,
                    });
                }
            },
        )?;
        let Some((ending, len)) = walked else {
            return Ok(None);
        };
        return Ok(Some(match ending {
            Ending::Error(reply) => (RawReply::Ready(reply), len),
            Ending::End => (RawReply::Values, len),
        }));
    }

    // Check pass: validate and measure without allocating, so the common "not all here yet"
    // case for a large listing costs no allocation however often it is retried.
    let mut count = 0usize;
    let walked = walk(buf, section, limits, asked, wanted, &mut skipping, |_| {
        count += 1;
    })?;
    let Some((ending, len)) = walked else {
        return Ok(None);
    };
    if let Ending::Error(reply) = ending {
        return Ok(Some((RawReply::Ready(reply), len)));
    }

    // Parse pass over bytes already known to be a valid, complete reply.
    let raw = match section {
        // Handled above.
        Section::Values => RawReply::Values,
        Section::Stats => {
            let mut stats = Vec::with_capacity(count);
            walk(
                buf,
                section,
                limits,
                asked,
                wanted,
                &mut skipping,
                |entry| {
                    if let Entry::Stat(name, value) = entry {
                        stats.push((name.to_owned(), value.to_owned()));
                    }
                },
            )?;
            RawReply::Ready(Reply::Stats(stats))
        }
    };
    Ok(Some((raw, len)))
}

/// Walks a multi-line reply from the start of `buf`, handing each entry to `visit`.
///
/// Returns how the reply ended and its total length, or `Ok(None)` if it is incomplete
/// (with `wanted` set to the length the reply needs at least, when a value's data block is
/// what is missing), or stopped at a value over the limit (see [`Skipping`]; never
/// visited). Every entry is checked against `asked` as soon as its header line is in, so
/// what an incomplete reply has buffered is always a prefix of a reply the request allows.
fn walk<'a>(
    buf: &'a [u8],
    section: Section,
    limits: &Limits,
    asked: &Asked,
    wanted: &mut usize,
    skipping: &mut Skipping<'_>,
    mut visit: impl FnMut(Entry<'a>),
) -> Result<Option<(Ending, usize)>, ProtocolError> {
    let mut pos = 0;
    // Values skipped before were entries of this reply.
    let mut entries = skipping.done.len();
    let max_entries = asked.max_entries(section, limits);
    let mut keys = KeyCheck::new(asked, skipping.done);
    loop {
        let Some((line, next)) = read_line(buf, pos, limits.max_line_len)? else {
            return Ok(None);
        };
        if line == b"END" {
            return Ok(Some((Ending::End, next)));
        }
        match Section::of(line) {
            Some(kind) if kind == section => {}
            Some(_) => return Err(unexpected_line(section, line)),
            None => {
                return match parse_error_line(line) {
                    Some(reply) => Ok(Some((Ending::Error(reply), next))),
                    None => Err(unexpected_line(section, line)),
                };
            }
        }
        if entries >= max_entries {
            return Err(ProtocolError::TooManyValues { max: max_entries });
        }
        entries += 1;
        match section {
            Section::Values => {
                let header = parse_value_header(line)?;
                let Some(index) = keys.answer(header.key) else {
                    // Asked keys are ASCII, so only a key that matches none needs a look.
                    if std::str::from_utf8(header.key).is_err() {
                        return Err(ProtocolError::NonUtf8 { what: "VALUE key" });
                    }
                    return Err(ProtocolError::UnexpectedKey {
                        key: snippet(header.key),
                    });
                };
                let oversized = header.len > limits.max_value_len;
                if oversized {
                    let max = limits.max_value_len.max(MAX_ITEM);
                    if header.len > max {
                        return Err(ProtocolError::ValueTooLarge {
                            len: header.len,
                            max,
                        });
                    }
                    if let Some(stop) = skipping.stop.as_deref_mut() {
                        *stop = Some(Oversized {
                            at: pos,
                            index,
                            len: (next - pos).saturating_add(header.len),
                            key: String::from_utf8_lossy(header.key).into_owned(),
                        });
                        return Ok(None);
                    }
                }
                // Jump straight over the data block using the announced length: data may hold
                // any bytes, "\r\n" included, and scanning it would make every retry O(size).
                let data_end = next.saturating_add(header.len);
                let block_end = data_end.saturating_add(CRLF.len());
                let Some(terminator) = buf.get(data_end..block_end) else {
                    // The block, and at least the `END` of a reply to one key.
                    *wanted = block_end.saturating_add(b"END\r\n".len());
                    return Ok(None);
                };
                if terminator != CRLF {
                    return Err(ProtocolError::DataNotTerminated {
                        key: String::from_utf8_lossy(header.key).into_owned(),
                    });
                }
                if !oversized {
                    visit(Entry::Value(header, index, next..data_end));
                }
                pos = block_end;
            }
            Section::Stats => {
                if next > limits.max_value_len {
                    return Err(ProtocolError::StatsTooLarge {
                        max: limits.max_value_len,
                    });
                }
                let (name, value) = parse_stat_line(line)?;
                visit(Entry::Stat(name, value));
                pos = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::asked::Command;
    use super::super::lines::SNIPPET_LEN;
    use super::*;

    // ---- helpers ----------------------------------------------------------------------------

    fn parse(input: &[u8]) -> Result<Frame, ProtocolError> {
        parse_with(input, &Limits::default())
    }

    /// Parses `input` as the reply to a request that asked what `input` answers.
    fn parse_with(input: &[u8], limits: &Limits) -> Result<Frame, ProtocolError> {
        parse_reply(input, limits, &asked_for(input))
    }

    /// What a request answered by `input` asked: `stats` for a STAT listing, else a `gets`
    /// of every key a `VALUE` header in `input` names (a match inside data only widens it),
    /// else a one-line command.
    fn asked_for(input: &[u8]) -> Asked {
        if input.starts_with(b"STAT") {
            return Asked::Stats;
        }
        let mut request = b"gets".to_vec();
        for at in (0..input.len()).filter(|&at| input[at..].starts_with(b"VALUE ")) {
            let rest = &input[at + b"VALUE ".len()..];
            let key = rest
                .split(|&b| b == b' ' || b == b'\r' || b == b'\n')
                .next()
                .unwrap_or_default();
            if !key.is_empty() {
                request.push(b' ');
                request.extend_from_slice(key);
            }
        }
        if request.len() == b"gets".len() {
            if !input.windows(5).any(|window| window == b"VALUE") {
                return Asked::Line;
            }
            // A header too broken to name a key still has room for one.
            request.extend_from_slice(b" k");
        }
        request.extend_from_slice(CRLF);
        Asked::of_request(&Bytes::from(request))
    }

    /// What `request` asks, for a request written out in a test.
    fn asked(request: &'static [u8]) -> Asked {
        Asked::of_request(&Bytes::from_static(request))
    }

    /// [`decode`], and whether a value over the limit was skipped (its bytes cut out of
    /// `buf`, which is untouched otherwise unless the reply was complete).
    fn decode_noting_skips(
        buf: &mut BytesMut,
        limits: &Limits,
        asked: &Asked,
    ) -> (Result<Option<Reply>, ProtocolError>, bool) {
        let mut decoder = Decoder::default();
        let decoded = decoder.decode(buf, limits, asked);
        (decoded, !decoder.skipped.is_empty())
    }

    /// Decodes `buf` as the reply to a request that asked what its contents answer.
    fn decode_any(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Reply>, ProtocolError> {
        let asked = asked_for(buf);
        decode(buf, limits, &asked)
    }

    /// Parses `input`, asserting it is exactly one complete reply.
    fn complete(input: &[u8]) -> Reply {
        match parse(input) {
            Ok(Frame::Complete { reply, len }) => {
                assert_eq!(len, input.len(), "reply should span the whole input");
                reply
            }
            other => panic!("expected a complete reply for {input:?}, got {other:?}"),
        }
    }

    fn error(input: &[u8]) -> ProtocolError {
        error_with(input, &Limits::default())
    }

    fn error_with(input: &[u8], limits: &Limits) -> ProtocolError {
        match parse_with(input, limits) {
            Err(err) => err,
            Ok(frame) => panic!("expected an error for {input:?}, got {frame:?}"),
        }
    }

    /// A value answering the `asked`th key of its request.
    fn value(asked: usize, flags: u32, cas: Option<u64>, data: &[u8]) -> Value {
        Value {
            asked,
            flags,
            cas,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn encoded(encode: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        buf.to_vec()
    }

    const MULTI_GET: &[u8] = b"VALUE alpha 0 5 11\r\nhello\r\n\
VALUE beta 4294967295 0 12\r\n\r\n\
VALUE gamma 7 6 18446744073709551615\r\na\r\nb\r\n\r\n\
END\r\n";

    fn multi_get_values() -> Vec<Value> {
        vec![
            value(0, 0, Some(11), b"hello"),
            value(1, u32::MAX, Some(12), b""),
            value(2, 7, Some(u64::MAX), b"a\r\nb\r\n"),
        ]
    }

    const STATS: &[u8] = b"STAT pid 1234\r\nSTAT version 1.6.21\r\n\
STAT sizes_error something went wrong\r\nSTAT empty\r\nEND\r\n";

    // ---- single-line replies ----------------------------------------------------------------

    #[test]
    fn status_replies() {
        let cases: [(&[u8], Reply); 7] = [
            (b"STORED\r\n", Reply::Stored),
            (b"NOT_STORED\r\n", Reply::NotStored),
            (b"EXISTS\r\n", Reply::Exists),
            (b"NOT_FOUND\r\n", Reply::NotFound),
            (b"DELETED\r\n", Reply::Deleted),
            (b"TOUCHED\r\n", Reply::Touched),
            (b"OK\r\n", Reply::Ok),
        ];
        for (input, expected) in cases {
            assert_eq!(complete(input), expected);
        }
    }

    #[test]
    fn number_reply() {
        assert_eq!(complete(b"0\r\n"), Reply::Number(0));
        assert_eq!(complete(b"42\r\n"), Reply::Number(42));
        assert_eq!(
            complete(b"18446744073709551615\r\n"),
            Reply::Number(u64::MAX)
        );
    }

    #[test]
    fn number_reply_tolerates_space_padding() {
        assert_eq!(complete(b"9  \r\n"), Reply::Number(9));
    }

    #[test]
    fn number_reply_rejects_overflow_and_garbage() {
        assert!(matches!(
            error(b"18446744073709551616\r\n"),
            ProtocolError::InvalidNumber { .. }
        ));
        assert!(matches!(
            error(b"12ab\r\n"),
            ProtocolError::InvalidNumber { .. }
        ));
        assert!(matches!(
            error(b"1 2\r\n"),
            ProtocolError::InvalidNumber { .. }
        ));
    }

    #[test]
    fn version_reply() {
        assert_eq!(
            complete(b"VERSION 1.6.21\r\n"),
            Reply::Version("1.6.21".to_owned())
        );
        assert_eq!(complete(b"VERSION\r\n"), Reply::Version(String::new()));
    }

    #[test]
    fn version_must_be_utf8() {
        assert_eq!(
            error(b"VERSION \xff\r\n"),
            ProtocolError::NonUtf8 { what: "version" }
        );
    }

    #[test]
    fn error_reply() {
        assert_eq!(complete(b"ERROR\r\n"), Reply::Error);
        assert_eq!(complete(b"ERROR unknown lru mode\r\n"), Reply::Error);
    }

    #[test]
    fn client_error_reply() {
        assert_eq!(
            complete(b"CLIENT_ERROR bad data chunk\r\n"),
            Reply::ClientError("bad data chunk".to_owned())
        );
        assert_eq!(
            complete(b"CLIENT_ERROR\r\n"),
            Reply::ClientError(String::new())
        );
    }

    #[test]
    fn server_error_reply() {
        assert_eq!(
            complete(b"SERVER_ERROR out of memory storing object\r\n"),
            Reply::ServerError("out of memory storing object".to_owned())
        );
    }

    #[test]
    fn error_messages_are_decoded_lossily() {
        assert_eq!(
            complete(b"SERVER_ERROR bad \xff byte\r\n"),
            Reply::ServerError("bad \u{fffd} byte".to_owned())
        );
    }

    // ---- get replies ------------------------------------------------------------------------

    #[test]
    fn get_with_no_values() {
        assert_eq!(complete(b"END\r\n"), Reply::Values(vec![]));
    }

    #[test]
    fn get_with_one_value() {
        assert_eq!(
            complete(b"VALUE key 5 3\r\nabc\r\nEND\r\n"),
            Reply::Values(vec![value(0, 5, None, b"abc")])
        );
    }

    #[test]
    fn gets_with_one_value() {
        assert_eq!(
            complete(b"VALUE key 5 3 99\r\nabc\r\nEND\r\n"),
            Reply::Values(vec![value(0, 5, Some(99), b"abc")])
        );
    }

    #[test]
    fn get_with_several_values() {
        assert_eq!(
            complete(b"VALUE a 1 1\r\nx\r\nVALUE b 2 2\r\nyy\r\nVALUE c 3 0\r\n\r\nEND\r\n"),
            Reply::Values(vec![
                value(0, 1, None, b"x"),
                value(1, 2, None, b"yy"),
                value(2, 3, None, b""),
            ])
        );
    }

    #[test]
    fn gets_with_several_values() {
        assert_eq!(complete(MULTI_GET), Reply::Values(multi_get_values()));
    }

    #[test]
    fn binary_data_may_contain_line_terminators_and_keywords() {
        let data = b"\r\nEND\r\nVALUE x 0 1\r\n\n\r\0\xff";
        let mut input = format!("VALUE bin 0 {}\r\n", data.len()).into_bytes();
        input.extend_from_slice(data);
        input.extend_from_slice(b"\r\nEND\r\n");
        assert_eq!(
            complete(&input),
            Reply::Values(vec![value(0, 0, None, data)])
        );
    }

    #[test]
    fn value_of_exactly_max_len_is_accepted() {
        let limits = Limits {
            max_value_len: 4,
            ..Limits::default()
        };
        let input = b"VALUE k 0 4\r\nabcd\r\nEND\r\n";
        assert_eq!(
            parse_with(input, &limits),
            Ok(Frame::Complete {
                reply: Reply::Values(vec![value(0, 0, None, b"abcd")]),
                len: input.len(),
            })
        );
    }

    #[test]
    fn error_line_ends_a_get_reply() {
        assert_eq!(
            complete(b"VALUE k 0 1\r\na\r\nSERVER_ERROR out of memory writing get response\r\n"),
            Reply::ServerError("out of memory writing get response".to_owned())
        );
        assert_eq!(
            complete(b"VALUE k 0 1\r\na\r\nCLIENT_ERROR bad command line format\r\n"),
            Reply::ClientError("bad command line format".to_owned())
        );
    }

    // ---- stats replies ----------------------------------------------------------------------

    #[test]
    fn stats_reply() {
        assert_eq!(
            complete(STATS),
            Reply::Stats(vec![
                ("pid".to_owned(), "1234".to_owned()),
                ("version".to_owned(), "1.6.21".to_owned()),
                ("sizes_error".to_owned(), "something went wrong".to_owned()),
                ("empty".to_owned(), String::new()),
            ])
        );
    }

    #[test]
    fn empty_stats_reply_reads_as_empty_values() {
        // Indistinguishable on the wire from a get that found nothing.
        assert_eq!(complete(b"END\r\n"), Reply::Values(vec![]));
    }

    #[test]
    fn stat_without_name_is_malformed() {
        assert!(matches!(
            error(b"STAT\r\nEND\r\n"),
            ProtocolError::MalformedStat { .. }
        ));
        assert!(matches!(
            error(b"STAT  value\r\nEND\r\n"),
            ProtocolError::MalformedStat { .. }
        ));
    }

    #[test]
    fn stat_must_be_utf8() {
        assert_eq!(
            error(b"STAT name \xfe\r\nEND\r\n"),
            ProtocolError::NonUtf8 { what: "STAT line" }
        );
    }

    // ---- incompleteness ---------------------------------------------------------------------

    fn assert_every_prefix_incomplete(input: &[u8]) {
        for split in 0..input.len() {
            assert_eq!(
                parse(&input[..split]),
                Ok(Frame::Incomplete),
                "prefix of {split} bytes"
            );
        }
        assert!(matches!(
            parse(input),
            Ok(Frame::Complete { len, .. }) if len == input.len()
        ));
    }

    #[test]
    fn every_prefix_of_multi_value_reply_is_incomplete() {
        assert_every_prefix_incomplete(MULTI_GET);
    }

    #[test]
    fn every_prefix_of_stats_reply_is_incomplete() {
        assert_every_prefix_incomplete(STATS);
    }

    #[test]
    fn every_prefix_of_single_line_reply_is_incomplete() {
        assert_every_prefix_incomplete(b"SERVER_ERROR out of memory\r\n");
        assert_every_prefix_incomplete(b"12345\r\n");
    }

    #[test]
    fn large_partial_value_is_incomplete() {
        let mut input = b"VALUE big 0 1048576\r\n".to_vec();
        input.resize(input.len() + 1024 * 1024, b'\n');
        assert_eq!(parse(&input), Ok(Frame::Incomplete));
        input.extend_from_slice(b"\r");
        assert_eq!(parse(&input), Ok(Frame::Incomplete));
        input.extend_from_slice(b"\nEND\r\n");
        assert!(matches!(parse(&input), Ok(Frame::Complete { .. })));
    }

    // ---- decode -----------------------------------------------------------------------------

    #[test]
    fn decode_leaves_buffer_untouched_when_incomplete() {
        let mut buf = BytesMut::from(&MULTI_GET[..MULTI_GET.len() - 1]);
        let before = buf.clone();
        let base = buf.as_ptr();
        assert_eq!(decode_any(&mut buf, &Limits::default()), Ok(None));
        assert_eq!(buf, before);
        assert_eq!(buf.as_ptr(), base);
    }

    #[test]
    fn decode_leaves_buffer_untouched_on_error() {
        let mut buf = BytesMut::from(&b"GARBAGE\r\nSTORED\r\n"[..]);
        let before = buf.clone();
        assert!(decode_any(&mut buf, &Limits::default()).is_err());
        assert_eq!(buf, before);
    }

    #[test]
    fn decode_takes_one_reply_and_leaves_the_next() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(MULTI_GET);
        buf.extend_from_slice(b"STORED\r\nVALUE k 0 2\r\nhi");
        let limits = Limits::default();

        assert_eq!(
            decode_any(&mut buf, &limits),
            Ok(Some(Reply::Values(multi_get_values())))
        );
        assert_eq!(&buf[..], b"STORED\r\nVALUE k 0 2\r\nhi");
        // A one-line reply to a command that may get it (not to a get: that is refused).
        assert_eq!(
            decode(&mut buf, &limits, &Asked::Line),
            Ok(Some(Reply::Stored))
        );
        assert_eq!(&buf[..], b"VALUE k 0 2\r\nhi");
        assert_eq!(decode_any(&mut buf, &limits), Ok(None));
        buf.extend_from_slice(b"\r\nEND\r\n");
        assert_eq!(
            decode_any(&mut buf, &limits),
            Ok(Some(Reply::Values(vec![value(0, 0, None, b"hi")])))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn parse_reply_reports_the_first_of_two_replies() {
        let input = b"DELETED\r\nNOT_FOUND\r\n";
        assert_eq!(
            parse(input),
            Ok(Frame::Complete {
                reply: Reply::Deleted,
                len: b"DELETED\r\n".len(),
            })
        );
    }

    #[test]
    fn decode_shares_value_data_with_the_read_buffer() {
        let mut buf = BytesMut::from(MULTI_GET);
        let base = buf.as_ptr() as usize;
        let Ok(Some(Reply::Values(values))) = decode_any(&mut buf, &Limits::default()) else {
            panic!("expected values");
        };
        let offset = b"VALUE alpha 0 5 11\r\n".len();
        assert_eq!(values[0].data.as_ptr() as usize, base + offset);
    }

    // ---- malformed replies ------------------------------------------------------------------

    #[test]
    fn garbage_is_an_unknown_line() {
        assert!(matches!(
            error(b"HELLO WORLD\r\n"),
            ProtocolError::UnknownLine { .. }
        ));
        assert!(matches!(error(b"\r\n"), ProtocolError::UnknownLine { .. }));
        assert!(matches!(
            error(b"ERRORS\r\n"),
            ProtocolError::UnknownLine { .. }
        ));
        assert!(matches!(
            error(b"stored\r\n"),
            ProtocolError::UnknownLine { .. }
        ));
        assert!(matches!(
            error(b"-1\r\n"),
            ProtocolError::UnknownLine { .. }
        ));
    }

    #[test]
    fn unknown_line_error_holds_a_truncated_lossy_copy() {
        let mut input = vec![b'Z'; 100];
        input[0] = 0xff;
        input.extend_from_slice(b"\r\n");
        let ProtocolError::UnknownLine { line } = error(&input) else {
            panic!("expected UnknownLine");
        };
        assert!(line.starts_with('\u{fffd}'));
        assert!(line.ends_with("..."));
        assert_eq!(line.chars().count(), SNIPPET_LEN + 3);
    }

    fn assert_malformed_header(input: &[u8], expected_reason: &str) {
        match error(input) {
            ProtocolError::MalformedValueHeader { reason, .. } => {
                assert_eq!(reason, expected_reason, "for {input:?}");
            }
            other => panic!("expected a malformed header for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_value_headers() {
        assert_malformed_header(b"VALUE\r\n", "missing key");
        assert_malformed_header(b"VALUE k\r\n", "missing flags");
        assert_malformed_header(b"VALUE k 0\r\n", "missing data length");
        assert_malformed_header(b"VALUE k 0 1 2 3\r\n", "unexpected trailing field");
        assert_malformed_header(b"VALUE k x 1\r\n", "flags are not a decimal number");
        assert_malformed_header(b"VALUE k -1 1\r\n", "flags are not a decimal number");
        assert_malformed_header(b"VALUE k 4294967296 1\r\n", "flags exceed 32 bits");
        assert_malformed_header(b"VALUE k 0 -1\r\n", "data length is not a decimal number");
        assert_malformed_header(b"VALUE k 0 +1\r\n", "data length is not a decimal number");
        assert_malformed_header(
            b"VALUE k 0 99999999999999999999999\r\n",
            "data length is not a decimal number",
        );
        assert_malformed_header(b"VALUE k 0 1 abc\r\n", "cas is not a decimal number");
        assert_malformed_header(
            b"VALUE k 0 1 18446744073709551616\r\n",
            "cas is not a decimal number",
        );
    }

    #[test]
    fn malformed_header_after_a_good_value() {
        assert_malformed_header(b"VALUE a 0 1\r\nx\r\nVALUE b 0\r\n", "missing data length");
    }

    #[test]
    fn value_key_must_be_utf8() {
        // Keys asked are `str`s: a key that is no UTF-8 answers none of them.
        assert_eq!(
            parse_reply(
                b"VALUE \xc3\x28 0 1\r\nx\r\nEND\r\n",
                &Limits::default(),
                &asked(b"get k\r\n")
            ),
            Err(ProtocolError::NonUtf8 { what: "VALUE key" })
        );
    }

    #[test]
    fn data_block_must_end_with_crlf() {
        assert_eq!(
            error(b"VALUE k 0 3\r\nabcXY"),
            ProtocolError::DataNotTerminated {
                key: "k".to_owned()
            }
        );
        assert_eq!(
            error(b"VALUE k 0 3\r\nabcd\r\nEND\r\n"),
            ProtocolError::DataNotTerminated {
                key: "k".to_owned()
            }
        );
        assert_eq!(
            error(b"VALUE k 0 3\r\nabc\nEND\r\n"),
            ProtocolError::DataNotTerminated {
                key: "k".to_owned()
            }
        );
    }

    #[test]
    fn stat_after_value_is_unexpected() {
        assert_eq!(
            error(b"VALUE k 0 1\r\nx\r\nSTAT pid 1\r\nEND\r\n"),
            ProtocolError::UnexpectedLine {
                section: "get",
                line: "STAT pid 1".to_owned(),
            }
        );
    }

    #[test]
    fn value_after_stat_is_unexpected() {
        assert_eq!(
            error(b"STAT pid 1\r\nVALUE k 0 1\r\nx\r\nEND\r\n"),
            ProtocolError::UnexpectedLine {
                section: "stats",
                line: "VALUE k 0 1".to_owned(),
            }
        );
    }

    #[test]
    fn status_line_inside_multi_line_reply_is_unexpected() {
        assert!(matches!(
            error(b"VALUE k 0 1\r\nx\r\nSTORED\r\n"),
            ProtocolError::UnexpectedLine { section: "get", .. }
        ));
        assert!(matches!(
            error(b"STAT a b\r\n42\r\n"),
            ProtocolError::UnexpectedLine {
                section: "stats",
                ..
            }
        ));
    }

    #[test]
    fn bare_line_feed_is_rejected() {
        assert!(matches!(
            error(b"STORED\n"),
            ProtocolError::BareLineFeed { .. }
        ));
        assert!(matches!(error(b"\n"), ProtocolError::BareLineFeed { .. }));
        assert!(matches!(
            error(b"VALUE k 0 1\r\nx\r\nEND\n"),
            ProtocolError::BareLineFeed { .. }
        ));
    }

    // ---- limits -----------------------------------------------------------------------------

    #[test]
    fn default_limits() {
        assert_eq!(
            Limits::default(),
            Limits {
                max_value_len: 1024 * 1024,
                max_line_len: 8192,
                max_values: 10_000,
            }
        );
    }

    #[test]
    fn a_value_larger_than_memcached_holds_fails_before_data_arrives() {
        let len = MAX_ITEM + 1;
        assert_eq!(
            error(format!("VALUE k 0 {len}\r\n").as_bytes()),
            ProtocolError::ValueTooLarge { len, max: MAX_ITEM }
        );
        let limits = Limits {
            max_value_len: 3,
            ..Limits::default()
        };
        assert_eq!(
            error_with(
                format!("VALUE a 0 1\r\nx\r\nVALUE k 0 {len}\r\n").as_bytes(),
                &limits
            ),
            ProtocolError::ValueTooLarge { len, max: MAX_ITEM }
        );
        let mut buf = BytesMut::from(format!("VALUE k 0 {len}\r\n").as_bytes());
        assert_eq!(
            decode(&mut buf, &Limits::default(), &asked(b"get k\r\n")),
            Err(ProtocolError::ValueTooLarge { len, max: MAX_ITEM })
        );
    }

    /// Limits under which a value of more than 4 bytes is skipped.
    const SKIPPING: Limits = Limits {
        max_value_len: 4,
        max_line_len: 8192,
        max_values: 10_000,
    };

    #[test]
    fn a_value_over_the_limit_is_left_out_of_its_reply() {
        let reply =
            b"VALUE a 0 1\r\nx\r\nVALUE big 7 9\r\n123456789\r\nVALUE b 0 2\r\nyy\r\nEND\r\n";
        let three = asked(b"get a big b\r\n");
        let expected = Reply::Values(vec![value(0, 0, None, b"x"), value(2, 0, None, b"yy")]);
        assert_eq!(
            parse_reply(reply, &SKIPPING, &three),
            Ok(Frame::Complete {
                reply: expected.clone(),
                len: reply.len(),
            })
        );
        let mut buf = BytesMut::from(&reply[..]);
        buf.extend_from_slice(b"STORED\r\n");
        assert_eq!(decode(&mut buf, &SKIPPING, &three), Ok(Some(expected)));
        assert_eq!(&buf[..], b"STORED\r\n");
        // Alone: a miss.
        let mut buf = BytesMut::from(&b"VALUE big 0 5\r\n12345\r\nEND\r\n"[..]);
        assert_eq!(
            decode(&mut buf, &SKIPPING, &asked(b"gets big\r\n")),
            Ok(Some(Reply::Values(vec![])))
        );
        assert!(buf.is_empty());
    }

    /// Feeds `reply` to one decoder `read` bytes at a time, as a connection reads it: the
    /// reply, and the most bytes the buffer held.
    fn decode_in_reads(reply: &[u8], read: usize, asked: &Asked) -> (Reply, usize) {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut held = 0;
        for chunk in reply.chunks(read) {
            buf.extend_from_slice(chunk);
            held = held.max(buf.len());
            if let Some(reply) = decoder.decode(&mut buf, &SKIPPING, asked).unwrap() {
                assert!(buf.is_empty(), "{buf:?} left");
                return (reply, held);
            }
        }
        panic!("incomplete: {buf:?} left");
    }

    #[test]
    fn a_value_over_the_limit_is_never_buffered() {
        let big = vec![b'\n'; 100_000];
        let mut reply = b"VALUE a 0 3\r\none\r\nVALUE big 0 100000 9\r\n".to_vec();
        reply.extend_from_slice(&big);
        reply.extend_from_slice(
            b"\r\nVALUE big2 0 7\r\n\r\nEND\r\n\r\nVALUE b 0 3\r\ntwo\r\nEND\r\n",
        );
        let asked = asked(b"gets a big big2 b\r\n");
        for read in [1, 2, 3, 7, 1000, 16 * 1024, reply.len()] {
            let (decoded, held) = decode_in_reads(&reply, read, &asked);
            assert_eq!(
                decoded,
                Reply::Values(vec![value(0, 0, None, b"one"), value(3, 0, None, b"two")]),
                "reads of {read}"
            );
            if read < 1000 {
                // What is kept of the reply (its first value, part of a header), and a read.
                assert!(held < 64 + read, "{held} bytes held, reads of {read}");
            }
        }
    }

    /// The reader reserves what [`Decoder::wanted`] says: nothing for a value skipped.
    #[test]
    fn a_value_over_the_limit_wants_no_room() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"VALUE big 0 100000\r\nxx"[..]);
        let asked = asked(b"get big\r\n");
        assert_eq!(decoder.decode(&mut buf, &SKIPPING, &asked), Ok(None));
        assert_eq!(decoder.wanted(), 0);
        assert!(buf.is_empty(), "{buf:?}");
    }

    #[test]
    fn a_value_over_the_limit_is_checked_as_any_other() {
        let asked = asked(b"get a big\r\n");
        let mut decoder = Decoder::default();
        // Its block must end with CRLF.
        let mut buf = BytesMut::from(&b"VALUE big 0 5\r\n12345xy"[..]);
        assert_eq!(
            decoder.decode(&mut buf, &SKIPPING, &asked),
            Err(ProtocolError::DataNotTerminated {
                key: "big".to_owned()
            })
        );
        // Its key may not be answered again, nor a key not asked.
        let twice = b"VALUE big 0 5\r\n12345\r\nVALUE big 0 1\r\nx\r\nEND\r\n";
        for (reply, error) in [
            (
                &twice[..],
                ProtocolError::UnexpectedKey {
                    key: "big".to_owned(),
                },
            ),
            (
                b"VALUE other 0 5\r\n12345\r\nEND\r\n",
                ProtocolError::UnexpectedKey {
                    key: "other".to_owned(),
                },
            ),
            // What follows is read as the rest of a get reply.
            (
                b"VALUE big 0 5\r\n12345\r\nSTORED\r\n",
                ProtocolError::UnexpectedLine {
                    section: "get",
                    line: "STORED".to_owned(),
                },
            ),
        ] {
            assert_eq!(parse_reply(reply, &SKIPPING, &asked), Err(error.clone()));
            let mut buf = BytesMut::from(reply);
            assert_eq!(
                Decoder::default().decode(&mut buf, &SKIPPING, &asked),
                Err(error)
            );
        }
        // An error line ends the reply, as after any value.
        let mut buf =
            BytesMut::from(&b"VALUE big 0 5\r\n12345\r\nSERVER_ERROR out of memory\r\n"[..]);
        assert_eq!(
            Decoder::default().decode(&mut buf, &SKIPPING, &asked),
            Ok(Some(Reply::ServerError("out of memory".to_owned())))
        );
    }

    #[test]
    fn overlong_line_without_newline_fails_early() {
        let limits = Limits {
            max_line_len: 8,
            ..Limits::default()
        };
        // Up to 8 content bytes plus '\r' may still become a valid line.
        assert_eq!(parse_with(b"AAAAAAAA", &limits), Ok(Frame::Incomplete));
        assert_eq!(parse_with(b"AAAAAAAA\r", &limits), Ok(Frame::Incomplete));
        assert_eq!(
            error_with(b"AAAAAAAAA", &limits),
            ProtocolError::LineTooLong { max: 8 }
        );
        assert_eq!(
            error_with(b"AAAAAAAA\rX", &limits),
            ProtocolError::LineTooLong { max: 8 }
        );
        assert_eq!(
            error(&[b'A'; 8194]),
            ProtocolError::LineTooLong { max: 8192 }
        );
    }

    /// Found by the kept-decoder property test: a line feed right after more content than
    /// the limit allows was a bare line feed when it came in the same read, and a line too
    /// long when the bytes before it came first. The same error whatever the split.
    #[test]
    fn a_bare_line_feed_past_the_line_limit_is_too_long_however_the_bytes_arrive() {
        let limits = Limits {
            max_line_len: 8,
            ..Limits::default()
        };
        let line = b"AAAAAAAAX\n";
        assert_eq!(
            error_with(&line[..9], &limits),
            ProtocolError::LineTooLong { max: 8 }
        );
        assert_eq!(
            error_with(line, &limits),
            ProtocolError::LineTooLong { max: 8 }
        );
        // Within the limit, a line feed without its carriage return is one.
        assert!(matches!(
            error_with(b"AAAAAAAA\n", &limits),
            ProtocolError::BareLineFeed { .. }
        ));
    }

    #[test]
    fn line_length_limit_is_exact() {
        let limits = Limits {
            max_line_len: 6,
            ..Limits::default()
        };
        assert_eq!(
            parse_with(b"STORED\r\n", &limits),
            Ok(Frame::Complete {
                reply: Reply::Stored,
                len: 8,
            })
        );
        assert_eq!(
            error_with(b"DELETED\r\n", &limits),
            ProtocolError::LineTooLong { max: 6 }
        );
    }

    #[test]
    fn overlong_line_inside_a_get_reply() {
        let limits = Limits {
            max_line_len: 16,
            ..Limits::default()
        };
        let mut input = b"VALUE a 0 1\r\nx\r\n".to_vec();
        input.extend_from_slice(&[b'V'; 40]);
        assert_eq!(
            error_with(&input, &limits),
            ProtocolError::LineTooLong { max: 16 }
        );
    }

    #[test]
    fn too_many_values() {
        let limits = Limits {
            max_values: 2,
            ..Limits::default()
        };
        let two = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n";
        let asked_two = asked(b"get a b\r\n");
        assert!(matches!(
            parse_reply(two, &limits, &asked_two),
            Ok(Frame::Complete { .. })
        ));
        // Fails at the third header, before its data or the END has arrived.
        assert_eq!(
            parse_reply(
                b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nVALUE c 0 1\r\n",
                &limits,
                &asked_two,
            ),
            Err(ProtocolError::TooManyValues { max: 2 })
        );
        assert_eq!(
            error_with(b"STAT a 1\r\nSTAT b 2\r\nSTAT c 3\r\n", &limits),
            ProtocolError::TooManyValues { max: 2 }
        );
    }

    #[test]
    fn error_messages_are_readable() {
        let err = ProtocolError::MalformedValueHeader {
            reason: "flags exceed 32 bits",
            line: "VALUE k 4294967296 1".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "malformed VALUE header (flags exceed 32 bits): \"VALUE k 4294967296 1\""
        );
        assert_eq!(
            ProtocolError::DataNotTerminated {
                key: "k".to_owned()
            }
            .to_string(),
            "data block for key \"k\" is not terminated by \\r\\n"
        );
    }

    // ---- bounded by the request -------------------------------------------------------------

    #[test]
    fn what_a_request_asks() {
        assert_eq!(
            asked(b"get a\r\n"),
            Asked::Keys {
                keys: Bytes::from_static(b"a"),
                count: 1
            }
        );
        assert_eq!(
            asked(b"gets a b a\r\n"),
            Asked::Keys {
                keys: Bytes::from_static(b"a b a"),
                count: 3
            }
        );
        assert_eq!(asked(b"stats\r\n"), Asked::Stats);
        assert_eq!(asked(b"stats items\r\n"), Asked::Stats);
        for other in [&b"getx a\r\n"[..], b"statsx\r\n", b"verbosity 1\r\n"] {
            assert_eq!(Asked::of_request(&Bytes::from(other)), Asked::Line);
        }
        for (request, command) in [
            (&b"set get 0 0 1\r\nx\r\n"[..], Command::Store),
            (b"cas k 0 0 1 7 noreply\r\nx\r\n", Command::Store),
            (b"delete gets\r\n", Command::Delete),
            (b"touch k 10\r\n", Command::Touch),
            (b"decr k 1\r\n", Command::Number),
            (b"flush_all\r\n", Command::FlushAll),
            (b"version\r\n", Command::Version),
        ] {
            let asked = Asked::of_request(&Bytes::from(request));
            assert_eq!(asked, Asked::Command(command));
        }
        // The key list is a view of the request, not a copy.
        let request = Bytes::from_static(b"gets alpha beta\r\n");
        let Asked::Keys { keys, .. } = Asked::of_request(&request) else {
            panic!("not a get");
        };
        assert_eq!(keys.as_ptr(), request[5..].as_ptr());
    }

    #[test]
    fn value_for_a_key_not_asked_is_refused_at_its_header() {
        // Refused before any of the announced megabyte has arrived.
        assert_eq!(
            parse_reply(
                b"VALUE b 0 1048576\r\n",
                &Limits::default(),
                &asked(b"get a\r\n")
            ),
            Err(ProtocolError::UnexpectedKey {
                key: "b".to_owned()
            })
        );
        assert_eq!(
            parse_reply(
                b"VALUE a 0 1\r\nx\r\nVALUE ab 0 1\r\n",
                &Limits::default(),
                &asked(b"get a b\r\n")
            ),
            Err(ProtocolError::UnexpectedKey {
                key: "ab".to_owned()
            })
        );
    }

    #[test]
    fn more_values_than_keys_asked_are_refused_at_the_header_one_too_many() {
        let limits = Limits::default();
        assert_eq!(
            parse_reply(
                b"VALUE a 0 1\r\nx\r\nVALUE a 0 1048576\r\n",
                &limits,
                &asked(b"gets a\r\n")
            ),
            Err(ProtocolError::TooManyValues { max: 1 })
        );
        // Exactly as many as asked is fine.
        assert!(matches!(
            parse_reply(
                b"VALUE a 0 1\r\nx\r\nEND\r\n",
                &limits,
                &asked(b"gets a\r\n")
            ),
            Ok(Frame::Complete { .. })
        ));
    }

    #[test]
    fn a_key_asked_twice_may_be_answered_twice_and_no_more() {
        let limits = Limits::default();
        let twice = b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n";
        assert!(matches!(
            parse_reply(twice, &limits, &asked(b"get a a\r\n")),
            Ok(Frame::Complete { .. })
        ));
        assert_eq!(
            parse_reply(twice, &limits, &asked(b"get a b\r\n")),
            Err(ProtocolError::UnexpectedKey {
                key: "a".to_owned()
            })
        );
        assert_eq!(
            parse_reply(
                b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nVALUE a 0 1\r\n",
                &limits,
                &asked(b"get a b a\r\n")
            )
            .map(|_| ()),
            Ok(())
        );
        // Each answer takes the next place the key was asked at.
        let reply = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nVALUE a 0 1\r\nz\r\nEND\r\n";
        assert_eq!(
            parse_reply(reply, &limits, &asked(b"get a b a\r\n")),
            Ok(Frame::Complete {
                reply: Reply::Values(vec![
                    value(0, 0, None, b"x"),
                    value(1, 0, None, b"y"),
                    value(2, 0, None, b"z"),
                ]),
                len: reply.len()
            })
        );
        assert_eq!(
            parse_reply(
                b"VALUE b 0 1\r\ny\r\nVALUE b 0 1\r\n",
                &limits,
                &asked(b"get a b a\r\n")
            ),
            Err(ProtocolError::UnexpectedKey {
                key: "b".to_owned()
            })
        );
    }

    #[test]
    fn values_may_come_in_any_order() {
        let reply = b"VALUE c 0 1\r\n3\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n";
        assert_eq!(
            parse_reply(reply, &Limits::default(), &asked(b"get a b c\r\n")),
            Ok(Frame::Complete {
                // Each names the key it answers by its place in the request.
                reply: Reply::Values(vec![
                    value(2, 0, None, b"3"),
                    value(0, 0, None, b"1"),
                    value(1, 0, None, b"2"),
                ]),
                len: reply.len()
            })
        );
    }

    #[test]
    fn long_key_lists_are_checked_past_the_128th_key() {
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let request = encoded(|b| encode_get(b, &keys, true));
        let asked = Asked::of_request(&Bytes::from(request));
        let mut reply = Vec::new();
        // Reverse order: every lookup misses the in-order fast path.
        for key in keys.iter().rev() {
            reply.extend_from_slice(format!("VALUE {key} 0 1\r\nx\r\n").as_bytes());
        }
        let mut complete = reply.clone();
        complete.extend_from_slice(b"END\r\n");
        let Ok(Frame::Complete {
            reply: Reply::Values(values),
            ..
        }) = parse_reply(&complete, &Limits::default(), &asked)
        else {
            panic!("300 values for 300 keys refused");
        };
        assert_eq!(values.len(), 300);
        let mut extra = reply.clone();
        extra.extend_from_slice(b"VALUE k0 0 1\r\n");
        assert_eq!(
            parse_reply(&extra, &Limits::default(), &asked),
            Err(ProtocolError::TooManyValues { max: 300 })
        );
        // 299 distinct keys, then one answered a second time.
        let mut again = b"VALUE k200 0 1\r\nx\r\n".to_vec();
        for key in keys.iter().filter(|&&key| key != "k7") {
            again.extend_from_slice(format!("VALUE {key} 0 1\r\nx\r\n").as_bytes());
        }
        assert_eq!(
            parse_reply(&again, &Limits::default(), &asked),
            Err(ProtocolError::UnexpectedKey {
                key: "k200".to_owned()
            })
        );
    }

    #[test]
    fn only_a_get_is_answered_with_values_and_only_stats_with_stat_lines() {
        let limits = Limits::default();
        let cases: [(&[u8], &[u8]); 4] = [
            (b"VALUE k 0 1048576\r\n", b"set k 0 0 1\r\nx\r\n"),
            (b"VALUE k 0 1\r\n", b"stats\r\n"),
            (b"STAT pid 1\r\n", b"get k\r\n"),
            (b"STAT pid 1\r\n", b"version\r\n"),
        ];
        for (reply, request) in cases {
            assert_eq!(
                parse_reply(reply, &limits, &Asked::of_request(&Bytes::from(request))),
                Err(ProtocolError::TooManyValues { max: 0 }),
                "{request:?}"
            );
        }
        // A bare END reads as an empty listing to a get or `stats`; to another command it
        // is another request's reply (review SC).
        assert!(matches!(
            parse_reply(
                b"END\r\n",
                &limits,
                &Asked::of_request(&Bytes::from_static(b"version\r\n"))
            ),
            Err(ProtocolError::UnexpectedReply { .. })
        ));
        for request in [&b"get k\r\n"[..], b"stats\r\n"] {
            assert_eq!(
                parse_reply(
                    b"END\r\n",
                    &limits,
                    &Asked::of_request(&Bytes::from(request))
                ),
                Ok(Frame::Complete {
                    reply: Reply::Values(vec![]),
                    len: 5
                })
            );
        }
    }

    #[test]
    fn stats_listing_is_bounded_in_bytes() {
        let limits = Limits {
            max_value_len: 32,
            ..Limits::default()
        };
        let fits = b"STAT a 1\r\nSTAT b 2\r\nSTAT c 3\r\nEND\r\n";
        assert!(matches!(
            parse_reply(fits, &limits, &Asked::Stats),
            Ok(Frame::Complete { .. })
        ));
        assert_eq!(
            parse_reply(
                b"STAT a 1\r\nSTAT b 2\r\nSTAT c 3\r\nSTAT d 4\r\n",
                &limits,
                &Asked::Stats
            ),
            Err(ProtocolError::StatsTooLarge { max: 32 })
        );
    }

    // ---- fuzz -------------------------------------------------------------------------------

    /// xorshift64: deterministic, dependency-free pseudo-random numbers.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Builds one fuzz input: either a mutated valid reply, which reaches deep parser states, or
    /// a soup of protocol fragments and random bytes.
    fn fuzz_input(rng: &mut XorShift) -> Vec<u8> {
        const SEEDS: &[&[u8]] = &[
            MULTI_GET,
            STATS,
            b"VALUE k 0 3\r\nabc\r\nEND\r\n",
            b"VALUE k 1 2 3\r\nxy\r\nVALUE j 0 0\r\n\r\nEND\r\n",
            b"STORED\r\nEND\r\n",
            b"42\r\n",
            b"VERSION 1.6.21\r\n",
            b"SERVER_ERROR oops\r\n",
        ];
        const FRAGMENTS: &[&[u8]] = &[
            b"VALUE ",
            b"STAT ",
            b"END",
            b"\r\n",
            b"\r",
            b"\n",
            b" ",
            b"k",
            b"0",
            b"1",
            b"3",
            b"4294967296",
            b"18446744073709551616",
            b"-1",
            b"STORED",
            b"ERROR",
            b"CLIENT_ERROR ",
            b"SERVER_ERROR",
            b"VERSION ",
            b"abc",
            b"\xff",
        ];
        let mut input = Vec::new();
        if rng.below(2) == 0 {
            input.extend_from_slice(SEEDS[rng.below(SEEDS.len())]);
            for _ in 0..rng.below(4) {
                let at = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if at < input.len() => input[at] = rng.next() as u8,
                    1 => input.truncate(at),
                    2 => {
                        let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
                        input.splice(at..at, fragment.iter().copied());
                    }
                    _ => {
                        if at < input.len() {
                            input.remove(at);
                        }
                    }
                }
            }
        } else {
            for _ in 0..=rng.below(16) {
                if rng.below(4) == 0 {
                    for _ in 0..=rng.below(6) {
                        input.push(rng.next() as u8);
                    }
                } else {
                    input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                }
            }
        }
        input
    }

    #[test]
    fn fuzz_never_panics_or_overreads() {
        let tight = Limits {
            max_value_len: 8,
            max_line_len: 24,
            max_values: 3,
        };
        // Mostly what the reply itself answers (to reach deep states), sometimes a request
        // it may not answer.
        let others = [asked(b"gets k j alpha\r\n"), Asked::Stats, Asked::Line];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut completes = 0;
        for round in 0..5000 {
            let input = fuzz_input(&mut rng);
            let limits = if round % 2 == 0 {
                Limits::default()
            } else {
                tight
            };
            let asked = if round % 3 == 2 {
                others[round / 3 % others.len()].clone()
            } else {
                asked_for(&input)
            };
            let parsed = parse_reply(&input, &limits, &asked);
            if let Ok(Frame::Complete { len, reply }) = &parsed {
                completes += 1;
                assert!(*len > 0 && *len <= input.len(), "len {len} for {input:?}");
                // A reply is self-delimiting: its own bytes parse to the same reply.
                assert_eq!(
                    parse_reply(&input[..*len], &limits, &asked),
                    Ok(Frame::Complete {
                        reply: reply.clone(),
                        len: *len,
                    })
                );
            }
            // decode must agree with parse_reply and consume exactly `len` bytes.
            let mut buf = BytesMut::from(&input[..]);
            let (decoded, skipped) = decode_noting_skips(&mut buf, &limits, &asked);
            // Bytes of a value over the limit are cut out as they come.
            let untouched = |buf: &BytesMut| skipped || buf[..] == input[..];
            match (decoded, parsed) {
                (
                    Ok(Some(reply)),
                    Ok(Frame::Complete {
                        reply: expected,
                        len,
                    }),
                ) => {
                    assert_eq!(reply, expected);
                    assert_eq!(buf.len(), input.len() - len);
                }
                (Ok(None), Ok(Frame::Incomplete)) => assert!(untouched(&buf)),
                (Err(err), Err(expected)) => {
                    assert_eq!(err, expected);
                    assert!(untouched(&buf));
                }
                (got, expected) => panic!("decode {got:?} vs parse_reply {expected:?}"),
            }
        }
        // Guard against the generator degenerating into pure noise.
        assert!(completes > 300, "only {completes} complete replies");
    }

    // ---- properties -------------------------------------------------------------------------

    /// Parses `input` with both entry points and checks what must hold for any input: they
    /// agree, nothing panics, a reply spans at most the input, decode consumes exactly that
    /// and leaves the buffer untouched otherwise (but for the bytes of a value over the
    /// limit, cut out), value data are views of the input, a reply holds no more than the
    /// request allows, and what it holds is no larger than the input.
    fn assert_sound(input: &[u8], limits: &Limits, asked: &Asked) -> Result<Frame, ProtocolError> {
        let parsed = parse_reply(input, limits, asked);
        let mut buf = BytesMut::from(input);
        let (base, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + input.len());
        let (decoded, skipped) = decode_noting_skips(&mut buf, limits, asked);
        match (decoded, &parsed) {
            (Ok(Some(reply)), Ok(Frame::Complete { reply: copied, len })) => {
                assert!(*len > 0 && *len <= input.len(), "len {len} of {input:?}");
                assert_eq!(&reply, copied);
                assert_eq!(buf.len(), input.len() - len);
                let held = match &reply {
                    Reply::Values(values) => {
                        let allowed = match asked {
                            Asked::Keys { count, .. } => *count,
                            Asked::Stats | Asked::Command(_) | Asked::Line => 0,
                        };
                        assert!(values.len() <= allowed, "{values:?} for {asked:?}");
                        for value in values.iter().filter(|value| !value.data.is_empty()) {
                            let start = value.data.as_ptr() as usize;
                            assert!(start >= base && start + value.data.len() <= end);
                        }
                        // Each answers a key asked, and no asked key twice.
                        let mut answered = vec![false; allowed];
                        for value in values {
                            assert!(value.asked < allowed, "{values:?} for {asked:?}");
                            assert!(
                                !std::mem::replace(&mut answered[value.asked], true),
                                "{values:?} for {asked:?}"
                            );
                        }
                        values.iter().map(|v| v.data.len()).sum()
                    }
                    Reply::Stats(stats) => {
                        assert!(stats.len() <= limits.max_values);
                        stats
                            .iter()
                            .map(|(name, value)| name.len() + value.len())
                            .sum()
                    }
                    _ => 0,
                };
                assert!(held <= *len, "{held} bytes held from a {len}-byte reply");
            }
            (Ok(None), Ok(Frame::Incomplete)) | (Err(_), Err(_)) if skipped => {
                assert!(buf.len() < input.len());
            }
            (Ok(None), Ok(Frame::Incomplete)) | (Err(_), Err(_)) => {
                assert_eq!(&buf[..], input);
            }
            (decoded, parsed) => panic!("decode {decoded:?} vs parse_reply {parsed:?}"),
        }
        if let (Err(a), Err(b)) = (&parsed, decode(&mut BytesMut::from(input), limits, asked)) {
            assert_eq!(a, &b);
        }
        parsed
    }

    /// Requests the properties answer: keys (one duplicated), stats, a one-line command.
    const PROPERTY_REQUESTS: [&[u8]; 5] = [
        b"get k\r\n",
        b"gets k j a\r\n",
        b"gets a a\r\n",
        b"stats\r\n",
        b"version\r\n",
    ];

    const PROPERTY_KEYS: [&str; 3] = ["k", "j", "a"];

    /// Tight limits, so that the bounds are reached by small inputs too.
    const TIGHT: Limits = Limits {
        max_value_len: 16,
        max_line_len: 40,
        max_values: 3,
    };

    /// A valid get reply of `values` and the request it answers (their keys, plus one that
    /// missed).
    fn get_exchange(values: &[(usize, u32, Vec<u8>, Option<u64>)]) -> (Asked, Vec<u8>) {
        let mut request = b"gets".to_vec();
        let mut reply = Vec::new();
        for (key, flags, data, cas) in values {
            let key = PROPERTY_KEYS[key % PROPERTY_KEYS.len()];
            request.extend_from_slice(format!(" {key}").as_bytes());
            let cas = cas.map(|cas| format!(" {cas}")).unwrap_or_default();
            reply.extend_from_slice(
                format!("VALUE {key} {flags} {}{cas}\r\n", data.len()).as_bytes(),
            );
            reply.extend_from_slice(data);
            reply.extend_from_slice(CRLF);
        }
        request.extend_from_slice(b" missed\r\n");
        reply.extend_from_slice(b"END\r\n");
        (Asked::of_request(&Bytes::from(request)), reply)
    }

    /// The values of a get reply for [`get_exchange`]: key index, flags, data, cas.
    fn get_values()
    -> impl proptest::strategy::Strategy<Value = Vec<(usize, u32, Vec<u8>, Option<u64>)>> {
        use proptest::prelude::any;
        proptest::collection::vec(
            (
                0..PROPERTY_KEYS.len(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..24),
                proptest::option::of(any::<u64>()),
            ),
            0..5,
        )
    }

    /// Applies `(position, operation, byte)` edits: overwrite, truncate, insert, remove.
    fn mutate(input: &mut Vec<u8>, edits: &[(proptest::sample::Index, u8, u8)]) {
        for (at, operation, byte) in edits {
            let at = at.index(input.len() + 1);
            match operation % 4 {
                0 if at < input.len() => input[at] = *byte,
                1 => input.truncate(at),
                2 => input.insert(at, *byte),
                _ if at < input.len() => {
                    input.remove(at);
                }
                _ => {}
            }
        }
    }

    proptest::proptest! {
        // proptest's default: 256 cases, or PROPTEST_CASES; no regression files in src/.
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        #[test]
        fn arbitrary_bytes_are_parsed_soundly(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            request in 0..PROPERTY_REQUESTS.len(),
            tight in proptest::prelude::any::<bool>(),
        ) {
            let limits = if tight { TIGHT } else { Limits::default() };
            let _ = assert_sound(&input, &limits, &asked(PROPERTY_REQUESTS[request]));
        }

        #[test]
        fn valid_get_replies_parse_whole_and_their_prefixes_are_incomplete(
            values in get_values(),
        ) {
            let (asked, reply) = get_exchange(&values);
            let expected: Vec<Value> = values
                .iter()
                .enumerate()
                .map(|(asked, (_, flags, data, cas))| value(asked, *flags, *cas, data))
                .collect();
            proptest::prop_assert_eq!(
                assert_sound(&reply, &Limits::default(), &asked),
                Ok(Frame::Complete { reply: Reply::Values(expected), len: reply.len() })
            );
            for split in 0..reply.len() {
                proptest::prop_assert_eq!(
                    assert_sound(&reply[..split], &Limits::default(), &asked),
                    Ok(Frame::Incomplete),
                    "prefix of {} bytes", split
                );
            }
        }

        #[test]
        fn values_over_the_limit_are_left_out_whatever_the_reads(
            values in get_values(),
            read in 1..64usize,
        ) {
            let (asked, reply) = get_exchange(&values);
            let expected: Vec<Value> = values
                .iter()
                .enumerate()
                .filter(|(_, (_, _, data, _))| data.len() <= SKIPPING.max_value_len)
                .map(|(asked, (_, flags, data, cas))| value(asked, *flags, *cas, data))
                .collect();
            proptest::prop_assert_eq!(
                assert_sound(&reply, &SKIPPING, &asked),
                Ok(Frame::Complete { reply: Reply::Values(expected.clone()), len: reply.len() })
            );
            for split in 0..reply.len() {
                proptest::prop_assert_eq!(
                    assert_sound(&reply[..split], &SKIPPING, &asked),
                    Ok(Frame::Incomplete),
                    "prefix of {} bytes", split
                );
            }
            let (decoded, _) = decode_in_reads(&reply, read, &asked);
            proptest::prop_assert_eq!(decoded, Reply::Values(expected));
        }

        #[test]
        fn values_in_any_order_name_the_place_of_the_key_they_answer(
            request in proptest::collection::vec(0..PROPERTY_KEYS.len(), 1..8),
            answered in proptest::collection::vec(proptest::prelude::any::<bool>(), 8),
            order in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            // A request with repeated keys, answered for some of its places in a shuffled
            // order (a proxy may reassemble a multi-get so), each value's data its place.
            let keys: Vec<&str> = request.iter().map(|&key| PROPERTY_KEYS[key]).collect();
            let mut places: Vec<usize> =
                (0..keys.len()).filter(|&place| answered[place]).collect();
            if !places.is_empty() {
                let turn = order.index(places.len());
                places.rotate_left(turn);
                places[..turn.max(1)].reverse();
            }
            let mut reply = Vec::new();
            for &place in &places {
                reply.extend_from_slice(
                    format!("VALUE {} 0 1\r\n{place}\r\n", keys[place]).as_bytes(),
                );
            }
            reply.extend_from_slice(b"END\r\n");
            let asked = Asked::of_request(&Bytes::from(encoded(|b| encode_get(b, &keys, true))));
            let Ok(Frame::Complete { reply: Reply::Values(values), .. }) =
                assert_sound(&reply, &Limits::default(), &asked)
            else {
                return Err(proptest::test_runner::TestCaseError::fail("not a complete reply"));
            };
            proptest::prop_assert_eq!(values.len(), places.len());
            for value in &values {
                // The echoed key is the key asked at the place the value names; with
                // repeated keys the place is the next one not yet answered, so it may not
                // be the place the server meant, but it always holds the same key.
                let meant: usize = std::str::from_utf8(&value.data).unwrap().parse().unwrap();
                proptest::prop_assert_eq!(keys[value.asked], keys[meant]);
            }
        }

        #[test]
        fn mutated_replies_are_parsed_soundly(
            values in get_values(),
            stats in proptest::collection::vec(("[a-z_]{1,8}", "[ -~]{0,12}"), 0..5),
            edits in proptest::collection::vec(
                (
                    proptest::prelude::any::<proptest::sample::Index>(),
                    proptest::prelude::any::<u8>(),
                    proptest::prelude::any::<u8>(),
                ),
                0..4,
            ),
            as_stats in proptest::prelude::any::<bool>(),
            tight in proptest::prelude::any::<bool>(),
        ) {
            let (asked, mut input) = if as_stats {
                let mut listing = Vec::new();
                for (name, value) in &stats {
                    listing.extend_from_slice(format!("STAT {name} {value}\r\n").as_bytes());
                }
                listing.extend_from_slice(b"END\r\n");
                (Asked::Stats, listing)
            } else {
                get_exchange(&values)
            };
            mutate(&mut input, &edits);
            let limits = if tight { TIGHT } else { Limits::default() };
            let _ = assert_sound(&input, &limits, &asked);
        }

        /// Review U: one connection's replies (gets, a get cut short by an error line,
        /// one-line replies), maybe broken, fed to one kept [`Decoder`] in any chunks,
        /// decode as each fed whole to a fresh parse: the scratch the decoder keeps
        /// between replies (the offsets of a get's values, left behind by an error
        /// ending, an error or an incomplete retry) never reaches another reply.
        #[test]
        fn a_kept_decoder_fed_in_any_chunks_decodes_as_fresh_parses(
            exchanges in proptest::collection::vec((get_values(), 0..3u8), 1..5),
            edits in proptest::collection::vec(
                (
                    proptest::prelude::any::<proptest::sample::Index>(),
                    proptest::prelude::any::<u8>(),
                    proptest::prelude::any::<u8>(),
                ),
                0..3,
            ),
            cuts in proptest::collection::vec(
                proptest::prelude::any::<proptest::sample::Index>(),
                0..16,
            ),
            tight in proptest::prelude::any::<bool>(),
        ) {
            let (asked, mut stream) = connection_exchanges(&exchanges);
            mutate(&mut stream, &edits);
            let limits = if tight { TIGHT } else { Limits::default() };
            let whole = fresh_parses(&stream, &limits, &asked);
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            proptest::prop_assert_eq!(kept_decoder(&stream, &cuts, &limits, &asked), whole.clone());
            // And a byte at a time.
            let every: Vec<usize> = (1..=stream.len()).collect();
            proptest::prop_assert_eq!(kept_decoder(&stream, &every, &limits, &asked), whole);
        }
    }

    /// What one request's reply came to on a connection.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Decoded {
        Reply(Reply),
        /// The stream ended inside this reply.
        Incomplete,
        Error(ProtocolError),
    }

    /// The values of one get reply, as [`get_values`] makes them.
    type GetValues = Vec<(usize, u32, Vec<u8>, Option<u64>)>;

    /// A connection's requests and the stream of their replies: kind 0 a get answered in
    /// full, 1 a get whose reply ends in an error line after its values, 2 a store.
    fn connection_exchanges(exchanges: &[(GetValues, u8)]) -> (Vec<Asked>, Vec<u8>) {
        let mut asked = Vec::new();
        let mut stream = Vec::new();
        for (values, kind) in exchanges {
            match kind {
                0 | 1 => {
                    let (request, mut reply) = get_exchange(values);
                    if *kind == 1 {
                        reply.truncate(reply.len() - b"END\r\n".len());
                        reply.extend_from_slice(
                            b"SERVER_ERROR out of memory writing get response\r\n",
                        );
                    }
                    asked.push(request);
                    stream.extend_from_slice(&reply);
                }
                _ => {
                    asked.push(asked_of(b"set k 0 0 1\r\nx\r\n"));
                    stream.extend_from_slice(b"STORED\r\n");
                }
            }
        }
        (asked, stream)
    }

    fn asked_of(request: &[u8]) -> Asked {
        Asked::of_request(&Bytes::copy_from_slice(request))
    }

    /// The replies of `stream`, each parsed whole from where the last ended, as far as the
    /// first that is incomplete or broken.
    fn fresh_parses(stream: &[u8], limits: &Limits, asked: &[Asked]) -> Vec<Decoded> {
        let mut decoded = Vec::new();
        let mut pos = 0;
        for asked in asked {
            match parse_reply(&stream[pos..], limits, asked) {
                Ok(Frame::Complete { reply, len }) => {
                    decoded.push(Decoded::Reply(reply));
                    pos += len;
                }
                Ok(Frame::Incomplete) => {
                    decoded.push(Decoded::Incomplete);
                    break;
                }
                Err(err) => {
                    decoded.push(Decoded::Error(err));
                    break;
                }
            }
        }
        decoded
    }

    /// An incomplete value tells the reader how much room its reply needs (its data block
    /// and an `END`), so that it reserves it once; nothing is known before the header is
    /// in, and a complete reply leaves nothing wanted.
    #[test]
    fn an_incomplete_value_says_how_long_its_reply_is() {
        let limits = Limits::default();
        let asked = asked(b"get k\r\n");
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"VALUE k 0 100000"[..]);
        assert_eq!(decoder.decode(&mut buf, &limits, &asked), Ok(None));
        assert_eq!(decoder.wanted(), 0, "no header line yet");
        buf.extend_from_slice(b"\r\nxxxx");
        assert_eq!(decoder.decode(&mut buf, &limits, &asked), Ok(None));
        let header = b"VALUE k 0 100000\r\n".len();
        assert_eq!(decoder.wanted(), header + 100_000 + b"\r\nEND\r\n".len());
        buf.extend_from_slice(&vec![b'x'; 100_000 - 4]);
        buf.extend_from_slice(b"\r\nEND\r\n");
        assert!(matches!(
            decoder.decode(&mut buf, &limits, &asked),
            Ok(Some(Reply::Values(_)))
        ));
        assert_eq!(decoder.wanted(), 0);
    }

    /// The replies of `stream` as a connection's reader takes them: one [`Decoder`], the
    /// bytes arriving cut at `cuts` (ascending, the last the stream's length).
    fn kept_decoder(
        stream: &[u8],
        cuts: &[usize],
        limits: &Limits,
        asked: &[Asked],
    ) -> Vec<Decoded> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            buf.extend_from_slice(&stream[from..cut]);
            from = cut;
            while let Some(asked) = asked.get(decoded.len()) {
                if buf.is_empty() {
                    break;
                }
                let before = buf.clone();
                let decoded_now = decoder.decode(&mut buf, limits, asked);
                // Untouched, but for the bytes of a value over the limit, cut out as they
                // come.
                let kept =
                    buf == before || (!decoder.skipped.is_empty() && buf.len() < before.len());
                match decoded_now {
                    Ok(Some(reply)) => decoded.push(Decoded::Reply(reply)),
                    Ok(None) => {
                        assert!(kept, "an incomplete reply consumed bytes");
                        break;
                    }
                    Err(err) => {
                        assert!(kept, "an error consumed bytes");
                        decoded.push(Decoded::Error(err));
                        return decoded;
                    }
                }
            }
        }
        if decoded.len() < asked.len() {
            decoded.push(Decoded::Incomplete);
        }
        decoded
    }

    #[test]
    fn encoded_requests_round_trip_through_a_fake_server_reply() {
        // A value stored with encode_store comes back byte-identical through decode.
        let data = b"\x00\r\n\xffpayload";
        let request = encoded(|b| encode_store(b, StoreCommand::Set, "rt", 9, 0, data, false));
        let body_start = request.len() - data.len() - 2;
        let mut reply = BytesMut::from(format!("VALUE rt 9 {}\r\n", data.len()).as_bytes());
        reply.extend_from_slice(&request[body_start..]);
        reply.extend_from_slice(b"END\r\n");
        assert_eq!(
            decode_any(&mut reply, &Limits::default()),
            Ok(Some(Reply::Values(vec![value(0, 9, None, data)])))
        );
    }

    /// Review SC: a one-line reply of a kind its request cannot get (another request's)
    /// is refused where it is parsed; errors and each command's own replies pass.
    #[test]
    fn one_line_replies_of_another_requests_kind_are_refused() {
        let limits = Limits::default();
        let refused = [
            (&b"gets a\r\n"[..], &b"STORED\r\n"[..]),
            (b"get a b\r\n", b"DELETED\r\n"),
            (b"stats settings\r\n", b"OK\r\n"),
            (b"delete a\r\n", b"END\r\n"),
            (b"delete a\r\n", b"STORED\r\n"),
            (b"set a 0 0 1\r\nx\r\n", b"DELETED\r\n"),
            (b"cas a 0 0 1 9\r\nx\r\n", b"END\r\n"),
            (b"touch a 1\r\n", b"DELETED\r\n"),
            (b"incr a 1\r\n", b"STORED\r\n"),
            (b"flush_all\r\n", b"VERSION 1.6.0\r\n"),
            (b"version\r\n", b"OK\r\n"),
        ];
        for (request, reply) in refused {
            let outcome = decode(&mut BytesMut::from(reply), &limits, &asked(request));
            assert!(
                matches!(outcome, Err(ProtocolError::UnexpectedReply { .. })),
                "{reply:?} to {request:?}: {outcome:?}"
            );
        }
        let passed = [
            (&b"gets a\r\n"[..], &b"END\r\n"[..]),
            (b"stats\r\n", b"END\r\n"),
            (b"delete a\r\n", b"NOT_FOUND\r\n"),
            (b"set a 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            (b"cas a 0 0 1 9\r\nx\r\n", b"EXISTS\r\n"),
            (b"touch a 1\r\n", b"TOUCHED\r\n"),
            (b"decr a 1\r\n", b"7  \r\n"),
            (b"flush_all\r\n", b"OK\r\n"),
            (b"version\r\n", b"VERSION 1.6.0\r\n"),
            (b"gets a\r\n", b"SERVER_ERROR out of memory\r\n"),
            (b"delete a\r\n", b"CLIENT_ERROR bad\r\n"),
            (b"version\r\n", b"ERROR\r\n"),
        ];
        for (request, reply) in passed {
            let outcome = decode(&mut BytesMut::from(reply), &limits, &asked(request));
            assert!(
                matches!(outcome, Ok(Some(_))),
                "{reply:?} to {request:?}: {outcome:?}"
            );
        }
    }
}
