//! Several callers' gets merged into one request line, and its reply split back.
//!
//! memcached (1.6.18 measured) answers every pipelined command with a `sendmsg` of its own,
//! but all the keys of one `get k1 k2 ...` with one: nine pipelined two-key `gets` cost it
//! nine `sendmsg` calls and the client nine reply segments, one nine-lookup `gets` one of
//! each. Under load a connection's backlog holds many lookups for the same server at once
//! (they wait for its owner to write them anyway), so the connection merges consecutive
//! ones into one line while they wait. Nothing waits longer for it: a request is only merged
//! into one that has not been written yet.
//!
//! A key already in the line (every cache lookup also reads its namespace generation) is
//! not listed again: the caller is given the value of the one listed. Each caller keeps the
//! line position of each of its keys, so a reply's value is matched to its callers by its
//! position in the line ([`Value::asked`], checked against the key the server echoes): a
//! caller only ever gets values for the keys it asked, at positions relative to its own
//! request. A reply other than values (an error line) goes to every caller of the line.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::protocol::{Asked, Reply, Value};
use crate::backend::BackendError;

/// Most keys one merged line lists. memcached reads a multi-get line of any length, but
/// the reader buffers a reply whole before it splits it, so this bounds that buffer to this
/// many largest values (where pipelined requests had their replies parsed one by one), and
/// one large reply is what the other callers' replies queue behind. 32 keys take 31
/// lookups of an entry and a shared generation, more than the batch a connection sees at a
/// few dozen requests in flight.
const MAX_MERGED_KEYS: usize = 32;

/// Most bytes of keys one merged line lists.
const MAX_MERGED_KEY_BYTES: usize = 4 * 1024;

/// Where a caller's reply goes, until its deadline.
pub(super) struct Waiter {
    /// Taken when the deadline passes first: the caller sees its channel closed, and the
    /// reply, still read in its turn, is dropped.
    sender: Option<oneshot::Sender<Result<Reply, BackendError>>>,
    /// When the connection gives up on the caller (see [`super::connection`]), if ever.
    deadline: Option<Instant>,
}

impl Waiter {
    pub(super) fn new(
        sender: oneshot::Sender<Result<Reply, BackendError>>,
        deadline: Option<Instant>,
    ) -> Self {
        Waiter {
            sender: Some(sender),
            deadline,
        }
    }

    fn send(self, reply: Result<Reply, BackendError>) {
        if let Some(sender) = self.sender {
            let _ = sender.send(reply);
        }
    }

    /// Whether the caller still waits for its reply: neither given up on nor gone (its
    /// call dropped).
    fn waits(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| !sender.is_closed())
    }

    /// Gives up on the caller if its deadline is `now` or past; otherwise its deadline,
    /// if it still waits and has one.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.sender.as_ref()?;
        let deadline = self.deadline?;
        if deadline <= now {
            self.sender = None;
            return None;
        }
        Some(deadline)
    }
}

#[cfg(test)]
impl From<oneshot::Sender<Result<Reply, BackendError>>> for Waiter {
    fn from(sender: oneshot::Sender<Result<Reply, BackendError>>) -> Self {
        Waiter::new(sender, None)
    }
}

/// The earlier of two deadlines, where `None` is none.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The callers one request on the wire answers, in its place in the connection's FIFO.
pub(super) enum Waiting {
    /// One caller's own request.
    One(Waiter),
    /// Callers whose gets were merged into one line, in the order they joined it.
    Merged(Vec<Member>),
}

/// One caller of a merged line.
pub(super) struct Member {
    waiter: Waiter,
    places: Places,
}

/// The line position of each of a caller's keys, in the caller's order.
enum Places {
    /// `count` positions from `first` on: keys the line did not hold yet, appended.
    Run { first: usize, count: usize },
    /// Some keys were already in the line.
    Listed(Vec<usize>),
}

