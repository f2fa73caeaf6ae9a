//! Review DD: the surfaces earlier reviews left least covered. Each test is one attack: a
//! request an attacker can send with an ordinary HTTP client, then an innocent request
//! that must not be answered with what the attacker's produced; each fails if the attack
//! works.
//!
//! - `Vary` values were compared after normalising them: the proactive negotiation lists
//!   by meaning (RFC 9111 §4.1 allows it for values "known to have identical
//!   semantics"), every other field with its white space folded. Each merge of a
//!   spelling no browser sends with the one it sends is a value an origin may read
//!   otherwise (a value outside the grammar, a list on two lines, other case, order or
//!   white space): the variant an origin chose for the attacker's spelling was stored
//!   for everyone who sends the ordinary one.
//!
//! - An unsafe method invalidates the URIs its response's `Location` and `Content-Location`
//!   name on its own origin only (RFC 9111 §4.4). An origin that reflects a request field
//!   into them lets a client name any URI there.
//!
//! - The layer's primary keys are the seed's formula, `md5(namespace ++ canonical key)`,
//!   so a `MemcacheClient` in the layer's namespace reaches them with the canonical key as
//!   its key (an application that keys its own values by a name a user picks). What it
//!   writes there is never an answer, and what the layer wrote is never its value.
//!
//! The origin here parses as common frameworks and handlers do: it reads a field's first
//! line (axum's `HeaderMap::get`, Go's `Header.Get`); `Accept-Language` like Django's
//! `parse_accept_lang_header` (a value that does not match its grammar is no preference
//! at all: the site's default language), or by hand (tags compared as written, `;q=`
//! split off, the first or the last of equal weights kept); `Accept` like parsers written
//! for RFC 7231 (parameters after the weight are `accept-ext`, not the media range's);
//! `User-Agent` by looking the string up.

use crate::support;

use support::{Watch, send};

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use tower_memcache::MemcacheClient;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::MemcacheLayer;

// ---------------------------------------------------------------------------------------
// The origin.

/// The `User-Agent` of the site's app, whose page `/app` serves.
const APP: &str = "ShopApp/5.2 (iPhone; iOS 17.4, Scale/3.00) CFNetwork/1494.0.7 Darwin/23.4.0";

/// A weight as RFC 9110 §12.4.2 spells it, in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Django's reading of `Accept-Language`: each member a language range, optionally
/// followed by `;q=` (white space allowed around `;` and `,` only); `None` when the value
/// does not match that grammar (Django then uses the site's default language).
fn django_languages(value: &str) -> Option<Vec<(String, u16)>> {
    let mut ranges = Vec::new();
    for member in value.split(',') {
        let mut parts = member.split(';');
        let range = parts.next()?.trim_matches([' ', '\t']);
        if range.is_empty()
            || !range
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        {
            return None;
        }
        let weight = match parts.next() {
            None => 1000,
            Some(weight) => qvalue(weight.trim_start_matches([' ', '\t']).strip_prefix("q=")?)?,
        };
        if parts.next().is_some() {
            return None;
        }
        ranges.push((range.to_ascii_lowercase(), weight));
    }
    Some(ranges)
}

/// A media range, its parameters and its weight.
type MediaRange = (String, Vec<(String, String)>, u16);

/// The media ranges of `Accept` as RFC 7231 §5.3.2 reads them: the parameters before the
/// weight belong to the range; those after it are `accept-ext`, which says nothing about
/// the range.
fn rfc7231_media_ranges(value: &str) -> Vec<MediaRange> {
    let mut ranges = Vec::new();
    for member in value.split(',') {
        let mut parts = member.split(';').map(str::trim);
        let Some(range) = parts.next().filter(|range| !range.is_empty()) else {
            continue;
        };
        let mut parameters = Vec::new();
        let mut weight = 1000;
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            if name.eq_ignore_ascii_case("q") {
                weight = qvalue(value).unwrap_or(0);
                break;
            }
            parameters.push((name.to_ascii_lowercase(), value.to_string()));
        }
        ranges.push((range.to_ascii_lowercase(), parameters, weight));
    }
    ranges
}

