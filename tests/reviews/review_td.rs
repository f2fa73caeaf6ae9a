//! Review TD: the newest consistency code (purges advancing generations and the tag-purge
//! mark as max-registers, `Backend::advance_on_every_server`, and the values a process
//! remembers writing, `LocalPurges`) against a memcached that sends garbage and against a
//! tenant who shares it and writes any key: generations, tag-purge marks, store epochs.
//!
//! Asked of each: does a purge return within its bound, without a panic; is a server
//! that missed an advance marked down and brought back; does the layer keep answering
//! from the origin; does a purge that returned hold; and is the cache able to store
//! again afterwards (a tag or namespace whose every later fill is refused is a denial of
//! service).

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use support::fake_memcached::{self, Reply as Line};
use support::held_writes::tag_key;
use support::scripted_service::{Origin, Reply, lines};
use support::{Watch, send};
use tower_memcache::TcpBackend;
use tower_memcache::backend::{Backend, Lifetime};

const NAMESPACE: &str = "review-td";
const KEY: &str = "g:review-td";

fn leak(text: String) -> &'static [u8] {
    Box::leak(text.into_bytes().into_boxed_slice())
}

/// A stand-in that answers `version`, `stats` and `delete` as memcached does, and a
/// `gets` of anything with `gets`, a write (`add`, `cas`, `set`) with `write`; data lines
/// get no answer.
async fn stand_in(gets: &'static [u8], write: &'static [u8]) -> String {
    fake_memcached::scripted(move |_, line| {
        if line.starts_with("version") {
            Line::Send(b"VERSION 1.6.0\r\n")
        } else if line.starts_with("stats") {
            Line::Send(b"STAT item_size_max 1048576\r\nEND\r\n")
        } else if line.starts_with("gets ") || line.starts_with("get ") {
            Line::Send(gets)
        } else if line.starts_with("add ") || line.starts_with("cas ") || line.starts_with("set ") {
            Line::Send(write)
        } else if line.starts_with("delete ") {
            Line::Send(b"DELETED\r\n")
        } else {
            Line::Send(b"")
        }
    })
    .await
}

