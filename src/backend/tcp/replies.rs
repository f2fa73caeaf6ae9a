//! Replies turned into what [`Backend`](crate::backend::Backend) calls return, and the
//! replies each command may get.

use std::collections::HashMap;

use super::protocol::{self, Reply};
use super::{CasOutcome, ProtocolError};
use crate::backend::{BackendError, Item, ProtocolViolation};

/// Which replies a command may get; anything else means the connection lost sync.
#[derive(Clone, Copy, Debug)]
pub(super) enum Expect {
    Values,
    Store,
    Delete,
    Touch,
    Number,
    Ok,
    Stats,
    Version,
}

impl Expect {
    pub(super) fn accepts(self, reply: &Reply) -> bool {
        match reply {
            Reply::Error | Reply::ClientError(_) | Reply::ServerError(_) => true,
            Reply::Values(_) => matches!(self, Self::Values | Self::Stats),
            Reply::Stored | Reply::NotStored | Reply::Exists => matches!(self, Self::Store),
            Reply::NotFound => matches!(
                self,
                Self::Store | Self::Delete | Self::Touch | Self::Number
            ),
            Reply::Deleted => matches!(self, Self::Delete),
            Reply::Touched => matches!(self, Self::Touch),
            Reply::Number(_) => matches!(self, Self::Number),
            Reply::Ok => matches!(self, Self::Ok),
            Reply::Stats(_) => matches!(self, Self::Stats),
            Reply::Version(_) => matches!(self, Self::Version),
        }
    }

    /// The command, when it is one a proxy closes the connection on (twemproxy supports
    /// neither `stats` nor `flush_all`): see [`Server::call`](super::server::Server::call).
    pub(super) fn refused_by_proxies(self) -> Option<&'static str> {
        match self {
            Self::Stats => Some("stats"),
            Self::Ok => Some("flush_all"),
            _ => None,
        }
    }

    /// The replies accepted besides errors, for [`ProtocolError::UnexpectedReply`].
    pub(super) fn expected(self) -> &'static str {
        match self {
            Self::Values => "VALUE blocks or END",
            Self::Store => "STORED, NOT_STORED, EXISTS or NOT_FOUND",
            Self::Delete => "DELETED or NOT_FOUND",
            Self::Touch => "TOUCHED or NOT_FOUND",
            Self::Number => "a number or NOT_FOUND",
            Self::Ok => "OK",
            Self::Stats => "STAT lines or END",
            Self::Version => "VERSION",
        }
    }
}

/// Turns an error reply into an error; anything else here is a protocol error.
pub(super) fn error_reply(reply: Reply, value_len: Option<usize>) -> BackendError {
    match reply {
        Reply::ServerError(msg) if msg.contains("too large") => BackendError::ValueTooLarge {
            size: value_len.unwrap_or(0),
            limit: 0,
        },
        Reply::ServerError(msg) => BackendError::Server(format!("SERVER_ERROR {msg}")),
        Reply::ClientError(msg) => BackendError::Server(format!("CLIENT_ERROR {msg}")),
        Reply::Error => BackendError::Server("ERROR".to_string()),
        // Not expected: `Expect::accepts` lets through only errors and the replies each
        // caller handles.
        other => BackendError::Protocol(ProtocolViolation::new(ProtocolError::UnexpectedReply {
            reply: format!("{other:?}"),
            expected: "an error reply",
        })),
    }
}

pub(super) fn number_reply(reply: Reply) -> Result<Option<u64>, BackendError> {
    match reply {
        Reply::Number(n) => Ok(Some(n)),
        Reply::NotFound => Ok(None),
        other => Err(error_reply(other, None)),
    }
}

pub(super) fn into_item(value: protocol::Value) -> Item {
    Item {
        value: value.data,
        flags: value.flags,
        cas: value.cas,
    }
}

/// The values of a reply to a get of `keys`, as `get_many` returns them: keyed by the keys
/// they answer (the parser checked each echoed key against the one asked at its place).
pub(super) fn keyed_items<'a>(
    keys: &'a [&str],
    values: Vec<protocol::Value>,
) -> impl Iterator<Item = (String, Item)> + 'a {
    values.into_iter().filter_map(|value| {
        let key = keys.get(value.asked)?;
        Some((key.to_string(), into_item(value)))
    })
}

