//! Request encoding: each command appended to a [`BytesMut`].

use bytes::{BufMut, BytesMut};

use super::*;

/// Suffix that asks the server not to answer a mutation.
const NOREPLY: &[u8] = b" noreply";

/// Decimal digits needed for `u64::MAX`; sizes the on-stack scratch of [`put_u64`].
const MAX_U64_DIGITS: usize = 20;

/// Room reserved per numeric argument: a separating space plus the widest `u64`.
const NUMERIC_ARG_LEN: usize = 1 + MAX_U64_DIGITS;

// ---------------------------------------------------------------------------------------------
// Request encoding
// ---------------------------------------------------------------------------------------------

/// The six storage verbs; `Cas` carries the unique token previously returned by `gets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCommand {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Append the data to an existing value (flags and exptime are ignored by the server).
    Append,
    /// Prepend the data to an existing value (flags and exptime are ignored by the server).
    Prepend,
    /// Store only if the item's cas token still equals this one.
    Cas(u64),
}

impl StoreCommand {
    /// The command name as it appears on the wire.
    fn verb(self) -> &'static [u8] {
        match self {
            StoreCommand::Set => b"set",
            StoreCommand::Add => b"add",
            StoreCommand::Replace => b"replace",
            StoreCommand::Append => b"append",
            StoreCommand::Prepend => b"prepend",
            StoreCommand::Cas(_) => b"cas",
        }
    }
}

/// Encodes `get k1 k2 ...` (or `gets ...` when `with_cas`), asking for several keys at once.
pub(crate) fn encode_get(buf: &mut BytesMut, keys: &[&str], with_cas: bool) {
    debug_assert!(
        !keys.is_empty(),
        "a retrieval command needs at least one key"
    );
    let verb: &[u8] = if with_cas { b"gets" } else { b"get" };
    let keys_len: usize = keys.iter().map(|key| 1 + key.len()).sum();
    buf.reserve(verb.len() + keys_len + CRLF.len());
    buf.put_slice(verb);
    for key in keys {
        put_key(buf, key);
    }
    buf.put_slice(CRLF);
}

/// Encodes a storage command line followed by its data block.
///
/// Wire form: `<verb> <key> <flags> <exptime> <bytes> [<cas>] [noreply]\r\n<data>\r\n`.
pub(crate) fn encode_store(
    buf: &mut BytesMut,
    cmd: StoreCommand,
    key: &str,
    flags: u32,
    exptime: u32,
    value: &[u8],
    noreply: bool,
) {
    let verb = cmd.verb();
    buf.reserve(
        verb.len()
            + 1
            + key.len()
            + 4 * NUMERIC_ARG_LEN
            + NOREPLY.len()
            + CRLF.len()
            + value.len()
            + CRLF.len(),
    );
    buf.put_slice(verb);
    put_key(buf, key);
    put_arg(buf, u64::from(flags));
    put_arg(buf, u64::from(exptime));
    // usize -> u64 never truncates on the 32/64-bit targets memcached clients run on.
    put_arg(buf, value.len() as u64);
    if let StoreCommand::Cas(token) = cmd {
        put_arg(buf, token);
    }
    put_noreply(buf, noreply);
    buf.put_slice(CRLF);
    buf.put_slice(value);
    buf.put_slice(CRLF);
}

/// Encodes `delete <key> [noreply]`.
pub(crate) fn encode_delete(buf: &mut BytesMut, key: &str, noreply: bool) {
    encode_keyed(buf, b"delete", key, None, noreply);
}

/// Encodes `touch <key> <exptime> [noreply]`, which resets an item's expiry without fetching it.
pub(crate) fn encode_touch(buf: &mut BytesMut, key: &str, exptime: u32, noreply: bool) {
    encode_keyed(buf, b"touch", key, Some(u64::from(exptime)), noreply);
}

/// Encodes `incr <key> <delta> [noreply]`.
pub(crate) fn encode_incr(buf: &mut BytesMut, key: &str, delta: u64, noreply: bool) {
    encode_keyed(buf, b"incr", key, Some(delta), noreply);
}

/// Encodes `decr <key> <delta> [noreply]`.
pub(crate) fn encode_decr(buf: &mut BytesMut, key: &str, delta: u64, noreply: bool) {
    encode_keyed(buf, b"decr", key, Some(delta), noreply);
}

