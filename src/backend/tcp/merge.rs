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
//! The merged line lists each caller's keys in turn, duplicates kept, so a reply's value is
//! matched to its caller by its position in the line ([`Value::asked`], checked against
//! the key the server echoes): a caller only ever gets values for the keys it asked, in
//! positions relative to its own request. A reply other than values (an error line) goes
//! to every caller of the line.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use super::protocol::{Asked, Reply, Value};
use crate::backend::BackendError;

/// Most keys one merged line lists. memcached reads a multi-get line of any length, but
/// the reader buffers a reply whole before it splits it, so this bounds that buffer to this
/// many largest values (where pipelined requests had their replies parsed one by one), and
/// one large reply is what the other callers' replies queue behind. 32 keys take 16
/// two-key lookups, more than the batch a connection sees at a few dozen requests in
/// flight.
const MAX_MERGED_KEYS: usize = 32;

/// Most bytes of keys one merged line lists.
const MAX_MERGED_KEY_BYTES: usize = 4 * 1024;

/// Where a caller's reply goes.
pub(super) type Waiter = oneshot::Sender<Result<Reply, BackendError>>;

/// The callers one request on the wire answers, in its place in the connection's FIFO.
pub(super) enum Waiting {
    /// One caller's own request.
    One(Waiter),
    /// Callers whose gets were merged into one line, in the order of their keys in it.
    Merged(Vec<Member>),
}

/// One caller of a merged line: its keys are the `keys` positions from `first` on.
pub(super) struct Member {
    waiter: Waiter,
    first: usize,
    keys: usize,
}

impl Waiting {
    /// How many callers this reply answers (each holds one of the connection's slots).
    pub(super) fn callers(&self) -> usize {
        match self {
            Waiting::One(_) => 1,
            Waiting::Merged(members) => members.len(),
        }
    }

    /// Hands `reply` to the caller, or splits it between the callers of a merged line.
    /// A caller that gave up is skipped.
    pub(super) fn answer(self, reply: Result<Reply, BackendError>) {
        let members = match self {
            Waiting::One(waiter) => {
                let _ = waiter.send(reply);
                return;
            }
            Waiting::Merged(members) => members,
        };
        let values = match reply {
            Ok(Reply::Values(values)) => values,
            other => {
                for member in members {
                    let _ = member.waiter.send(other.clone());
                }
                return;
            }
        };
        let mut split: Vec<Vec<Value>> = members.iter().map(|_| Vec::new()).collect();
        for mut value in values {
            // Members are in key order: the last one starting at or before the position.
            let index = members
                .partition_point(|member| member.first <= value.asked)
                .saturating_sub(1);
            let Some(member) = members.get(index) else {
                continue;
            };
            // The reply's key check bounds `asked` by the line's key count, which the
            // members cover exactly; anything else is dropped rather than misdelivered.
            if value.asked >= member.first + member.keys {
                continue;
            }
            value.asked -= member.first;
            split[index].push(value);
        }
        for (member, values) in members.into_iter().zip(split) {
            let _ = member.waiter.send(Ok(Reply::Values(values)));
        }
    }
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
}

