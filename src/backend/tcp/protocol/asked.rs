//! What a request allows its reply to hold ([`Asked`]): the keys a get asked for, one
//! value each, or the one-line replies a command may get; checked while the reply is parsed.

use bytes::Bytes;

use super::lines::{Section, after_keyword};
use super::*;

/// What one request allows its reply to hold, so that a reply is bounded by its request while
/// it is parsed: a server cannot make the client buffer values nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asked {
    /// A get/gets: at most one `VALUE` block per key asked, and only for those keys.
    Keys {
        /// The keys as the request line lists them (`k1 k2 ...`): a view of the request's
        /// bytes, so remembering them costs no copy.
        keys: Bytes,
        /// How many keys `keys` lists, duplicates included.
        count: usize,
    },
    /// `stats`: `STAT` lines, within [`Limits`].
    Stats,
    /// A command answered with one line: which line, besides an error.
    Command(Command),
    /// Any other command (none this client sends): any one-line reply (or a bare `END`).
    Line,
}

/// What a command answered with one line may be answered with, besides an error: a reply
/// of another kind means the connection is out of step (the reply is another request's),
/// and is refused where it is parsed, before the replies behind it are handed out, even
/// when the caller it is for has given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store,
    /// `delete`.
    Delete,
    /// `touch`.
    Touch,
    /// `incr`, `decr`.
    Number,
    /// `flush_all`.
    FlushAll,
    /// `version`.
    Version,
}

impl Command {
    /// The command a request line's first word names, if it is one of those above.
    fn of_verb(verb: &[u8]) -> Option<Command> {
        Some(match verb {
            b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => Command::Store,
            b"delete" => Command::Delete,
            b"touch" => Command::Touch,
            b"incr" | b"decr" => Command::Number,
            b"flush_all" => Command::FlushAll,
            b"version" => Command::Version,
            _ => return None,
        })
    }

    /// Whether `reply` (not an error) answers this command.
    fn allows(self, reply: &Reply) -> bool {
        match self {
            Command::Store => matches!(
                reply,
                Reply::Stored | Reply::NotStored | Reply::Exists | Reply::NotFound
            ),
            Command::Delete => matches!(reply, Reply::Deleted | Reply::NotFound),
            Command::Touch => matches!(reply, Reply::Touched | Reply::NotFound),
            Command::Number => matches!(reply, Reply::Number(_) | Reply::NotFound),
            Command::FlushAll => matches!(reply, Reply::Ok),
            Command::Version => matches!(reply, Reply::Version(_)),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Command::Store => "STORED, NOT_STORED, EXISTS or NOT_FOUND",
            Command::Delete => "DELETED or NOT_FOUND",
            Command::Touch => "TOUCHED or NOT_FOUND",
            Command::Number => "a number or NOT_FOUND",
            Command::FlushAll => "OK",
            Command::Version => "VERSION",
        }
    }
}

impl Asked {
    /// What `request`, one request as encoded by this module, may be answered with.
    pub(crate) fn of_request(request: &Bytes) -> Asked {
        let line_end = memchr::memchr(b'\r', request).unwrap_or(request.len());
        let line = &request[..line_end];
        let keys = after_keyword(line, b"gets").or_else(|| after_keyword(line, b"get"));
        if let Some(keys) = keys {
            let count = asked_keys(keys, 0).count();
            Asked::Keys {
                keys: request.slice(line_end - keys.len()..line_end),
                count,
            }
        } else if after_keyword(line, b"stats").is_some() {
            Asked::Stats
        } else {
            let verb = &line[..memchr::memchr(b' ', line).unwrap_or(line.len())];
            Command::of_verb(verb).map_or(Asked::Line, Asked::Command)
        }
    }

