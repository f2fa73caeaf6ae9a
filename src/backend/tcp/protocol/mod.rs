//! The memcached text ("ASCII") protocol: request encoding and reply parsing.
//!
//! Everything in this module is pure. Encoders (`encode`) append a request to a
//! [`BytesMut`](bytes::BytesMut); the parser (`decode`) looks at a byte slice and reports either that more bytes are needed, that the server broke the
//! protocol, or a complete [`Reply`] together with the number of bytes it spans. The connection
//! owns the socket and the read buffer, so every corner of the grammar can be tested here without
//! a server (the same split as mini-redis' `Connection`/`Frame`).
//!
//! Grammar reference: memcached's `doc/protocol.txt`. Replies are self-describing by their first
//! line, but a reply is also bounded by the request it answers ([`Asked`]): a get may only be
//! answered with values for the keys it asked for, one each, so a broken or hostile server is
//! refused at the first header too many rather than after its data has been buffered. A
//! value larger than the client buffers is skipped as it arrives, never buffered.

use bytes::Bytes;

/// Line terminator for request lines, reply lines and data blocks alike.
const CRLF: &[u8] = b"\r\n";

mod asked;
mod decode;
mod encode;
mod lines;

pub(crate) use asked::Asked;
pub(crate) use decode::Decoder;
pub(crate) use encode::*;

// ---------------------------------------------------------------------------------------------
// Reply model
// ---------------------------------------------------------------------------------------------

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Zero or more `VALUE` blocks followed by `END` (get/gets). A bare `END` is `Values(vec![])`,
    /// which is also what an empty `stats` listing looks like on the wire.
    Values(Vec<Value>),
    /// `STORED`: a storage command succeeded.
    Stored,
    /// `NOT_STORED`: the add/replace/append/prepend condition was not met.
    NotStored,
    /// `EXISTS`: a cas store lost the race against another writer.
    Exists,
    /// `NOT_FOUND`: the key does not exist.
    NotFound,
    /// `DELETED`: delete succeeded.
    Deleted,
    /// `TOUCHED`: touch succeeded.
    Touched,
    /// `OK`: flush_all (and a few admin commands) succeeded.
    Ok,
    /// The new value after incr/decr.
    Number(u64),
    /// `STAT <name> <value>` lines followed by `END`; only produced with at least one line.
    Stats(Vec<(String, String)>),
    /// `VERSION <version>`.
    Version(String),
    /// `ERROR`: the server did not recognise the command.
    Error,
    /// `CLIENT_ERROR <message>`: the request was malformed.
    ClientError(String),
    /// `SERVER_ERROR <message>`: the server failed to carry out the request.
    ServerError(String),
}

/// One item of a get/gets reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    /// Which key of the request this answers: its position in the request's key list. The
    /// echoed key was checked to be that key, so callers take the key from their own list
    /// and need no copy of it (nor a search).
    pub asked: usize,
    /// Opaque client flags stored with the item.
    pub flags: u32,
    /// The cas token; present only in `gets` replies.
    pub cas: Option<u64>,
    /// The item's data. From [`decode`] this shares the read buffer instead of copying it.
    pub data: Bytes,
}

/// Outcome of [`parse_reply`] on a buffer that does not (yet) violate the protocol.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The buffer holds only a prefix of a reply; read more and parse again.
    Incomplete,
    /// A full reply occupying the first `len` bytes of the buffer.
    Complete {
        /// The parsed reply.
        reply: Reply,
        /// Bytes consumed, including every terminator.
        len: usize,
    },
}

/// Bounds applied while parsing, so a broken or hostile server cannot make the client buffer
/// without limit before the reply is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest data block buffered; checked against the announced length in the `VALUE`
    /// header. A larger one (up to the 1 GiB a memcached can hold) is skipped as it arrives
    /// and its key reads as a miss (see [`Decoder`]). Also bounds a whole `STAT` listing,
    /// which is a few KiB in practice.
    pub max_value_len: usize,
    /// Longest accepted text line, excluding its `\r\n`.
    pub max_line_len: usize,
    /// Most `STAT` lines accepted in one reply. `VALUE` blocks are bounded by the request
    /// instead (one per key asked, see [`Asked`]).
    pub max_values: usize,
}