impl Places {
    /// The caller's keys (as indexes into its own request) at line position `position`.
    fn asked_at(&self, position: usize) -> impl Iterator<Item = usize> + '_ {
        let (run, listed) = match self {
            Places::Run { first, count } => {
                let own = position.checked_sub(*first).filter(|own| own < count);
                (own, &[][..])
            }
            Places::Listed(places) => (None, &places[..]),
        };
        run.into_iter().chain(
            listed
                .iter()
                .enumerate()
                .filter(move |(_, place)| **place == position)
                .map(|(own, _)| own),
        )
    }
}

impl Waiting {
    /// How many callers this reply answers (each holds one of the connection's slots).
    pub(super) fn callers(&self) -> usize {
        match self {
            Waiting::One(_) => 1,
            Waiting::Merged(members) => members.len(),
        }
    }

    /// Whether any of its callers still waits for the reply.
    pub(super) fn waits(&self) -> bool {
        match self {
            Waiting::One(waiter) => waiter.waits(),
            Waiting::Merged(members) => members.iter().any(|member| member.waiter.waits()),
        }
    }

    /// Gives up on the callers whose deadline is `now` or past (see [`Waiter`]); returns
    /// the earliest deadline of those still waiting.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        match self {
            Waiting::One(waiter) => waiter.expire(now),
            Waiting::Merged(members) => expire_members(members, now),
        }
    }

    /// Hands `reply` to the caller, or splits it between the callers of a merged line.
    /// A caller that gave up is skipped.
    pub(super) fn answer(self, reply: Result<Reply, BackendError>) {
        let members = match self {
            Waiting::One(waiter) => {
                waiter.send(reply);
                return;
            }
            Waiting::Merged(members) => members,
        };
        let values = match reply {
            Ok(Reply::Values(values)) => values,
            other => {
                for member in members {
                    member.waiter.send(other.clone());
                }
                return;
            }
        };
        let mut split: Vec<Vec<Value>> = members.iter().map(|_| Vec::new()).collect();
        for value in values {
            // The reply's key check bounds `asked` by the line's key count; a position no
            // caller holds is dropped rather than misdelivered.
            for (member, own) in members.iter().zip(split.iter_mut()) {
                for asked in member.places.asked_at(value.asked) {
                    own.push(Value {
                        asked,
                        ..value.clone()
                    });
                }
            }
        }
        for (member, mut values) in members.into_iter().zip(split) {
            if matches!(member.places, Places::Listed(_)) {
                values.sort_unstable_by_key(|value| value.asked);
            }
            member.waiter.send(Ok(Reply::Values(values)));
        }
    }
}

/// [`Waiting::expire`] for the callers of a merged line.
fn expire_members(members: &mut [Member], now: Instant) -> Option<Instant> {
    members.iter_mut().fold(None, |next, member| {
        earliest(next, member.waiter.expire(now))
    })
}

/// A request that may merge with its neighbours: exactly one `get` or `gets` line.
pub(super) struct Retrieval {
    with_cas: bool,
    /// Its keys, as the line lists them.
    keys: Bytes,
    count: usize,
}

impl Retrieval {
    /// `request` (as encoded by the protocol module), when it is one retrieval line.
    pub(super) fn of(request: &Bytes, asked: &Asked) -> Option<Retrieval> {
        let Asked::Keys { keys, count } = asked else {
            return None;
        };
        let with_cas = request.starts_with(b"gets ");
        let verb_len = if with_cas { 4 } else { 3 };
        // One line: the verb, a space, the keys, CRLF, and nothing after.
        if request.len() != verb_len + 1 + keys.len() + 2 || !request.ends_with(b"\r\n") {
            return None;
        }
        Some(Retrieval {
            with_cas,
            keys: keys.clone(),
            count: *count,
        })
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys
            .split(|&byte| byte == b' ')
            .filter(|key| !key.is_empty())
    }
}

