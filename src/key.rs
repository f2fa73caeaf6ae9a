//! Memcache keys by the formula of the Python memcache utilities lovely.memcached and
//! p01.memcache: the lowercase hex md5 of the namespace bytes followed by the key's base
//! bytes.
//!
//! What the base bytes are depends on the key, as in p01.memcache: text is its UTF-8, an
//! integer its decimal digits, bytes are themselves, your own types say what identifies
//! them by implementing [`KeyBase`] (p01.memcache's `_p_oid`), and any serializable value can be
//! keyed by its encoding through [`Encoded`] (p01.memcache's pickle).
//!
//! ```
//! use tower_memcache::key::build_key;
//!
//! assert_eq!(build_key(None, "cache_key"), "0a42907b589a309ad94f8874eacbc63f");
//! assert_eq!(build_key(Some("one"), "key1"), "7d701cfc74a8bfe87fe6d448bf23c8f2");
//! // Integers are keyed by their decimal text.
//! assert_eq!(build_key(Some("n"), &123), build_key(None, "n123"));
//! ```

use std::borrow::Cow;

use md5::{Digest, Md5};

/// Something that can name a cached value: it gives the bytes hashed after the namespace.
///
/// Implement it for your own types to key them by their identity, as p01.memcache used a
/// persistent object's `_p_oid`:
///
/// ```
/// use std::borrow::Cow;
/// use tower_memcache::key::{KeyBase, build_key};
///
/// struct Document {
///     oid: String,
///     title: String,
/// }
///
/// impl KeyBase for Document {
///     fn key_base(&self) -> Cow<'_, [u8]> {
///         Cow::Borrowed(self.oid.as_bytes())
///     }
/// }
///
/// let doc = Document { oid: "abc123".into(), title: "Hello".into() };
/// assert_eq!(build_key(Some("n"), &doc), build_key(None, "nabc123"));
/// ```
pub trait KeyBase {
    /// The bytes that identify this key, before the namespace is put in front.
    fn key_base(&self) -> Cow<'_, [u8]>;
}

impl KeyBase for str {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBase for String {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBase for [u8] {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl<const N: usize> KeyBase for [u8; N] {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl KeyBase for Vec<u8> {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl KeyBase for bytes::Bytes {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl<T: KeyBase + ?Sized> KeyBase for &T {
    fn key_base(&self) -> Cow<'_, [u8]> {
        (**self).key_base()
    }
}

macro_rules! decimal_key_base {
    ($($int:ty),*) => {$(
        impl KeyBase for $int {
            fn key_base(&self) -> Cow<'_, [u8]> {
                Cow::Owned(self.to_string().into_bytes())
            }
        }
    )*};
}

decimal_key_base!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

/// A serializable value used as a key through its encoded bytes, p01.memcache's "anything
/// else is pickled".
///
/// ```
/// use tower_memcache::key::{Encoded, build_key};
///
/// #[derive(serde::Serialize)]
/// struct Query { page: u32, tags: Vec<String> }
///
/// let query = Query { page: 2, tags: vec!["rust".into()] };
/// let key = Encoded::new(&query)?;
/// assert_eq!(build_key(None, &key), build_key(None, key.as_bytes()));
/// # Ok::<(), tower_memcache::codec::CodecError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// Encodes `value` with the crate's value codec.
    pub fn new<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, crate::codec::CodecError> {
        crate::codec::encode_value(value).map(Self)
    }

    /// The encoded bytes that the key is built from.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl KeyBase for Encoded {
    fn key_base(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// p01.memcache's `buildKey`: lowercase hex md5 of `namespace ++ key base`; no namespace is an
/// empty prefix. Always 32 characters, so always a valid memcached key.
pub fn build_key<K: KeyBase + ?Sized>(namespace: Option<&str>, key: &K) -> String {
    md5_hex(&[namespace.unwrap_or("").as_bytes(), &key.key_base()])
}

/// Lowercase hex md5 of the concatenation of `parts`, without concatenating them first.
pub fn md5_hex(parts: &[&[u8]]) -> String {
    md5_hex_prefixed("", parts)
}

/// `prefix` followed by [`md5_hex`] of `parts`, in one allocation. With a prefix that is
/// not 32 hex digits long, never a key [`build_key`] gives: the crate's own keys are out
/// of reach of keys built from user input.
pub(crate) fn md5_hex_prefixed(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    to_hex(prefix, &hasher.finalize().into())
}

fn to_hex(prefix: &str, digest: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The digits into a fixed buffer, then one copy: a key is built on every request, and
    // a push per digit checks the capacity each time.
    let mut digits = [0u8; 32];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    let mut out = String::with_capacity(prefix.len() + digits.len());
    out.push_str(prefix);
    // ASCII digits and letters: always a `str`.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_vectors() {
        assert_eq!(
            build_key(None, "cache_key"),
            "0a42907b589a309ad94f8874eacbc63f"
        );
        assert_eq!(build_key(None, "foo"), "acbd18db4cc2f85cedef654fccc4a4d8");
        assert_eq!(build_key(None, "a"), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(build_key(None, "abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            build_key(Some("one"), "key1"),
            "7d701cfc74a8bfe87fe6d448bf23c8f2"
        );
    }

    #[test]
    fn integers_are_decimal_text() {
        // md5("123") and md5("n123"), computed independently.
        assert_eq!(build_key(None, &123), "202cb962ac59075b964b07152d234b70");
        assert_eq!(build_key(Some("n"), &123), md5_hex(&[b"n123"]));
        assert_eq!(build_key(Some("n"), &123u64), build_key(Some("n"), "123"));
        assert_eq!(build_key(None, &-7i32), build_key(None, "-7"));
    }

    #[test]
    fn text_is_utf8_and_namespace_is_a_prefix() {
        assert_eq!(build_key(Some("n"), "bar"), md5_hex(&[b"nbar"]));
        assert_eq!(build_key(Some("n"), "foo"), build_key(None, "nfoo"));
        assert_eq!(build_key(None, "ä"), md5_hex(&["ä".as_bytes()]));
        assert_eq!(
            build_key(None, &String::from("bar")),
            build_key(None, b"bar")
        );
        assert_eq!(build_key(Some(""), "x"), build_key(None, "x"));
    }

    #[test]
    fn bytes_are_taken_as_they_are() {
        let raw: &[u8] = &[0, 159, 146, 150];
        assert_eq!(build_key(None, raw), md5_hex(&[raw]));
        assert_eq!(build_key(None, &raw.to_vec()), md5_hex(&[raw]));
    }

    #[test]
    fn encoded_values_key_by_their_encoding() {
        let a = Encoded::new(&(1u32, "x")).unwrap();
        let b = Encoded::new(&(1u32, "x")).unwrap();
        let c = Encoded::new(&(2u32, "x")).unwrap();
        assert_eq!(build_key(None, &a), build_key(None, &b));
        assert_ne!(build_key(None, &a), build_key(None, &c));
        assert_eq!(build_key(Some("n"), &a), md5_hex(&[b"n", a.as_bytes()]));
    }
}