impl Default for Limits {
    /// memcached's default item size cap (1 MiB), lines far longer than any legitimate header
    /// (a 250-byte key plus three numbers), and a generous multi-get size.
    fn default() -> Self {
        Limits {
            max_value_len: 1024 * 1024,
            max_line_len: 8192,
            max_values: 10_000,
        }
    }
}

/// Ways a server reply can violate the protocol. All of them leave the connection out of sync,
/// so the caller should drop it rather than try to resynchronise.
///
/// What [`BackendError::Protocol`](crate::backend::BackendError::Protocol) holds for
/// [`TcpBackend`](super::TcpBackend), reached with
/// [`ProtocolViolation::downcast_ref`](crate::backend::ProtocolViolation::downcast_ref).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first line of a reply matches no known reply kind.
    #[error("unknown reply line from memcached: {line:?}")]
    UnknownLine {
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// A line starting with a digit (an incr/decr result) is not a valid `u64`.
    #[error("invalid numeric reply from memcached: {line:?}")]
    InvalidNumber {
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// A `VALUE` header with missing, extra or unparsable fields.
    #[error("malformed VALUE header ({reason}): {line:?}")]
    MalformedValueHeader {
        /// Which field was wrong.
        reason: &'static str,
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// A `STAT` line without a name.
    #[error("malformed STAT line: {line:?}")]
    MalformedStat {
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// The bytes after a data block of the announced length are not `\r\n`.
    #[error("data block for key {key:?} is not terminated by \\r\\n")]
    DataNotTerminated {
        /// Key of the offending item.
        key: String,
    },
    /// A `VALUE` header announced more data than any memcached holds (1 GiB, or the value
    /// size limit if larger).
    #[error("memcached announced a {len}-byte value, over the {max}-byte limit")]
    ValueTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line grew past the line length limit without its terminator.
    #[error("reply line longer than {max} bytes")]
    LineTooLong {
        /// Configured limit.
        max: usize,
    },
    /// A line ended in a bare `\n`; memcached always sends `\r\n`, so the stream is corrupt.
    #[error("reply line terminated by a bare \\n instead of \\r\\n: {line:?}")]
    BareLineFeed {
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// More `VALUE` blocks than the request asked keys for (none for a command other than
    /// get/gets), or more `STAT` lines than the limit (none unless `stats` was sent). Refused at the header or line one too many, before its data arrives.
    #[error("reply holds more than {max} VALUE blocks or STAT lines")]
    TooManyValues {
        /// Keys asked, or the configured limit for `STAT` lines.
        max: usize,
    },
    /// A `VALUE` block for a key the request did not ask for, or for a key asked once (or
    /// `n` times) answered more often than that.
    #[error("memcached answered for key {key:?}, which the request did not ask for")]
    UnexpectedKey {
        /// Lossy, truncated copy of the key.
        key: String,
    },
    /// A `STAT` listing longer than the value size limit.
    #[error("STAT listing longer than {max} bytes")]
    StatsTooLarge {
        /// Configured limit.
        max: usize,
    },
    /// A key, stat or version string is not UTF-8.
    #[error("{what} in memcached reply is not valid UTF-8")]
    NonUtf8 {
        /// Which part of the reply.
        what: &'static str,
    },
    /// A line that does not belong inside the multi-line reply being read.
    #[error("unexpected line inside a multi-line {section} reply: {line:?}")]
    UnexpectedLine {
        /// `"get"` or `"stats"`.
        section: &'static str,
        /// Lossy, truncated copy of the line.
        line: String,
    },
    /// Bytes arrived with no request left to answer.
    #[error("unsolicited bytes from memcached, with no request left to answer")]
    Unsolicited,
    /// A well-formed reply of a kind the request cannot get (`STORED` to a `get`, say).
    #[error("unexpected reply {reply} (expected {expected})")]
    UnexpectedReply {
        /// The reply, as `Debug` shows it.
        reply: String,
        /// What the request can get.
        expected: &'static str,
    },
}
