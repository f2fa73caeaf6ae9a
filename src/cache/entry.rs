//! The stored forms of the HTTP cache: responses, and the variant index of a URL whose
//! responses vary on request headers.
//!
//! An entry is `MAGIC (4) | format version (1) | metadata length (u32 LE) | metadata
//! (bincode) | body`.
//! The body is served as a zero-copy slice of the bytes the backend returned. Bytes that do
//! not start with the magic and this format version are not ours (or an older format) and
//! decode to an error, which the layer treats as a miss. So do bytes whose body is not the
//! length the metadata records: a value cut short or extended by another writer would
//! otherwise be answered as the stored response.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::storage::{MAX_NAME_SETS, MAX_TAGS};
use crate::codec::{CodecError, bounded_seq, decode_borrowed, decode_value, encode_value};

/// memcached flags of an HTTP entry ("tm", kind 1, format 1).
pub const FLAG_HTTP_ENTRY: u32 = 0x746d_0101;
/// memcached flags of a variant index ("tm", kind 1, format 2).
pub(super) const FLAG_VARIANT_INDEX: u32 = 0x746d_0102;
/// memcached flags of a fill placeholder ("tm", kind 1, format 3): see [`Placeholder`].
pub(super) const FLAG_PLACEHOLDER: u32 = 0x746d_0103;

const MAGIC: &[u8; 4] = b"TMCE";
const INDEX_MAGIC: &[u8; 4] = b"TMCV";
/// Bumped whenever [`EntryMeta`] or [`VariantIndex`] changes shape; entries of other
/// versions are misses.
pub(super) const ENTRY_FORMAT_VERSION: u8 = 6;
const HEADER_LEN: usize = MAGIC.len() + 1 + 4;

/// The most header fields an entry holds. A `HeaderMap` takes about 24 000 and panics
/// past that (`reserve`, `with_capacity`), and a hit reserves room for every stored field
/// and its own; an origin can send any number of one name's values. Far beyond any real
/// response (hyper's client reads 100 at most), so a response with more is not stored
/// (the admission gate) and an entry with more, read back, is a miss.
pub(crate) const MAX_FIELDS: usize = 4096;

/// The most request fields an entry (or a variant index's name set) is selected by. Each
/// is normalised from the request on every lookup of the entry; real responses vary on a
/// handful. A response that varies on more is not stored, and an entry or index with
/// more, read back, is a miss: a foreign value would set the cost of each lookup.
pub(crate) const MAX_SELECTING_FIELDS: usize = 64;

/// Everything about a stored response except its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    /// The canonical request key the entry was stored under; compared on every read so an
    /// md5 collision or a foreign value is never served.
    pub canonical_key: String,
    /// HTTP status code. (No HTTP version: a hit takes the client connection's.)
    pub status: u16,
    /// End-to-end response headers, in order. Decoded, the values share the stored bytes
    /// (a hit copies none of them).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request header values the response varied on (`Vary`), lower-case name to
    /// normalised value (`None` when the request had no such header).
    pub vary: Vec<(String, Option<String>)>,
    /// When the response was received, in milliseconds since the unix epoch.
    pub stored_at_ms: u64,
    /// Its corrected initial age (RFC 9111 §4.2.3) then, in milliseconds.
    pub initial_age_ms: u64,
    /// Its freshness lifetime, from age zero, in milliseconds.
    pub fresh_for_ms: u64,
    /// RFC 5861 `stale-while-revalidate` window, in milliseconds.
    pub stale_while_revalidate_ms: u64,
    /// RFC 5861 `stale-if-error` window, in milliseconds.
    pub stale_if_error_ms: u64,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub forbids_stale: bool,
    /// `no-cache`: revalidated before every reuse.
    pub no_cache: bool,
    /// Stored for a request with `Authorization` (RFC 9111 §3.5): its freshness never
    /// exceeds what its own directives allow, through every refresh.
    pub authenticated: bool,
    /// The namespace generation it was stored under; a purge of the namespace changes it.
    pub generation: u64,
    /// Its tags and their generations when stored; a purge of a tag changes its generation.
    pub tags: Vec<(String, u64)>,
    /// The settings of the layer that stored it, as one number (`Storage::reader`): a
    /// layer of the same settings takes the writer's admission for its own, others judge
    /// the entry again (`Policy::judge_stored`). 0: not stored yet.
    pub judged_by: u64,
}

