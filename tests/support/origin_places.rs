//! The proxy with few places at the origin, and the clients of reviews TG, TI and TM
//! around them: an attacker who makes requests wait for a place at no cost, and another
//! client's miss that must still be answered.

use std::net::SocketAddr;
use std::time::Duration;

use super::proxy::{Proxy, raw, raw_request, start_proxy};

/// The proxy with two places at the origin, and a queue that waits long enough for the
/// proxy to take a place back from a client that holds it at its own pace.
pub fn two_places(origin: SocketAddr) -> Proxy {
    start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "4s",
        ],
    )
}

/// Another client's GET, a miss: its status, `None` if no answer came within 8 s.
pub async fn victim(proxy: &Proxy) -> Option<u16> {
    let head = "GET /victim HTTP/1.1\r\nHost: shop.example\r\n";
    tokio::time::timeout(Duration::from_secs(8), raw(proxy, head))
        .await
        .ok()
        .map(|(status, _)| status)
}

/// The attacker's pressure at no cost: two misses to the slow URL (`/slow`) on
/// connections of their own, one that takes the other of two places and one that waits
/// for a place.
pub fn attack(proxy: &Proxy) -> Vec<tokio::task::JoinHandle<(u16, String)>> {
    (0..2)
        .map(|n| {
            let addr = proxy.addr;
            std::thread::sleep(Duration::from_millis(100));
            tokio::task::spawn_blocking(move || {
                raw_request(
                    addr,
                    &format!("GET /slow?attacker={n} HTTP/1.1\r\nHost: shop.example\r\n"),
                )
            })
        })
        .collect()
}
