//! What a sweep shows: a table on stdout, CSV and JSON for scripts, an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;

use super::sweep::{NearTier, Point};
use super::trace::{LogCounts, Trace};

/// A CSV column: its name and how a point's cell is written.
pub type Column = (&'static str, fn(&Point) -> String);

/// The CSV columns, in order, and how each is written. The JSON output has the same names
/// (it serialises [`Point`]); a new axis adds its column here.
pub const COLUMNS: &[Column] = &[
    ("lifetime_s", |p| p.spec.lifetime_s.to_string()),
    ("memory_mb", |p| opt(p.spec.memory_mb)),
    ("near_bytes", |p| opt(p.spec.near.map(|n| n.bytes))),
    ("near_staleness_ms", |p| {
        opt(p.spec.near.map(|n| n.staleness_ms))
    }),
    ("requests", |p| p.requests.to_string()),
    ("hits", |p| p.hits.to_string()),
    ("hit_ratio", |p| format!("{:.4}", p.hit_ratio)),
    ("ideal_hit_ratio", |p| format!("{:.4}", p.ideal_hit_ratio)),
    ("bytes", |p| p.bytes.to_string()),
    ("hit_bytes", |p| p.hit_bytes.to_string()),
    ("byte_hit_ratio", |p| format!("{:.4}", p.byte_hit_ratio)),
    ("ideal_byte_hit_ratio", |p| {
        format!("{:.4}", p.ideal_byte_hit_ratio)
    }),
    ("origin_calls", |p| p.origin_calls.to_string()),
    ("ideal_origin_calls", |p| p.ideal_origin_calls.to_string()),
    ("evictions", |p| opt(p.evictions)),
    ("items", |p| opt(p.items)),
    ("malloced_mb", |p| {
        p.malloced_mb.map(|m| format!("{m:.1}")).unwrap_or_default()
    }),
    ("store_failures", |p| p.store_failures.to_string()),
    ("backend_errors", |p| p.backend_errors.to_string()),
    ("expired", |p| p.expired.to_string()),
    ("near_hits", |p| p.near_hits.to_string()),
    ("near_hit_ratio", |p| format!("{:.4}", p.near_hit_ratio)),
    ("near_weight", |p| opt(p.near_weight)),
    ("near_entries", |p| opt(p.near_entries)),
    ("servers", |p| p.servers.to_string()),
    ("memcached_ops", |p| opt(p.memcached_ops)),
    ("ops_per_request", |p| {
        p.ops_per_request
            .map(|r| format!("{r:.4}"))
            .unwrap_or_default()
    }),
    ("busiest_share", |p| {
        p.busiest_share
            .map(|r| format!("{r:.4}"))
            .unwrap_or_default()
    }),
    ("seconds", |p| format!("{:.3}", p.seconds)),
    ("requests_per_s", |p| format!("{:.0}", p.requests_per_s)),
    ("p50_us", |p| p.p50_us.to_string()),
    ("p99_us", |p| p.p99_us.to_string()),
    ("max_lag_ms", |p| p.max_lag_ms.to_string()),
];

fn opt(value: Option<u64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The CSV text: a header line, then one line per point (every field a number or empty,
/// so nothing needs quoting).
pub fn csv(points: &[Point]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    out.push_str(&names.join(","));
    out.push('\n');
    for point in points {
        let cells: Vec<String> = COLUMNS.iter().map(|(_, cell)| cell(point)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// What the JSON output describes the trace with.
#[derive(Debug, Serialize)]
pub struct TraceSummary {
    /// The trace's label (the log's path, or the synthetic stream's parameters).
    pub source: String,
    /// Requests replayed.
    pub requests: usize,
    /// Distinct paths.
    pub distinct_paths: usize,
    /// Trace time from the first request to the last, seconds.
    pub span_s: f64,
    /// Body bytes of every request.
    pub bytes: u64,
    /// Bytes of the distinct storable responses (what an infinite cache would hold).
    pub working_set_bytes: u64,
    /// For a log: what its lines were.
    pub log: Option<LogCounts>,
}

impl TraceSummary {
    /// Summarises `trace` for entries of up to `max_entry` bytes.
    pub fn new(trace: &Trace, max_entry: u64) -> Self {
        Self {
            source: trace.label.clone(),
            requests: trace.requests.len(),
            distinct_paths: trace.paths.len(),
            span_s: trace.span_ms() as f64 / 1000.0,
            bytes: trace.total_bytes(),
            working_set_bytes: trace.working_set_bytes(max_entry),
            log: trace.log.clone(),
        }
    }

    /// The lines printed above the table.
    pub fn describe(&self) -> String {
        let mut out = format!("trace     {}\n", self.source);
        if let Some(log) = &self.log {
            let _ = writeln!(
                out,
                "lines     {} read: {} GET and {} HEAD replayed ({} of them 304/206, replayed \
                 as whole GETs); skipped: {} other methods, {} unparsed request lines, {} 1xx, \
                 {} malformed{}",
                log.lines,
                log.get,
                log.head,
                log.partial_or_not_modified,
                log.other_methods,
                log.unparsed_requests,
                log.informational,
                log.malformed,
                if log.beyond_limit {
                    "; stopped at --max-requests"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            out,
            "requests  {} over {} paths, {} of trace time; {} of bodies, {} of distinct \
             storable responses",
            self.requests,
            self.distinct_paths,
            duration(self.span_s),
            mib(self.bytes),
            mib(self.working_set_bytes),
        );
        out
    }
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub struct Document<'a, S: Serialize> {
    /// The trace.
    pub trace: &'a TraceSummary,
    /// How the replay ran.
    pub setup: &'a S,
    /// One object per point, the CSV's columns as fields.
    pub points: &'a [Point],
}

/// The table's header line.
pub fn table_header() -> String {
    format!(
        "{:>9} {:>8} {:>10} {:>9} {:>7} {:>9} {:>7} {:>8} {:>9} {:>7} {:>8} {:>7} {:>9} {:>7} {:>8} {:>8}",
        "lifetime",
        "memory",
        "near",
        "hit ratio",
        "ideal",
        "byte hit",
        "ideal",
        "origin",
        "evictions",
        "items",
        "malloced",
        "store",
        "near hits",
        "ops/req",
        "busiest",
        "req/s"
    )
}

/// One table row.
pub fn table_row(p: &Point) -> String {
    let memory = p
        .spec
        .memory_mb
        .map_or_else(|| "-".to_string(), |m| format!("{m} MB"));
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let fraction = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    format!(
        "{:>9} {:>8} {:>10} {:>9.4} {:>7.4} {:>9.4} {:>7.4} {:>8} {:>9} {:>7} {:>8} {:>7} {:>9} {:>7} {:>8} {:>8.0}",
        duration(p.spec.lifetime_s as f64),
        memory,
        near_label(p.spec.near),
        p.hit_ratio,
        p.ideal_hit_ratio,
        p.byte_hit_ratio,
        p.ideal_byte_hit_ratio,
        p.origin_calls,
        opt(p.evictions),
        opt(p.items),
        p.malloced_mb
            .map_or_else(|| "-".to_string(), |m| format!("{m:.0} MB")),
        p.store_failures,
        if p.spec.near.is_some() {
            format!("{:.4}", p.near_hit_ratio)
        } else {
            "-".to_string()
        },
        fraction(p.ops_per_request),
        fraction(p.busiest_share),
        p.requests_per_s,
    )
}

/// A near tier as `--near-cache` writes it: `off`, `8M,1s`, `512K,250ms`.
pub fn near_label(near: Option<NearTier>) -> String {
    let Some(tier) = near else {
        return "off".to_string();
    };
    let size = match tier.bytes {
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    };
    let staleness = match tier.staleness_ms {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    };
    format!("{size},{staleness}")
}

/// What the table's columns mean, printed under it.
pub const TABLE_LEGEND: &str = "\
hit ratio: requests answered without an origin call; byte hit ratio: their share of body
bytes; ideal: the same for an infinite cache with the same lifetime and entry-size limit,
computed from the trace; origin: origin calls; evictions, items and malloced: memcached's
stats at the end (malloced above memory: memcached gives each slab class in use a 1 MiB
page whatever -m says); store: entries memcached refused (store failures); near: the near
tier (size,staleness); near hits: requests it answered without memcached, share of all
requests; ops/req: memcached operations per request, from the servers' own counters
(cmd_get counts keys: a lookup is at most 2, lookups merged into one line share the
namespace generation; sets, touches, deletes, incr/decr count 1 each; the
lab's expiry purges, measured, left out); busiest: the busiest server's share of those operations.";

/// `90 s`, `15 min`, `2 h 5 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 120 {
        format!("{s} s")
    } else if s % 3600 == 0 {
        format!("{} h", s / 3600)
    } else if s < 7200 && s % 60 != 0 {
        format!("{:.1} min", seconds / 60.0)
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Says which points had memcached take more memory than `-m` (a 1 MiB page for each
/// slab class in use, whatever the limit), if any did.
fn over_limit_note(points: &[Point]) -> Option<String> {
    let mut over: Vec<(u64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.spec.memory_mb?, p.malloced_mb?)))
        .filter(|&(memory, malloced)| malloced > memory as f64 * 1.1)
        .collect();
    over.sort_by_key(|&(memory, _)| memory);
    over.dedup_by_key(|(memory, _)| *memory);
    let largest = over.iter().map(|&(_, m)| m).reduce(f64::max)?;
    let sizes: Vec<String> = over.iter().map(|(m, _)| m.to_string()).collect();
    Some(format!(
        "At -m {} MB memcached took up to {largest:.0} MB: it gives every slab class in use a 1 MiB page, whatever -m says.",
        sizes.join(", ")
    ))
}

/// Line colours, one per line (then reused).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// One line of the chart: a lifetime and a near tier, across memory sizes.
type Line = (u64, Option<NearTier>);

/// Draws hit ratio and byte hit ratio against memcached memory, one solid line per
/// lifetime and its ideal as a dashed line of the same colour, and, when the servers
/// reported their operations, a third panel of memcached operations per request with one
/// line per combination of lifetime and near tier.
///
/// The near tier's lines are kept off the first two panels: its hits are hits either way,
/// so its lines lay on top of the others wherever memcached does not evict (it differs
/// only where memcached drops entries the tier still answers within its staleness bound,
/// a few hundredths at most on the runs tried), and two or three near-tier sizes per
/// lifetime hid the lines and ideals under them and a legend twice as long. Those panels
/// draw each lifetime at the sweep's first near-tier value (`off` when the list starts
/// with it; the legend says which); the table and CSV have every point, and the third
/// panel is where the near tier shows.
pub fn write_svg(path: &Path, title: &str, points: &[Point]) -> Result<(), String> {
    // Memory sizes are usually doublings: the x axis is log2(MB), labelled in MB.
    let memories: Vec<f64> = points
        .iter()
        .filter_map(|p| p.spec.memory_mb)
        .map(|m| (m as f64).log2())
        .collect();
    let (Some(lo), Some(hi)) = (
        memories.iter().copied().reduce(f64::min),
        memories.iter().copied().reduce(f64::max),
    ) else {
        return Err("no memory sizes to chart (running servers have no memory axis)".into());
    };
    let (lo, hi) = (lo - 0.25, hi + 0.25);
    // One label per doubling.
    let x_labels = ((hi.floor() - lo.ceil()) as usize + 1).max(2);
    // Lines in sweep order (lifetime, then near tier).
    let mut lines: Vec<Line> = Vec::new();
    for p in points {
        let line = (p.spec.lifetime_s, p.spec.near);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    let several_tiers = lines.iter().any(|&(_, near)| near != lines[0].1);
    let label_of = |&(lifetime, near): &Line| {
        let lifetime = duration(lifetime as f64);
        if several_tiers {
            format!("lifetime {lifetime}, near {}", near_label(near))
        } else {
            format!("lifetime {lifetime}")
        }
    };
    // The ratio panels' lines: each lifetime's first, with its index (for its colour).
    let mut ratio_lines: Vec<(usize, Line)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !ratio_lines
            .iter()
            .any(|(_, (lifetime, _))| *lifetime == line.0)
        {
            ratio_lines.push((i, *line));
        }
    }
    let with_ops = points.iter().all(|p| p.ops_per_request.is_some());
    let most_ops = points
        .iter()
        .filter_map(|p| p.ops_per_request)
        .fold(0.1f64, f64::max);

    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let width = if with_ops { 1600 } else { 1100 };
        let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 18))?;
        let (root, footer) = root.split_vertically(470);
        if let Some(note) = over_limit_note(points) {
            footer.draw_text(
                &note,
                &("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
                (20, 2),
            )?;
        }
        let panels = root.split_evenly((1, if with_ops { 3 } else { 2 }));
        type Metric = fn(&Point) -> f64;
        let metrics: [(&str, Metric, Metric); 2] = [
            ("hit ratio", |p| p.hit_ratio, |p| p.ideal_hit_ratio),
            (
                "byte hit ratio",
                |p| p.byte_hit_ratio,
                |p| p.ideal_byte_hit_ratio,
            ),
        ];
        for (panel, (name, measured, ideal)) in panels.iter().zip(metrics) {
            let mut chart = ChartBuilder::on(panel)
                .caption(name, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d(lo..hi, 0f64..1f64)?;
            chart
                .configure_mesh()
                .x_desc("cache memory, MB (memcached -m)")
                .y_desc(name)
                .x_labels(x_labels)
                .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
                .y_labels(11)
                .y_label_formatter(&|v| format!("{v:.1}"))
                .light_line_style(WHITE)
                .draw()?;
            for (i, line_spec) in &ratio_lines {
                let colour = COLOURS[i % COLOURS.len()];
                let line = series(points, line_spec, measured);
                chart
                    .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
                    .label(label_of(line_spec))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
                    });
                chart.draw_series(
                    line.iter()
                        .map(|&point| Circle::new(point, 3, colour.filled())),
                )?;
                let lifetime = line_spec.0;
                if let Some(best) = points
                    .iter()
                    .find(|p| p.spec.lifetime_s == lifetime)
                    .map(ideal)
                {
                    let label = duration(lifetime as f64);
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(lo, best), (hi, best)],
                            6,
                            4,
                            colour.stroke_width(1),
                        ))?
                        .label(format!("ideal, lifetime {label}"))
                        .legend(move |(x, y)| {
                            DashedPathElement::new(
                                vec![(x, y), (x + 22, y)],
                                4,
                                3,
                                colour.stroke_width(1),
                            )
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
        if let Some(panel) = panels.get(2).filter(|_| with_ops) {
            let name = "memcached operations per request";
            let legend_clear = (1.0 - (lines.len() as f64 * 15.0 + 30.0) / 370.0).max(0.3);
            let mut chart = ChartBuilder::on(panel)
                .caption(name, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(55)
                // Headroom above the lines for the legend: 15 px a line of the ~370 px
                // plot, and a margin.
                .build_cartesian_2d(lo..hi, 0f64..most_ops / legend_clear)?;
            chart
                .configure_mesh()
                .x_desc("cache memory, MB (memcached -m)")
                .y_desc("operations per request (gets count keys)")
                .x_labels(x_labels)
                .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
                .y_labels(11)
                .y_label_formatter(&|v| format!("{v:.2}"))
                .light_line_style(WHITE)
                .draw()?;
            for (i, line_spec) in lines.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let line = series(points, line_spec, |p| p.ops_per_request.unwrap_or(0.0));
                chart
                    .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
                    .label(label_of(line_spec))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
                    });
                chart.draw_series(
                    line.iter()
                        .map(|&point| Circle::new(point, 3, colour.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// One line's points, `(log2(memory MB), metric)`, by memory.
fn series(points: &[Point], line: &Line, metric: impl Fn(&Point) -> f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| (p.spec.lifetime_s, p.spec.near) == *line)
        .filter_map(|p| Some(((p.spec.memory_mb? as f64).log2(), metric(p))))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}
