use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most seconds memcached treats as relative; larger expiration times are absolute unix
/// times.
const MAX_RELATIVE_SECS: u32 = 60 * 60 * 24 * 30;

/// The largest expiration time memcached keeps: it reads the number as a signed 32-bit
/// integer, so anything larger wraps negative and the item expires at once (an item
/// "stored" for 2^31 seconds or until 2106 would be gone before the next `get`). This
/// absolute time is Tue, 19 Jan 2038 03:14:07 GMT.
const MAX_EXPTIME: u64 = i32::MAX as u64;

/// How long an item lives, with memcached's rules done once, here.
///
/// memcached reads its 32-bit expiration time three ways: 0 never expires, up to 30 days
/// is relative to now, and anything larger is an absolute unix time, up to `i32::MAX`
/// (larger numbers read as negative: expired at once). `Lifetime` is built
/// from what the caller means ([`Lifetime::from_secs`], [`Lifetime::at`],
/// [`Lifetime::NEVER`]) and turned into memcached's number by [`Lifetime::exptime`], so no
/// caller converts by hand.
///
/// ```
/// use std::time::Duration;
/// use tower_memcache::backend::Lifetime;
///
/// assert_eq!(Lifetime::NEVER.exptime(), 0);
/// assert_eq!(Lifetime::from_secs(3600).exptime(), 3600);
/// // Longer than 30 days becomes an absolute time, as memcached requires.
/// let year = Lifetime::from_duration(Duration::from_secs(365 * 86_400));
/// assert!(year.exptime() > 1_700_000_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lifetime(Repr);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Repr {
    Never,
    Relative(u32),
    /// Seconds from now, more than memcached takes as relative: turned into an absolute
    /// time when used, not when built, so a lifetime kept for days (a client's default)
    /// does not shrink towards "already expired".
    Long(u64),
    /// Unix seconds.
    Absolute(u64),
}

impl Lifetime {
    /// Never expires (memcached's 0); it may still be evicted.
    pub const NEVER: Lifetime = Lifetime(Repr::Never);

    /// Expires `secs` seconds from now; 0 means [`Lifetime::NEVER`], as in memcached.
    /// Values over 30 days are sent as an absolute time, taken from the clock each time the
    /// lifetime is used (a client's default stays "`secs` from the store"), at most the last second
    /// memcached can keep (Tue, 19 Jan 2038 03:14:07 GMT): a longer lifetime is capped
    /// there rather than wrapping into "expired".
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use tower_memcache::backend::Lifetime;
    ///
    /// let forever = Lifetime::from_secs(u64::MAX);
    /// assert_eq!(forever.exptime(), i32::MAX as u32);
    /// assert!(forever.deadline(SystemTime::now()) > Some(SystemTime::now()));
    /// ```
    pub fn from_secs(secs: u64) -> Self {
        match secs {
            0 => Self::NEVER,
            s if s <= u64::from(MAX_RELATIVE_SECS) => Self(Repr::Relative(s as u32)),
            s => Self(Repr::Long(s)),
        }
    }

    /// Like [`Lifetime::from_secs`], rounding sub-second durations up so that a short
    /// positive lifetime never becomes "never".
    pub fn from_duration(duration: Duration) -> Self {
        // Saturating: `Duration::MAX` has u64::MAX whole seconds and a fraction.
        let secs = duration
            .as_secs()
            .saturating_add(u64::from(duration.subsec_nanos() > 0));
        Self::from_secs(secs)
    }

    /// Expires at a point in time; a time at or before now is already expired. A time
    /// past what memcached can keep is capped at its last second (2038-01-19).
    pub fn at(time: SystemTime) -> Self {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            // memcached reads 1..=30 days as relative; an absolute time that small is long
            // past anyway, so clamp it into the absolute range.
            .clamp(u64::from(MAX_RELATIVE_SECS) + 1, MAX_EXPTIME);
        Self(Repr::Absolute(secs))
    }

    /// Reads memcached's raw expiration number with memcached's rules (a number above
    /// `i32::MAX` is negative to memcached: its [`deadline`](Self::deadline) is past).
    pub fn from_exptime(exptime: u32) -> Self {
        match exptime {
            0 => Self::NEVER,
            e if e <= MAX_RELATIVE_SECS => Self(Repr::Relative(e)),
            e => Self(Repr::Absolute(u64::from(e))),
        }
    }

    /// The number memcached expects on the wire.
    pub fn exptime(&self) -> u32 {
        match self.0 {
            Repr::Never => 0,
            Repr::Relative(secs) => secs,
            // At most MAX_EXPTIME, a u32.
            Repr::Long(secs) => u32::try_from(long_deadline(unix_now(), secs)).unwrap_or(u32::MAX),
            // Built by `from_secs` or `at`, at most MAX_EXPTIME; only `from_exptime` holds
            // larger numbers, and gives them back as they were.
            Repr::Absolute(unix) => u32::try_from(unix).unwrap_or(u32::MAX),
        }
    }

    /// When the item expires, counted from `now`, as memcached decides it; `None` for
    /// never, and for a time past what `SystemTime` can hold, which is as good as never.
    pub fn deadline(&self, now: SystemTime) -> Option<SystemTime> {
        // `SystemTime + Duration` panics on overflow; checked_add does not.
        match self.0 {
            Repr::Never => None,
            Repr::Relative(secs) => now.checked_add(Duration::from_secs(u64::from(secs))),
            Repr::Long(secs) => {
                let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                UNIX_EPOCH.checked_add(Duration::from_secs(long_deadline(now, secs)))
            }
            // A negative exptime to memcached: expired at once.
            Repr::Absolute(unix) if unix > MAX_EXPTIME => Some(UNIX_EPOCH),
            Repr::Absolute(unix) => UNIX_EPOCH.checked_add(Duration::from_secs(unix)),
        }
    }

