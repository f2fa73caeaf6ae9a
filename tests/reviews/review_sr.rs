//! Review SR: do the promises README.md, SECURITY.md and the public API docs make today
//! hold? Review RH pinned the claims of 2026-12-06; this review takes those added or
//! rewritten since (uploads, clocks, memcached without CAS, twemproxy, values over the
//! read limit, `Connection`, targeted fields, the near tier, ranges, route readings,
//! `Expect`, origin framing, the proxy's flags and defaults). Each test pins a claim no
//! other test said: the README's flag table and SECURITY.md's stated defaults against
//! `--help` flag by flag, the example systemd unit against the binary, the numbers the
//! docs state against the public constants, the Metrics list against `METRIC_NAMES`, the
//! stated minimum Rust version against the sources, the `Vary` values compared as sent
//! (white space at their ends too) and the `Accept-Charset` lists normalised, the tag and
//! lifetime fields a `Connection` line cannot hide, the access log's 2 KiB fields, a
//! near-tier staleness of 0 refused, and the client's `try_*` twins.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::Origin;
use support::{Watch, bounded, send};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

fn security() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).unwrap()
}

/// The README with its lines joined by single spaces: a phrase wrapped over two lines
/// reads as one.
fn joined(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn help() -> String {
    let output = std::process::Command::new(support::proxy::proxy_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// Each flag of `--help` with the text of its entry (its own line through the line before
/// the next flag's), its lines joined by single spaces.
fn help_entries(help: &str) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in help.lines() {
        let flag = line
            .strip_prefix("      --")
            .or_else(|| line.strip_prefix("  -h, --"))
            .or_else(|| line.strip_prefix("  -V, --"));
        if let Some(rest) = flag {
            if let Some((name, lines)) = current.take() {
                entries.insert(name, joined(&lines.join(" ")));
            }
            let name = format!("--{}", rest.split([' ', '\t']).next().unwrap_or(""));
            current = Some((name, vec![line]));
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((name, lines)) = current {
        entries.insert(name, joined(&lines.join(" ")));
    }
    entries
}

/// The README's proxy table, row by row: the flags of the first column (in order) and the
/// defaults of the second, split at `, ` and stripped of backticks.
fn readme_rows(readme: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut rows = Vec::new();
    for line in readme.lines() {
        if !line.starts_with("| `--") {
            continue;
        }
        let columns: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        assert!(
            columns.len() >= 3,
            "a proxy table row of three columns: {line}"
        );
        let flags: Vec<String> = columns[0]
            .split('`')
            .filter_map(|part| part.strip_prefix("--"))
            .map(|name| {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                format!("--{name}")
            })
            .collect();
        let defaults: Vec<String> = columns[1]
            .trim()
            .split(", ")
            .map(|default| default.replace('`', "").trim().to_owned())
            .collect();
        rows.push((flags, defaults));
    }
    rows
}

/// README ("The caching proxy"): each flag's default in the table is the one `--help`
/// gives it (review RH checked that the table names the same flags, not what it says of
/// each). A default that `--help` states in its text rather than as `[default: …]` (a
/// computed one) must say the same there.
#[test]
fn the_readme_proxy_table_gives_each_flag_the_default_help_gives() {
    let help = help();
    let entries = help_entries(&help);
    let rows = readme_rows(&readme());
    assert!(rows.len() > 12, "{rows:?}");
    let mut checked = 0;
    for (flags, defaults) in rows {
        assert_eq!(
            flags.len(),
            defaults.len(),
            "one default per flag in the README row {flags:?}: {defaults:?}"
        );
        for (flag, default) in flags.iter().zip(&defaults) {
            let entry = entries
                .get(flag)
                .unwrap_or_else(|| panic!("{flag} is not in --help"));
            let stated = entry
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next());
            match (stated, default.as_str()) {
                (Some(stated), _) => assert_eq!(
                    stated, default,
                    "{flag}: README says {default}, --help says {stated}"
                ),
                (None, "(required)") => assert!(
                    help.contains(&format!("[OPTIONS] {flag} <")),
                    "{flag} is not required by --help"
                ),
                // A switch, or a value that turns something on.
                (None, "off") => {}
                (None, "in-process memory") => assert!(entry.contains("this process's memory")),
                (None, "proxy: + upstream authority") => {
                    assert!(entry.contains("default: \"proxy:\" and the upstream's authority"))
                }
                (None, "one per CPU") => assert!(entry.contains("default: one per CPU")),
                (None, "128 × --max-entry-size") => {
                    assert!(entry.contains("default 128 times --max-entry-size"))
                }
                (None, default) => assert!(
                    entry.contains(&format!("default {default}"))
                        || entry.contains(&format!("default: {default}")),
                    "{flag}: README says {default}, --help does not: {entry}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 25, "{checked} flags checked");
}

/// `--help` ("--max-unsent-bytes"): "128 times --max-entry-size (126 MiB by default)";
/// the README's and SECURITY.md's "128 ×" agree, and 128 × the default entry size is 126
/// MiB.
#[test]
fn the_unsent_budget_default_is_what_help_computes() {
    use tower_memcache::cache::DEFAULT_MAX_ENTRY_SIZE;
    let help = joined(&help());
    assert!(help.contains("[default: 1008K]"));
    assert_eq!(DEFAULT_MAX_ENTRY_SIZE, 1008 * 1024);
    assert_eq!(128 * DEFAULT_MAX_ENTRY_SIZE, 126 << 20);
    assert!(help.contains("default 128 times --max-entry-size (126 MiB by default)"));
    assert!(joined(&readme()).contains("128 × `--max-entry-size`"));
    assert!(joined(&security()).contains("128 × `--max-entry-size` by default"));
}

/// The numbers the README states against the public constants they come from: an entry
/// "just under 1 MiB" (`1008K`), the default lifetime of 3600 s, `MAX_RESET_ON_REJOIN_KEYS`
/// of 64 namespaces, the default tag and lifetime headers, the targeted field.
#[test]
fn the_numbers_the_readme_states_are_the_constants() {
    use tower_memcache::backend::{DEFAULT_ITEM_SIZE_LIMIT, MAX_RESET_ON_REJOIN_KEYS};
    use tower_memcache::cache::{
        CDN_CACHE_CONTROL, DEFAULT_LIFETIME, DEFAULT_LIFETIME_HEADER, DEFAULT_MAX_ENTRY_SIZE,
        DEFAULT_TAG_HEADER,
    };
    let readme = joined(&readme());
    const { assert!(DEFAULT_MAX_ENTRY_SIZE < DEFAULT_ITEM_SIZE_LIMIT) };
    assert_eq!(DEFAULT_ITEM_SIZE_LIMIT, 1 << 20);
    assert!(readme.contains("up to just under 1 MiB"));
    assert!(readme.contains(&format!(
        "| `--max-entry-size SIZE` | `{}K` |",
        DEFAULT_MAX_ENTRY_SIZE / 1024
    )));
    assert!(readme.contains(&format!(
        "a default of {} s (`default_lifetime`",
        DEFAULT_LIFETIME.as_secs()
    )));
    assert!(readme.contains("(3600 s by default)"));
    assert_eq!(DEFAULT_LIFETIME, Duration::from_secs(3600));
    assert!(readme.contains(&format!(
        "past `MAX_RESET_ON_REJOIN_KEYS`, {MAX_RESET_ON_REJOIN_KEYS} namespaces on one backend"
    )));
    assert_eq!(DEFAULT_TAG_HEADER, "surrogate-key");
    assert!(readme.contains("by default `Surrogate-Key: a b c`"));
    assert_eq!(DEFAULT_LIFETIME_HEADER, "x-memcache-lifetime");
    assert!(readme.contains("an `x-memcache-lifetime` header"));
    assert_eq!(CDN_CACHE_CONTROL.as_str(), "cdn-cache-control");
}

/// An origin whose page varies on `Accept-Charset` and names its call.
fn charset_origin() -> Origin {
    Origin::numbered(
        200,
        &[("cache-control", "max-age=60"), ("vary", "accept-charset")],
    )
}

/// README ("Variants", and the response directives' `Vary` row): "a one-line
/// `Accept-Encoding` or `Accept-Charset` list that keeps to its grammar" is normalised by
/// meaning (order among equal weights, case, white space, the spelling of weights); "a
/// list on several lines, or outside its grammar, is compared as sent". No test said so
/// of `Accept-Charset`.
#[tokio::test]
async fn accept_charset_lists_are_normalised_as_accept_encoding_lists() {
    bounded("vary accept-charset", async {
        let origin = charset_origin();
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-sr-charset")
            .mode(tower_memcache::CacheMode::Origin);
        let watch = Watch::of(&layer);
        let service = origin.service(&layer);
        let url = "http://review-sr.test/charset";

        let first = send(
            &service,
            Method::GET,
            url,
            &[("accept-charset", "utf-8, iso-8859-1")],
        )
        .await;
        assert_eq!(first.body, "call 1");
        support::stores(&watch, 1).await;

        // The same list by meaning: another order of equal weights, case, white space,
        // a weight of 1 spelled out.
        for same in [
            "ISO-8859-1,UTF-8",
            "  utf-8 ,iso-8859-1 ",
            "utf-8;q=1, iso-8859-1;q=1.000",
        ] {
            let answer = send(&service, Method::GET, url, &[("accept-charset", same)]).await;
            support::assert_hit(answer.cache_status());
            assert_eq!(answer.body, "call 1", "{same:?} is the first list");
        }
        assert_eq!(origin.calls(), 1);

        // Another preference is another variant; so is a list outside the grammar (a
        // second weight) or on two lines, compared as sent.
        let mut calls = 1;
        for other in [
            &[("accept-charset", "utf-8, iso-8859-1;q=0.5")][..],
            &[("accept-charset", "utf-8;q=1;q=1, iso-8859-1")][..],
            &[
                ("accept-charset", "utf-8"),
                ("accept-charset", "iso-8859-1"),
            ][..],
        ] {
            let answer = send(&service, Method::GET, url, other).await;
            calls += 1;
            assert_eq!(
                answer.body,
                format!("call {calls}"),
                "{other:?} is another variant"
            );
            support::assert_not_hit(answer.cache_status());
            watch.settled().await;
        }
        assert_eq!(origin.calls(), calls);
    })
    .await;
}

/// SECURITY.md ("An origin's `Connection` cannot hide from the cache the response fields
/// it decides by ... `Surrogate-Key`, ... `x-memcache-lifetime`"): the layer reads its tag
/// and lifetime fields whatever `Connection` names. Dropped as hop-by-hop first, a page
/// tagged `news` would be stored untagged (a `purge_tag("news")` that returned would leave
/// it served), and one a handler kept out with a lifetime of 0 would be shared.
#[tokio::test]
async fn connection_hides_neither_the_tag_field_nor_the_lifetime_field_from_the_layer() {
    bounded("connection-named own fields", async {
        let origin = Origin::new(|request: &http::Request<()>| {
            let mut lines = vec![("cache-control", "max-age=60".to_owned())];
            if request.uri().path() == "/tagged" {
                lines.push(("connection", "surrogate-key".to_owned()));
                lines.push(("surrogate-key", "news".to_owned()));
            } else {
                lines.push(("connection", "x-memcache-lifetime".to_owned()));
                lines.push(("x-memcache-lifetime", "0".to_owned()));
            }
            (200, lines, "page")
        });
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-sr-connection")
            .mode(tower_memcache::CacheMode::Origin);
        let watch = Watch::of(&layer);
        let service = origin.service(&layer);

        let tagged = "http://review-sr.test/tagged";
        send(&service, Method::GET, tagged, &[]).await;
        support::stores(&watch, 1).await;
        let hit = send(&service, Method::GET, tagged, &[]).await;
        support::assert_hit(hit.cache_status());
        assert_eq!(hit.header("surrogate-key"), None);
        layer.purger().purge_tag("news").await.unwrap();
        let after = send(&service, Method::GET, tagged, &[]).await;
        support::assert_not_hit(after.cache_status());
        assert_eq!(origin.calls(), 2, "the purge of its tag reached the page");
        watch.settled().await;

        let kept_out = "http://review-sr.test/kept-out";
        for _ in 0..2 {
            let answer = send(&service, Method::GET, kept_out, &[]).await;
            support::assert_not_hit(answer.cache_status());
            assert_eq!(answer.header("x-memcache-lifetime"), None);
            watch.settled().await;
        }
        assert_eq!(origin.calls(), 4);
    })
    .await;
}

/// The same through the proxy (`kept_from_connection`): an origin's
/// `Connection: x-memcache-lifetime` does not drop its `x-memcache-lifetime: 0` before the
/// layer reads it, so the page is not stored; without that field the same answer is.
#[tokio::test]
async fn the_proxy_keeps_the_lifetime_field_a_connection_line_names() {
    use support::proxy::{raw, start_proxy, until_cached};
    let answer = |extra: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: max-age=60\r\n\
             Connection: close{extra}\r\n\r\npage"
        )
        .into_bytes()
    };
    // The control: the answer without the lifetime field is stored.
    let stored = start_proxy(
        support::origin::canned(answer(""), 4),
        &["--access-log", "off"],
    );
    assert_eq!(raw(&stored, "GET /p HTTP/1.1\r\nHost: h\r\n").await.0, 200);
    assert_eq!(
        until_cached(&stored, "GET /p HTTP/1.1\r\nHost: h\r\n").await,
        "page"
    );

    let named = answer(", x-memcache-lifetime\r\nx-memcache-lifetime: 0");
    let proxy = start_proxy(support::origin::canned(named, 4), &["--access-log", "off"]);
    let (status, body) = raw(&proxy, "GET /p HTTP/1.1\r\nHost: h\r\n").await;
    assert_eq!((status, body.as_str()), (200, "page"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = raw(
        &proxy,
        "GET /p HTTP/1.1\r\nHost: h\r\nCache-Control: only-if-cached\r\n",
    )
    .await;
    assert_eq!(
        status, 504,
        "a page its origin kept out with a lifetime of 0 was stored"
    );
}

/// README (`--near-cache SIZE[,STALENESS]`: "STALENESS above 0") and `--help` ("STALENESS
/// must be more than 0"): a staleness of 0, in any unit, is refused at startup (exit
/// status 2, naming the flag), not taken as a tier that keeps nothing. Review RM pinned
/// the size's bound only.
#[test]
fn a_near_tier_staleness_of_zero_is_refused_at_startup() {
    use support::proxy::{exit_of, startup_command};
    for value in ["1M,0", "1M,0s", "1M,0ms"] {
        let (status, stderr) = exit_of(
            &mut startup_command(&["--near-cache", value]),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("--near-cache {value}: accepted"));
        assert_eq!(status.code(), Some(2), "--near-cache {value}: {stderr}");
        assert!(stderr.contains("--near-cache"), "{value}: {stderr}");
    }
    // The control: a staleness above 0 starts.
    assert!(
        exit_of(
            &mut startup_command(&["--near-cache", "1M,1ms"]),
            Duration::from_secs(1)
        )
        .is_none()
    );
}

/// SECURITY.md ("The access log records what the proxy did"): "fields are escaped
/// (`\xHH`) and cut at 2 KiB, so a client cannot forge or stretch a line". A target, a
/// `Referer` and a `User-Agent` of 5000 bytes each are logged as their first 2048.
#[tokio::test]
async fn access_log_fields_are_cut_at_two_kib() {
    use support::proxy::{raw, start_proxy_with_log};
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec();
    let (proxy, lines) = start_proxy_with_log(support::origin::canned(answer, 2), &[]);
    let target = format!("/{}", "t".repeat(4999));
    let referer = format!("http://h/{}", "r".repeat(4991));
    let agent = "a".repeat(5000);
    let (status, _) = raw(
        &proxy,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: h\r\nReferer: {referer}\r\nUser-Agent: {agent}\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("an access log line");
    assert!(
        line.contains(&format!("\"GET {} HTTP/1.1\" 200 ", &target[..2048])),
        "the target was not cut at 2048 bytes: {} bytes in the line",
        line.len()
    );
    assert!(line.contains(&format!(" \"{}\" ", &referer[..2048])));
    assert!(line.contains(&format!(" \"{}\" ", &agent[..2048])));
    assert!(!line.contains(&"a".repeat(2049)));
    assert!(line.len() < 3 * 2048 + 400, "{} bytes", line.len());
}

/// The source files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The crate docs ("Minimum supported Rust version: 1.85") and `rust-version = "1.85"`:
/// the library and the binary build with Rust 1.85, whose edition 2024 has no `let`
/// chains (`if a && let Some(x) = b`, stable only since 1.88); the compiler in use takes
/// them whatever `rust-version` says, and clippy's `incompatible_msrv` checks library
/// APIs, not syntax. One in `stored.rs` kept the crate from building on 1.85 to 1.87. The
/// check reads the form rustfmt gives a chain (`&& let` / `|| let`).
#[test]
fn the_sources_keep_to_the_stated_minimum_rust_version() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(manifest.contains("rust-version = \"1.85\""));
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    assert!(lib.contains("//! 1.85 (edition 2024)."));
    let mut files = Vec::new();
    rust_files(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    assert!(files.len() > 50, "{}", files.len());
    let mut chains = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("&& let ") || code.contains("|| let ") {
                chains.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(chains.is_empty(), "let chains need Rust 1.88: {chains:#?}");
}

/// README ("Metrics") lists the layer's series, and says `cache::METRIC_NAMES` lists
/// every one: each name of `METRIC_NAMES` is in the README's list too. Review RS added
/// `tower_memcache_stood_in_total` to the code and `METRIC_NAMES`, not to the README.
#[test]
fn the_readme_metrics_list_names_every_series_of_metric_names() {
    let readme = readme();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's Metrics section");
    let missing: Vec<&str> = tower_memcache::cache::METRIC_NAMES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !section.contains(&format!("`{name}")))
        .collect();
    assert!(
        tower_memcache::cache::METRIC_NAMES.len() > 15,
        "{:?}",
        tower_memcache::cache::METRIC_NAMES
    );
    assert!(
        missing.is_empty(),
        "not in the README's Metrics section: {missing:?}"
    );
}

/// README ("Variants"): the selecting values are compared as sent, white space at a
/// line's ends too (the README said they were normalised by trimming a line's ends, which
/// review QK stopped: HTTP/2 carries `fr ` as sent, and a handler comparing it with `fr`
/// answered it apart); only `Accept-Encoding` and `Accept-Charset` lists are normalised.
/// A request whose `Accept-Language` or own field differs from the stored one by white
/// space at its ends is a miss, not the stored variant.
#[tokio::test]
async fn selecting_values_keep_the_white_space_at_their_ends() {
    bounded("vary white space at the ends", async {
        for field in ["accept-language", "x-tenant"] {
            let origin = Origin::numbered(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "accept-language, x-tenant"),
                ],
            );
            let layer = support::layer(MemoryBackend::new())
                .namespace("review-sr-vary-ends")
                .mode(tower_memcache::CacheMode::Origin);
            let watch = Watch::of(&layer);
            let service = origin.service(&layer);
            let url = "http://review-sr.test/ends";
            let first = send(&service, Method::GET, url, &[(field, "fr")]).await;
            assert_eq!(first.body, "call 1");
            support::stores(&watch, 1).await;
            let again = send(&service, Method::GET, url, &[(field, "fr")]).await;
            support::assert_hit(again.cache_status());
            let mut calls = 1;
            for spelled in ["fr ", " fr", "fr\t"] {
                let answer = send(&service, Method::GET, url, &[(field, spelled)]).await;
                calls += 1;
                assert_eq!(
                    answer.body,
                    format!("call {calls}"),
                    "{field}: {spelled:?} was answered with the variant of \"fr\""
                );
                watch.settled().await;
            }
        }
    })
    .await;
}

/// SECURITY.md gives the defaults of the flags its bounds rest on in parentheses
/// (`--client-header-timeout` (30 s), `--max-connections` (10 000), ...): each is the
/// default `--help` gives (spaces aside: `30 s` is `30s`, `10 000` is `10000`).
#[test]
fn the_flag_defaults_security_md_states_are_the_binarys() {
    let entries = help_entries(&help());
    let security = joined(&security());
    let mut checked = 0;
    for piece in security.split("`--").skip(1) {
        let Some((name, rest)) = piece.split_once("` (") else {
            continue;
        };
        let Some((stated, _)) = rest.split_once(')') else {
            continue;
        };
        if !stated.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let flag = format!("--{name}");
        let entry = entries
            .get(&flag)
            .unwrap_or_else(|| panic!("SECURITY.md names {flag}, which --help does not"));
        let default = entry
            .split("[default: ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_else(|| panic!("{flag} has no default in --help"));
        assert_eq!(
            stated.replace(' ', ""),
            default,
            "{flag}: SECURITY.md says {stated}, --help {default}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} defaults checked");
}

/// README: `contrib/tower-memcache-proxy.service` is an example systemd unit. Each
/// variable it sets (or shows commented out) is one `--help` lists, each value shown
/// commented out as the default is the binary's default, and the binary starts with the
/// values it sets (the listening address moved to a free loopback port): a flag renamed
/// or a value refused would leave the unit failing at its first start.
#[test]
fn the_example_systemd_unit_names_real_variables_and_starts() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/tower-memcache-proxy.service"
    ))
    .unwrap();
    let help = help();
    let entries = help_entries(&help);
    let mut set = Vec::new();
    for line in unit.lines() {
        let (commented, rest) = match line.strip_prefix("#Environment=") {
            Some(rest) => (true, rest),
            None => match line.strip_prefix("Environment=") {
                Some(rest) => (false, rest),
                None => continue,
            },
        };
        let (var, value) = rest.split_once('=').unwrap();
        if var == "RUST_LOG" {
            set.push((var.to_owned(), value.to_owned()));
            continue;
        }
        let entry = entries
            .values()
            .find(|entry| entry.contains(&format!("[env: {var}=")))
            .unwrap_or_else(|| panic!("the unit's {var} is no variable --help lists"));
        // The near tier's line shows an example size (its comment says it is off by
        // default); the other lines commented out show the defaults.
        if commented && var != "TOWER_MEMCACHE_PROXY_NEAR_CACHE" {
            // Shown as the default: the binary's, stated as `[default: …]` or in words.
            let stated = entry
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next());
            match stated {
                Some(default) => assert_eq!(default, value, "{var}"),
                None => assert!(
                    entry.contains(&format!("default {value}"))
                        || entry.contains("default: one per CPU")
                        || entry.contains("Off by default")
                        || !entry.contains("default"),
                    "{var}={value}: {entry}"
                ),
            }
        } else if !commented {
            set.push((var.to_owned(), value.to_owned()));
        }
    }
    assert!(set.len() > 8, "{set:?}");
    let mut command = std::process::Command::new(support::proxy::proxy_binary());
    for (var, _) in std::env::vars() {
        if var.starts_with("TOWER_MEMCACHE_PROXY_") {
            command.env_remove(var);
        }
    }
    for (var, value) in &set {
        let value = if var == "TOWER_MEMCACHE_PROXY_LISTEN" {
            "127.0.0.1:0"
        } else {
            value.as_str()
        };
        command.env(var, value);
    }
    command.env("TOWER_MEMCACHE_PROXY_THREADS", "1");
    let exited = support::proxy::exit_of(&mut command, Duration::from_secs(2));
    assert!(
        exited.is_none(),
        "the proxy did not run with the unit's settings: {exited:?}"
    );
}

/// README ("From the Python seeds"): "Convenience methods never fail ... with the server
/// gone a query is a miss and a set stores nothing. Every one of `MemcacheClient`'s has a
/// `try_*` twin that returns the error." (It said every one, `CacheRegistry`'s
/// invalidations included, which have no twin.) With the server gone, each convenience
/// method returns quietly and each twin returns an error.
#[tokio::test]
async fn every_client_convenience_method_has_a_twin_that_returns_the_error() {
    use tower_memcache::MemcacheClient;
    use tower_memcache::backend::Lifetime;
    let backend = MemoryBackend::new();
    let client = MemcacheClient::new(backend.clone())
        .with_namespace("review-sr")
        .with_versioned_namespace(true);
    let lifetime = Lifetime::from_secs(60);
    assert!(client.try_set(&1, &"one").await.is_ok());
    backend.set_unreachable(true);

    // The convenience methods: a miss, nothing stored, no error.
    let key = client.set(&1, &"two").await;
    assert_eq!(key, client.build_key(&1));
    client.set_with_lifetime(&1, &"two", lifetime).await;
    client.set_raw(&2, "raw").await;
    client.set_raw_with_lifetime(&2, "raw", lifetime).await;
    assert_eq!(client.query::<String>(&1).await, None);
    assert_eq!(client.query_raw(&2).await, None);
    client.invalidate(&1).await;
    client.invalidate_all().await;
    client.invalidate_namespace().await;
    assert!(client.stats().await.is_empty());

    // Their twins: the error.
    assert!(client.try_set(&1, &"two").await.is_err());
    assert!(
        client
            .try_set_with_lifetime(&1, &"two", lifetime)
            .await
            .is_err()
    );
    assert!(client.try_set_raw(&2, "raw").await.is_err());
    assert!(
        client
            .try_set_raw_with_lifetime(&2, "raw", lifetime)
            .await
            .is_err()
    );
    assert!(client.try_query::<String>(&1).await.is_err());
    assert!(client.try_query_raw(&2).await.is_err());
    assert!(client.try_invalidate(&1).await.is_err());
    assert!(client.try_invalidate_all().await.is_err());
    assert!(client.try_invalidate_namespace().await.is_err());
    assert!(client.try_stats().await.is_err());

    // Back: the value stored before the outage is still there.
    backend.set_unreachable(false);
    assert_eq!(client.query::<String>(&1).await.as_deref(), Some("one"));
}