/// Encodes `flush_all [noreply]`, invalidating every item immediately.
pub(crate) fn encode_flush_all(buf: &mut BytesMut, noreply: bool) {
    buf.reserve(b"flush_all".len() + NOREPLY.len() + CRLF.len());
    buf.put_slice(b"flush_all");
    put_noreply(buf, noreply);
    buf.put_slice(CRLF);
}

/// Encodes `stats` or `stats <group>` (for example `items`, `slabs`, `settings`).
///
/// The group may contain spaces (`detail dump`), but must not contain control characters: a
/// stray `\r\n` would smuggle a second command onto the connection.
pub(crate) fn encode_stats(buf: &mut BytesMut, group: Option<&str>) {
    let group_len = group.map_or(0, |group| 1 + group.len());
    buf.reserve(b"stats".len() + group_len + CRLF.len());
    buf.put_slice(b"stats");
    if let Some(group) = group {
        debug_assert!(
            !group.is_empty() && !group.bytes().any(|b| b.is_ascii_control()),
            "invalid stats group {group:?}"
        );
        buf.put_u8(b' ');
        buf.put_slice(group.as_bytes());
    }
    buf.put_slice(CRLF);
}

/// Encodes `version`.
pub(crate) fn encode_version(buf: &mut BytesMut) {
    buf.put_slice(b"version\r\n");
}

/// Shared shape of `<verb> <key> [<number>] [noreply]\r\n` commands.
fn encode_keyed(buf: &mut BytesMut, verb: &[u8], key: &str, arg: Option<u64>, noreply: bool) {
    buf.reserve(verb.len() + 1 + key.len() + NUMERIC_ARG_LEN + NOREPLY.len() + CRLF.len());
    buf.put_slice(verb);
    put_key(buf, key);
    if let Some(arg) = arg {
        put_arg(buf, arg);
    }
    put_noreply(buf, noreply);
    buf.put_slice(CRLF);
}

/// Writes ` <key>`. Keys are validated by the caller; the debug check only catches bugs there.
fn put_key(buf: &mut BytesMut, key: &str) {
    debug_assert!(is_valid_key(key), "invalid memcached key {key:?}");
    buf.put_u8(b' ');
    buf.put_slice(key.as_bytes());
}

/// Writes ` <n>` in decimal.
fn put_arg(buf: &mut BytesMut, n: u64) {
    buf.put_u8(b' ');
    put_u64(buf, n);
}

/// Writes ` noreply` when requested.
fn put_noreply(buf: &mut BytesMut, noreply: bool) {
    if noreply {
        buf.put_slice(NOREPLY);
    }
}

/// Writes `n` in decimal through a stack scratch buffer, so encoding never allocates.
fn put_u64(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; MAX_U64_DIGITS];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is a single digit, so the narrowing cast is exact.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[start..]);
}