/// How [`EntryMeta`] is stored: the same fields, with text and bytes borrowed, so that
/// decoding allocates only what the entry must own and header values can be slices of the
/// stored bytes.
#[derive(Serialize, Deserialize)]
struct StoredMeta<'a> {
    canonical_key: &'a str,
    status: u16,
    /// Names as bytes, not `str`: the same bytes stored, and a hit's decode skips a UTF-8
    /// pass that `HeaderName::from_bytes` makes redundant (a name that is not UTF-8 is
    /// left out, as any other invalid name).
    #[serde(borrow, deserialize_with = "bounded_seq")]
    headers: Vec<(&'a [u8], &'a [u8])>,
    #[serde(borrow, deserialize_with = "bounded_seq")]
    vary: Vec<(&'a str, Option<&'a str>)>,
    stored_at_ms: u64,
    initial_age_ms: u64,
    fresh_for_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    forbids_stale: bool,
    no_cache: bool,
    authenticated: bool,
    generation: u64,
    #[serde(borrow, deserialize_with = "bounded_seq")]
    tags: Vec<(&'a str, u64)>,
    judged_by: u64,
    /// The body's length: the frame bounds the metadata, not the body, so bytes cut from
    /// or added to the value's end would decode as the entry with another body.
    body_len: u64,
}

impl<'a> StoredMeta<'a> {
    fn of(meta: &'a EntryMeta, body_len: usize) -> Self {
        Self {
            canonical_key: &meta.canonical_key,
            status: meta.status,
            headers: meta
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
                .collect(),
            vary: meta
                .vary
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect(),
            stored_at_ms: meta.stored_at_ms,
            initial_age_ms: meta.initial_age_ms,
            fresh_for_ms: meta.fresh_for_ms,
            stale_while_revalidate_ms: meta.stale_while_revalidate_ms,
            stale_if_error_ms: meta.stale_if_error_ms,
            forbids_stale: meta.forbids_stale,
            no_cache: meta.no_cache,
            authenticated: meta.authenticated,
            generation: meta.generation,
            tags: meta
                .tags
                .iter()
                .map(|(name, generation)| (name.as_str(), *generation))
                .collect(),
            judged_by: meta.judged_by,
            body_len: body_len as u64,
        }
    }

    /// The owned metadata; `stored` holds the bytes this was decoded from, which header
    /// values are sliced from. A stored header that is not a valid field is left out.
    fn into_meta(self, stored: &Bytes) -> EntryMeta {
        let headers = self
            .headers
            .into_iter()
            .filter_map(|(name, value)| {
                let name = HeaderName::from_bytes(name).ok()?;
                let value = HeaderValue::from_maybe_shared(stored.slice_ref(value)).ok()?;
                Some((name, value))
            })
            .collect();
        EntryMeta {
            canonical_key: self.canonical_key.to_owned(),
            status: self.status,
            headers,
            vary: self
                .vary
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.map(str::to_owned)))
                .collect(),
            stored_at_ms: self.stored_at_ms,
            initial_age_ms: self.initial_age_ms,
            fresh_for_ms: self.fresh_for_ms,
            stale_while_revalidate_ms: self.stale_while_revalidate_ms,
            stale_if_error_ms: self.stale_if_error_ms,
            forbids_stale: self.forbids_stale,
            no_cache: self.no_cache,
            authenticated: self.authenticated,
            generation: self.generation,
            tags: self
                .tags
                .into_iter()
                .map(|(name, generation)| (name.to_owned(), generation))
                .collect(),
            judged_by: self.judged_by,
        }
    }
}