    /// Whether this is [`Lifetime::NEVER`].
    pub fn is_never(&self) -> bool {
        self.0 == Repr::Never
    }
}

impl Default for Lifetime {
    /// The default lifetime of lovely.memcached and p01.memcache: 3600 seconds.
    fn default() -> Self {
        Self::from_secs(3600)
    }
}

/// The absolute time memcached is sent for a lifetime of `secs` (over 30 days) counted
/// from `now`: capped at the last second it keeps.
fn long_deadline(now: u64, secs: u64) -> u64 {
    now.saturating_add(secs).min(MAX_EXPTIME)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn memcached_rules_for_raw_exptimes() {
        assert!(Lifetime::from_exptime(0).is_never());
        assert_eq!(
            Lifetime::from_exptime(MAX_RELATIVE_SECS).exptime(),
            MAX_RELATIVE_SECS
        );
        let now = SystemTime::now();
        let rel = Lifetime::from_exptime(MAX_RELATIVE_SECS);
        assert_eq!(
            rel.deadline(now),
            Some(now + Duration::from_secs(u64::from(MAX_RELATIVE_SECS)))
        );
        let abs = Lifetime::from_exptime(MAX_RELATIVE_SECS + 1);
        assert_eq!(
            abs.deadline(now),
            Some(UNIX_EPOCH + Duration::from_secs(u64::from(MAX_RELATIVE_SECS) + 1))
        );
    }

    #[test]
    fn long_lifetimes_become_absolute() {
        let secs = u64::from(MAX_RELATIVE_SECS) + 10;
        let lifetime = Lifetime::from_secs(secs);
        let expected = unix_now() + secs;
        let got = u64::from(lifetime.exptime());
        assert!(got.abs_diff(expected) <= 1, "{got} vs {expected}");
    }

    #[test]
    fn sub_second_durations_round_up() {
        assert_eq!(
            Lifetime::from_duration(Duration::from_millis(1)).exptime(),
            1
        );
        assert!(Lifetime::from_duration(Duration::ZERO).is_never());
    }

    #[test]
    fn raw_exptimes_past_i32_are_expired_as_memcached_reads_them() {
        let now = SystemTime::now();
        let wrapped = Lifetime::from_exptime(u32::MAX);
        assert!(wrapped.deadline(now).is_some_and(|d| d < now));
        let last = Lifetime::from_exptime(i32::MAX as u32);
        assert!(last.deadline(now).is_some_and(|d| d > now));
    }

    #[test]
    fn past_absolute_times_stay_absolute() {
        let lifetime = Lifetime::at(UNIX_EPOCH + Duration::from_secs(5));
        assert!(lifetime.exptime() > MAX_RELATIVE_SECS);
        assert!(lifetime.deadline(SystemTime::now()).unwrap() < SystemTime::now());
    }

    #[test]
    fn default_is_the_seeds_hour() {
        assert_eq!(Lifetime::default().exptime(), 3600);
    }

    #[test]
    fn the_largest_lifetimes_do_not_overflow() {
        // A lifetime header of u64::MAX seconds reaches the backend as these.
        let now = SystemTime::now();
        let last = UNIX_EPOCH + Duration::from_secs(MAX_EXPTIME);
        for lifetime in [
            Lifetime::from_secs(u64::MAX),
            Lifetime::from_secs(1 << 31),
            Lifetime::from_duration(Duration::MAX),
            Lifetime::from_duration(Duration::from_millis(u64::MAX)),
            Lifetime::at(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX))),
        ] {
            // memcached reads a larger number as negative: expired, not "as good as never".
            assert_eq!(lifetime.exptime(), i32::MAX as u32, "{lifetime:?}");
            assert_eq!(lifetime.deadline(now), Some(last));
        }
        assert_eq!(
            Lifetime::from_exptime(1).deadline(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64)),
            None,
            "a relative time past what SystemTime holds"
        );
    }

    // Default config: 256 cases unless PROPTEST_CASES says otherwise.
    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn any_lifetime_converts_without_panic(
            secs in prop_oneof![any::<u64>(), Just(u64::MAX), 0..=u64::from(MAX_RELATIVE_SECS) + 1],
            nanos in 0..1_000_000_000u32,
            exptime in any::<u32>(),
            (at, now) in (any::<u64>(), any::<u64>()),
        ) {
            let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
            let at = UNIX_EPOCH.checked_add(Duration::from_secs(at)).unwrap_or(UNIX_EPOCH);
            for lifetime in [
                Lifetime::from_secs(secs),
                Lifetime::from_duration(Duration::new(secs, nanos)),
                Lifetime::from_exptime(exptime),
                Lifetime::at(at),
            ] {
                let _ = (lifetime.exptime(), lifetime.deadline(now), lifetime.is_never());
            }
            // memcached's number reads back as what was sent.
            let raw = Lifetime::from_exptime(exptime);
            prop_assert_eq!(raw.exptime(), exptime);
            prop_assert_eq!(Lifetime::from_secs(secs).is_never(), secs == 0);
            // What the layer builds is a number memcached keeps (no negative wrap).
            for built in [Lifetime::from_secs(secs), Lifetime::at(at)] {
                prop_assert!(u64::from(built.exptime()) <= MAX_EXPTIME);
            }
        }
    }
}
