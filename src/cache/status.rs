//! The RFC 9211 `Cache-Status` header: `<cache name>; hit`, `…; fwd=uri-miss; stored`, and
//! so on. The plain hit, by far the most common, is formatted once.

use http::header::{HeaderName, HeaderValue};

/// The header's name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

pub(crate) struct CacheStatus {
    name: String,
    hit: HeaderValue,
}

impl CacheStatus {
    /// `None` when `name` cannot be a header value.
    pub(crate) fn new(name: &str) -> Option<Self> {
        Some(Self {
            hit: HeaderValue::from_str(&format!("{name}; hit")).ok()?,
            name: name.to_string(),
        })
    }

    pub(crate) fn hit(&self) -> HeaderValue {
        self.hit.clone()
    }

    /// `<name>; <params>`, with `; detail=<detail>` when given.
    pub(crate) fn value(&self, params: &str, detail: Option<&str>) -> Option<HeaderValue> {
        let text = match (params.is_empty(), detail) {
            (true, None) => self.name.clone(),
            (true, Some(detail)) => format!("{}; detail={detail}", self.name),
            (false, None) => format!("{}; {params}", self.name),
            (false, Some(detail)) => format!("{}; {params}; detail={detail}", self.name),
        };
        // Takes the string as it is: no second copy.
        HeaderValue::try_from(text).ok()
    }
}
