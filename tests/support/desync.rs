//! What the request-smuggling reviews of the proxy (PP, QB, SB, SF, SI) share: the
//! request an attacker hides in a body, raw requests to `shop.example` through the proxy,
//! and reading their answers.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::proxy::Proxy;
use super::raw_http::find;

/// The request an attacker hides in a body, hoping the origin reads it as one of its own.
pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";

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

/// `GET path` of `shop.example` on a fresh connection (`Connection: close`): the status
/// and the body.
pub async fn get(proxy: &Proxy, path: &str) -> (u16, String) {
    super::proxy::raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n"),
    )
    .await
}
