//! Review Y: an adversarial review of the last two sessions' changes no review had looked
//! at: the ended placeholder a doubtful lease release adds (`Storage::release_unsure`),
//! the new TCP connection's `stats settings` query bounded by its caller's deadline, the
//! TCP decoder's line-length classification, and a 304 without `ETag` selecting by its
//! `Last-Modified` (RFC 9111 §4.3.4).

#[cfg(feature = "tcp")]
mod tcp {
    use std::time::Duration;

    use tokio::time::Instant;
    use tower_memcache::backend::{Backend, TcpBackend};

    use crate::support;

    const TIMEOUT: Duration = Duration::from_millis(100);

    /// A hung connect behind a layer whose lookup timeout is shorter than the backend's
    /// (the proxy's `--cache-timeout 50ms` with its backend timeout of 100 ms): every
    /// lookup gives up while connecting, which says nothing about the server, and no
    /// connection is ever made whose stall check could. The server must still be marked
    /// down, rather than every request paying the lookup timeout for as long as the host
    /// is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_that_never_completes_a_connect_behind_a_shorter_lookup_timeout_is_marked_down()
    {
        // Where the queue never fills, connects complete and nothing answers on them, which
        // must get the server marked down as well.
        let hole = support::fake_memcached::black_hole().await;
        let addr = hole.addr.clone();
        let memcached = TcpBackend::builder()
            .server(&addr)
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .build()
            .unwrap();
        support::fake_memcached::lookups_until_marked_down(
            &memcached,
            Duration::from_secs(2),
            Duration::from_millis(10),
        )
        .await;
        assert!(
            memcached.is_server_down(0),
            "a host that never completes a connect stayed in use for 2 s of lookups"
        );
        // Marked down, its keys fail fast: a miss, not a wait.
        let started = Instant::now();
        // A lookup that waited would take its 2 s; one that fails fast, far less even on
        // a loaded machine.
        let outcome = memcached
            .get_many_by_key_ordered("r", &["g", "e"], Duration::from_secs(2))
            .await;
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a lookup on the server marked down took {:?}",
            started.elapsed()
        );
    }

    /// A memcached on loopback that answers `stats` (with a settings listing) after
    /// `stats_after`, each get at once but one of key `hold`, held back `HOLD`, recording
    /// the get lines it reads.
    async fn slow_settings_server(
        stats_after: Duration,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = support::fake_memcached::serve(listener, move |_| stats_after, HOLD);
        (addr, served.lines)
    }

    const HOLD: Duration = Duration::from_millis(150);

    /// A new connection's `stats settings` answered after its first caller's deadline
    /// (a lookup with little of its budget left, a memcached busy a moment as connections
    /// open) is kept, as it should be; but its answer, which shows the server is memcached,
    /// was dropped with the call: the connection never merged gets for as long as it
    /// lived (until it failed or the server was marked down), every get a line and a
    /// reply of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_settings_answer_that_comes_after_its_callers_deadline_still_lets_gets_merge() {
        let (addr, lines) = slow_settings_server(Duration::from_millis(60)).await;
        let memcached = support::one_connection_backend_with(
            &addr,
            Duration::from_millis(500),
            Duration::from_secs(1),
            1000,
        );
        // Connects, and gives up (at 20 ms) before the settings come.
        let first = memcached
            .get_many_by_key_ordered("r", &["first"], Duration::from_millis(20))
            .await;
        assert!(first.is_err(), "{first:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        support::fake_memcached::gets_queued_behind_a_held_one(&memcached, &lines).await;
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.iter().any(|line| line.split(' ').count() > 2),
            "gets queued behind another were never merged: {lines:?}"
        );
    }

    /// A memcached whose first connection answers the first get with `hostile` (written
    /// in 97-byte pieces, a millisecond apart) and whose later connections answer honestly
    /// (each key with `data of <key>`).
    async fn hostile_first_connection(hostile: &'static [u8]) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((socket, _)) = listener.accept().await {
                let first = accepted == 0;
                accepted += 1;
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read).lines();
                    while let Ok(Some(line)) = read.next_line().await {
                        if line.starts_with("stats") {
                            let _ = write.write_all(b"END\r\n").await;
                            continue;
                        }
                        let Some(keys) = line.strip_prefix("gets ") else {
                            let _ = write.write_all(b"ERROR\r\n").await;
                            continue;
                        };
                        if first {
                            for piece in hostile.chunks(97) {
                                if write.write_all(piece).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            continue;
                        }
                        let mut reply = String::new();
                        for key in keys.split(' ') {
                            let data = format!("data of {key}");
                            reply += &format!("VALUE {key} 0 {} 7\r\n{data}\r\n", data.len());
                        }
                        reply += "END\r\n";
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Replies the decoder must refuse (the line-length classification of `1fe257f` among
    /// them), arriving in pieces: the call fails within its deadline, the connection is
    /// dropped, and the next call, on a new connection, gets its own value, never bytes
    /// of the refused reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_replies_in_pieces_fail_their_call_and_cost_only_their_connection() {
        let long_cr_only: &'static [u8] = {
            let mut line = b"VALUE k 0 5 1\r".to_vec();
            line.extend(std::iter::repeat_n(b'x', 20_000));
            line.leak()
        };
        let long_bare_lf: &'static [u8] = {
            let mut line = b"VALUE k 0 5 1 ".to_vec();
            line.extend(std::iter::repeat_n(b' ', 9_000));
            line.extend_from_slice(b"\nVALUE k 0 5 1\r\nhello\r\nEND\r\n");
            line.leak()
        };
        let hostile: [(&str, &'static [u8]); 6] = [
            ("a line of 20 kB with a CR and no LF", long_cr_only),
            (
                "a bare LF past the line limit, then a good reply",
                long_bare_lf,
            ),
            (
                "a data length beyond 64 bits",
                b"VALUE k 0 99999999999999999999999 1\r\nhello\r\nEND\r\n",
            ),
            (
                "a data length shorter than the data",
                b"VALUE k 0 3 1\r\nhello\r\nEND\r\n",
            ),
            (
                "a cas beyond 64 bits",
                b"VALUE k 0 5 99999999999999999999999\r\nhello\r\nEND\r\n",
            ),
            (
                "flags beyond 32 bits",
                b"VALUE k 4294967296 5 1\r\nhello\r\nEND\r\n",
            ),
        ];
        for (what, reply) in hostile {
            let addr = hostile_first_connection(reply).await;
            let memcached = crate::support::one_connection_backend(&addr, Duration::from_secs(1));
            let started = Instant::now();
            let refused = memcached.get("k").await;
            assert!(refused.is_err(), "{what}: {refused:?}");
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "{what}: refused only at the deadline ({:?})",
                started.elapsed()
            );
            let next = memcached
                .get("other")
                .await
                .unwrap_or_else(|err| panic!("{what}: {err}"));
            assert_eq!(
                next.map(|item| item.value),
                Some(bytes::Bytes::from("data of other")),
                "{what}"
            );
        }
    }
}

