//! [`TcpBackendBuilder`]: a [`TcpBackend`]'s servers and settings, and server addresses
//! read as libmemcached reads them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::connection::ConnectionSettings;
use super::ketama::{Ring, ServerSpec};
use super::protocol::Limits;
use super::server::Server;
use super::{Family, Inner, TcpBackend};
use crate::backend::DEFAULT_ITEM_SIZE_LIMIT;

/// memcached's default port; libmemcached leaves it out of ketama's point names.
const DEFAULT_PORT: u16 = 11211;

/// The shortest pause between two probes of a server marked down
/// ([`TcpBackendBuilder::probe_interval`]).
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// A bad [`TcpBackendBuilder`] setting.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No server was configured.
    #[error("no memcached server configured")]
    NoServers,
    /// A server address is not `host`, `host:port` or `[v6]:port`.
    #[error("invalid memcached server address {0:?}: expected host:port")]
    InvalidAddress(String),
    /// A weight of 0.
    #[error("server {0} has weight 0; weights start at 1")]
    ZeroWeight(String),
    /// The same server (host in any case, and port) listed twice: ketama would give it a
    /// share of keys per entry, and its outage would cost that many shares of the hits.
    /// Give it a weight ([`TcpBackendBuilder::weighted_server`]) to give it more keys.
    #[error(
        "memcached server {0} is listed twice; list each server once (weights give one more keys)"
    )]
    DuplicateServer(String),
    /// One server listed under two spellings that name one address without asking a
    /// resolver: `localhost` and `127.0.0.1` (or `[::1]`), an IPv6 address written out
    /// and compressed, an IPv4 address and its IPv4-mapped IPv6 form, a name with and
    /// without DNS's trailing dot. Like [`DuplicateServer`](Self::DuplicateServer), it
    /// would take two shares of the keys.
    #[error(
        "memcached servers {0} and {1} are one server under two spellings; list each server once (weights give one more keys)"
    )]
    SameServer(String, String),
}

/// Builds a [`TcpBackend`]; nothing connects until the first call.
#[derive(Debug, Clone)]
#[must_use]
pub struct TcpBackendBuilder {
    servers: Vec<(String, u32)>,
    timeout: Duration,
    connect_timeout: Duration,
    connections_per_server: usize,
    max_in_flight: usize,
    failure_threshold: u32,
    probe_interval: Duration,
    remove_failed_servers: bool,
    item_size_limit: usize,
}

impl Default for TcpBackendBuilder {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
            connections_per_server: 2,
            max_in_flight: 1024,
            failure_threshold: 3,
            probe_interval: Duration::from_millis(200),
            remove_failed_servers: false,
            item_size_limit: DEFAULT_ITEM_SIZE_LIMIT,
        }
    }
}

impl TcpBackendBuilder {
    /// Adds a server with weight 1: `host:port`, `host` (port 11211) or `[v6]:port`.
    /// Order matters: it is part of the ketama ring, as in libmemcached.
    pub fn server(self, addr: impl Into<String>) -> Self {
        self.weighted_server(addr, 1)
    }

    /// Adds a server with a ketama weight (libmemcached's `KETAMA_WEIGHTED`).
    pub fn weighted_server(mut self, addr: impl Into<String>, weight: u32) -> Self {
        self.servers.push((addr.into(), weight));
        self
    }

