//! What the request-smuggling and response-queue reviews of the proxy (J, PP, QB, SB, SF,
//! SI, SN, SP, SQ) share: the request an attacker hides in a body, the response an
//! attacker's origin writes where another request's answer is awaited, the pages a raw
//! origin answers with and the request heads it read, raw requests to `shop.example`
//! through the proxy, and reading their answers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::origin::RawOrigin;
use super::proxy::Proxy;
use super::raw_http::{find, ok};

/// The request an attacker hides in a body, hoping the origin reads it as one of its own.
pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";

/// The attacker's page, a whole response (fresh for ten minutes), written where another
/// request's answer is awaited: whatever answers or stores it for another request was
/// poisoned.
pub const EVIL: &str =
    "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=600\r\nContent-Length: 4\r\n\r\nEVIL";

/// A raw origin's answer: a 200 of `body`, framed by its length, fresh for a minute.
pub fn page(body: &str) -> String {
    ok("Cache-Control: public, max-age=60\r\n", body)
}

/// A raw origin's answer to a request `head` when the test asks nothing else of it: the
/// [`page`] `page <path>`, so that a client can tell whose answer it got.
pub fn own_page(head: &str) -> String {
    page(&format!("page {}", path_of(head)))
}

/// The request heads a raw origin read, on any of its connections, in order; its clones
/// (one for the test, one for each connection) share them.
#[derive(Clone, Default)]
pub struct Heads(Arc<Mutex<Vec<String>>>);

impl Heads {
    /// Notes a head read.
    pub fn push(&self, head: String) {
        self.0.lock().unwrap().push(head);
    }

    /// Every head read so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The heads read that nobody but the attacker wrote (their text holds `/smuggled`, as
    /// [`SMUGGLED`] does).
    pub fn smuggled(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|head| head.contains("/smuggled"))
            .cloned()
            .collect()
    }
}

/// A [`RawOrigin`] whose connections note the request heads they read in `heads`;
/// stopped when dropped.
pub struct NotingOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    pub heads: Heads,
    _serving: RawOrigin,
}

impl NotingOrigin {
    /// Starts it: `serve` gets each connection, and the [`Heads`] to note its heads in.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream, Heads) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let heads = Heads::default();
        let serving = RawOrigin::start({
            let heads = heads.clone();
            move |stream| serve(stream, heads.clone())
        })
        .await;
        Self {
            addr: serving.addr,
            heads,
            _serving: serving,
        }
    }
}

/// The target of a request head.
pub fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// The head of a POST of `length` body bytes to `shop.example`, then the first `sent` of
/// them.
pub fn post(path: &str, length: usize, sent: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\n\r\n{sent}")
}

/// Reads `client` until `text` came (5 s at most); what came.
pub async fn read_until(client: &mut TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while find(&seen, text.as_bytes()).is_none() {
        let mut chunk = [0u8; 512];
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// What the cache holds for `path` of `shop.example` (`GET` with `Cache-Control:
/// only-if-cached`, on a fresh connection): the status and the body (504: nothing).
pub async fn cached(proxy: &Proxy, path: &str) -> (u16, String) {
    super::proxy::raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nCache-Control: only-if-cached\r\n"),
    )
    .await
}

/// `GET path` of `shop.example` on a fresh connection (`Connection: close`): the status
/// and the body.
pub async fn get(proxy: &Proxy, path: &str) -> (u16, String) {
    super::proxy::raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n"),
    )
    .await
}