fn backend(servers: &[String]) -> TcpBackend {
    TcpBackend::builder()
        .servers(servers.iter().cloned())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// Replies a broken server sends to the advance's `gets` and writes: whatever they are,
/// the advance returns (the real server took it) well within a purge's deadline, and the
/// broken server is marked down exactly when it did not take the write.
#[tokio::test]
async fn an_advance_survives_every_garbage_reply_within_its_deadline() {
    let server = memcached_or_skip!("review_td::an_advance_survives_every_garbage_reply");
    let value = |bytes: &str, cas: &str| {
        leak(format!(
            "VALUE {KEY} 0 {} {cas}\r\n{bytes}\r\nEND\r\n",
            bytes.len()
        ))
    };
    // (what the `gets` gets, what the write gets, whether the server took the write)
    let cases: Vec<(&str, &'static [u8], &'static [u8], bool)> = vec![
        (
            "u64::MAX",
            value("18446744073709551615", "7"),
            b"STORED\r\n",
            true,
        ),
        (
            "u64::MAX - 1",
            value("18446744073709551614", "7"),
            b"STORED\r\n",
            true,
        ),
        (
            "30 digits",
            value("999999999999999999999999999999", "7"),
            b"STORED\r\n",
            true,
        ),
        ("no number", value("12 c\0\r", "7"), b"STORED\r\n", true),
        (
            "the largest CAS value",
            value("100", "18446744073709551615"),
            b"STORED\r\n",
            true,
        ),
        (
            "a CAS value of zero",
            value("100", "0"),
            b"STORED\r\n",
            true,
        ),
        (
            "CAS values that never match",
            value("100", "3"),
            b"EXISTS\r\n",
            false,
        ),
        (
            "NOT_FOUND forever",
            value("100", "3"),
            b"NOT_FOUND\r\n",
            false,
        ),
        (
            "absent, and add refused forever",
            b"END\r\n",
            b"NOT_STORED\r\n",
            false,
        ),
        (
            "a CAS value that is no number",
            value("100", "x1"),
            b"STORED\r\n",
            false,
        ),
        (
            "a truncated value",
            leak(format!("VALUE {KEY} 0 3 5\r\n1")),
            b"STORED\r\n",
            false,
        ),
        (
            "a line of garbage",
            b"HELLO WORLD\r\n",
            b"STORED\r\n",
            false,
        ),
        (
            "the key's value twice",
            leak(format!(
                "VALUE {KEY} 0 3 5\r\n100\r\nVALUE {KEY} 0 3 6\r\n200\r\nEND\r\n"
            )),
            b"STORED\r\n",
            false,
        ),
        (
            "a value with no end",
            leak(format!("VALUE {KEY} 0 3 5\r\n100\r\n")),
            b"STORED\r\n",
            false,
        ),
        (
            "another key's value",
            b"VALUE other 0 3 5\r\n100\r\nEND\r\n",
            b"STORED\r\n",
            false,
        ),
        (
            "a length past any limit",
            leak(format!("VALUE {KEY} 0 4294967295 5\r\n")),
            b"STORED\r\n",
            false,
        ),
        (
            "a length past u64",
            leak(format!("VALUE {KEY} 0 99999999999999999999999 5\r\n")),
            b"STORED\r\n",
            false,
        ),
        (
            "the write answered as a read",
            value("100", "3"),
            b"END\r\n",
            false,
        ),
        (
            "the write answered with an error",
            value("100", "3"),
            b"SERVER_ERROR busy\r\n",
            false,
        ),
    ];
    for (what, gets, write, takes) in cases {
        let broken = stand_in(gets, write).await;
        let memcached = backend(&[server.addr(), broken]);
        let started = Instant::now();
        let advanced = tokio::time::timeout(
            Duration::from_secs(5),
            memcached.advance_on_every_server(KEY, 1_000, Lifetime::NEVER),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the advance outlived a purge's deadline"));
        let advanced = advanced.unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(advanced.value >= 1_000, "{what}: {advanced:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(
            memcached.is_server_down(1),
            !takes,
            "{what}: a server that {} the write",
            if takes { "took" } else { "missed" }
        );
        server.flush_all();
    }
}

/// Nanoseconds since the epoch on this process's clock, `ahead` from now.
fn nanos_in(ahead: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from((now + ahead).as_nanos()).unwrap()
}

/// An origin whose page `/NAME` carries the tag `NAME`, each answer naming its call.
fn tagged_origin() -> Origin {
    Origin::replying(|request, call| {
        let tag = request.uri().path().trim_start_matches('/').to_owned();
        let mut fields = lines(&[("cache-control", "public, max-age=600")]);
        fields.push(("surrogate-key", tag));
        Reply::ok(fields, format!("call {call}"))
    })
}

/// Whether a page of `service` is stored within `tries` requests (each after the last
/// one's store settled, 300 ms apart: a fill requested within the clock-skew margin of
/// a purge may be refused, once).
async fn stored_within<S, B>(service: &S, watch: &Watch, url: &str, tries: usize) -> bool
where
    S: tower::Service<http::Request<()>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for _ in 0..tries {
        let answer = send(service, Method::GET, url, &[]).await;
        if answer.cache_status().starts_with("tower-memcache; hit") {
            return true;
        }
        watch.settled().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// A tag's generation "created" by a clock far ahead (a process whose clock ran an hour
/// fast, or bytes a tenant wrote): a purge time from such a clock is rewritten by the
/// first store that reads it, yet a creation time was left, so every fill of the tag
/// took it for a tag created during the fill and asked the namespace's tag-purge mark;
/// with tag purges of any tag coming more often than once a second (a CMS at work), the
/// mark always told of one within the skew, and no page of the tag was stored again
/// until that clock's hour had passed.
#[tokio::test]
async fn a_tag_created_by_a_clock_far_ahead_does_not_refuse_its_fills_for_good() {
    let server = memcached_or_skip!(
        "review_td::a_tag_created_by_a_clock_far_ahead_does_not_refuse_its_fills_for_good"
    );
    let memcached = support::patient_backend([server.addr()]);
    let layer = support::layer(memcached.clone()).namespace(NAMESPACE);
    let watch = Watch::of(&layer);
    let service = tagged_origin().service(&layer);
    let ahead = format!("{}c", nanos_in(Duration::from_secs(3600)));
    memcached
        .set(
            &tag_key(NAMESPACE, "news"),
            Bytes::from(ahead),
            0,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    // Other tags purged all along, as an editor's tool does.
    let purger = layer.purger();
    let purging = tokio::spawn(async move {
        for round in 0.. {
            purger.purge_tag(&format!("other-{round}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The control: a tag created here, under the same purges, is stored.
    let control = stored_within(&service, &watch, "http://site.example/sports", 8).await;
    let stored = stored_within(&service, &watch, "http://site.example/news", 8).await;
    purging.abort();
    assert!(control, "the control was not stored");
    assert!(stored, "no page tagged `news` was stored again");
}

/// A server that never takes an advance (every key reads absent, and every `add` finds
/// it there: a key too large to read back, a tenant's writes racing every purge, or a
/// broken server): a tag purge returns `Ok` from the server that took it within its
/// deadline, the other is marked down, and its probe brings it back (reset); meanwhile
/// every request is answered by the origin, and the purged page is not served again.
#[tokio::test]
async fn a_server_that_never_takes_an_advance_is_marked_down_and_comes_back() {
    let server =
        memcached_or_skip!("review_td::a_server_that_never_takes_an_advance_is_marked_down");
    let broken = stand_in(b"END\r\n", b"NOT_STORED\r\n").await;
    let memcached = TcpBackend::builder()
        .servers([server.addr(), broken])
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let layer = support::layer(memcached.clone()).namespace(NAMESPACE);
    let watch = Watch::of(&layer);
    let origin = tagged_origin();
    let service = origin.service(&layer);
    // Pages on either server: those on the working one are stored.
    let urls: Vec<String> = (0..8)
        .map(|page| format!("http://site.example/news?page={page}"))
        .collect();
    for url in &urls {
        assert_eq!(send(&service, Method::GET, url, &[]).await.status, 200);
    }
    watch.settled().await;
    let before = origin.calls();
    let mut hits = 0;
    for url in &urls {
        let answer = send(&service, Method::GET, url, &[]).await;
        assert_eq!(answer.status, 200);
        hits += usize::from(answer.cache_status().starts_with("tower-memcache; hit"));
    }
    assert!(hits > 0, "nothing stored on the working server");
    assert_eq!(origin.calls(), before + urls.len() - hits);

    let started = Instant::now();
    let purged = tokio::time::timeout(Duration::from_secs(12), layer.purger().purge_tag("news"))
        .await
        .expect("the purge outlived its deadlines");
    assert!(purged.is_ok(), "{purged:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        memcached.is_server_down(1),
        "a server that missed the purge stayed in use"
    );
    for url in &urls {
        let answer = send(&service, Method::GET, url, &[]).await;
        assert_eq!(answer.status, 200);
        assert!(
            !answer.cache_status().starts_with("tower-memcache; hit"),
            "{url}: served after its tag was purged"
        );
    }
    support::eventually("the server marked down is back in use", || {
        !memcached.is_server_down(1)
    })
    .await;
    for url in &urls {
        assert_eq!(send(&service, Method::GET, url, &[]).await.status, 200);
    }
}

/// Many tag purges at once, from three processes (an editor's tool purging a release's
/// tags): each advances the namespace's one tag-purge mark. The advances settle one
/// another: none gives up on a working server (which would take it out of use, and
/// orphan its whole contents at its rejoin).
#[tokio::test]
async fn a_burst_of_tag_purges_from_several_processes_takes_no_server_down() {
    let server = memcached_or_skip!("review_td::a_burst_of_tag_purges_from_several_processes");
    let processes: Vec<TcpBackend> = (0..3)
        .map(|_| support::patient_backend([server.addr()]))
        .collect();
    let purges = processes
        .iter()
        .enumerate()
        .flat_map(|(process, memcached)| {
            let purger = support::layer(memcached.clone())
                .namespace(NAMESPACE)
                .purger();
            (0..150).map(move |tag| {
                let purger = purger.clone();
                async move { purger.purge_tag(&format!("tag-{process}-{tag}")).await }
            })
        });
    let outcomes = support::bounded(
        "the burst of purges",
        futures_util::future::join_all(purges),
    )
    .await;
    for outcome in outcomes {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    for memcached in &processes {
        assert_eq!(memcached.outages(), 0, "a working server was marked down");
    }
}

/// Bytes a tenant (or another tool) leaves in a generation, the tag-purge mark or a tag's
/// generation, each tried before a page's first fill: the page is stored within a few
/// requests, a tag purge returns `Ok` and holds (what was served before is not served
/// after), and the page is stored again within a few requests (no state a key can hold
/// refuses a tag's or a namespace's fills for good).
#[tokio::test]
async fn whatever_a_tenant_leaves_in_a_generation_purges_hold_and_fills_are_stored_again() {
    let server = memcached_or_skip!("review_td::whatever_a_tenant_leaves_in_a_generation");
    let memcached = support::patient_backend([server.addr()]);
    let hour = nanos_in(Duration::from_secs(3600));
    let soon = nanos_in(Duration::from_millis(500));
    let values: Vec<String> = [
        "18446744073709551615",
        "18446744073709551614",
        "18446744073709551615c",
        "18446744073709551614c",
        "0",
        "0c",
        "c",
        "",
        " 12 ",
        "-5",
        "abc",
        "1e9",
        "999999999999999999999999999999",
        "999999999999999999999999999999c",
        "\0\r\n",
    ]
    .iter()
    .map(|value| (*value).to_owned())
    .chain([
        hour.to_string(),
        format!("{hour}c"),
        format!("{hour}cc"),
        soon.to_string(),
        format!("{soon}c"),
    ])
    .collect();
    let cases = values.iter().enumerate().flat_map(|(case, value)| {
        ["namespace generation", "tag-purge mark", "tag generation"]
            .into_iter()
            .enumerate()
            .map(move |(place, kind)| (case, place, value.clone(), kind))
    });
    let runs = cases.map(|(case, place, value, kind)| {
        let memcached = memcached.clone();
        async move {
            let namespace = format!("{NAMESPACE}-{case}-{place}");
            let key = match kind {
                "namespace generation" => {
                    support::held_writes::internal_key(&namespace, "\0generation")
                }
                "tag-purge mark" => support::held_writes::tag_purges_key(&namespace),
                _ => tag_key(&namespace, "news"),
            };
            let what = format!("{value:?} in the {kind}");
            memcached
                .set(&key, Bytes::from(value), 0, Lifetime::NEVER)
                .await
                .unwrap();
            let layer = support::layer(memcached.clone()).namespace(namespace);
            let watch = Watch::of(&layer);
            let service = tagged_origin().service(&layer);
            let url = "http://site.example/news";
            assert!(
                stored_within(&service, &watch, url, 8).await,
                "{what}: never stored"
            );
            let before = send(&service, Method::GET, url, &[]).await.body;
            let purged =
                tokio::time::timeout(Duration::from_secs(12), layer.purger().purge_tag("news"))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: the purge outlived its deadlines"));
            assert!(purged.is_ok(), "{what}: {purged:?}");
            let after = send(&service, Method::GET, url, &[]).await;
            assert_ne!(
                after.body, before,
                "{what}: served after its purge returned"
            );
            assert!(
                stored_within(&service, &watch, url, 8).await,
                "{what}: never stored again after the purge"
            );
        }
    });
    support::bounded("the cases", futures_util::future::join_all(runs)).await;
    assert_eq!(memcached.outages(), 0);
}

/// The only memcached answers garbage (a line of noise, a value cut short, a value of a
/// key never asked, `EXISTS` to every write): every request is answered by the origin,
/// and every purge returns, with an error, within its deadlines.
#[tokio::test]
async fn a_memcached_that_answers_garbage_leaves_the_layer_answering_from_the_origin() {
    let garbage: [(&str, &'static [u8], &'static [u8]); 4] = [
        ("noise", b"HELLO WORLD\r\n", b"HELLO WORLD\r\n"),
        ("a value cut short", b"VALUE x 0 30 5\r\nabc", b"STORED\r\n"),
        (
            "a value of a key never asked",
            b"VALUE never-asked 0 3 5\r\n100\r\nEND\r\n",
            b"STORED\r\n",
        ),
        ("absent, and taken by nobody", b"END\r\n", b"EXISTS\r\n"),
    ];
    for (what, gets, write) in garbage {
        let broken = stand_in(gets, write).await;
        let memcached = backend(&[broken]);
        let layer = support::layer(memcached.clone()).namespace(NAMESPACE);
        let origin = tagged_origin();
        let service = origin.service(&layer);
        for round in 0..6 {
            let url = format!("http://site.example/news?round={}", round % 2);
            let answer = send(&service, Method::GET, &url, &[]).await;
            assert_eq!(answer.status, 200, "{what}");
            assert!(!answer.cache_status().contains("hit"), "{what}");
        }
        assert_eq!(origin.calls(), 6, "{what}");
        let purger = layer.purger();
        let started = Instant::now();
        let purges = async {
            (
                purger.purge_tag("news").await,
                purger.purge_namespace().await,
                purger.purge_uri("http://site.example/news?round=0").await,
            )
        };
        let (tag, namespace, uri) = tokio::time::timeout(Duration::from_secs(30), purges)
            .await
            .unwrap_or_else(|_| panic!("{what}: the purges outlived their deadlines"));
        assert!(tag.is_err() && namespace.is_err() && uri.is_err(), "{what}");
        assert!(started.elapsed() < Duration::from_secs(12), "{what}");
        assert_eq!(
            send(&service, Method::GET, "http://site.example/news", &[])
                .await
                .status,
            200,
            "{what}"
        );
    }
}
