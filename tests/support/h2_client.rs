//! An HTTP/2 client that takes its answers at a pace of its own (reviews TG and TI): one
//! connection whose streams open with a small window, and bodies read all at once or a
//! few bytes at a time, the window given back only as they are taken.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::Request;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub type Client = SendRequest<Bytes>;

/// A connection to `addr` whose streams open with a `window`-byte window, and the task
/// that drives it (abort it to close the connection).
pub async fn connect(addr: SocketAddr, window: u32) -> (Client, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    (client, tokio::spawn(connection))
}

/// Opens a stream for `request`; `end`: it has no body (else send it on the stream).
pub async fn send(
    client: &Client,
    request: Request<()>,
    end: bool,
) -> (ResponseFuture, SendStream<Bytes>) {
    client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, end)
        .unwrap()
}

/// The whole body of `response` as text, taken as it comes; `None` if the stream failed.
pub async fn read_all(response: ResponseFuture) -> Option<String> {
    let mut body = response.await.ok()?.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// Takes `step` bytes of `body` every `every` (the window given back as they are taken)
/// for `during`: the bytes taken, or `Err` with them if the body failed or ended first.
pub async fn read_paced(
    body: &mut RecvStream,
    step: usize,
    every: Duration,
    during: Duration,
) -> Result<usize, usize> {
    let mut taken = 0usize;
    let deadline = tokio::time::Instant::now() + during;
    while tokio::time::Instant::now() < deadline {
        let chunk = match body.data().await {
            Some(Ok(chunk)) => chunk,
            _ => return Err(taken),
        };
        let mut left = chunk.len();
        while left > 0 && tokio::time::Instant::now() < deadline {
            let len = left.min(step);
            tokio::time::sleep(every).await;
            let _ = body.flow_control().release_capacity(len);
            taken += len;
            left -= len;
        }
        let _ = body.flow_control().release_capacity(left);
    }
    Ok(taken)
}
