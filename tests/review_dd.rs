//! Review DD: the surfaces earlier reviews left least covered. Each test is one attack: a
//! request an attacker can send with an ordinary HTTP client, then an innocent request
//! that must not be answered with what the attacker's produced; each fails if the attack
//! works.
//!
//! - The proactive negotiation fields (`Accept`, `Accept-Language`, …) are compared by
//!   meaning, not byte for byte (RFC 9111 §4.1 allows it for values "known to have
//!   identical semantics"). A value outside the fields' grammar has no meaning every
//!   origin agrees on: merged with an ordinary one, the variant an origin chose for the
//!   odd spelling was stored for everyone who sends the ordinary one.
//!
//! The origin here parses as common frameworks do: it reads a field's first line (axum's
//! `HeaderMap::get`, Go's `Header.Get`), `Accept-Language` like Django's
//! `parse_accept_lang_header` (a value that does not match its grammar is no preference
//! at all: the site's default language), `Accept` like parsers written for RFC 7231
//! (parameters after the weight are `accept-ext`, not the media range's).

mod support;

use support::{Watch, send};

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::Full;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::MemcacheLayer;

// ---------------------------------------------------------------------------------------
// The origin.

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

/// The origin's answer: every one `public, max-age=60`, varying on what it negotiated.
fn answer(uri: &Uri, headers: &HeaderMap) -> Response<Full<Bytes>> {
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
    support::layer(MemoryBackend::new()).namespace("review-dd")
}

fn app(
    layer: &MemcacheLayer<MemoryBackend>,
) -> tower::util::BoxCloneService<
    Request<()>,
    Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
    Infallible,
> {
    let inner = tower::service_fn(|request: Request<()>| {
        let response = answer(request.uri(), request.headers());
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
    let poisoned = send(&svc, http::Method::GET, url, &lines).await;
    assert_ne!(
        poisoned.body, victims_page,
        "the origin reads the attacker's {field} as another preference"
    );
    Watch::of(&layer).settled().await;
    let answer = send(&svc, http::Method::GET, url, &[(field, victim)]).await;
    assert_eq!(
        answer.body,
        victims_page,
        "`{field}: {victim}` was answered with the variant stored for {attacker:?} ({})",
        answer.cache_status()
    );
    Watch::of(&layer).settled().await;
    let again = send(&svc, http::Method::GET, url, &[(field, victim)]).await;
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