mod leases {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    use tower_memcache::MemcacheLayer;
    use tower_memcache::backend::MemoryBackend;

    /// A client that asks for a hot URL nobody has filled yet and hangs up before the
    /// origin answers, again and again, leads flight after flight: do the honest clients
    /// waiting for the URL end up each going to the origin (a cache bypass the attacker
    /// controls), or does one of them fill it for all?
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_hang_up_again_and_again_do_not_send_every_waiting_client_to_the_origin() {
        let layer = MemcacheLayer::new(MemoryBackend::new()).namespace("review-y-herd");
        let answered = Arc::new(AtomicUsize::new(0));
        let svc = tower::ServiceBuilder::new().layer(layer).service_fn({
            let answered = Arc::clone(&answered);
            move |_request: Request<()>| {
                let answered = Arc::clone(&answered);
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    // Only origin calls nobody hung up on get here.
                    answered.fetch_add(1, Ordering::SeqCst);
                    let mut response = Response::new(Full::new(Bytes::from("hot")));
                    response
                        .headers_mut()
                        .insert("cache-control", "public, max-age=60".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let get = || Request::get("http://example.com/hot").body(()).unwrap();
        let attacker = tokio::spawn({
            let svc = svc.clone();
            async move {
                for _ in 0..400 {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_millis(20), svc.oneshot(get()))
                            .await;
                    });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let honest: Vec<_> = (0..20)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let response = svc.oneshot(get()).await.unwrap();
                    response
                        .into_body()
                        .collect()
                        .await
                        .ok()
                        .map(|b| b.to_bytes())
                })
            })
            .collect();
        for client in honest {
            assert_eq!(client.await.unwrap().as_deref(), Some(&b"hot"[..]));
        }
        attacker.abort();
        let answered = answered.load(Ordering::SeqCst);
        assert!(
            answered <= 3,
            "{answered} origin calls answered for 20 honest clients"
        );
    }

    /// The followers of a leader whose client hung up are handed its flight, but a
    /// `no-store` request may not lead one: it must not be handed, round after round, a
    /// flight nobody waiting can take. Each goes to the origin in one round trip's time,
    /// as it did when the leader was abandoned, and nobody waits past `coalesce_timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_that_may_not_lead_are_not_handed_a_flight_over_and_over() {
        let layer = MemcacheLayer::new(MemoryBackend::new())
            .namespace("review-y-no-store-heirs")
            .coalesce_timeout(Duration::from_secs(30));
        let stats = layer.stats();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = tower::ServiceBuilder::new().layer(layer).service_fn({
            let calls = Arc::clone(&calls);
            move |_request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    // The first (the leader's) never answers in time; the others at once.
                    if call == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let mut response = Response::new(Full::new(Bytes::from("page")));
                    response
                        .headers_mut()
                        .insert("cache-control", "public, max-age=60".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let leader = tokio::spawn({
            let svc = svc.clone();
            async move {
                let request = Request::get("http://example.com/p").body(()).unwrap();
                let _ = svc.oneshot(request).await;
            }
        });
        crate::support::eventually("the leader reached the origin", || {
            calls.load(Ordering::SeqCst) == 1
        })
        .await;
        let followers: Vec<_> = (0..4)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let request = Request::get("http://example.com/p")
                        .header("cache-control", "no-store")
                        .body(())
                        .unwrap();
                    let response = svc.oneshot(request).await.unwrap();
                    response.into_body().collect().await.unwrap().to_bytes()
                })
            })
            .collect();
        // Followers now (they wait for the leader, who is at the origin).
        crate::support::eventually("the no-store requests wait for the leader", || {
            stats.snapshot().coalesced == 4
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the no-store requests waited"
        );
        leader.abort();
        for follower in followers {
            let body = tokio::time::timeout(Duration::from_secs(10), follower)
                .await
                .expect("a no-store follower was still waiting 10 s after its leader went")
                .unwrap();
            assert_eq!(body, "page");
        }
    }
}

