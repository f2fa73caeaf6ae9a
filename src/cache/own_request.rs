//! The layer's own requests to the inner service (a range miss's whole-representation GET,
//! a client's request sent again after a 304 for another representation): their body, of
//! the inner service's type, and their head, taken from the client's request.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

/// Makes the body of a request of the layer's own (see
/// [`MemcacheLayer::own_request_body`](super::MemcacheLayer::own_request_body)), type-erased
/// because the layer is not generic over the inner service's request body.
pub(crate) type MakeBody = Arc<dyn Fn() -> Box<dyn Any + Send> + Send + Sync>;

/// The body of a request of the layer's own, of the inner service's type: the configured
/// maker's, else an empty one of a few common types.
pub(super) fn own_body<R: 'static>(make: Option<&MakeBody>) -> Option<R> {
    if let Some(make) = make {
        return make().downcast::<R>().ok().map(|b| *b);
    }
    let mut slot: Option<R> = None;
    let any: &mut dyn Any = &mut slot;
    if let Some(s) = any.downcast_mut::<Option<()>>() {
        *s = Some(());
    } else if let Some(s) = any.downcast_mut::<Option<String>>() {
        *s = Some(String::new());
    } else if let Some(s) = any.downcast_mut::<Option<Vec<u8>>>() {
        *s = Some(Vec::new());
    } else if let Some(s) = any.downcast_mut::<Option<Bytes>>() {
        *s = Some(Bytes::new());
    }
    #[cfg(feature = "axum")]
    if let Some(s) = any.downcast_mut::<Option<axum::body::Body>>() {
        *s = Some(axum::body::Body::empty());
    }
    slot
}

/// A client's request line and extensions, for a request of the layer's own made from it
/// (with fields the caller chooses and a body from [`own_body`]).
pub(super) struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    extensions: Extensions,
}

impl RequestHead {
    pub(super) fn of<R>(request: &Request<R>) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            extensions: request.extensions().clone(),
        }
    }

    pub(super) fn into_request<R>(self, body: R, headers: HeaderMap) -> Request<R> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.extensions_mut() = self.extensions;
        *request.headers_mut() = headers;
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_bodies_of_common_types() {
        assert_eq!(own_body::<String>(None), Some(String::new()));
        assert_eq!(own_body::<()>(None), Some(()));
        assert!(own_body::<std::fs::File>(None).is_none());
        let make: MakeBody = Arc::new(|| Box::new(7u8));
        assert_eq!(own_body::<u8>(Some(&make)), Some(7));
        assert_eq!(own_body::<u16>(Some(&make)), None);
    }

    #[test]
    fn a_request_of_its_own_keeps_the_clients_head_and_takes_the_fields_given() {
        let mut client = Request::head("http://site.example/a?b").body(()).unwrap();
        *client.version_mut() = Version::HTTP_2;
        client.extensions_mut().insert(7u8);
        client
            .headers_mut()
            .insert("if-none-match", "\"x\"".parse().unwrap());
        let mut fields = HeaderMap::new();
        fields.insert("accept", "text/html".parse().unwrap());
        let own = RequestHead::of(&client).into_request(String::new(), fields.clone());
        assert_eq!(own.method(), Method::HEAD);
        assert_eq!(own.uri(), "http://site.example/a?b");
        assert_eq!(own.version(), Version::HTTP_2);
        assert_eq!(own.extensions().get::<u8>(), Some(&7));
        assert_eq!(own.headers(), &fields);
    }
}
