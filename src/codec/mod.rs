//! How values are turned into bytes, and which flags say so.
//!
//! Typed values ([`encode_value`]) for the memcache client, and the decoding helpers the
//! HTTP cache's entry format is built on.
//!
//! This is the only module that uses `bincode` (with the cache's entry format): the crate pins bincode 2.0.1 (3.0.0 is a
//! deliberate compile error and the crate is unmaintained, RUSTSEC-2025-0141), so a swap
//! to another format touches this module alone.
//!
//! Typed values are stored with [`FLAG_BINCODE`] and raw bytes with [`FLAG_RAW`] (0, what
//! every other memcached client writes for plain strings), so the two are never confused:
//! a value read with flags it was not written with is a miss.
//!
//! ```
//! use tower_memcache::codec::{decode_value, encode_value};
//!
//! let bytes = encode_value(&("cached value ä", 42u32))?;
//! let back: (String, u32) = decode_value(&bytes)?;
//! assert_eq!(back, ("cached value ä".to_string(), 42));
//! // Bytes that were not written by the codec are an error, never a panic.
//! assert!(decode_value::<(String, u32)>(b"\xff\xff\xff").is_err());
//! # Ok::<(), tower_memcache::codec::CodecError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Flags of a raw value: bytes as they are, readable by any memcached client.
pub const FLAG_RAW: u32 = 0;

/// Flags of a value encoded by [`encode_value`] ("tm" and format 1). Chosen far from the
/// small flags other clients use (python-memcached and pylibmc use 1–16 for pickle, int,
/// long, zlib) so their values are never taken for ours.
pub const FLAG_BINCODE: u32 = 0x746d_0001;

/// The most bytes a decoded value may claim to allocate: more than any memcached item, so a
/// corrupt length prefix cannot make the decoder reserve gigabytes.
const DECODE_LIMIT: usize = 128 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Decodes with a claim limit of `LIMIT` bytes (see [`decode_borrowed`]).
fn decode_limited<'a, T: serde::Deserialize<'a>, const LIMIT: usize>(
    bytes: &'a [u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::borrow_decode_from_slice(bytes, config)
}

/// Decodes `bytes` with the smallest limit of a few that fits their length.
///
/// bincode allocates an owned string's or byte buffer's claimed length before reading it,
/// bounded only by the config's limit, a constant; and it counts every decoded value at its
/// in-memory size (a one-byte varint u64 claims 8). A limit of 16 times the input (in steps
/// of 4) admits every honest value and keeps a lying length prefix to at most 64 times the
/// input's length (4 KiB for small ones).
fn decode_sized<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    const K: usize = 1024;
    match bytes.len() {
        0..=256 => decode_limited::<T, { 4 * K }>(bytes),
        257..=1024 => decode_limited::<T, { 16 * K }>(bytes),
        1025..=4096 => decode_limited::<T, { 64 * K }>(bytes),
        4097..=16_384 => decode_limited::<T, { 256 * K }>(bytes),
        16_385..=65_536 => decode_limited::<T, { K * K }>(bytes),
        65_537..=262_144 => decode_limited::<T, { 4 * K * K }>(bytes),
        262_145..=1_048_576 => decode_limited::<T, { 16 * K * K }>(bytes),
        1_048_577..=4_194_304 => decode_limited::<T, { 64 * K * K }>(bytes),
        _ => decode_limited::<T, DECODE_LIMIT>(bytes),
    }
}

/// Sequences of stored metadata are deserialized with this: serde's own `Vec` reserves a
/// claimed length up to 1 MiB before reading an element, however short the input; this
/// reserves a few elements and grows only with elements actually decoded (each of which
/// consumed input).
pub(crate) fn bounded_seq<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC_ELEMENTS));
            while let Some(element) = seq.next_element()? {
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// How many elements [`bounded_seq`] reserves at most before decoding them.
const PREALLOC_ELEMENTS: usize = 16;

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub(crate) String);

/// Encodes a value for storage under [`FLAG_BINCODE`].
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|err| CodecError(format!("cannot encode value: {err}")))
}

/// Decodes bytes written by [`encode_value`]. Trailing bytes, truncation and type mismatches
/// are errors.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    whole(bytes, decode_sized(bytes))
}

/// Decodes bytes written by [`encode_value`] into a value that borrows its text and bytes
/// from them. For types whose only allocations are [`bounded_seq`] sequences (each element
/// consumes input), which bound themselves; so one fixed limit serves, and the hit path
/// keeps a single, inlined decoder instead of [`decode_sized`]'s dispatch.
pub(crate) fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, CodecError> {
    whole(
        bytes,
        bincode::serde::borrow_decode_from_slice(bytes, config()),
    )
}

/// The decoded value, if it used every byte.
fn whole<T>(
    bytes: &[u8],
    decoded: Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, CodecError> {
    let (value, read) = decoded.map_err(|err| CodecError(format!("cannot decode value: {err}")))?;
    if read != bytes.len() {
        return Err(CodecError(format!(
            "cannot decode value: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_bytes() {
        let bytes = encode_value(&vec![1u64, 2, 3]).unwrap();
        assert_eq!(decode_value::<Vec<u64>>(&bytes).unwrap(), vec![1, 2, 3]);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_value::<Vec<u64>>(&longer).is_err());
        assert!(decode_value::<Vec<u64>>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_value::<String>(b"Vcached value\np1\n.").is_err());
    }

    #[test]
    fn claims_are_bounded_by_the_input_length() {
        // 9 bytes claiming a 100 MiB string: refused on the limit (under the old fixed
        // 128 MiB limit, bincode allocated 100 MiB and then ran out of input).
        let mut evil = vec![0xfc]; // varint: u32 follows
        evil.extend_from_slice(&(100u32 << 20).to_le_bytes());
        let err = decode_value::<String>(&evil).unwrap_err();
        assert!(err.to_string().contains("LimitExceeded"), "{err}");
        // Honest values near each size class still decode: u64s claim 8 bytes per 1-byte
        // varint, the densest claim of the crate's types.
        for len in [0usize, 200, 256, 1000, 5000, 70_000] {
            let numbers = vec![1u64; len];
            let bytes = encode_value(&numbers).unwrap();
            assert_eq!(decode_value::<Vec<u64>>(&bytes).unwrap(), numbers);
            let text = "x".repeat(len * 4);
            let bytes = encode_value(&text).unwrap();
            assert_eq!(decode_value::<String>(&bytes).unwrap(), text);
        }
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // A varint length of u64::MAX: must fail on the limit, not try to allocate.
        let evil = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_value::<Vec<u8>>(&evil).is_err());
    }
}