mod not_modified {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, Response, StatusCode};
    use http_body_util::Full;
    use tower_memcache::backend::MemoryBackend;
    use tower_memcache::cache::CacheMode;

    use crate::support::{self, Answer, Watch};

    type Svc = tower::util::BoxCloneService<
        Request<()>,
        Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
        Infallible,
    >;

    const STORED_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    /// An origin that answers the first request with `v1` (stale at once, reusable stale
    /// while revalidating) last modified at [`STORED_DATE`], and every later one with a 304
    /// carrying `then` (no `ETag`), or `v2` when the request is unconditional. Returns the
    /// service and the header maps of the requests the origin got.
    fn origin(
        then: &'static [(&'static str, &'static str)],
    ) -> (Svc, Watch, Arc<Mutex<Vec<HeaderMap>>>) {
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-y-304")
            .mode(CacheMode::Origin);
        let watch = Watch::of(&layer);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner = tower::service_fn({
            let seen = Arc::clone(&seen);
            move |request: Request<()>| {
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request.headers().clone());
                    seen.len() == 1
                };
                let conditional = request.headers().contains_key("if-modified-since");
                let mut response =
                    Response::new(Full::new(Bytes::from(if first { "v1" } else { "v2" })));
                let headers = response.headers_mut();
                if first || !conditional {
                    headers.insert(
                        "cache-control",
                        "max-age=1, stale-while-revalidate=600".parse().unwrap(),
                    );
                    headers.insert("age", "5".parse().unwrap());
                    headers.insert("last-modified", STORED_DATE.parse().unwrap());
                } else {
                    *response.status_mut() = StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::new(Bytes::new());
                    for (name, value) in then {
                        response.headers_mut().insert(*name, value.parse().unwrap());
                    }
                }
                async move { Ok::<_, Infallible>(response) }
            }
        });
        let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
        (svc, watch, seen)
    }

    async fn get(svc: &Svc) -> Answer {
        support::send(svc, Method::GET, "http://review-y.test/lm", &[]).await
    }

    /// A background revalidation (stale-while-revalidate) answered by a 304 without
    /// `ETag` whose `Last-Modified` is the stored one in another HTTP-date format still
    /// refreshes the entry: the next request is a fresh hit, the origin not asked again.
    #[tokio::test]
    async fn a_background_304_with_the_same_date_in_another_format_refreshes() {
        let (svc, watch, seen) = origin(&[
            ("cache-control", "max-age=600"),
            ("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ]);
        assert_eq!(get(&svc).await.body, "v1");
        watch.settled().await;
        let stale = get(&svc).await;
        assert_eq!(stale.body, "v1", "served stale while revalidating");
        watch.settled().await;
        let after = get(&svc).await;
        support::assert_hit(after.cache_status());
        assert_eq!(after.body, "v1");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the origin was asked once more only");
        assert_eq!(seen[1]["if-modified-since"], STORED_DATE);
    }

    /// The same with another date: the background refresh must not relabel the stored
    /// body (it is removed), the client that triggered it still got the stale response,
    /// and the next request fetches the whole.
    #[tokio::test]
    async fn a_background_304_with_another_date_removes_the_entry_and_the_next_request_refetches() {
        let (svc, watch, seen) = origin(&[
            ("cache-control", "max-age=600"),
            ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(get(&svc).await.body, "v1");
        watch.settled().await;
        let stale = get(&svc).await;
        assert_eq!(stale.status, StatusCode::OK);
        assert_eq!(stale.body, "v1", "served stale while revalidating");
        watch.settled().await;
        let after = get(&svc).await;
        assert_eq!(after.status, StatusCode::OK);
        assert_eq!(after.body, "v2", "{:?}", after.headers);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            !seen[2].contains_key("if-modified-since"),
            "the removed entry's validators were sent again"
        );
    }
}

mod late_release {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::{Method, Request, Response};
    use http_body_util::Full;
    use tokio::sync::Semaphore;
    use tower_memcache::MemcacheLayer;
    use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};
    use tower_memcache::cache::CacheMode;

    use crate::support;

    /// The flags the layer stores its placeholders under (`entry::FLAG_PLACEHOLDER`).
    const FLAG_PLACEHOLDER: u32 = 0x746d_0103;

    /// MemoryBackend whose adds of an ended placeholder (`<token> 0`) wait for a permit:
    /// the test decides when a dropped request's release lands, and sees when it has.
    #[derive(Clone)]
    struct HeldRelease {
        inner: MemoryBackend,
        gate: Arc<Semaphore>,
        landed: Arc<AtomicUsize>,
    }

    impl HeldRelease {
        /// A backend whose releases wait until the test adds permits to the gate; the
        /// count of those adds that reached the store.
        fn closed() -> (Self, Arc<Semaphore>, Arc<AtomicUsize>) {
            let gate = Arc::new(Semaphore::new(0));
            let landed = Arc::new(AtomicUsize::new(0));
            let backend = Self {
                inner: MemoryBackend::new(),
                gate: Arc::clone(&gate),
                landed: Arc::clone(&landed),
            };
            (backend, gate, landed)
        }
    }

    impl Backend for HeldRelease {
        async fn add(
            &self,
            key: &str,
            value: Bytes,
            flags: u32,
            lifetime: Lifetime,
        ) -> Result<bool, BackendError> {
            if flags == FLAG_PLACEHOLDER && value.ends_with(b" 0") {
                self.gate.acquire().await.unwrap().forget();
                let added = self.inner.add(key, value, flags, lifetime).await;
                self.landed.fetch_add(1, Ordering::SeqCst);
                return added;
            }
            self.inner.add(key, value, flags, lifetime).await
        }
        crate::forward_to_inner!(
            get, get_many, set, cas, delete, touch, incr, flush_all, stats
        );
    }

    /// A request dropped while its origin works leaves its placeholder to a release in
    /// the background, whose ended placeholder lands here after a purge of the URL
    /// returned (the key empty again). That late add must neither hold the URL's next
    /// request (it goes to the origin at once) nor keep its response out of the cache,
    /// and nothing from before the purge comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ended_placeholder_that_lands_after_a_purge_holds_nothing_and_refuses_nothing() {
        let (backend, gate, landed) = HeldRelease::closed();
        let layer = MemcacheLayer::new(backend)
            .namespace("review-y-late-release")
            .mode(CacheMode::Origin)
            .lease_wait(Duration::from_secs(2), Duration::from_millis(20));
        let purger = layer.purger();
        let watch = support::Watch::of(&layer);
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = tower::service_fn({
            let calls = Arc::clone(&calls);
            move |_request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call == 0 {
                        // The first request's client hangs up meanwhile.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let mut response = Response::new(Full::new(Bytes::from(format!("v{call}"))));
                    response
                        .headers_mut()
                        .insert("cache-control", "max-age=60".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
        let url = "http://review-y.test/released";
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            support::send(&svc, Method::GET, url, &[]),
        )
        .await;
        assert!(dropped.is_err(), "the first request is still at the origin");
        // Its release waits at the gate; the purge deletes its placeholder meanwhile.
        purger.purge_uri(url).await.unwrap();
        gate.add_permits(1);
        // The held add lands in the empty key (a background task: waited for, not slept
        // for, so a loaded machine cannot start the next request before it landed).
        support::eventually("the release added its ended placeholder", || {
            landed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(gate.available_permits(), 0);
        let started = Instant::now();
        let next = support::send(&svc, Method::GET, url, &[]).await;
        assert_eq!(next.body, "v1");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the next request waited {:?} for an ended placeholder",
            started.elapsed()
        );
        // Its store is in the background.
        watch.settled().await;
        let again = support::send(&svc, Method::GET, url, &[]).await;
        support::assert_hit(again.cache_status());
        assert_eq!(again.body, "v1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Clients that hang up during their misses, faster than the releases of their
    /// placeholders finish (a slow memcached): each release is a background task bounded
    /// in time only, so their number grew with the rate of hang-ups. Past the layer's cap
    /// on best-effort work a placeholder is left to expire instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releases_of_dropped_leases_are_bounded_in_number() {
        let (backend, gate, _landed) = HeldRelease::closed();
        let layer = MemcacheLayer::new(backend)
            .namespace("review-y-many-releases")
            .lookup_timeout(Duration::from_secs(20));
        let background = layer.background();
        let inner = tower::service_fn(|_request: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("late"))))
        });
        let svc = tower::Layer::layer(&layer, inner);
        let clients: Vec<_> = (0..1500)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let url = format!("http://review-y.test/many/{i}");
                    tokio::time::timeout(
                        Duration::from_millis(200),
                        support::send(&svc, Method::GET, &url, &[]),
                    )
                    .await
                    .is_err()
                })
            })
            .collect();
        for client in clients {
            assert!(client.await.unwrap(), "a request came back from the origin");
        }
        let running = background.running();
        assert!(
            running > 500 && running <= 1024,
            "{running} background tasks for 1500 dropped leases"
        );
        gate.add_permits(Semaphore::MAX_PERMITS / 2);
        tokio::time::timeout(Duration::from_secs(10), background.idle())
            .await
            .expect("the releases finished once memcached answered");
    }
}
