//! The RFC 9211 `Cache-Status` header: what the cache did with a request, as an
//! [`Outcome`], rendered to text in one place. The plain hit, by far the most common, is
//! formatted once.

use std::fmt::Write as _;

use http::header::{HeaderName, HeaderValue};

/// The header's name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went to the origin (RFC 9211 §2.2 `fwd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL is stored, but not the variant this request selects.
    VaryMiss,
    /// The stored response was stale and is being revalidated.
    Stale,
    /// The stored response was fresh, but the request's directives asked for the origin.
    Request,
    /// A method the cache does not look up.
    Method,
    /// The route, the key function or the request opts out of the cache.
    Bypass,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
            Self::Method => "method",
            Self::Bypass => "bypass",
        }
    }
}

/// Extra detail (RFC 9211 §2.8 `detail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The backend could not be asked (down or timed out): the cache was skipped.
    BackendUnavailable,
    /// A stale response stood in for an origin that failed.
    StaleIfError,
    /// A stale response stood in for an origin that could not be reached (the layer's
    /// `stale_if_unreachable`, RFC 9111 §4.2.4).
    OriginUnreachable,
    /// A response stored by another request while this one was at the origin answered
    /// the origin's failure.
    StoredMeanwhile,
    /// The origin could not be reached and the stored response may not be served stale.
    MustRevalidate,
    /// `only-if-cached` and nothing usable stored.
    OnlyIfCached,
}

impl Detail {
    fn as_str(self) -> &'static str {
        match self {
            Self::BackendUnavailable => "backend-unavailable",
            Self::StaleIfError => "stale-if-error",
            Self::OriginUnreachable => "origin-unreachable",
            Self::StoredMeanwhile => "stored-meanwhile",
            Self::MustRevalidate => "must-revalidate",
            Self::OnlyIfCached => "only-if-cached",
        }
    }
}

/// What the cache did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from a fresh stored response.
    Hit,
    /// Answered from a fresh stored response kept in the near tier (this process's
    /// memory), without asking memcached.
    NearHit,
    /// Answered from a stale stored response, with its `ttl` (negative: see
    /// `Freshness::ttl`).
    StaleHit { ttl: i64, detail: Option<Detail> },
    /// Answered by the origin, or from another request's exchange with it.
    Forwarded {
        fwd: Forward,
        /// The origin answered a revalidation with this status (a 304).
        fwd_status: Option<u16>,
        /// The answer is being stored.
        stored: bool,
        /// The answer came from another request's exchange.
        collapsed: bool,
        detail: Option<Detail>,
    },
    /// Answered from a stored response standing in for an origin that failed or could not
    /// be reached, with its `ttl` (its remaining freshness: positive when a fresh one
    /// stood in for a request that asked for the origin): the request went
    /// forward (for `fwd`), so this is no hit (RFC 9211 §2.1: a response "not able to be
    /// used without going forward (e.g., because it was stale) is not considered a hit").
    /// `fwd_status`: what the origin answered, when it answered.
    StoodIn {
        fwd: Forward,
        fwd_status: Option<u16>,
        ttl: i64,
        detail: Detail,
    },
    /// Answered by the cache itself without a stored response (a 504).
    Generated { detail: Detail },
}

impl Outcome {
    /// Forwarded for `fwd`, with `detail`, and nothing more to say.
    pub(crate) fn forwarded(fwd: Forward, detail: Option<Detail>) -> Self {
        Self::Forwarded {
            fwd,
            fwd_status: None,
            stored: false,
            collapsed: false,
            detail,
        }
    }

    /// The parameters after the cache's name, as RFC 9211 writes them.
    fn render(self, text: &mut String) {
        match self {
            Self::Hit => text.push_str("; hit"),
            Self::NearHit => text.push_str("; hit; detail=near"),
            Self::StaleHit { ttl, detail } => {
                let _ = write!(text, "; hit; ttl={ttl}");
                push_detail(text, detail);
            }
            Self::Forwarded {
                fwd,
                fwd_status,
                stored,
                collapsed,
                detail,
            } => {
                push_forward(text, fwd, fwd_status);
                if stored {
                    text.push_str("; stored");
                }
                if collapsed {
                    text.push_str("; collapsed");
                }
                push_detail(text, detail);
            }
            Self::StoodIn {
                fwd,
                fwd_status,
                ttl,
                detail,
            } => {
                push_forward(text, fwd, fwd_status);
                let _ = write!(text, "; ttl={ttl}");
                push_detail(text, Some(detail));
            }
            Self::Generated { detail } => push_detail(text, Some(detail)),
        }
    }
}