/// What the primary key of a URL holds when its responses vary on request headers: the
/// sets of selecting header names its responses named (most recent first, a few at most,
/// as Varnish keeps variants of several `Vary` values), and the id that every variant's
/// key includes. A new index (a new id) leaves the variants of the old one unreachable, so
/// a URL is invalidated by deleting its index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VariantIndex {
    /// The canonical request key of the URL, checked on read like an entry's.
    pub canonical_key: String,
    /// Each set: the sorted lower-case names of the selecting request headers.
    #[serde(deserialize_with = "bounded_name_sets")]
    pub name_sets: Vec<Vec<String>>,
    /// Part of every variant's key.
    pub id: u64,
}

/// One of [`VariantIndex::name_sets`] as read: bounded like the list that holds it (serde's
/// own `Vec` would reserve up to 1 MiB for the length a corrupt value claims).
#[derive(Deserialize)]
#[serde(transparent)]
struct NameSet(#[serde(deserialize_with = "bounded_seq")] Vec<String>);

fn bounded_name_sets<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Vec<String>>, D::Error> {
    let sets: Vec<NameSet> = bounded_seq(deserializer)?;
    Ok(sets.into_iter().map(|set| set.0).collect())
}

/// What the primary key holds while one request refills a missing URL: its token, and
/// until when (milliseconds since the epoch) other requests wait for it. A store replaces
/// the placeholder only by compare-and-swap, so a purge, which deletes it, makes the store
/// of a response produced before the purge fail (the lease pattern of "Scaling Memcache at
/// Facebook", §3.2.1, in text-protocol commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placeholder {
    pub token: u64,
    pub until_ms: u64,
}

impl Placeholder {
    pub(super) fn encode(self) -> Bytes {
        Bytes::from(format!("{} {}", self.token, self.until_ms))
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (token, until_ms) = text.split_once(' ')?;
        Some(Self {
            token: token.parse().ok()?,
            until_ms: until_ms.parse().ok()?,
        })
    }
}

/// A decoded entry: its metadata and a zero-copy slice of its body.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Metadata.
    pub meta: EntryMeta,
    /// The body bytes.
    pub body: Bytes,
}

/// Encodes an entry into the bytes stored in memcached.
pub(super) fn encode_entry(meta: &EntryMeta, body: &[u8]) -> Result<Bytes, CodecError> {
    frame(
        MAGIC,
        &encode_value(&StoredMeta::of(meta, body.len()))?,
        body,
    )
}

/// Decodes stored bytes; the body shares `bytes`' allocation.
pub(super) fn decode_entry(bytes: Bytes) -> Result<Entry, CodecError> {
    let (meta, body) = split(&bytes, MAGIC)?;
    let meta = decode_borrowed::<StoredMeta>(meta)?;
    // Cut short or extended since it was written (another writer's `append`, a copy
    // through a tool with a size limit): not the stored response.
    let body_len = bytes.len().saturating_sub(body);
    if meta.body_len != body_len as u64 {
        return Err(CodecError(format!(
            "a body of {body_len} bytes where {} were stored",
            meta.body_len
        )));
    }
    // More fields than a hit's `HeaderMap` takes would panic the request that read them
    // (see [`MAX_FIELDS`]): never written by the layer, a miss.
    if meta.headers.len() > MAX_FIELDS {
        return Err(CodecError(format!(
            "{} stored header fields, more than {MAX_FIELDS}",
            meta.headers.len()
        )));
    }
    // Each tag is a key read (and named by an md5) on every lookup of the entry: no more
    // than the layer keeps, or a foreign value would set the cost of each lookup.
    if meta.vary.len() > MAX_SELECTING_FIELDS {
        return Err(CodecError(format!(
            "{} selecting fields, more than {MAX_SELECTING_FIELDS}",
            meta.vary.len()
        )));
    }
    if meta.tags.len() > MAX_TAGS {
        return Err(CodecError(format!(
            "{} stored tags, more than {MAX_TAGS}",
            meta.tags.len()
        )));
    }
    // Statuses the cache never stores (a 1xx hands the connection to another protocol; a
    // 206 or 304 is no whole response): from a foreign or corrupt value, or one stored
    // before they were refused, such an entry would be replayed as one.
    if !(200..=599).contains(&meta.status) || meta.status == 206 || meta.status == 304 {
        return Err(CodecError(format!(
            "stored status {} is never stored",
            meta.status
        )));
    }
    let meta = meta.into_meta(&bytes);
    Ok(Entry {
        meta,
        body: bytes.slice(body..),
    })
}