/// The key rules from `protocol.txt`: 1..=250 bytes, no whitespace, no control characters.
fn is_valid_key(key: &str) -> bool {
    (1..=250).contains(&key.len())
        && key
            .bytes()
            .all(|b| !b.is_ascii_whitespace() && !b.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(encode: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        buf.to_vec()
    }

    // ---- encoders ---------------------------------------------------------------------------

    #[test]
    fn encode_get_single_and_multi() {
        assert_eq!(encoded(|b| encode_get(b, &["foo"], false)), b"get foo\r\n");
        assert_eq!(
            encoded(|b| encode_get(b, &["a", "b", "c"], false)),
            b"get a b c\r\n"
        );
        assert_eq!(
            encoded(|b| encode_get(b, &["a", "b"], true)),
            b"gets a b\r\n"
        );
    }

    #[test]
    fn encode_store_commands() {
        let cases: [(StoreCommand, &[u8]); 5] = [
            (StoreCommand::Set, b"set k 1 2 3\r\nabc\r\n"),
            (StoreCommand::Add, b"add k 1 2 3\r\nabc\r\n"),
            (StoreCommand::Replace, b"replace k 1 2 3\r\nabc\r\n"),
            (StoreCommand::Append, b"append k 1 2 3\r\nabc\r\n"),
            (StoreCommand::Prepend, b"prepend k 1 2 3\r\nabc\r\n"),
        ];
        for (cmd, expected) in cases {
            assert_eq!(
                encoded(|b| encode_store(b, cmd, "k", 1, 2, b"abc", false)),
                expected
            );
        }
    }

    #[test]
    fn encode_cas_and_noreply() {
        assert_eq!(
            encoded(|b| encode_store(b, StoreCommand::Cas(77), "k", 0, 0, b"v", false)),
            b"cas k 0 0 1 77\r\nv\r\n"
        );
        assert_eq!(
            encoded(|b| encode_store(b, StoreCommand::Cas(u64::MAX), "k", 0, 0, b"v", true)),
            b"cas k 0 0 1 18446744073709551615 noreply\r\nv\r\n"
        );
        assert_eq!(
            encoded(|b| encode_store(b, StoreCommand::Set, "k", u32::MAX, u32::MAX, b"", true)),
            b"set k 4294967295 4294967295 0 noreply\r\n\r\n"
        );
    }

    #[test]
    fn encode_store_binary_value() {
        assert_eq!(
            encoded(|b| encode_store(b, StoreCommand::Set, "k", 0, 60, b"\r\n\0\xff", false)),
            b"set k 0 60 4\r\n\r\n\0\xff\r\n"
        );
    }

    #[test]
    fn encode_delete_touch_incr_decr() {
        assert_eq!(encoded(|b| encode_delete(b, "k", false)), b"delete k\r\n");
        assert_eq!(
            encoded(|b| encode_delete(b, "k", true)),
            b"delete k noreply\r\n"
        );
        assert_eq!(
            encoded(|b| encode_touch(b, "k", 300, false)),
            b"touch k 300\r\n"
        );
        assert_eq!(
            encoded(|b| encode_touch(b, "k", 0, true)),
            b"touch k 0 noreply\r\n"
        );
        assert_eq!(encoded(|b| encode_incr(b, "n", 5, false)), b"incr n 5\r\n");
        assert_eq!(
            encoded(|b| encode_incr(b, "n", u64::MAX, true)),
            b"incr n 18446744073709551615 noreply\r\n"
        );
        assert_eq!(
            encoded(|b| encode_decr(b, "n", 10, false)),
            b"decr n 10\r\n"
        );
        assert_eq!(
            encoded(|b| encode_decr(b, "n", 0, true)),
            b"decr n 0 noreply\r\n"
        );
    }

    #[test]
    fn encode_admin_commands() {
        assert_eq!(encoded(|b| encode_flush_all(b, false)), b"flush_all\r\n");
        assert_eq!(
            encoded(|b| encode_flush_all(b, true)),
            b"flush_all noreply\r\n"
        );
        assert_eq!(encoded(|b| encode_stats(b, None)), b"stats\r\n");
        assert_eq!(
            encoded(|b| encode_stats(b, Some("items"))),
            b"stats items\r\n"
        );
        assert_eq!(
            encoded(|b| encode_stats(b, Some("detail dump"))),
            b"stats detail dump\r\n"
        );
        assert_eq!(encoded(encode_version), b"version\r\n");
    }

    #[test]
    fn encoders_append_to_existing_contents() {
        let mut buf = BytesMut::from(&b"get a\r\n"[..]);
        encode_delete(&mut buf, "b", false);
        encode_version(&mut buf);
        assert_eq!(&buf[..], b"get a\r\ndelete b\r\nversion\r\n");
    }

    #[test]
    fn encode_store_reserves_once() {
        let mut buf = BytesMut::new();
        let value = vec![b'x'; 4096];
        encode_store(
            &mut buf,
            StoreCommand::Cas(u64::MAX),
            &"k".repeat(250),
            u32::MAX,
            u32::MAX,
            &value,
            true,
        );
        let capacity = buf.capacity();
        assert!(capacity >= buf.len());
        // Everything fit into the single up-front reservation.
        assert!(capacity - buf.len() < 128, "over-reserved: {capacity}");
    }

    #[test]
    fn put_u64_formats_every_magnitude() {
        let mut n = 1u64;
        loop {
            for candidate in [n - 1, n, n + 1] {
                let mut buf = BytesMut::new();
                put_u64(&mut buf, candidate);
                assert_eq!(&buf[..], candidate.to_string().as_bytes());
            }
            match n.checked_mul(10) {
                Some(next) if next < u64::MAX - 1 => n = next,
                _ => break,
            }
        }
        let mut buf = BytesMut::new();
        put_u64(&mut buf, u64::MAX);
        assert_eq!(&buf[..], u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn key_validation_rules() {
        assert!(is_valid_key("a"));
        assert!(is_valid_key(&"k".repeat(250)));
        assert!(is_valid_key("ключ"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(&"k".repeat(251)));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("a\r\nb"));
        assert!(!is_valid_key("a\x7fb"));
    }
}