/// `fwd` and, when the origin answered, `fwd-status` (RFC 9211 §2.2, §2.3).
fn push_forward(text: &mut String, fwd: Forward, fwd_status: Option<u16>) {
    text.push_str("; fwd=");
    text.push_str(fwd.as_str());
    if let Some(status) = fwd_status {
        let _ = write!(text, "; fwd-status={status}");
    }
}

fn push_detail(text: &mut String, detail: Option<Detail>) {
    if let Some(detail) = detail {
        text.push_str("; detail=");
        text.push_str(detail.as_str());
    }
}

pub(crate) struct CacheStatus {
    name: String,
    hit: HeaderValue,
    near_hit: HeaderValue,
}

impl CacheStatus {
    /// `None` when `name` cannot be written as a Structured Field String (a byte outside
    /// printable ASCII).
    pub(crate) fn new(name: &str) -> Option<Self> {
        let name = identifier(name)?;
        Some(Self {
            hit: HeaderValue::from_str(&format!("{name}; hit")).ok()?,
            near_hit: HeaderValue::from_str(&format!("{name}; hit; detail=near")).ok()?,
            name,
        })
    }

    /// The header's value for `outcome`.
    pub(crate) fn value(&self, outcome: Outcome) -> Option<HeaderValue> {
        match outcome {
            Outcome::Hit => return Some(self.hit.clone()),
            Outcome::NearHit => return Some(self.near_hit.clone()),
            _ => {}
        }
        let mut text = String::with_capacity(self.name.len() + 40);
        text.push_str(&self.name);
        outcome.render(&mut text);
        // Takes the string as it is: no second copy.
        HeaderValue::try_from(text).ok()
    }
}

/// `Cache-Status` lines received from caches nearer the origin, with `ours` appended as
/// the last member; `None` when they are not an RFC 8941 List (a parser would reject the
/// whole field, ours included) or are too long to be worth keeping.
pub(crate) fn appended<'a>(
    theirs: impl Iterator<Item = &'a HeaderValue>,
    ours: &HeaderValue,
) -> Option<HeaderValue> {
    /// Longer upstream values are dropped rather than copied into every answer.
    const MAX_UPSTREAM: usize = 4096;
    let mut joined = Vec::new();
    for value in theirs {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.as_bytes());
        if joined.len() > MAX_UPSTREAM {
            return None;
        }
    }
    let list = sfv::Parser::new(&joined)
        .with_version(sfv::Version::Rfc8941)
        .parse_list::<sfv::List>()
        .ok()?;
    if list.is_empty() {
        return None;
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(ours.as_bytes());
    HeaderValue::from_bytes(&joined).ok()
}

/// A name [`MemcacheLayer::try_cache_status_name`](super::MemcacheLayer::try_cache_status_name)
/// refuses: no `Cache-Status` field could carry it as meant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Cache-Status name {name:?} refused: {reason}")]
pub struct InvalidCacheStatusName {
    name: String,
    reason: &'static str,
}

