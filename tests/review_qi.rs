//! Review QI: what operators run and read, attacked and stressed: the `metrics` feature's
//! series, the proxy's `--metrics` listener and flags, and the hit-rate lab's counts.

mod support;

#[cfg(feature = "tcp")]
#[path = "../examples/hit_rate/lab/mod.rs"]
mod lab;

/// memcached's `evictions` starts again at 0 when the server restarts. Exported as the
/// counter's absolute value, the recorder kept the larger of old and new (a counter only
/// grows), so after a restart `tower_memcache_memcached_evictions_total` stood still until
/// the new process had evicted as much as the old one: `rate()` said "no evictions" while
/// memcached evicted. Each read adds what was evicted since the last one, and a value
/// that went down (a restart) counts whole.
#[cfg(all(feature = "metrics", feature = "proxy"))]
#[test]
fn memcached_evictions_keep_counting_after_the_server_restarts() {
    use std::collections::HashMap;
    use tower_memcache::backend::ServerStats;
    use tower_memcache::cache::record_backend_gauges;

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // A name no other test of this process reads.
    let server = "review-qi-evictions:11211";
    let read = |evictions: u64| {
        let stats = ServerStats {
            server: server.into(),
            stats: HashMap::from([("evictions".to_string(), evictions.to_string())]),
        };
        metrics::with_local_recorder(&recorder, || record_backend_gauges(&[stats], None));
    };
    let counted = || {
        support::prometheus_sample(
            &handle.render(),
            "tower_memcache_memcached_evictions_total",
            &[("server", server)],
        )
    };
    read(100);
    assert_eq!(counted(), Some(100.0));
    read(130);
    assert_eq!(counted(), Some(130.0));
    // The server restarted (its count went back to 0) and has evicted 5 since.
    read(0);
    read(5);
    assert_eq!(
        counted(),
        Some(135.0),
        "evictions after a restart were not counted"
    );
    read(5);
    assert_eq!(counted(), Some(135.0));
}

/// The hit-rate lab's memcached operations per request count the cache's operations, not
/// the lab's own: it expires entries in trace time by purging them, and took one delete
/// per server per expired entry off the count. A purge of the lab's absolute URI costs
/// more (its origin-form spelling is purged too, and each spelling bumps the entry's store
/// epoch), so every expiry inflated `memcached_ops` and `ops_per_request`. Two requests
/// for two paths, ten seconds apart, cost the cache the same operations whether the
/// first path's entry expired in between (lifetime 1 s) or not (an hour).
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_expiry_purges_are_not_counted_as_memcached_operations() {
    use clap::Parser;

    if let Err(e) = lab::memcached::version("memcached") {
        assert!(
            !support::memcached_required(),
            "MEMCACHED_REQUIRED=1 but the lab cannot run memcached: {e}"
        );
        eprintln!("SKIP review_qi lab: {e}");
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("review_qi-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    let log = dir.join("two.log");
    std::fs::write(
        &log,
        "10.0.0.1 - - [01/Jun/2024:10:00:00 +0200] \"GET /a HTTP/1.1\" 200 1000 \"-\" \"t\"\n\
         10.0.0.1 - - [01/Jun/2024:10:00:10 +0200] \"GET /b HTTP/1.1\" 200 1000 \"-\" \"t\"\n",
    )
    .expect("write the log");
    let log = log.to_string_lossy().to_string();
    let args = lab::cli::Args::try_parse_from([
        "hit_rate",
        "--log",
        &log,
        "--lifetime",
        "1,3600",
        "--servers",
        "1",
        "--memory",
        "8",
        "--concurrency",
        "1",
        "--no-svg",
    ])
    .expect("valid arguments");
    let outcome = lab::cli::run(args).await.expect("the lab runs");
    assert_eq!(outcome.points.len(), 2);
    let (expiring, lasting) = (&outcome.points[0], &outcome.points[1]);
    assert_eq!((expiring.expired, lasting.expired), (1, 0), "{outcome:?}");
    assert_eq!((expiring.hits, lasting.hits), (0, 0));
    assert!(lasting.memcached_ops > Some(0), "{lasting:?}");
    assert_eq!(
        expiring.memcached_ops, lasting.memcached_ops,
        "the lab's expiry purge was counted as the cache's operations"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--upstream-timeout 0` and `--connect-timeout 0` were accepted, and turned the proxy
/// into one that answers every miss with 504 (no origin answers within no time) or, over
/// any real network, 502: a typo, or an operator reading 0 as "no timeout" (as nginx's
/// zero-valued timeouts are read by some), took the site down with a proxy that looked
/// healthy. Refused at startup, exit status 2, as `--client-header-timeout 0` is.
#[cfg(feature = "proxy")]
#[test]
fn zero_origin_timeouts_are_refused_at_startup() {
    use std::time::Duration;

    for flag in ["--upstream-timeout", "--connect-timeout"] {
        for value in ["0", "0s", "0ms"] {
            let (status, stderr) = support::proxy::exit_of(
                &mut support::proxy::startup_command(&[flag, value]),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("{flag} {value}: accepted"));
            assert_eq!(status.code(), Some(2), "{flag} {value}: {status}\n{stderr}");
            assert!(
                stderr.contains(flag) && stderr.contains("more than 0"),
                "{flag} {value}: {stderr}"
            );
        }
    }
}