/// A merged line still open to more callers: not written yet, the last request of its
/// connection's backlog.
pub(super) struct OpenGets {
    /// The first caller's request as it came, used as is when nobody joins.
    first: Bytes,
    /// The merged line without its CRLF, and where each of its keys is in it, once a
    /// second caller joined.
    line: Option<(BytesMut, Vec<(usize, usize)>)>,
    with_cas: bool,
    /// Keys the line lists.
    keys: usize,
    key_bytes: usize,
    members: Vec<Member>,
}

impl OpenGets {
    /// Opens a line with `request`, whose reply goes to `waiter`.
    pub(super) fn open(request: Bytes, retrieval: Retrieval, waiter: Waiter) -> Self {
        OpenGets {
            first: request,
            line: None,
            with_cas: retrieval.with_cas,
            keys: retrieval.count,
            key_bytes: retrieval.keys.len(),
            members: vec![Member {
                waiter,
                places: Places::Run {
                    first: 0,
                    count: retrieval.count,
                },
            }],
        }
    }

    /// Adds a caller's keys to the line (those it does not list yet), or gives its waiter
    /// back when they do not fit (another verb, or the line is full).
    pub(super) fn join(&mut self, retrieval: &Retrieval, waiter: Waiter) -> Result<(), Waiter> {
        if retrieval.with_cas != self.with_cas {
            return Err(waiter);
        }
        let (line, spans) = self.line.get_or_insert_with(|| {
            let mut line = BytesMut::with_capacity(1024);
            line.put_slice(&self.first[..self.first.len() - 2]);
            let spans = spans_of(&line);
            (line, spans)
        });
        // What the line would grow by; nothing changes unless it all fits.
        let (mut new_keys, mut new_bytes) = (0, 0);
        for key in retrieval.keys() {
            if listed_in(line, spans, key).is_none() {
                new_keys += 1;
                new_bytes += 1 + key.len();
            }
        }
        if self.keys + new_keys > MAX_MERGED_KEYS
            || self.key_bytes + new_bytes > MAX_MERGED_KEY_BYTES
        {
            return Err(waiter);
        }
        let appended_from = spans.len();
        let mut places = Vec::with_capacity(retrieval.count);
        for key in retrieval.keys() {
            // Keys this caller lists twice are listed once as well.
            let place = match listed_in(line, spans, key) {
                Some(place) => place,
                None => {
                    line.put_u8(b' ');
                    let start = line.len();
                    line.put_slice(key);
                    spans.push((start, line.len()));
                    spans.len() - 1
                }
            };
            places.push(place);
        }
        let all_appended = places
            .iter()
            .enumerate()
            .all(|(own, &place)| place == appended_from + own);
        let places = if all_appended {
            Places::Run {
                first: appended_from,
                count: places.len(),
            }
        } else {
            Places::Listed(places)
        };
        self.members.push(Member { waiter, places });
        self.keys = spans.len();
        self.key_bytes += new_bytes;
        Ok(())
    }

    /// Whether any of its callers still waits for the reply.
    pub(super) fn waits(&self) -> bool {
        self.members.iter().any(|member| member.waiter.waits())
    }

    /// [`Waiting::expire`] for the callers of the open line.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        expire_members(&mut self.members, now)
    }

    /// Closes the line: the request to write, what it asked, and whom its reply goes to.
    pub(super) fn seal(self) -> (Bytes, Asked, Waiting) {
        let (request, waiting) = match self.line {
            // Nobody joined: the first caller's request, as it came.
            None => {
                let waiting = match <[Member; 1]>::try_from(self.members) {
                    Ok([member]) => Waiting::One(member.waiter),
                    Err(members) => Waiting::Merged(members),
                };
                (self.first, waiting)
            }
            Some((mut line, _)) => {
                line.put_slice(b"\r\n");
                (line.freeze(), Waiting::Merged(self.members))
            }
        };
        let asked = Asked::of_request(&request);
        (request, asked, waiting)
    }
}

