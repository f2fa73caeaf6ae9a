#!/usr/bin/env python3
"""Writes bench/hit_rate/sample-access.log: two hours of a made-up news site's traffic in
nginx's `combined` log format, for the hit-rate lab (examples/hit_rate/).

Deterministic: the same seed writes the same bytes (only `random.random()` and
`random.Random.seed` are used, whose sequence Python keeps stable). To rerun, from the
repository root:

    python3 bench/hit_rate/generate-sample-log.py            # seed 20240601, the committed log
    python3 bench/hit_rate/generate-sample-log.py --seed 7 --out /tmp/other.log

What is in it, and why:
- Popularity is Zipf (s = 0.8 for articles, 0.9 for images): a small hot set and a long
  tail, so a bigger cache keeps buying hits.
- Sizes are log-normal per kind (articles ~20 KB, images ~45 KB, scripts and styles
  ~60-250 KB), and each URL keeps its size; a few downloads of 1.5-4 MB are larger than
  memcached's default 1 MiB item and always pass through (they weigh on the byte hit
  ratio, not the hit ratio). The distinct storable responses add up to about 170 MiB, so
  the hit ratio keeps moving across the lab's default 4-128 MB sweep.
- Arrivals are Poisson with a midday swell; requests to an article pull its images and
  the site's scripts, as a browser would.
- Noise a real log has: 404 probes, POSTs, HEADs, 301s, 304s (size 0), `-` sizes, IPv6
  clients, user agents with escaped quotes, a TLS handshake sent to the plain-text port,
  and a handful of malformed lines (truncated, garbage), which the lab counts and skips.
"""

import argparse
import math
import os
import random
import time

START = 1717228800  # 2024-06-01 08:00:00 UTC; logged as +0200 local time
SPAN_S = 2 * 3600
TZ = "+0200"
TZ_OFFSET_S = 2 * 3600


class Rng:
    """The few distributions the generator needs, built on random() alone."""

    def __init__(self, seed):
        self.r = random.Random(seed)

    def random(self):
        return self.r.random()

    def below(self, n):
        return min(int(self.r.random() * n), n - 1)

    def pick(self, items):
        return items[self.below(len(items))]

    def normal(self):
        # Box-Muller; 1 - random() is in (0, 1].
        u1 = 1.0 - self.r.random()
        u2 = self.r.random()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def lognormal(self, median, sigma):
        return median * math.exp(sigma * self.normal())

    def exponential(self, mean):
        return -mean * math.log(1.0 - self.r.random())


class Zipf:
    """Ranks 0..n-1 with probability proportional to 1 / (rank + 1)^s."""

    def __init__(self, n, s):
        total = 0.0
        self.cumulative = []
        for rank in range(n):
            total += 1.0 / (rank + 1) ** s
            self.cumulative.append(total)
        self.total = total

    def sample(self, rng):
        target = rng.random() * self.total
        lo, hi = 0, len(self.cumulative) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cumulative[mid] < target:
                lo = mid + 1
            else:
                hi = mid
        return lo


WORDS = (
    "city council budget vote river bridge storm school music festival market housing "
    "energy prices train strike football league election court ruling museum hospital "
    "airport harbour climate report science space launch film review recipe garden"
).split()

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/125.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    'FeedFetcher \\"rss\\" (+https://example.net/bot)',
]


def slug(rng):
    return "-".join(rng.pick(WORDS) for _ in range(3))


def build_catalogue(rng):
    """Every URL the site serves, with its size and kind."""
    articles = []
    for i in range(2600):
        size = int(min(max(rng.lognormal(20_000, 0.5), 3_000), 200_000))
        articles.append((f"/news/{2024_0000 + i}/{slug(rng)}", size))
    images = []
    for i in range(5200):
        size = int(min(max(rng.lognormal(45_000, 0.9), 2_000), 950_000))
        images.append((f"/media/{i:05d}.jpg", size))
    statics = []
    for name, median in [
        ("app.js", 250_000),
        ("vendor.js", 180_000),
        ("site.css", 60_000),
        ("print.css", 8_000),
        ("fonts/serif.woff2", 90_000),
        ("fonts/sans.woff2", 70_000),
        ("logo.svg", 6_000),
        ("favicon.ico", 4_000),
    ]:
        statics.append((f"/static/{name}", int(rng.lognormal(median, 0.1))))
    downloads = []
    for i in range(6):
        size = int(1_500_000 + rng.random() * 2_500_000)
        downloads.append((f"/downloads/report-{2018 + i}.pdf", size))
    sections = [
        ("/", 60_000),
        ("/news/", 45_000),
        ("/sport/", 42_000),
        ("/culture/", 38_000),
        ("/weather/", 25_000),
    ]
    return articles, images, statics, downloads, sections


def client(rng, pools):
    return rng.pick(pools[0] if rng.random() < 0.85 else pools[1])


MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def fmt_time(t):
    # Not strftime's %b, which follows the locale.
    local = time.gmtime(int(t) + TZ_OFFSET_S)
    return (
        f"{local.tm_mday:02d}/{MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {TZ}"
    )


def line(ip, t, method, target, status, size, referer, agent):
    size_field = "-" if size is None else str(size)
    return (
        f'{ip} - - [{fmt_time(t)}] "{method} {target} HTTP/1.1" {status} {size_field} '
        f'"{referer}" "{agent}"\n'
    )