    /// Adds several servers with weight 1.
    pub fn servers<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers
            .extend(addrs.into_iter().map(|a| (a.into(), 1)));
        self
    }

    /// Adds the servers of a comma-separated list (`"10.0.0.1:11211, 10.0.0.2:11211"`), as
    /// command lines and environment variables give them; blank entries are skipped. An
    /// empty list adds none, which [`build`](Self::build) refuses.
    ///
    /// ```
    /// # use tower_memcache::backend::TcpBackend;
    /// let backend = TcpBackend::builder().server_list("127.0.0.1:11211, [::1]:11212").build()?;
    /// assert_eq!(backend.server_names(), ["127.0.0.1:11211", "[::1]:11212"]);
    /// assert!(TcpBackend::builder().server_list(" , ").build().is_err());
    /// # Ok::<(), tower_memcache::backend::tcp::ConfigError>(())
    /// ```
    pub fn server_list(self, list: &str) -> Self {
        self.servers(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// The most one call waits for its reply (after connecting, if it had to). Defaults to
    /// 100 ms: a cache that answers later than that is slower than the work it saves.
    /// `Duration::MAX` is no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most a call waits for a new connection. Defaults to 100 ms. `Duration::MAX` is
    /// no timeout: a connect that hangs (a host gone behind a firewall that drops) then
    /// lasts until the operating system gives up on it (about two minutes on Linux), and
    /// callers bounded tighter than [`timeout`](Self::timeout) (the layer's lookup timeout)
    /// each wait their whole limit meanwhile; each such connect counts as one failure of
    /// the server, so marking it down takes `failure_threshold` of them.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connections per server, at most, each pipelining many requests. Requests go to the
    /// first connection until it has 32 outstanding, then to the next: requests that share a
    /// connection share writes and reads, so a further connection is only opened and used
    /// for the overflow. Defaults to 2.
    pub fn connections_per_server(mut self, connections: usize) -> Self {
        self.connections_per_server = connections.max(1);
        self
    }

    /// Requests outstanding per connection (sent, or about to be sent with the next write,
    /// and not yet answered); further callers wait until a reply frees a slot. Defaults to
    /// 1024.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// Consecutive failures (unreachable or timed out) that mark a server down. Defaults
    /// to 3.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// How often a server marked down is probed with `version`. Defaults to 200 ms; at
    /// least [`MIN_PROBE_INTERVAL`] (a shorter one, `Duration::ZERO` say, is taken as
    /// that): with no pause between probes, a server that refuses or drops connections was
    /// sent hundreds of connections a second, by a loop that kept a thread busy. A server
    /// that is marked down again before it answered a single call since a probe put it
    /// back (it answers `version`, not lookups) is probed twice as slowly each time, up to
    /// 16 times the interval but no longer than 3.2 s (or the interval, when longer), until
    /// it answers one. A server restarted twice with no call to it between counts as such.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.max(MIN_PROBE_INTERVAL);
        self
    }

    /// Take servers marked down out of the ring, so their keys move to the others until
    /// they are back (libmemcached's `REMOVE_FAILED_SERVERS`). Defaults to off: their keys
    /// fail fast (a miss for a cache) instead of moving.
    ///
    /// What this costs, and what holds:
    /// - a server back in the ring is flushed first (`flush_all`): every write and delete of
    ///   its keys went to the others meanwhile, so what it held may have been replaced or
    ///   invalidated. The flush takes everything on it, other applications' values too,
    ///   whenever this process marked it down (a hang as well as a restart); a server
    ///   started with `-F`, which refuses flushes, comes back with its old values all the
    ///   same: do not combine the two;
    /// - a [`delete`](crate::backend::Backend::delete) (`MemcacheClient::invalidate`)
    ///   reaches every server, since a copy written on another server while the key's own
    ///   was out would come back the next time it is out; a server that misses it is
    ///   marked down, so flushed before it serves again;
    /// - such a copy is otherwise left where it was written, until its lifetime ends: a
    ///   value set again after its server came back can be answered in its older version
    ///   during a later outage of that server;
    /// - with namespace versioning (`MemcacheClient::with_versioned_namespace`) that copy
    ///   is under the other server's generation of the namespace, which an invalidation of
    ///   the one key does not name: it can come back during a later outage.
    ///   `invalidate_namespace` (written on every server) does remove it;
    /// - the HTTP cache's purges and invalidations by unsafe methods hold across these ring
    ///   changes (they are written on every server).
    pub fn remove_failed_servers(mut self, remove: bool) -> Self {
        self.remove_failed_servers = remove;
        self
    }

    /// The largest item (key + value + memcached's overhead) sent; larger values are
    /// refused before anything is sent. Defaults to 1 MiB. A server that reports a smaller
    /// `item_size_max` (its `-I`) on connecting, or refuses an item as too large, gets a
    /// smaller limit of its own ([`Backend::item_size_limit`](crate::backend::Backend::item_size_limit)).
    /// Replies are bounded by it too, more loosely: a value of more than four times this
    /// limit (and never less than 4 MiB: clients sharing the servers with a larger `-I`
    /// store larger values) is not buffered: its bytes are discarded as they arrive and its
    /// key reads as a miss, the other values of the reply and the replies behind it kept.
    /// Only a value larger than any memcached holds (1 GiB) is taken for a broken server,
    /// and its connection dropped. A multi-get reply holds at most one value per key asked.
    pub fn item_size_limit(mut self, bytes: usize) -> Self {
        self.item_size_limit = bytes;
        self
    }

    /// Builds the backend. Does not connect.
    pub fn build(self) -> Result<TcpBackend, ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        let mut specs = Vec::with_capacity(self.servers.len());
        let mut servers = Vec::with_capacity(self.servers.len());
        for (addr, weight) in &self.servers {
            let (host, port) = parse_address(addr)?;
            if *weight == 0 {
                return Err(ConfigError::ZeroWeight(addr.clone()));
            }
            if let Some(spec) = specs
                .iter()
                .find(|spec: &&ServerSpec| spec.port == port && same_host(&spec.host, &host))
            {
                return Err(if spec.host.eq_ignore_ascii_case(&host) {
                    ConfigError::DuplicateServer(addr.trim().to_owned())
                } else {
                    ConfigError::SameServer(
                        format!("{}:{}", display_host(&spec.host), spec.port),
                        addr.trim().to_owned(),
                    )
                });
            }
            let name: Arc<str> = Arc::from(format!("{}:{port}", display_host(&host)));
            servers.push(Server::new(
                host.clone(),
                port,
                name,
                self.connections_per_server,
            ));
            specs.push(ServerSpec {
                host,
                port,
                weight: *weight,
            });
        }
        let ring = Ring::new(&specs);
        let settings = ConnectionSettings {
            connect_timeout: self.connect_timeout,
            // No reply completed for twice the call timeout, with requests outstanding,
            // means the server is stuck (or trickling); every caller has long given up.
            stall_timeout: self
                .timeout
                .saturating_mul(2)
                .max(Duration::from_millis(100)),
            max_in_flight: self.max_in_flight,
            limits: Limits {
                // A value beyond this is never buffered: the reader discards its bytes as
                // they arrive, and its key reads as a miss. Four times the item size limit
                // (and never below memcached's default): clients sharing the servers with a
                // larger setting (`-I`) store larger values, which are read. A reply holds
                // at most one value per key asked, so the bound per reply stays small.
                max_value_len: self
                    .item_size_limit
                    .max(DEFAULT_ITEM_SIZE_LIMIT)
                    .saturating_mul(4),
                ..Limits::default()
            },
        };
        let family = Arc::new(Family {
            specs,
            ring: RwLock::new(Arc::new(ring)),
            reset_on_rejoin: Mutex::new(Vec::new()),
            reset_overflowed: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
        });
        Ok(TcpBackend::join(Inner {
            servers,
            settings,
            timeout: self.timeout,
            failure_threshold: self.failure_threshold,
            probe_interval: self.probe_interval,
            remove_failed_servers: self.remove_failed_servers,
            item_size_limit: self.item_size_limit,
            family,
        }))
    }
}

