//! Multi-gets on one server: split into lines of at most [`MAX_KEYS_PER_GET`] keys, or one
//! `gets` per key through a proxy that closes the connection on a multi-get's error, and
//! answered by key or in the order asked.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::join_all;

use super::protocol::{self, Reply};
use super::replies::{Expect, error_reply, into_item, keyed_items, place_items, share_repeated};
use super::{MAX_KEYS_PER_GET, TcpBackend};
use crate::backend::{BackendError, Item};

impl TcpBackend {
    /// Multi-get of `keys` (all of them held by server `index`), one `gets` per
    /// [`MAX_KEYS_PER_GET`] keys. One server: any failed chunk fails the call.
    pub(super) async fn get_on(
        &self,
        index: usize,
        keys: &[&str],
    ) -> Result<HashMap<String, Item>, BackendError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        if keys.len() > 1 && self.inner.servers[index].is_closing_proxy() {
            let found = self.get_each(index, keys, None).await?;
            return Ok(keys
                .iter()
                .zip(found)
                .filter_map(|(key, item)| Some((key.to_string(), item?)))
                .collect());
        }
        if keys.len() <= MAX_KEYS_PER_GET {
            // The common case (a lookup's few keys): one request, no futures to join.
            let mut request = BytesMut::new();
            protocol::encode_get(&mut request, keys, true);
            return match self
                .execute(index, request.freeze(), Expect::Values)
                .await?
            {
                Reply::Values(values) => Ok(keyed_items(keys, values).collect()),
                other => Err(error_reply(other, None)),
            };
        }
        let calls = keys.chunks(MAX_KEYS_PER_GET).map(|chunk| {
            let mut request = BytesMut::new();
            protocol::encode_get(&mut request, chunk, true);
            self.execute(index, request.freeze(), Expect::Values)
        });
        let mut found = HashMap::with_capacity(keys.len());
        for (reply, chunk) in join_all(calls)
            .await
            .into_iter()
            .zip(keys.chunks(MAX_KEYS_PER_GET))
        {
            match reply? {
                Reply::Values(values) => found.extend(keyed_items(chunk, values)),
                other => return Err(error_reply(other, None)),
            }
        }
        Ok(found)
    }

    /// One `gets` per key (all held by server `index`), pipelined, answered in the order
    /// of `keys`, given up at `limit`: for a server taken for twemproxy
    /// ([`Server::is_closing_proxy`](super::server::Server::is_closing_proxy)), which answers a multi-get that touches a server it
    /// cannot reach with one error and closes the connection, failing every request
    /// pipelined on it: a dead server behind it cost far more than the keys it held
    /// (every lookup reads its entry and the namespace generation in one get). A key's
    /// error fails the call, as a multi-get's does.
    pub(super) async fn get_each(
        &self,
        index: usize,
        keys: &[&str],
        limit: Option<Duration>,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        let calls = keys.iter().map(|key| {
            let mut request = BytesMut::with_capacity(key.len() + 8);
            protocol::encode_get(&mut request, &[key], true);
            self.execute_within(index, request.freeze(), Expect::Values, limit)
        });
        let mut found = Vec::with_capacity(keys.len());
        for reply in join_all(calls).await {
            match reply? {
                // At most one value, for the one key asked (the parser checked that).
                Reply::Values(values) => found.push(values.into_iter().next().map(into_item)),
                other => return Err(error_reply(other, None)),
            }
        }
        Ok(found)
    }

    /// [`get_on`](Self::get_on), answered in the order of `keys`, given up at `limit`.
    pub(super) async fn get_ordered_on(
        &self,
        index: usize,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        let mut found = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok(found);
        }
        if keys.len() > 1 && self.inner.servers[index].is_closing_proxy() {
            return self.get_each(index, keys, Some(limit)).await;
        }
        if keys.len() <= MAX_KEYS_PER_GET {
            let mut request = BytesMut::new();
            protocol::encode_get(&mut request, keys, true);
            match self
                .execute_within(index, request.freeze(), Expect::Values, Some(limit))
                .await?
            {
                Reply::Values(values) => place_items(&mut found, 0, values),
                other => return Err(error_reply(other, None)),
            }
        } else {
            let calls = keys.chunks(MAX_KEYS_PER_GET).map(|chunk| {
                let mut request = BytesMut::new();
                protocol::encode_get(&mut request, chunk, true);
                self.execute_within(index, request.freeze(), Expect::Values, Some(limit))
            });
            for (chunk, reply) in join_all(calls).await.into_iter().enumerate() {
                match reply? {
                    Reply::Values(values) => {
                        place_items(&mut found, chunk * MAX_KEYS_PER_GET, values);
                    }
                    other => return Err(error_reply(other, None)),
                }
            }
        }
        share_repeated(keys, &mut found);
        Ok(found)
    }
}