def generate(seed, target_lines):
    rng = Rng(seed)
    articles, images, statics, downloads, sections = build_catalogue(rng)
    article_pop = Zipf(len(articles), 0.8)
    image_pop = Zipf(len(images), 0.9)
    v4 = [f"{rng.below(223) + 1}.{rng.below(256)}.{rng.below(256)}.{rng.below(254) + 1}" for _ in range(900)]
    v6 = [f"2001:db8:{rng.below(65536):x}::{rng.below(65536):x}" for _ in range(150)]
    pools = (v4, v6)
    site = "https://news.example.com"

    # Visits: a first page, then what a browser fetches for it. Mean gap chosen so the
    # lines fill about two hours.
    out = []
    t = float(START)
    mean_gap = SPAN_S / (target_lines / 3.2)
    while len(out) < target_lines:
        # A midday swell: more traffic in the second hour.
        swell = 1.0 + 0.5 * math.sin(math.pi * (t - START) / SPAN_S)
        t += rng.exponential(mean_gap / swell)
        ip = client(rng, pools)
        agent = rng.pick(AGENTS)
        u = rng.random()
        if u < 0.03:
            # Probes for things the site does not have.
            probe = rng.pick(["/wp-login.php", "/.env", "/xmlrpc.php", "/admin/", "/.git/config"])
            if rng.random() < 0.5:
                probe = f"/old/{rng.below(5000)}.html"
            out.append(line(ip, t, "GET", probe, 404, 150 + rng.below(400), "-", agent))
            continue
        if u < 0.06:
            target = rng.pick(["/api/comments", "/login", "/newsletter/subscribe"])
            status = rng.pick([200, 201, 302, 403])
            out.append(line(ip, t, "POST", target, status, rng.below(3000), site + "/", agent))
            continue
        if u < 0.07:
            page = articles[article_pop.sample(rng)][0]
            out.append(line(ip, t, "HEAD", page, 200, 0, "-", "Mozilla/5.0 (compatible; LinkChecker/1.0)"))
            continue
        if u < 0.075:
            # The old article address, without the slug.
            page = articles[article_pop.sample(rng)][0].rsplit("/", 1)[0]
            out.append(line(ip, t, "GET", page, 301, 169, "-", agent))
            continue
        if u < 0.078:
            d = downloads[rng.below(len(downloads))]
            out.append(line(ip, t, "GET", d[0], 200, d[1], site + "/news/", agent))
            continue
        if u < 0.2:
            page, size = rng.pick(sections)
        else:
            page, size = articles[article_pop.sample(rng)]
        # A browser that has it already revalidates.
        if rng.random() < 0.06:
            out.append(line(ip, t, "GET", page, 304, 0, site + "/", agent))
        else:
            out.append(line(ip, t, "GET", page, 200, size, site + "/", agent))
        referer = site + page
        # Assets of the page, a few hundred milliseconds later.
        for _ in range(rng.below(4)):
            t += rng.exponential(0.15)
            name, size = images[image_pop.sample(rng)]
            status, logged = (304, 0) if rng.random() < 0.05 else (200, size)
            out.append(line(ip, t, "GET", name, status, logged, referer, agent))
        if rng.random() < 0.25:
            t += rng.exponential(0.1)
            name, size = rng.pick(statics)
            if rng.random() < 0.3:
                out.append(line(ip, t, "GET", name, 304, None, referer, agent))
            else:
                out.append(line(ip, t, "GET", name, 200, size, referer, agent))

    # The lines a real log also has, at fixed places so that reruns agree.
    oddities = [
        # A TLS handshake sent to the plain-text port: a valid line, not a request.
        '198.51.100.23 - - [{}] "\\x16\\x03\\x01\\x00\\xA5\\x01\\x00\\x00\\xA1\\x03\\x03" 400 157 "-" "-"\n',
        # nginx's line for a connection that sent nothing.
        '203.0.113.9 - - [{}] "-" 400 0 "-" "-"\n',
        # An escaped quote in the request line (nginx writes \\x22).
        '192.0.2.77 - - [{}] "GET /search?q=\\x22budget\\x22 HTTP/1.1" 200 5120 "-" "curl/8.5.0"\n',
        # Malformed: truncated mid-write, no time, garbage, an unterminated request.
        '192.0.2.1 - - [{}] "GET /news/ HTT\n',
        '192.0.2.2 - - "GET / HTTP/1.1" 200 1000 "-" "-"\n',
        "\x00\x00\x00 log rotated \x00\n",
        '192.0.2.3 - - [{}] "GET /weather/ HTTP/1.1" two-hundred 25000 "-" "-"\n',
        "2001:db8::dead - - [{}] \"GET /sport/ HTTP/1.1\" 200\n",
    ]
    for k, oddity in enumerate(oddities):
        at = len(out) * (k + 1) // (len(oddities) + 1)
        stamp = out[at].split("[", 1)[1].split("]", 1)[0]
        out.insert(at, oddity.replace("{}", stamp))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--lines", type=int, default=13000)
    parser.add_argument("--out", default=os.path.join(here, "sample-access.log"))
    args = parser.parse_args()
    lines = generate(args.seed, args.lines)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    print(f"wrote {len(lines)} lines, {os.path.getsize(args.out)} bytes to {args.out}")


if __name__ == "__main__":
    main()
