//! Review QI: what operators run and read, attacked and stressed: the `metrics` feature's
//! series, the proxy's `--metrics` listener and flags, and the hit-rate lab's counts.

mod support;

/// The value of the sample `name{labels}` in a Prometheus text exposition, whatever the
/// order of its labels; `None` when there is no such sample.
#[cfg(feature = "metrics")]
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let mut found: Vec<String> = label_text
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            found.sort();
            (metric == name && found == wanted).then(|| value.parse().ok())?
        })
}

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
        sample(
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
    assert_eq!(counted(), Some(135.0), "evictions after a restart were not counted");
    read(5);
    assert_eq!(counted(), Some(135.0));
}