/// The origin's answer: every GET's `public, max-age=60`, varying on what it negotiated; a
/// POST is answered 201 with the `Location` its `x-next` field names (a form's "return
/// to" target reflected, as sites with a redirect parameter do).
fn answer(method: &Method, uri: &Uri, headers: &HeaderMap) -> Response<Full<Bytes>> {
    if method == Method::POST {
        let mut created = Response::new(Full::new(Bytes::from_static(b"created")));
        *created.status_mut() = http::StatusCode::CREATED;
        if let Some(next) = headers.get("x-next") {
            created.headers_mut().insert("location", next.clone());
            created
                .headers_mut()
                .insert("content-location", next.clone());
        }
        return created;
    }
    let field = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (vary, body) = match uri.path() {
        // A site in German, English and French; German when the client states no
        // (readable) preference.
        "/lang" => {
            let value = field("accept-language");
            let language = django_languages(&value)
                .unwrap_or_default()
                .into_iter()
                .map(|(range, weight)| (range.split('-').next().unwrap_or("").to_string(), weight))
                .filter(|(language, weight)| {
                    *weight > 0 && ["de", "en", "fr"].contains(&&**language)
                })
                .max_by_key(|(_, weight)| *weight)
                .map_or("de".to_string(), |(language, _)| language);
            ("accept-language", format!("lang={language}"))
        }
        // An API whose media type carries its version: `version=2` asks for the new one.
        "/api" => {
            let ranges = rfc7231_media_ranges(&field("accept"));
            let json = ranges
                .iter()
                .filter(|(range, _, weight)| range == "application/json" && *weight > 0)
                .map(|(_, parameters, _)| {
                    parameters
                        .iter()
                        .any(|(name, value)| name == "version" && value == "2")
                })
                .max();
            let body = match json {
                Some(true) => "api v2",
                Some(false) => "api v1",
                None => "html page",
            };
            ("accept", body.to_string())
        }
        // The same site negotiated by hand, as handlers often do: the first line read,
        // `;q=` split off each member, the highest weight first (the client's order
        // among equals), tags compared as written; English when nothing matches.
        "/by-hand" => {
            let value = field("accept-language");
            let mut best: Option<(&str, f32)> = None;
            for member in value.split(',') {
                let tag = member.split(';').next().unwrap_or("").trim();
                let weight = member
                    .split_once(";q=")
                    .and_then(|(_, q)| q.trim().parse().ok())
                    .unwrap_or(1.0);
                if best.is_none_or(|(_, top)| weight > top) {
                    best = Some((tag, weight));
                }
            }
            let language = best
                .map(|(tag, _)| tag.split('-').next().unwrap_or(""))
                .filter(|language| ["de", "en", "fr"].contains(language))
                .unwrap_or("en");
            ("accept-language", format!("lang={language}"))
        }
        // Negotiated by hand as a Rust handler would: the first line, `;q=` split off
        // each trimmed member, `max_by_key` on the weight (the last of equals wins).
        "/max-by-key" => {
            let value = field("accept-language");
            let language = value
                .split(',')
                .map(|member| {
                    let member = member.trim();
                    let (tag, weight) = member.split_once(";q=").unwrap_or((member, "1"));
                    let weight = weight.parse::<f32>().unwrap_or(0.0);
                    (tag.split('-').next().unwrap_or("").to_string(), weight)
                })
                .max_by_key(|(_, weight)| (weight * 1000.0) as u32)
                .map(|(language, _)| language)
                .filter(|language| ["de", "en", "fr"].contains(&language.as_str()))
                .unwrap_or_else(|| "en".to_string());
            ("accept-language", format!("lang={language}"))
        }
        // The app's own page for the exact `User-Agent` its current release sends (a
        // lookup by the string, as allow-lists and app-version gates do); the web page
        // for anything else.
        "/app" => {
            let page = if field("user-agent") == APP {
                "app page"
            } else {
                "web page"
            };
            ("user-agent", page.to_string())
        }
        path => ("accept", format!("GET {path}")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let fields = response.headers_mut();
    fields.insert("cache-control", "public, max-age=60".parse().unwrap());
    fields.insert("vary", vary.parse().unwrap());
    response
}

// ---------------------------------------------------------------------------------------
// The layer in an application.

fn layer() -> MemcacheLayer<MemoryBackend> {
    layer_over(MemoryBackend::new())
}

fn layer_over(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend).namespace("review-dd")
}

fn app(
    layer: &MemcacheLayer<MemoryBackend>,
) -> tower::util::BoxCloneService<
    Request<()>,
    Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
    Infallible,
> {
    let inner = tower::service_fn(|request: Request<()>| {
        let response = answer(request.method(), request.uri(), request.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

/// The attacker's request (its `field` on as many lines as `attacker` holds), then the
/// victim's: the victim must get the origin's answer to
/// its own value, and its own value must then be a hit.
async fn attack(url: &str, field: &str, attacker: &str, victim: &str, victims_page: &str) {
    attack_with_lines(url, field, &[attacker], victim, victims_page).await;
}

async fn attack_with_lines(
    url: &str,
    field: &str,
    attacker: &[&str],
    victim: &str,
    victims_page: &str,
) {
    let layer = layer();
    let svc = app(&layer);
    let lines: Vec<_> = attacker.iter().map(|line| (field, *line)).collect();
    let poisoned = send(&svc, Method::GET, url, &lines).await;
    assert_ne!(
        poisoned.body, victims_page,
        "the origin reads the attacker's {field} as another preference"
    );
    Watch::of(&layer).settled().await;
    let answer = send(&svc, Method::GET, url, &[(field, victim)]).await;
    assert_eq!(
        answer.body,
        victims_page,
        "`{field}: {victim}` was answered with the variant stored for {attacker:?} ({})",
        answer.cache_status()
    );
    Watch::of(&layer).settled().await;
    let again = send(&svc, Method::GET, url, &[(field, victim)]).await;
    support::assert_hit(again.cache_status());
    assert_eq!(again.body, victims_page);
}

// ---------------------------------------------------------------------------------------
// Negotiation fields outside their grammar.

/// A member has one weight (RFC 9110 §12.4.2). The layer read the last of two, so
/// `en;q=0;q=1` was `en`; Django finds no preference in it (a parser that reads the first
/// weight finds English refused) and answers German, which every `Accept-Language: en`
/// client then got from the cache.
#[tokio::test]
async fn a_second_weight_poisons_the_variant_of_the_plain_language() {
    attack(
        "http://site.example/lang",
        "accept-language",
        "en;q=0;q=1",
        "en",
        "lang=en",
    )
    .await;
}

/// A parameter is `name=value` with no white space around `=` (RFC 9110 §5.6.6). The
/// layer trimmed it, so `en;q =1` was `en`; Django's grammar does not allow it and answers
/// its default language, stored for every `Accept-Language: en` client.
#[tokio::test]
async fn white_space_around_the_equals_sign_poisons_the_variant_of_the_plain_language() {
    for attacker in ["en;q =1", "en;q= 1", "en;q = 0.9"] {
        let victim = if attacker.ends_with("0.9") {
            "en;q=0.9"
        } else {
            "en"
        };
        attack(
            "http://site.example/lang",
            "accept-language",
            attacker,
            victim,
            "lang=en",
        )
        .await;
    }
}

/// The weight ends a media range (RFC 9110 §12.5.1); what follows it was RFC 7231's
/// `accept-ext`, no parameter of the range. The layer moved parameters after the weight
/// in front of it, so `application/json;q=1;version=2` was `application/json;version=2`:
/// an origin that reads them as `accept-ext` answers version 1, stored for every client
/// asking for version 2.
#[tokio::test]
async fn a_parameter_after_the_weight_poisons_the_variant_of_the_range_it_names() {
    attack(
        "http://api.example/api",
        "accept",
        "application/json;q=1;version=2",
        "application/json;version=2",
        "api v2",
    )
    .await;
}

/// RFC 9110 §5.6.1 has recipients skip empty list elements, and the layer did: `, en-US,
/// en;q=0.9` was Chrome's `en-US,en;q=0.9`. Django finds no preference in a value with an
/// empty element and answers its default language (with `Vary: Accept-Language`, which
/// its `LocaleMiddleware` sets on every page): stored for every English Chrome. No
/// browser sends an empty element, so comparing such a value as it is costs no hit.
#[tokio::test]
async fn an_empty_element_poisons_the_variant_of_a_browsers_languages() {
    for attacker in [
        ", en-US,en;q=0.9",
        "en-US,,en;q=0.9",
        "en-US, ;q=1, en;q=0.9",
    ] {
        attack(
            "http://site.example/lang",
            "accept-language",
            attacker,
            "en-US,en;q=0.9",
            "lang=en",
        )
        .await;
    }
}

/// A list field may come on several lines, whose meaning is the lines joined (RFC 9110
/// §5.3), and the layer merged them so. An origin that reads the first line (axum's
/// `headers.get`, Go's `Header.Get`) saw only the member the attacker put there: a German
/// browser's list, split so that its last member comes first, got the English page stored
/// for every German browser. No browser splits the field.
#[tokio::test]
async fn a_language_list_split_into_two_lines_poisons_the_variant_of_the_whole_one() {
    attack_with_lines(
        "http://site.example/lang",
        "accept-language",
        &["en;q=0.7", "de-DE,de;q=0.9,en-US;q=0.8"],
        "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7",
        "lang=de",
    )
    .await;
}

/// Language tags are case-insensitive (RFC 4647 §2), and the layer lower-cased them, so
/// `DE-de,de;q=0.9` was a German Chrome's `de-DE,de;q=0.9`. A handler that compares tags
/// as written (`starts_with("de")`) answers the capitals in English, stored for every
/// German Chrome. No browser changes its tags' case.
#[tokio::test]
async fn a_language_tag_in_capitals_poisons_the_variant_of_the_browsers_spelling() {
    attack(
        "http://site.example/by-hand",
        "accept-language",
        "DE-de,de;q=0.9",
        "de-DE,de;q=0.9",
        "lang=de",
    )
    .await;
}

/// The weight's `q` is case-insensitive in the grammar, and the layer read `Q=0.8` as
/// `q=0.8`; the members sorted by weight, `en-US;Q=0.8,de-DE,de;q=0.9,en;q=0.7` was a
/// German Chrome's list. A handler that splits `;q=` off sees `en-US` unweighted, first:
/// English, stored for every German Chrome.
#[tokio::test]
async fn a_weight_in_capitals_poisons_the_variant_of_the_browsers_list() {
    attack(
        "http://site.example/by-hand",
        "accept-language",
        "en-US;Q=0.8,de-DE,de;q=0.9,en;q=0.7",
        "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7",
        "lang=de",
    )
    .await;
}

/// White space before a weight is in the grammar (`OWS ";" OWS "q="`), and the layer
/// dropped it: `…,en; q=0.7` was a German Chrome's `…,en;q=0.7`. A handler that splits
/// `;q=` off reads that member unweighted, and `max_by_key` keeps the last of equals:
/// English, stored for every German Chrome. Handlers disagree on every spelling a
/// browser does not send, so these lists are compared as sent.
#[tokio::test]
async fn white_space_before_a_weight_poisons_the_variant_of_the_browsers_list() {
    attack(
        "http://site.example/max-by-key",
        "accept-language",
        "de-DE,de;q=0.9,en-US;q=0.8,en; q=0.7",
        "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7",
        "lang=de",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// White space inside other fields.

/// The layer folded runs of white space inside any field's value, and wrote every comma
/// as `, `: `iOS 17.4,Scale/3.00` or `(iPhone;  iOS` were the app's `User-Agent`. That
/// field is no list, and the white space inside its comments is text (RFC 9110 §10.1.5,
/// §5.6.5): an origin that looks the string up answers the web page, which every app
/// user then got. No client sends its own field with other white space.
#[tokio::test]
async fn white_space_inside_a_field_poisons_the_variant_of_its_usual_spelling() {
    for attacker in [
        APP.replace(", ", ","),
        APP.replace(",", " ,"),
        APP.replace("; ", ";  "),
        APP.replace(' ', "\t"),
    ] {
        attack(
            "http://site.example/app",
            "user-agent",
            &attacker,
            APP,
            "app page",
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// Invalidation by an unsafe method, of URIs its answer names.

/// A client of one site POSTs with a return target of its choosing, reflected into the
/// 201's `Location` and `Content-Location`. However it spells another site's page
/// (scheme-relative, with user information, with its default port or in capitals, after a
/// backslash, as an `https` or opaque URI), that page's entry is not invalidated: only
/// the POST's own origin is (RFC 9111 §4.4).
#[tokio::test]
async fn a_reflected_location_invalidates_nothing_on_another_site() {
    let layer = layer();
    let svc = app(&layer);
    let victim = "http://victim.example/page";
    send(&svc, Method::GET, victim, &[]).await;
    Watch::of(&layer).settled().await;
    support::assert_hit(send(&svc, Method::GET, victim, &[]).await.cache_status());
    for named in [
        "http://victim.example/page",
        "http://VICTIM.example:80/page",
        "//victim.example/page",
        "///victim.example/page",
        "http://site.example@victim.example/page",
        "http://site.example:80@victim.example/page",
        "http:victim.example/page",
        "http:/\\victim.example/page",
        "\\victim.example/page",
        "/\\victim.example/page",
        " http://victim.example/page",
        "https://victim.example/page",
        "HTTP://victim.example/page",
    ] {
        let post = send(
            &svc,
            Method::POST,
            "http://site.example/form",
            &[("x-next", named)],
        )
        .await;
        assert_eq!(post.status, http::StatusCode::CREATED);
        let after = send(&svc, Method::GET, victim, &[]).await;
        assert_eq!(
            support::as_seen(after.cache_status()),
            support::HIT,
            "a POST to site.example answered with Location {named:?} invalidated victim.example's page"
        );
    }
    // The same names on the POST's own origin do invalidate.
    let own = "http://site.example/page";
    for named in ["/page", "http://SITE.example:80/page"] {
        send(&svc, Method::GET, own, &[]).await;
        Watch::of(&layer).settled().await;
        support::assert_hit(send(&svc, Method::GET, own, &[]).await.cache_status());
        send(
            &svc,
            Method::POST,
            "http://site.example/form",
            &[("x-next", named)],
        )
        .await;
        support::assert_not_hit(send(&svc, Method::GET, own, &[]).await.cache_status());
    }
}

// ---------------------------------------------------------------------------------------
// The seed's client and the layer sharing keys.

/// An application stores values of its own, keyed by a name a user picks, with a
/// `MemcacheClient` in the layer's namespace: the name `GET http://site.example/x` is the
/// layer's primary key for that page. What the client writes there, typed or raw, is never
/// served as the page (a miss, then the page stored again), and the client never reads the
/// layer's entry as a value.
#[tokio::test]
async fn a_client_value_under_the_layers_key_is_never_an_answer() {
    let backend = MemoryBackend::new();
    let layer = layer_over(backend.clone());
    let svc = app(&layer);
    let client = MemcacheClient::new(backend).with_namespace("review-dd");
    let url = "http://site.example/x";
    let name = "GET http://site.example/x";
    send(&svc, Method::GET, url, &[]).await;
    Watch::of(&layer).settled().await;
    support::assert_hit(send(&svc, Method::GET, url, &[]).await.cache_status());
    assert_eq!(
        client.query_raw(name).await,
        None,
        "the entry read as raw bytes"
    );
    assert_eq!(
        client.query::<String>(name).await,
        None,
        "the entry read as a value"
    );
    let forged = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
    for write in 0..2 {
        if write == 0 {
            client.set_raw(name, forged.as_bytes().to_vec()).await;
        } else {
            client.set(name, &forged).await;
        }
        let answer = send(&svc, Method::GET, url, &[]).await;
        assert_eq!(answer.body, "GET /x", "write {write}");
        support::assert_not_hit(answer.cache_status());
        Watch::of(&layer).settled().await;
        let again = send(&svc, Method::GET, url, &[]).await;
        support::assert_hit(again.cache_status());
        assert_eq!(again.body, "GET /x");
    }
}