/// A merged line still open to more callers: not written yet, the last request of its
/// connection's backlog.
pub(super) struct OpenGets {
    /// The first caller's request as it came, used as is when nobody joins.
    first: Bytes,
    /// The merged line without its CRLF, once a second caller joined.
    line: Option<BytesMut>,
    with_cas: bool,
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
                first: 0,
                keys: retrieval.count,
            }],
        }
    }

    /// Adds a caller's keys to the line, or gives its waiter back when it does not fit
    /// (another verb, or the line is full).
    pub(super) fn join(&mut self, retrieval: &Retrieval, waiter: Waiter) -> Result<(), Waiter> {
        let fits = retrieval.with_cas == self.with_cas
            && self.keys + retrieval.count <= MAX_MERGED_KEYS
            && self.key_bytes + 1 + retrieval.keys.len() <= MAX_MERGED_KEY_BYTES;
        if !fits {
            return Err(waiter);
        }
        let line = self.line.get_or_insert_with(|| {
            let mut line = BytesMut::with_capacity(1024);
            line.put_slice(&self.first[..self.first.len() - 2]);
            line
        });
        line.put_u8(b' ');
        line.put_slice(&retrieval.keys);
        self.members.push(Member {
            waiter,
            first: self.keys,
            keys: retrieval.count,
        });
        self.keys += retrieval.count;
        self.key_bytes += 1 + retrieval.keys.len();
        Ok(())
    }

    /// Closes the line: the request to write, what it asked, and whom its reply goes to.
    pub(super) fn seal(self) -> (Bytes, Asked, Waiting) {
        let (request, waiting) = match self.line {
            None => {
                let mut members = self.members;
                let waiting = match members.pop() {
                    Some(member) if members.is_empty() => Waiting::One(member.waiter),
                    // Never: a line without a second caller has exactly one member.
                    Some(member) => {
                        members.push(member);
                        Waiting::Merged(members)
                    }
                    None => Waiting::Merged(Vec::new()),
                };
                (self.first, waiting)
            }
            Some(mut line) => {
                line.put_slice(b"\r\n");
                (line.freeze(), Waiting::Merged(self.members))
            }
        };
        let asked = Asked::of_request(&request);
        (request, asked, waiting)
    }
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
        let mut open = OpenGets::open(a.clone(), retrieval(&a), first_tx);
        let b = request(&["ns", "b"], true);
        assert!(open.join(&retrieval(&b), second_tx).is_ok());
        let c = request(&["c"], true);
        assert!(open.join(&retrieval(&c), third_tx).is_ok());
        let (line, asked, waiting) = open.seal();
        assert_eq!(&line[..], b"gets ns a ns b c\r\n");
        assert!(matches!(asked, Asked::Keys { count: 5, .. }));
        assert_eq!(waiting.callers(), 3);
        // ns and b for the second caller, c for the third, nothing for the first's `a`.
        waiting.answer(Ok(Reply::Values(vec![
            value(0, "g1"),
            value(2, "g2"),
            value(3, "B"),
            value(4, "C"),
        ])));
        let got = |rx: &mut oneshot::Receiver<Result<Reply, BackendError>>| match rx.try_recv() {
            Ok(Ok(Reply::Values(values))) => values
                .into_iter()
                .map(|v| (v.asked, String::from_utf8(v.data.to_vec()).unwrap()))
                .collect::<Vec<_>>(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(got(&mut first_rx), vec![(0, "g1".to_string())]);
        assert_eq!(
            got(&mut second_rx),
            vec![(0, "g2".to_string()), (1, "B".to_string())]
        );
        assert_eq!(got(&mut third_rx), vec![(0, "C".to_string())]);
    }

    #[test]
    fn a_lone_line_is_written_as_it_came_and_errors_reach_every_caller() {
        let (tx, mut rx) = oneshot::channel();
        let a = request(&["a"], false);
        let (line, _, waiting) = OpenGets::open(a.clone(), retrieval(&a), tx).seal();
        assert_eq!(line, a);
        assert!(matches!(waiting, Waiting::One(_)));
        waiting.answer(Ok(Reply::Error));
        assert!(matches!(rx.try_recv(), Ok(Ok(Reply::Error))));

        let (first_tx, mut first_rx) = oneshot::channel();
        let (second_tx, mut second_rx) = oneshot::channel();
        let mut open = OpenGets::open(a.clone(), retrieval(&a), first_tx);
        assert!(
            open.join(&retrieval(&request(&["b"], false)), second_tx)
                .is_ok()
        );
        open.seal().2.answer(Ok(Reply::ServerError("busy".into())));
        for rx in [&mut first_rx, &mut second_rx] {
            assert!(matches!(rx.try_recv(), Ok(Ok(Reply::ServerError(_)))));
        }
    }

    #[test]
    fn lines_of_another_verb_or_past_the_bounds_do_not_join() {
        let (tx, _rx) = oneshot::channel();
        let a = request(&["a"], true);
        let mut open = OpenGets::open(a.clone(), retrieval(&a), tx);
        let (tx, _rx2) = oneshot::channel();
        assert!(open.join(&retrieval(&request(&["b"], false)), tx).is_err());
        let many: Vec<String> = (0..MAX_MERGED_KEYS).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (tx, _rx3) = oneshot::channel();
        assert!(open.join(&retrieval(&request(&many, true)), tx).is_err());
        // Few keys, but more bytes of them than a line takes.
        let long: Vec<String> = (0..=MAX_MERGED_KEY_BYTES / 200)
            .map(|i| format!("{i:0>200}"))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let (tx, _rx4) = oneshot::channel();
        assert!(open.join(&retrieval(&request(&long, true)), tx).is_err());
        let (line, _, waiting) = open.seal();
        assert_eq!(line, a);
        assert_eq!(waiting.callers(), 1);
    }
}