/// Puts the values of a reply to a get of the keys from `offset` on in their places in
/// `found`, one per key asked.
pub(super) fn place_items(found: &mut [Option<Item>], offset: usize, values: Vec<protocol::Value>) {
    for value in values {
        if let Some(place) = found.get_mut(offset + value.asked) {
            *place = Some(into_item(value));
        }
    }
}

/// Gives a key listed more than once the value found at one of its places at all of them:
/// memcached answers each place, but a proxy may answer a repeated key once. Only misses
/// are looked at; past a few keys through a map, so the work stays linear.
pub(super) fn share_repeated(keys: &[&str], found: &mut [Option<Item>]) {
    const SCAN_UP_TO: usize = 16;
    if !found.iter().any(Option::is_none) {
        return;
    }
    if keys.len() <= SCAN_UP_TO {
        for place in 0..keys.len() {
            if found[place].is_some() {
                continue;
            }
            let shared = keys
                .iter()
                .zip(found.iter())
                .find_map(|(key, item)| item.as_ref().filter(|_| *key == keys[place]))
                .cloned();
            found[place] = shared;
        }
        return;
    }
    let answered: HashMap<&str, Item> = keys
        .iter()
        .zip(found.iter())
        .filter_map(|(key, item)| Some((*key, item.clone()?)))
        .collect();
    for (key, place) in keys.iter().zip(found.iter_mut()) {
        if place.is_none() {
            *place = answered.get(key).cloned();
        }
    }
}

pub(super) fn set_reply(reply: Reply) -> Result<(), BackendError> {
    match reply {
        Reply::Stored => Ok(()),
        other => Err(BackendError::Server(format!("set not stored: {other:?}"))),
    }
}

pub(super) fn cas_outcome(reply: Reply) -> CasOutcome {
    match reply {
        Reply::Stored => CasOutcome::Stored,
        Reply::Exists => CasOutcome::Exists,
        _ => CasOutcome::NotFound,
    }
}

pub(super) fn delete_reply(reply: Reply) -> Result<bool, BackendError> {
    match reply {
        Reply::Deleted => Ok(true),
        Reply::NotFound => Ok(false),
        other => Err(error_reply(other, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: &'static str) -> Option<Item> {
        Some(Item {
            value: value.into(),
            flags: 0,
            cas: None,
        })
    }

    #[test]
    fn values_take_the_place_of_the_key_they_answer() {
        let value = |asked, data: &'static str| protocol::Value {
            asked,
            flags: 0,
            cas: None,
            data: data.into(),
        };
        let mut found = vec![None; 4];
        // A second chunk's values, from its first key on; one place outside is ignored.
        place_items(
            &mut found,
            2,
            vec![value(1, "d"), value(0, "c"), value(2, "x")],
        );
        assert_eq!(found, [None, None, item("c"), item("d")]);
        let keyed: Vec<_> = keyed_items(&["a", "b"], vec![value(1, "b"), value(5, "x")]).collect();
        assert_eq!(keyed, [("b".to_string(), item("b").unwrap())]);
    }

    #[test]
    fn a_repeated_key_answered_once_has_its_value_at_every_place() {
        let mut found = vec![None, item("b"), item("a"), None];
        share_repeated(&["a", "b", "a", "c"], &mut found);
        assert_eq!(found, [item("a"), item("b"), item("a"), None]);
        // Past the scan, through a map.
        let keys: Vec<String> = (0..40).map(|i| format!("k{}", i % 20)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut found: Vec<_> = (0..40)
            .map(|i| if i >= 30 { item("late") } else { None })
            .collect();
        share_repeated(&keys, &mut found);
        for (i, item) in found.iter().enumerate() {
            // Places 10..20 hold the keys of 30..40.
            let shared = (10..20).contains(&i) || i >= 30;
            assert_eq!(item.is_some(), shared, "place {i}");
        }
    }
}