/// Splits `host:port`, `host` or `[v6]:port`; the host is kept exactly as written (minus
/// IPv6 brackets), since ketama hashes it.
fn parse_address(addr: &str) -> Result<(String, u16), ConfigError> {
    let invalid = || ConfigError::InvalidAddress(addr.to_string());
    let addr = addr.trim();
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| invalid())?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(invalid()),
        };
        // The same checks as the unbracketed form: port 0 can never be connected to (the
        // server would only ever be down, every lookup a silent miss).
        if host.is_empty() || host.contains(char::is_whitespace) || port == 0 {
            return Err(invalid());
        }
        return Ok((host.to_string(), port));
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().map_err(|_| invalid())?),
        Some(_) => return Err(invalid()), // a bare IPv6 address needs brackets
        None => (addr, DEFAULT_PORT),
    };
    if host.is_empty() || host.contains(char::is_whitespace) || port == 0 {
        return Err(invalid());
    }
    Ok((host.to_string(), port))
}

/// What a server's host names, as far as it can be told without a resolver (a name
/// resolved at startup may move later, and resolving is no builder's work).
#[derive(PartialEq, Eq)]
enum HostIdentity {
    /// An address literal, an IPv4-mapped IPv6 address as its IPv4 address.
    Address(IpAddr),
    /// `localhost`, which resolves to the loopback addresses (RFC 6761 §6.3).
    Localhost,
    /// Any other name, lower-cased, without DNS's trailing dot.
    Name(String),
}