/// The position of `key` among the line's keys, if listed.
fn listed_in(line: &[u8], spans: &[(usize, usize)], key: &[u8]) -> Option<usize> {
    spans
        .iter()
        .position(|&(start, end)| &line[start..end] == key)
}

/// Where each key of a request line (without its CRLF) is.
fn spans_of(line: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    // Past the verb: the first space.
    let keys_from = line
        .iter()
        .position(|&byte| byte == b' ')
        .unwrap_or(line.len());
    for (at, &byte) in line.iter().enumerate().skip(keys_from) {
        match (byte == b' ', start) {
            (true, Some(from)) => {
                spans.push((from, at));
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
    }
    if let Some(from) = start {
        spans.push((from, line.len()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tcp::protocol;

    fn request(keys: &[&str], with_cas: bool) -> Bytes {
        let mut buf = BytesMut::new();
        protocol::encode_get(&mut buf, keys, with_cas);
        buf.freeze()
    }

    fn retrieval(request: &Bytes) -> Retrieval {
        Retrieval::of(request, &Asked::of_request(request)).expect("a retrieval line")
    }

    /// The values a caller was handed: (its own position, data).
    fn got(rx: &mut oneshot::Receiver<Result<Reply, BackendError>>) -> Vec<(usize, String)> {
        match rx.try_recv() {
            Ok(Ok(Reply::Values(values))) => values
                .into_iter()
                .map(|v| (v.asked, String::from_utf8(v.data.to_vec()).unwrap()))
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn value(asked: usize, data: &'static str) -> Value {
        Value {
            asked,
            flags: 0,
            cas: Some(1),
            data: Bytes::from_static(data.as_bytes()),
        }
    }

    #[test]
    fn only_single_retrieval_lines_merge() {
        let gets = request(&["a", "b"], true);
        assert!(Retrieval::of(&gets, &Asked::of_request(&gets)).is_some());
        let mut two_lines = BytesMut::from(&gets[..]);
        two_lines.put_slice(b"gets c\r\n");
        let two_lines = two_lines.freeze();
        assert!(Retrieval::of(&two_lines, &Asked::of_request(&two_lines)).is_none());
        let set = Bytes::from_static(b"set a 0 0 1\r\nx\r\n");
        assert!(Retrieval::of(&set, &Asked::of_request(&set)).is_none());
    }

    #[test]
    fn merged_line_lists_every_callers_keys_and_splits_the_reply_by_position() {
        let (first_tx, mut first_rx) = oneshot::channel();
        let (second_tx, mut second_rx) = oneshot::channel();
        let (third_tx, mut third_rx) = oneshot::channel();
        let a = request(&["ns", "a"], true);
        let mut open = OpenGets::open(a.clone(), retrieval(&a), first_tx.into());
        let b = request(&["ns", "b"], true);
        assert!(open.join(&retrieval(&b), second_tx.into()).is_ok());
        let c = request(&["c"], true);
        assert!(open.join(&retrieval(&c), third_tx.into()).is_ok());
        let (line, asked, waiting) = open.seal();
        // `ns` listed once, for both callers that asked it.
        assert_eq!(&line[..], b"gets ns a b c\r\n");
        assert!(matches!(asked, Asked::Keys { count: 4, .. }));
        assert_eq!(waiting.callers(), 3);
        // ns for the first two callers, b for the second, c for the third, nothing for
        // the first's `a`.
        waiting.answer(Ok(Reply::Values(vec![
            value(0, "g1"),
            value(2, "B"),
            value(3, "C"),
        ])));
        assert_eq!(got(&mut first_rx), vec![(0, "g1".to_string())]);
        assert_eq!(
            got(&mut second_rx),
            vec![(0, "g1".to_string()), (1, "B".to_string())]
        );
        assert_eq!(got(&mut third_rx), vec![(0, "C".to_string())]);
    }

    #[test]
    fn a_lone_line_is_written_as_it_came_and_errors_reach_every_caller() {
        let (tx, mut rx) = oneshot::channel();
        let a = request(&["a"], false);
        let (line, _, waiting) = OpenGets::open(a.clone(), retrieval(&a), tx.into()).seal();
        assert_eq!(line, a);
        assert!(matches!(waiting, Waiting::One(_)));
        waiting.answer(Ok(Reply::Error));
        assert!(matches!(rx.try_recv(), Ok(Ok(Reply::Error))));

        let (first_tx, mut first_rx) = oneshot::channel();
        let (second_tx, mut second_rx) = oneshot::channel();
        let mut open = OpenGets::open(a.clone(), retrieval(&a), first_tx.into());
        assert!(
            open.join(&retrieval(&request(&["b"], false)), second_tx.into())
                .is_ok()
        );
        open.seal().2.answer(Ok(Reply::ServerError("busy".into())));
        for rx in [&mut first_rx, &mut second_rx] {
            assert!(matches!(rx.try_recv(), Ok(Ok(Reply::ServerError(_)))));
        }
    }

    #[test]
    fn keys_already_listed_are_answered_at_every_place_that_asked_them() {
        let mut receivers = Vec::new();
        let mut join = |open: &mut Option<OpenGets>, keys: &[&str]| {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let request = request(keys, true);
            match open {
                None => {
                    *open = Some(OpenGets::open(
                        request.clone(),
                        retrieval(&request),
                        tx.into(),
                    ))
                }
                Some(open) => assert!(open.join(&retrieval(&request), tx.into()).is_ok()),
            }
        };
        let mut open = None;
        join(&mut open, &["x", "x", "y"]);
        // Listed twice by itself, both already in the line, out of the line's order.
        join(&mut open, &["y", "z", "x", "z"]);
        let (line, asked, waiting) = open.unwrap().seal();
        assert_eq!(&line[..], b"gets x x y z\r\n");
        assert!(matches!(asked, Asked::Keys { count: 4, .. }));
        // memcached answers both places of the first caller's own `x x`.
        waiting.answer(Ok(Reply::Values(vec![
            value(0, "X"),
            value(1, "X2"),
            value(2, "Y"),
            value(3, "Z"),
        ])));
        let owned = |pairs: &[(usize, &str)]| {
            pairs
                .iter()
                .map(|(at, data)| (*at, data.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got(&mut receivers[0]),
            owned(&[(0, "X"), (1, "X2"), (2, "Y")])
        );
        // In its own order, the first `x` of the line for its `x`.
        assert_eq!(
            got(&mut receivers[1]),
            owned(&[(0, "Y"), (1, "Z"), (2, "X"), (3, "Z")])
        );
    }

    #[test]
    fn lines_of_another_verb_or_past_the_bounds_do_not_join() {
        let (tx, _rx) = oneshot::channel();
        let a = request(&["a"], true);
        let mut open = OpenGets::open(a.clone(), retrieval(&a), tx.into());
        let (tx, _rx2) = oneshot::channel();
        assert!(
            open.join(&retrieval(&request(&["b"], false)), tx.into())
                .is_err()
        );
        let many: Vec<String> = (0..MAX_MERGED_KEYS).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (tx, _rx3) = oneshot::channel();
        assert!(
            open.join(&retrieval(&request(&many, true)), tx.into())
                .is_err()
        );
        // Few keys, but more bytes of them than a line takes.
        let long: Vec<String> = (0..=MAX_MERGED_KEY_BYTES / 200)
            .map(|i| format!("{i:0>200}"))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let (tx, _rx4) = oneshot::channel();
        assert!(
            open.join(&retrieval(&request(&long, true)), tx.into())
                .is_err()
        );
        let (line, _, waiting) = open.seal();
        assert_eq!(line, a);
        assert_eq!(waiting.callers(), 1);
    }
}