impl InvalidCacheStatusName {
    /// The name as it was given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `name`, if a `Cache-Status` field can carry it as meant. A byte outside printable ASCII
/// fits neither a Token nor a String (RFC 8941 §3.3.3), so the layer would send no header
/// at all; an empty name (an unset variable) or one with white space at its ends (a
/// value read with its padding) fits a String, but is no name anyone meant.
pub(crate) fn checked_name(name: &str) -> Result<&str, InvalidCacheStatusName> {
    let refused = |reason| InvalidCacheStatusName {
        name: name.to_owned(),
        reason,
    };
    if !name.bytes().all(|byte| (0x20..=0x7e).contains(&byte)) {
        return Err(refused(
            "a control character or a byte outside printable ASCII, which no Cache-Status \
             field can carry (the header would be left out of every response)",
        ));
    }
    if name.trim().is_empty() {
        return Err(refused(
            "empty; leave the default tower-memcache, or name the cache",
        ));
    }
    if name.trim() != name {
        return Err(refused("white space at its ends; give the name alone"));
    }
    Ok(name)
}

/// The cache's name as RFC 9211 §2 asks ("this identifier MUST be a String or Token"): as
/// it is when it is an RFC 8941 Token (§3.3.4), else quoted as a String (§3.3.3), so that
/// `Example CDN` does not make the whole field unparseable. `None` when no String can
/// hold it.
fn identifier(name: &str) -> Option<String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b);
    let bytes = name.as_bytes();
    let token = bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'*')
        && bytes.iter().all(|b| tchar(*b));
    if token {
        return Some(name.to_string());
    }
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Some(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_render_as_rfc_9211_parameters() {
        let status = CacheStatus::new("edge").unwrap();
        let text = |outcome| status.value(outcome).unwrap().to_str().unwrap().to_string();
        assert_eq!(text(Outcome::Hit), "edge; hit");
        assert_eq!(text(Outcome::NearHit), "edge; hit; detail=near");
        let stale = Outcome::StaleHit {
            ttl: -5,
            detail: Some(Detail::StaleIfError),
        };
        assert_eq!(text(stale), "edge; hit; ttl=-5; detail=stale-if-error");
        let stood_in = Outcome::StoodIn {
            fwd: Forward::Stale,
            fwd_status: Some(503),
            ttl: -5,
            detail: Detail::StaleIfError,
        };
        assert_eq!(
            text(stood_in),
            "edge; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error"
        );
        let stored = Outcome::Forwarded {
            fwd: Forward::VaryMiss,
            fwd_status: None,
            stored: true,
            collapsed: false,
            detail: None,
        };
        assert_eq!(text(stored), "edge; fwd=vary-miss; stored");
        let refreshed = Outcome::Forwarded {
            fwd: Forward::Stale,
            fwd_status: Some(304),
            stored: false,
            collapsed: false,
            detail: None,
        };
        assert_eq!(text(refreshed), "edge; fwd=stale; fwd-status=304");
        let collapsed = Outcome::Forwarded {
            fwd: Forward::UriMiss,
            fwd_status: None,
            stored: false,
            collapsed: true,
            detail: Some(Detail::BackendUnavailable),
        };
        assert_eq!(
            text(collapsed),
            "edge; fwd=uri-miss; collapsed; detail=backend-unavailable"
        );
        let generated = Outcome::Generated {
            detail: Detail::OnlyIfCached,
        };
        assert_eq!(text(generated), "edge; detail=only-if-cached");
        assert_eq!(
            text(Outcome::forwarded(Forward::Bypass, None)),
            "edge; fwd=bypass"
        );
    }

    #[test]
    fn rfc9211_2_names_are_tokens_or_strings() {
        let value = |name| {
            let status = CacheStatus::new(name).map(|s| s.value(Outcome::Hit).unwrap());
            status.map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            value("edge-1.example:443/x").unwrap(),
            "edge-1.example:443/x; hit"
        );
        assert_eq!(value("Example CDN").unwrap(), "\"Example CDN\"; hit");
        assert_eq!(value("3rd").unwrap(), "\"3rd\"; hit");
        assert_eq!(value("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"; hit");
        assert_eq!(value("").unwrap(), "\"\"; hit");
        assert!(value("tab\there").is_none());
    }

    #[test]
    fn rfc9211_2_upstream_members_stay_first_when_they_parse() {
        let ours = HeaderValue::from_static("edge; hit");
        let join = |lines: &[&'static str]| {
            let lines: Vec<_> = lines.iter().map(|l| HeaderValue::from_static(l)).collect();
            appended(lines.iter(), &ours).map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            join(&["Origin; hit; ttl=5", "\"Mid CDN\"; fwd=uri-miss"]).as_deref(),
            Some("Origin; hit; ttl=5, \"Mid CDN\"; fwd=uri-miss, edge; hit")
        );
        for broken in ["Mid CDN; hit", "a;;", "", "(a b)x"] {
            assert_eq!(join(&[broken]), None, "{broken:?}");
        }
        let long = "a; hit, ".repeat(600) + "a";
        let long = HeaderValue::from_str(&long).unwrap();
        assert_eq!(appended(std::iter::once(&long), &ours), None);
    }
}