/// Encodes a variant index.
pub(super) fn encode_index(index: &VariantIndex) -> Result<Bytes, CodecError> {
    frame(INDEX_MAGIC, &encode_value(index)?, &[])
}

/// `magic | version | metadata length | metadata | rest`: what [`split`] takes apart.
fn frame(magic: &[u8; 4], meta: &[u8], rest: &[u8]) -> Result<Bytes, CodecError> {
    let len = u32::try_from(meta.len())
        .map_err(|_| CodecError(format!("metadata too large: {} bytes", meta.len())))?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len() + rest.len());
    out.put_slice(magic);
    out.put_u8(ENTRY_FORMAT_VERSION);
    out.put_u32_le(len);
    out.put_slice(meta);
    out.put_slice(rest);
    Ok(out.freeze())
}

/// Decodes a variant index.
pub(super) fn decode_index(bytes: &[u8]) -> Result<VariantIndex, CodecError> {
    let (meta, _) = split(bytes, INDEX_MAGIC)?;
    let index: VariantIndex = decode_value(meta)?;
    // Each name set is a variant key named and read on every lookup: no more than the
    // layer keeps, or a foreign value would set the cost of each lookup.
    if index.name_sets.len() > MAX_NAME_SETS {
        return Err(CodecError(format!(
            "{} name sets in a variant index, more than {MAX_NAME_SETS}",
            index.name_sets.len()
        )));
    }
    if let Some(names) = index
        .name_sets
        .iter()
        .find(|names| names.len() > MAX_SELECTING_FIELDS)
    {
        return Err(CodecError(format!(
            "a name set of {} names in a variant index, more than {MAX_SELECTING_FIELDS}",
            names.len()
        )));
    }
    Ok(index)
}