impl HostIdentity {
    fn of(host: &str) -> Self {
        if let Ok(address) = host.parse::<IpAddr>() {
            return Self::Address(match address {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            });
        }
        if let Some(v4) = inet_aton(host) {
            return Self::Address(IpAddr::V4(v4));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name == "localhost" {
            Self::Localhost
        } else {
            Self::Name(name)
        }
    }
}

/// An IPv4 address in the forms the C library's resolver takes besides the dotted quad
/// (`inet_aton(3)`, which `getaddrinfo` uses for numeric hosts): fewer parts, the last
/// filling the bytes left (`127.1`), and octal (`0177`) or hex (`0x7f`) parts. Connected
/// through the resolver, `127.1` is `127.0.0.1`: two servers of the ring, one machine
/// (review RT's note). By hand: `std` parses only the dotted quad, and this is ten lines.
fn inet_aton(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(u32::from_str_radix(digits, radix).ok()?);
    }
    let (last, leading) = values.split_last()?;
    // Each leading part is one byte; the last fills the bytes left.
    let last_bits = 32 - 8 * leading.len() as u32;
    if leading.iter().any(|&byte| byte > 0xff)
        || (last_bits < 32 && u64::from(*last) >= 1u64 << last_bits)
    {
        return None;
    }
    let address = leading
        .iter()
        .fold(0u32, |address, &byte| (address << 8) | byte);
    let address = if leading.is_empty() {
        *last
    } else {
        (address << last_bits) | *last
    };
    Some(Ipv4Addr::from(address))
}

/// Whether two hosts (as [`parse_address`] returns them) name one machine's address:
/// one spelling or two. `localhost` is the same as `127.0.0.1` and as `::1`, whichever a
/// resolver gives first (the connection tries the next when one refuses), while
/// `127.0.0.1` and `::1` stay two: a memcached may listen on each.
fn same_host(a: &str, b: &str) -> bool {
    match (HostIdentity::of(a), HostIdentity::of(b)) {
        (HostIdentity::Localhost, HostIdentity::Address(address))
        | (HostIdentity::Address(address), HostIdentity::Localhost) => {
            address == IpAddr::from(Ipv4Addr::LOCALHOST)
                || address == IpAddr::from(Ipv6Addr::LOCALHOST)
        }
        (a, b) => a == b,
    }
}

fn display_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_libmemcached_names_them() {
        assert_eq!(
            parse_address("127.0.0.1:11212").unwrap(),
            ("127.0.0.1".into(), 11212)
        );
        assert_eq!(parse_address("cache-a").unwrap(), ("cache-a".into(), 11211));
        assert_eq!(parse_address("[::1]:11213").unwrap(), ("::1".into(), 11213));
        assert_eq!(parse_address("[::1]").unwrap(), ("::1".into(), 11211));
        for bad in [
            "",
            ":11211",
            "host:",
            "host:port",
            "::1:11211",
            "[::1",
            "a b:1",
            "h:0",
            "h:70000",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_resolvers_other_ipv4_spellings_are_one_address() {
        let local = Some(Ipv4Addr::LOCALHOST);
        for spelling in [
            "127.1",
            "127.0.1",
            "0x7f.0.0.1",
            "0X7F.1",
            "0177.0.0.01",
            "2130706433",
            "0x7f000001",
        ] {
            assert_eq!(inet_aton(spelling), local, "{spelling}");
            assert!(same_host(spelling, "127.0.0.1"), "{spelling}");
            assert!(same_host(spelling, "localhost"), "{spelling}");
        }
        assert_eq!(
            inet_aton("10.1.65535"),
            Some(Ipv4Addr::new(10, 1, 255, 255))
        );
        for not_one in [
            "",
            "1.2.3.4.5",
            "256.1",
            "1.2.65536",
            "08.1",
            "0x",
            "1..2",
            "cache-1",
            "1e3",
            "4294967296",
            "1.2.3.",
            "-1",
        ] {
            assert_eq!(inet_aton(not_one), None, "{not_one}");
        }
        assert!(!same_host("127.2", "127.0.0.1"));
        assert!(matches!(
            TcpBackend::new(["127.0.0.1:11211", "127.1:11211"]),
            Err(ConfigError::SameServer(..))
        ));
    }

    #[test]
    fn builder_refuses_bad_configuration() {
        assert!(matches!(
            TcpBackend::builder().build(),
            Err(ConfigError::NoServers)
        ));
        assert!(matches!(
            TcpBackend::builder().weighted_server("h:1", 0).build(),
            Err(ConfigError::ZeroWeight(_))
        ));
        assert!(matches!(
            TcpBackend::new(["nope:"]),
            Err(ConfigError::InvalidAddress(_))
        ));
    }
}
