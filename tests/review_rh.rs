//! Review RH: does every documented promise hold? Each test pins a claim of the README,
//! SECURITY.md, the rustdoc or `--help` that had no test saying it, or that said otherwise
//! before this review.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Request};
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::Origin;
use support::{Watch, bounded, send};

/// An origin whose every answer has a validator and stale windows (and, with `lifetime`,
/// an `x-memcache-lifetime` header): nothing in it keeps the response out of the cache.
fn origin(lifetime: Option<&'static str>) -> Origin {
    Origin::new(move |_: &Request<()>| {
        let mut lines = vec![
            ("etag", "\"v1\"".to_owned()),
            (
                "cache-control",
                "max-age=60, stale-while-revalidate=60, stale-if-error=60".to_owned(),
            ),
        ];
        if let Some(value) = lifetime {
            lines.push(("x-memcache-lifetime", value.to_owned()));
        }
        (200, lines, "page")
    })
}

/// Sends two GETs for `url` and asserts that the origin answered both, nothing was stored
/// and neither answer came from the cache (`fwd=uri-miss` both times, not `fwd=stale`).
async fn nothing_stored<S>(service: &S, watch: &Watch, origin: &Origin, url: &str)
where
    S: tower::Service<
            Request<()>,
            Response = http::Response<
                tower_memcache::cache::ResponseBody<http_body_util::Full<bytes::Bytes>>,
            >,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..2 {
        let answer = send(service, Method::GET, url, &[]).await;
        assert_eq!(answer.body, "page");
        assert_eq!(answer.cache_status(), "tower-memcache; fwd=uri-miss");
        assert_eq!(answer.header("x-memcache-lifetime"), None);
        watch.settled().await;
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(watch.snapshot().stores, 0);
}

/// README ("Routes"): routes no rule names get `default_lifetime`, and a lifetime of 0
/// stores nothing (the README said "stale at once", which would keep a response with a
/// validator and `stale-while-revalidate` for revalidation and stale serving). Code and
/// the other docs (`CacheLifetime`, `DEFAULT_LIFETIME_HEADER`) agree: not stored.
#[tokio::test]
async fn a_route_lifetime_of_zero_stores_nothing() {
    bounded("route lifetime 0", async {
        let origin = origin(None);
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-rh-zero-route")
            .default_lifetime(Duration::ZERO);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin.clone());
        nothing_stored(&service, &watch, &origin, "http://review-rh.test/zero").await;
    })
    .await;
}

/// README ("Routes") and `MemcacheLayer::lifetime_header`: an `x-memcache-lifetime` that
/// is no whole number of seconds counts as 0 and keeps the response out of the cache (the
/// docs said "stale at once"), in origin mode too, whatever `max-age` says.
#[tokio::test]
async fn a_lifetime_header_that_is_no_number_keeps_the_response_out_in_both_modes() {
    bounded("lifetime header", async {
        for mode in [CacheMode::Routes, CacheMode::Origin] {
            for value in ["0", "0.5", "30s"] {
                let origin = origin(Some(value));
                let layer = support::layer(MemoryBackend::new())
                    .namespace("review-rh-zero-header")
                    .mode(mode);
                let watch = Watch::of(&layer);
                let service = layer.layer(origin.clone());
                nothing_stored(&service, &watch, &origin, "http://review-rh.test/header").await;
            }
        }
    })
    .await;
}

/// The flags named in `--help` (a flag's own line is indented six spaces).
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| line.strip_prefix("      --"))
        .map(|rest| format!("--{}", rest.split([' ', '\t']).next().unwrap_or("")))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// The flags named in the first column of the README's proxy table.
fn readme_table_flags(readme: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in readme.lines() {
        let Some(row) = line.strip_prefix("| `--") else {
            continue;
        };
        let first_column = row.split(" | ").next().unwrap_or("");
        for part in format!("`--{first_column}").split('`') {
            if let Some(name) = part.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

/// README ("The caching proxy"): its table of flags names every flag `--help` lists, and
/// no flag the binary does not have.
#[test]
fn the_readme_proxy_table_names_every_flag_and_no_other() {
    let output = std::process::Command::new(support::proxy::proxy_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = help_flags(&String::from_utf8(output.stdout).unwrap());
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme_table_flags(&readme);
    assert!(help.len() > 20, "{help:?}");
    assert_eq!(table, help, "README's proxy table against --help");
}
