//! Scripted HTTP/1.1 origins for tests: the accept loop that every test origin shares.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Serves HTTP/1.1 on `listener`, each request answered by `handle`, until the returned
/// task is aborted. Connections live in the task, so aborting it closes them too: an
/// origin that is really gone, not one that still answers on kept-alive connections.
pub fn serve_http1<F, Fut, B>(listener: TcpListener, handle: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handle = handle.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Hands each connection accepted on `listener` to `serve` (an origin written on bare
/// TCP, saying what hyper never would), until the returned task is aborted: connections
/// live in the task, so aborting it closes them too.
pub fn serve_each_connection<F, Fut>(listener: TcpListener, serve: F) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(serve(stream));
        }
    })
}

/// A raw origin (see [`serve_each_connection`]) on a free loopback port, each connection
/// it accepts handed to `serve`; dropping it stops the origin and closes its connections.
pub struct RawOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawOrigin {
    /// Binds a free port on 127.0.0.1 and serves it.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve_each_connection(listener, serve);
        Self { addr, task }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An origin on a thread of its own that reads each request head and answers it with
/// `answer`, as is, then closes the connection; it serves `connections` connections at
/// most, so it ends by itself.
pub fn canned(answer: Vec<u8>, connections: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = stream.write_all(&answer);
        }
    });
    addr
}

/// Requests an origin saw: path and the request's index on its connection.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, usize)>>>;

/// A raw origin on a fresh loopback port: answers the first request of each connection in full (kept alive) and
/// does `later` to each later one: the bytes to write before closing the connection
/// (none: closed without a word). With `first_too`, the first request of a connection is
/// treated like a later one.
pub async fn scripted_origin(later: &'static [u8], first_too: bool) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for request in 0.. {
                        let end = loop {
                            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..end);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        seen.lock().unwrap().push((path.clone(), request));
                        if request > 0 || first_too {
                            let _ = stream.write_all(later).await;
                            return;
                        }
                        let answer = super::raw_http::ok("Cache-Control: no-store\r\n", &path);
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, seen)
}