/// Checks magic and version; returns the metadata and where the rest begins.
fn split<'a>(bytes: &'a [u8], magic: &[u8; 4]) -> Result<(&'a [u8], usize), CodecError> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != magic {
        return Err(CodecError("not an HTTP cache entry".to_string()));
    }
    let version = bytes[MAGIC.len()];
    if version != ENTRY_FORMAT_VERSION {
        return Err(CodecError(format!(
            "entry format version {version} is not {ENTRY_FORMAT_VERSION}"
        )));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[MAGIC.len() + 1..HEADER_LEN]);
    let meta_end = HEADER_LEN
        .checked_add(u32::from_le_bytes(len) as usize)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| CodecError("entry metadata length out of range".to_string()))?;
    Ok((&bytes[HEADER_LEN..meta_end], meta_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> EntryMeta {
        EntryMeta {
            canonical_key: "GET http://example.com/a?b".into(),
            status: 200,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                ),
                (
                    HeaderName::from_static("x-custom"),
                    HeaderValue::from_static("a"),
                ),
            ],
            vary: vec![("accept-encoding".into(), Some("gzip".into()))],
            stored_at_ms: 1_700_000_000_000,
            initial_age_ms: 2_000,
            fresh_for_ms: 3_600_000,
            stale_while_revalidate_ms: 30_000,
            stale_if_error_ms: 0,
            forbids_stale: false,
            no_cache: true,
            authenticated: true,
            generation: 7,
            tags: vec![("news".into(), 3)],
            judged_by: 11,
        }
    }

    #[test]
    fn variant_index_round_trip_and_kinds_do_not_mix() {
        let index = VariantIndex {
            canonical_key: "GET http://example.com/".into(),
            name_sets: vec![vec!["accept-encoding".into()], vec!["origin".into()]],
            id: 42,
        };
        let bytes = encode_index(&index).unwrap();
        assert_eq!(decode_index(&bytes).unwrap(), index);
        assert!(decode_entry(bytes).is_err(), "an index is not an entry");
        let entry = encode_entry(&meta(), b"x").unwrap();
        assert!(decode_index(&entry).is_err(), "an entry is not an index");
    }

    #[test]
    fn round_trip_shares_the_body() {
        let bytes = encode_entry(&meta(), b"hello body").unwrap();
        let entry = decode_entry(bytes.clone()).unwrap();
        assert_eq!(entry.meta, meta());
        assert_eq!(&entry.body[..], b"hello body");
        let offset = entry.body.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(
            offset,
            bytes.len() - 10,
            "body is a slice of the stored bytes"
        );
        let value = entry.meta.headers[0].1.as_bytes();
        let stored = bytes.as_ptr_range();
        assert!(
            stored.contains(&value.as_ptr()),
            "header values are slices of the stored bytes"
        );
    }

    #[test]
    fn stored_form_is_the_owned_shape_on_the_wire() {
        // Entries of format 2 written with owned names and values read back unchanged.
        let owned = vec![("content-type".to_string(), b"text/plain".to_vec())];
        let borrowed = vec![("content-type", &b"text/plain"[..])];
        assert_eq!(
            encode_value(&owned).unwrap(),
            encode_value(&borrowed).unwrap()
        );
        // Names are read as bytes (format 4 as before: the wire form did not change), the
        // same bytes as names read as text.
        let name_bytes = vec![(&b"content-type"[..], &b"text/plain"[..])];
        assert_eq!(
            encode_value(&borrowed).unwrap(),
            encode_value(&name_bytes).unwrap()
        );
    }

    /// A memcached value of more fields than a hit's `HeaderMap` takes (the layer never
    /// writes one) is a miss, not a panic on every request that reads it.
    #[test]
    fn entries_of_more_fields_than_an_entry_holds_do_not_decode() {
        let fields = |count: usize| EntryMeta {
            headers: vec![
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("v")
                );
                count
            ],
            ..meta()
        };
        let at_most = encode_entry(&fields(MAX_FIELDS), b"x").unwrap();
        assert_eq!(
            decode_entry(at_most).unwrap().meta.headers.len(),
            MAX_FIELDS
        );
        for count in [MAX_FIELDS + 1, 30_000] {
            let stored = encode_entry(&fields(count), b"x").unwrap();
            assert!(decode_entry(stored).is_err(), "{count}");
        }
    }

    /// Each tag of an entry is a key read on every lookup (and an md5 to name it): a
    /// memcached value that lists more than the layer ever stores is a miss, not a lookup
    /// that asks memcached for as many keys as the value has bytes.
    #[test]
    fn entries_of_more_tags_than_kept_do_not_decode() {
        let tags = |count: usize| EntryMeta {
            tags: (0..count).map(|tag| (tag.to_string(), 1)).collect(),
            ..meta()
        };
        let at_most = encode_entry(&tags(MAX_TAGS), b"x").unwrap();
        assert_eq!(decode_entry(at_most).unwrap().meta.tags.len(), MAX_TAGS);
        for count in [MAX_TAGS + 1, 100_000] {
            let stored = encode_entry(&tags(count), b"x").unwrap();
            assert!(decode_entry(stored).is_err(), "{count}");
        }
    }

    /// Each selecting field of an entry (or name of an index's set) is normalised from the
    /// request on every lookup: more than an entry holds is a miss.
    #[test]
    fn entries_and_indexes_of_more_selecting_fields_than_kept_do_not_decode() {
        let vary = |count: usize| EntryMeta {
            vary: (0..count).map(|n| (format!("x-{n}"), None)).collect(),
            ..meta()
        };
        let at_most = encode_entry(&vary(MAX_SELECTING_FIELDS), b"x").unwrap();
        assert_eq!(
            decode_entry(at_most).unwrap().meta.vary.len(),
            MAX_SELECTING_FIELDS
        );
        for count in [MAX_SELECTING_FIELDS + 1, 100_000] {
            let stored = encode_entry(&vary(count), b"x").unwrap();
            assert!(decode_entry(stored).is_err(), "{count}");
        }
        let index = |names: usize| VariantIndex {
            canonical_key: "GET http://example.com/a?b".into(),
            name_sets: vec![
                vec!["accept".into()],
                (0..names).map(|n| format!("x-{n}")).collect(),
            ],
            id: 7,
        };
        let at_most = encode_index(&index(MAX_SELECTING_FIELDS)).unwrap();
        assert_eq!(decode_index(&at_most).unwrap(), index(MAX_SELECTING_FIELDS));
        for names in [MAX_SELECTING_FIELDS + 1, 100_000] {
            let stored = encode_index(&index(names)).unwrap();
            assert!(decode_index(&stored).is_err(), "{names}");
        }
    }

    /// Each name set of a variant index is a variant key named (by an md5) and read on
    /// every lookup: an index of more sets than the layer keeps is a miss.
    #[test]
    fn indexes_of_more_name_sets_than_kept_do_not_decode() {
        let index = |sets: usize| VariantIndex {
            canonical_key: "GET http://h/".into(),
            name_sets: vec![vec!["accept".to_string()]; sets],
            id: 1,
        };
        let at_most = encode_index(&index(MAX_NAME_SETS)).unwrap();
        assert_eq!(decode_index(&at_most).unwrap(), index(MAX_NAME_SETS));
        for sets in [MAX_NAME_SETS + 1, 100_000] {
            assert!(
                decode_index(&encode_index(&index(sets)).unwrap()).is_err(),
                "{sets}"
            );
        }
    }

    #[test]
    fn statuses_never_stored_do_not_decode() {
        for status in [100, 101, 199, 206, 304, 600, 999] {
            let stored = encode_entry(&EntryMeta { status, ..meta() }, b"x").unwrap();
            assert!(decode_entry(stored).is_err(), "{status}");
        }
        for status in [200, 204, 301, 404, 599] {
            let stored = encode_entry(&EntryMeta { status, ..meta() }, b"x").unwrap();
            assert_eq!(decode_entry(stored).unwrap().meta.status, status);
        }
    }

    #[test]
    fn invalid_stored_fields_are_left_out() {
        let expected = meta();
        let mut wire = StoredMeta::of(&expected, 0);
        wire.headers.push((b"bad name", b"v"));
        wire.headers.push((b"x-ok", b"bad\nvalue"));
        // Not UTF-8: refused by `HeaderName` as any other name that is no token (names
        // read as text made the whole entry undecodable).
        wire.headers.push((b"x-\xff", b"v"));
        let bytes = frame(MAGIC, &encode_value(&wire).unwrap(), &[]).unwrap();
        let entry = decode_entry(bytes).unwrap();
        assert_eq!(entry.meta, meta());
    }

    #[test]
    fn foreign_corrupt_and_other_version_bytes_are_errors() {
        let good = encode_entry(&meta(), b"x").unwrap();
        assert!(decode_entry(Bytes::from_static(b"")).is_err());
        assert!(decode_entry(Bytes::from_static(b"cached value")).is_err());
        let mut other_version = good.to_vec();
        other_version[4] = ENTRY_FORMAT_VERSION + 1;
        assert!(decode_entry(other_version.into()).is_err());
        let mut bad_len = good.to_vec();
        bad_len[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(bad_len.into()).is_err());
        // Cut anywhere, metadata or body, or extended: not the entry stored.
        for cut in 0..good.len() {
            assert!(decode_entry(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let extended = [&good[..], b"<script>"].concat();
        assert!(decode_entry(extended.into()).is_err());
        let mut garbage_meta = good.to_vec();
        garbage_meta[9] = 0xff;
        garbage_meta[10] = 0xff;
        let _ = decode_entry(garbage_meta.into());
    }

    #[test]
    fn lying_length_prefixes_are_refused_before_allocating() {
        // A variant index whose key claims 1 MiB: bincode would allocate that before reading
        // it; the limit for so short an input refuses the claim instead.
        let mut key = vec![0xfd]; // varint: u64 follows
        key.extend_from_slice(&(1u64 << 20).to_le_bytes());
        let err = decode_index(&frame(INDEX_MAGIC, &key, &[]).unwrap()).unwrap_err();
        assert!(err.to_string().contains("LimitExceeded"), "{err}");
        // A name list claiming 2^60 elements, and an entry whose header list does: errors,
        // with a few elements reserved at most.
        let mut names = vec![1, b'k', 0xfd];
        names.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_index(&frame(INDEX_MAGIC, &names, &[]).unwrap()).is_err());
        // One name set that does (bounded like the list: an error after reserving a few).
        let mut set = vec![1, b'k', 1, 0xfd];
        set.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_index(&frame(INDEX_MAGIC, &set, &[]).unwrap()).is_err());
        let mut meta = vec![1, b'k', 200]; // key "k", status 200
        meta.push(0xfd);
        meta.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_entry(frame(MAGIC, &meta, &[]).unwrap()).is_err());
    }

    /// Any value that a u64 field may hold, its extremes often.
    fn any_u64() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)]
    }

    fn any_meta() -> impl Strategy<Value = EntryMeta> {
        let header = (
            "[a-z0-9!#$%&'*+.^_`|~-]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..24),
        )
            .prop_filter_map("a valid field", |(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_bytes(&value).ok()?,
                ))
            });
        let texts =
            || proptest::collection::vec((".{0,16}", proptest::option::of(".{0,16}")), 0..4);
        (
            (
                ".{0,64}",
                // What is ever stored (`statuses_never_stored_do_not_decode` has the rest).
                (200u16..600).prop_filter("stored", |status| *status != 206 && *status != 304),
                proptest::collection::vec(header, 0..6),
                texts(),
            ),
            (any_u64(), any_u64(), any_u64(), any_u64(), any_u64()),
            (any::<bool>(), any::<bool>(), any_u64()),
            proptest::collection::vec((".{0,16}", any_u64()), 0..4),
        )
            .prop_map(
                |((canonical_key, status, headers, vary), times, flags, tags)| {
                    // Field by field over the fixed example, so fields added later keep a value.
                    let mut meta = meta();
                    (meta.canonical_key, meta.status, meta.headers, meta.vary) =
                        (canonical_key, status, headers, vary);
                    (
                        meta.stored_at_ms,
                        meta.initial_age_ms,
                        meta.fresh_for_ms,
                        meta.stale_while_revalidate_ms,
                        meta.stale_if_error_ms,
                    ) = times;
                    (meta.forbids_stale, meta.no_cache, meta.generation) = flags;
                    meta.tags = tags;
                    meta
                },
            )
    }

    /// Decoded metadata owns at most what its input held: no claim of the input is
    /// believed beyond the bytes that back it.
    fn owned_len(meta: &EntryMeta) -> usize {
        meta.canonical_key.len()
            + meta
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
            + meta
                .vary
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len))
                .sum::<usize>()
            + meta.tags.iter().map(|(n, _)| n.len()).sum::<usize>()
    }

    // Default config: 256 cases unless PROPTEST_CASES says otherwise.
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn entries_round_trip(meta in any_meta(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = encode_entry(&meta, &body).unwrap();
            let entry = decode_entry(bytes).unwrap();
            prop_assert_eq!(&entry.meta, &meta);
            prop_assert_eq!(&entry.body[..], &body[..]);
        }

        #[test]
        fn indexes_round_trip(
            canonical_key in ".{0,64}",
            names in proptest::collection::vec("[a-z-]{0,16}", 0..6),
            id in any_u64(),
        ) {
            let index = VariantIndex { canonical_key, name_sets: vec![names.clone(), names], id };
            prop_assert_eq!(decode_index(&encode_index(&index).unwrap()).unwrap(), index);
        }

        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_index(&bytes);
            let _ = decode_entry(Bytes::from(bytes));
        }

        #[test]
        fn any_framed_metadata_decodes_without_panic(
            meta in proptest::collection::vec(any::<u8>(), 0..256),
            rest in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let _ = decode_index(&frame(INDEX_MAGIC, &meta, &rest).unwrap());
            let bytes = frame(MAGIC, &meta, &rest).unwrap();
            if let Ok(entry) = decode_entry(bytes.clone()) {
                prop_assert!(owned_len(&entry.meta) <= bytes.len());
            }
        }

        #[test]
        fn corrupted_entries_decode_without_panic(
            meta in any_meta(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_entry(&meta, b"body").unwrap().to_vec();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let len = bytes.len();
            if let Ok(entry) = decode_entry(Bytes::from(bytes)) {
                prop_assert!(owned_len(&entry.meta) <= len);
            }
        }
    }
}