    /// Refuses a one-line `reply` of a kind this request cannot get: a get or `stats`
    /// only a bare `END` (or an error), a command only its own replies.
    pub(super) fn check_line(&self, reply: Reply) -> Result<Reply, ProtocolError> {
        let (allowed, expected) = match self {
            Asked::Keys { .. } | Asked::Stats => (
                matches!(&reply, Reply::Values(values) if values.is_empty()),
                "END",
            ),
            Asked::Command(command) => (command.allows(&reply), command.expected()),
            Asked::Line => (true, ""),
        };
        let error = matches!(
            reply,
            Reply::Error | Reply::ClientError(_) | Reply::ServerError(_)
        );
        if allowed || error {
            Ok(reply)
        } else {
            Err(ProtocolError::UnexpectedReply {
                reply: format!("{reply:?}"),
                expected,
            })
        }
    }

    /// How many entries of `section` the reply may hold.
    pub(super) fn max_entries(&self, section: Section, limits: &Limits) -> usize {
        match (self, section) {
            (Asked::Keys { count, .. }, Section::Values) => *count,
            (Asked::Stats, Section::Stats) => limits.max_values,
            _ => 0,
        }
    }

    /// The keys of a get/gets line; empty for other commands.
    fn keys(&self) -> &[u8] {
        match self {
            Asked::Keys { keys, .. } => keys,
            Asked::Stats | Asked::Command(_) | Asked::Line => &[],
        }
    }
}

/// The keys of a request line from byte `start` on, each with the offset just past it.
pub(super) fn asked_keys(keys: &[u8], start: usize) -> impl Iterator<Item = (&[u8], usize)> {
    let mut pos = start;
    std::iter::from_fn(move || {
        while keys.get(pos) == Some(&b' ') {
            pos += 1;
        }
        let rest = keys.get(pos..).filter(|rest| !rest.is_empty())?;
        let end = pos + memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let key = &keys[pos..end];
        pos = end;
        Some((key, end))
    })
}

/// Matches the keys of a get reply's `VALUE` headers against the keys asked, each asked key
/// (each occurrence of a key asked twice) answered at most once. No allocation up to 128 keys.
pub(super) struct KeyCheck<'a> {
    /// The request's key list.
    keys: &'a [u8],
    /// Bit `i` is set once the `i`th key asked has been answered.
    answered: u128,
    /// The same, for keys past the 128th; empty (unallocated) for shorter requests.
    answered_beyond: Vec<u128>,
    /// Index and offset of the key after the one answered last: memcached answers in request
    /// order, so that is where the next key is found at once.
    next: (usize, usize),
}

impl<'a> KeyCheck<'a> {
    /// A check of the keys `asked`, those at the positions `skipped` answered already.
    pub(super) fn new(asked: &'a Asked, skipped: &[usize]) -> Self {
        let count = match asked {
            Asked::Keys { count, .. } => *count,
            Asked::Stats | Asked::Command(_) | Asked::Line => 0,
        };
        let mut check = KeyCheck {
            keys: asked.keys(),
            answered: 0,
            answered_beyond: vec![0; count.div_ceil(128).saturating_sub(1)],
            next: (0, 0),
        };
        for &index in skipped {
            check.mark(index);
        }
        check
    }

    /// Records an answer for `key`: the position of the asked key it answers, or `None` if
    /// it was not asked, or every time it was asked has been answered already. Order is not
    /// required (a proxy may reassemble a split multi-get differently), only looked at
    /// first.
    pub(super) fn answer(&mut self, key: &[u8]) -> Option<usize> {
        let (next_index, next_offset) = self.next;
        let later = asked_keys(self.keys, next_offset).zip(next_index..);
        let earlier = asked_keys(self.keys, 0).zip(0..next_index);
        for ((asked, end), index) in later.chain(earlier) {
            if asked == key && self.mark(index) {
                self.next = (index + 1, end);
                return Some(index);
            }
        }
        None
    }

    /// Sets bit `index`; false if it was set already.
    fn mark(&mut self, index: usize) -> bool {
        let word = match index / 128 {
            0 => &mut self.answered,
            n => match self.answered_beyond.get_mut(n - 1) {
                Some(word) => word,
                None => return false,
            },
        };
        let bit = 1u128 << (index % 128);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}
