//! The bench's report: medians per path and shape, ratios to direct,
//! CPU per request, memory, per-call feature ratios and DESIGN.md's aims.

use std::fmt::Write as _;

use super::{
    C1, C32, C32_NEW, Cpu, DIRECT_HTTP, DIRECT_HTTPS, Measurement, Memory, Options, Results,
    SCENARIOS, Shape, Via,
};
use crate::bench::{median, oha, origin};

/// A row's numbers, medians over rounds.
struct Row {
    label: String,
    shape: Shape,
    rps: f64,
    ratio: f64,
    /// Lowest and highest per-round ratio.
    ratio_range: (f64, f64),
    p50_ms: f64,
    p99_ms: f64,
    added_p50_us: Option<f64>,
    /// CPU µs per request: client, proxy, origin.
    cpu_us: [Option<f64>; 3],
    /// The ratio the CPU cost alone predicts for a machine whose CPUs are
    /// the limit: (client + origin CPU per request, direct) / (client +
    /// proxy + origin CPU per request, this path).
    cost_ratio: Option<f64>,
    /// The key of the row's baseline.
    baseline: &'static str,
    failed: u64,
    rounds: usize,
}

fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in SCENARIOS {
        for shape in s.shapes {
            let Some(ms) = results.get(&(s.key, *shape)) else {
                continue;
            };
            let base = results.get(&(s.baseline(), *shape));
            let per_round = |f: &dyn Fn(&Measurement, &Measurement) -> f64| -> Option<f64> {
                let base = base?;
                let v: Vec<f64> = ms.iter().zip(base).map(|(m, b)| f(m, b)).collect();
                (!v.is_empty()).then(|| median(v))
            };
            let med = |f: &dyn Fn(&Measurement) -> f64| median(ms.iter().map(f).collect());
            rows.push(Row {
                label: s.label.to_string(),
                shape: *shape,
                rps: med(&|m| m.report.rps),
                ratio: per_round(&|m, b| m.report.rps / b.report.rps).unwrap_or(f64::NAN),
                ratio_range: base.map_or((f64::NAN, f64::NAN), |base| {
                    let v = ms
                        .iter()
                        .zip(base)
                        .map(|(m, b)| m.report.rps / b.report.rps);
                    (
                        v.clone().fold(f64::INFINITY, f64::min),
                        v.fold(f64::NEG_INFINITY, f64::max),
                    )
                }),
                p50_ms: med(&|m| m.report.p50_ms),
                p99_ms: med(&|m| m.report.p99_ms),
                added_p50_us: (s.via != Via::Direct)
                    .then(|| per_round(&|m, b| (m.report.p50_ms - b.report.p50_ms) * 1000.0))
                    .flatten(),
                cpu_us: {
                    let per_req = |f: &dyn Fn(&Cpu) -> Option<f64>| {
                        f(&ms[0].cpu).map(|_| {
                            med(&|m| f(&m.cpu).unwrap_or(0.0) * 1e6 / m.report.ok.max(1) as f64)
                        })
                    };
                    [
                        per_req(&|c| c.client),
                        per_req(&|c| c.proxy),
                        per_req(&|c| Some(c.origin)),
                    ]
                },
                cost_ratio: None,
                baseline: s.baseline(),
                failed: ms.iter().map(|m| m.report.failed).sum(),
                rounds: ms.len(),
            });
        }
    }
    let cost =
        |r: &Row| -> Option<f64> { Some(r.cpu_us[0]? + r.cpu_us[1].unwrap_or(0.0) + r.cpu_us[2]?) };
    let costs: Vec<Option<f64>> = rows.iter().map(cost).collect();
    for i in 0..rows.len() {
        let base = SCENARIOS
            .iter()
            .find(|s| s.key == rows[i].baseline)
            .map(|s| s.label);
        let j = rows
            .iter()
            .position(|b| Some(b.label.as_str()) == base && b.shape == rows[i].shape);
        rows[i].cost_ratio = j.and_then(|j| Some(costs[j]? / costs[i]?));
    }
    rows
}

fn ratio_of(results: &Results, key: &str, shape: Shape, base_key: &str, base_shape: Shape) -> f64 {
    let (Some(ms), Some(bs)) = (
        results.get(&(key, shape)),
        results.get(&(base_key, base_shape)),
    ) else {
        return f64::NAN;
    };
    median(
        ms.iter()
            .zip(bs)
            .map(|(m, b)| m.report.rps / b.report.rps)
            .collect(),
    )
}

pub(super) fn report(opts: &Options, results: &Results, memory: &[Memory]) {
    let rows = rows(results);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nGET {} ({} bytes) from nginx in a network namespace; {} rounds of {} s per row, medians.\n\
         ratio = rps through the path / rps direct (same scheme and shape, same round): median (lowest-highest) over rounds.\n\
         CPU-bound ratio = (client + nginx CPU per request, direct) / (client + proxy + nginx CPU per request, this path):\n\
         the ratio a machine whose CPUs are the only limit would show; steadier than rps on a shared machine.\n",
        oha::PATH,
        origin::BODY_BYTES,
        opts.rounds,
        opts.seconds
    );
    let _ = writeln!(
        t,
        "| path | concurrency | req/s | ratio to direct | p50 ms | p99 ms | p50 added µs | CPU µs/req client | CPU µs/req proxy | CPU µs/req nginx | CPU-bound ratio |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
        };
        let failed = if r.failed > 0 {
            format!(" ({} failed in {} runs)", r.failed, r.rounds)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "| {}{failed} | {} | {:.0} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            r.label,
            r.shape.label(),
            r.rps,
            if r.ratio.is_nan() {
                "-".to_string()
            } else if r.rounds > 1 && is_baseline(&r.label) {
                format!("{:.2}", r.ratio)
            } else if r.rounds > 1 {
                format!(
                    "{:.2} ({:.2}-{:.2})",
                    r.ratio, r.ratio_range.0, r.ratio_range.1
                )
            } else {
                format!("{:.2}", r.ratio)
            },
            r.p50_ms,
            r.p99_ms,
            opt(r.added_p50_us, 0),
            opt(r.cpu_us[0], 1),
            opt(r.cpu_us[1], 1),
            opt(r.cpu_us[2], 1),
            opt(r.cost_ratio, 2),
        );
    }
    let all: Vec<&Measurement> = results.values().flatten().collect();
    if !all.is_empty() {
        let share = |f: &dyn Fn(&Cpu) -> f64| {
            let v: Vec<f64> = all.iter().map(|m| 100.0 * f(&m.cpu) / m.cpu.wall).collect();
            let max = v.iter().copied().fold(0.0, f64::max);
            (median(v), max)
        };
        let (other, other_max) = share(&|c| c.other());
        let (steal, steal_max) = share(&|c| c.machine_steal);
        let _ = writeln!(
            t,
            "\nDuring the measurements, CPU used by anything but client, proxy and nginx \
             (other processes, the bench, enforcer start-up and teardown): median {other:.0}% \
             of one CPU, max {other_max:.0}%; stolen by the hypervisor: median {steal:.0}%, max {steal_max:.0}%."
        );
    }
    let _ = writeln!(t, "\nMemory (resident set, MB):\n");
    let _ = writeln!(
        t,
        "| proxy | idle | max at 32 keep-alive | max over the bench | how |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---|");
    let mb = |k: u64| k as f64 / 1024.0;
    for m in memory {
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            m.name,
            mb(m.idle_kib),
            mb(m.max_c32_kib),
            mb(m.max_kib),
            m.note
        );
    }
    // The aims from DESIGN.md, as far as this run measured them.
    let get = |key: &str, shape: Shape| added_p50(&rows, key, shape);
    let mut aims: Vec<(String, String, bool)> = Vec::new();
    let mut ratio_aim = |what: &str, key: &str, shape: Shape, base: (&str, Shape), min: f64| {
        let r = ratio_of(results, key, shape, base.0, base.1);
        if !r.is_nan() {
            let label = SCENARIOS.iter().find(|s| s.key == key).map(|s| s.label);
            let cost = rows
                .iter()
                .find(|row| Some(row.label.as_str()) == label && row.shape == shape)
                .filter(|row| row.baseline == base.0 && shape == base.1)
                .and_then(|row| row.cost_ratio)
                .map_or_else(String::new, |c| format!(" (CPU-bound {c:.2})"));
            aims.push((
                format!("{what} >= {min}"),
                format!("{r:.3}{cost}"),
                r >= min,
            ));
        }
    };
    ratio_aim(
        "intercepted HTTPS, 32 keep-alive",
        "enforcer-intercept",
        C32,
        (DIRECT_HTTPS, C32),
        0.5,
    );
    ratio_aim(
        "plain HTTP, 32 keep-alive",
        "enforcer-http",
        C32,
        (DIRECT_HTTP, C32),
        0.5,
    );
    ratio_aim(
        "pass-through HTTPS, 32 keep-alive",
        "enforcer-pass",
        C32,
        (DIRECT_HTTPS, C32),
        0.8,
    );
    ratio_aim(
        "intercepted, new connection per request, 32 (vs direct, new connection per request)",
        "enforcer-intercept",
        C32_NEW,
        (DIRECT_HTTPS, C32_NEW),
        0.35,
    );
    ratio_aim(
        "intercepted, new connection per request, 32 (vs direct keep-alive)",
        "enforcer-intercept",
        C32_NEW,
        (DIRECT_HTTPS, C32),
        0.35,
    );
    for (what, key) in [
        ("pass-through", "enforcer-pass"),
        ("intercepted HTTPS", "enforcer-intercept"),
        ("plain HTTP", "enforcer-http"),
    ] {
        if let Some(us) = get(key, C1) {
            aims.push((
                format!("p50 added at 1 connection, {what} < 100 µs"),
                format!("{us:.0} µs"),
                us < 100.0,
            ));
        }
    }
    if let Some(m) = memory.iter().find(|m| m.name == "enforcer") {
        aims.push((
            "enforcer RSS idle < 20 MB".into(),
            format!("{:.1} MB", mb(m.idle_kib)),
            mb(m.idle_kib) < 20.0,
        ));
        aims.push((
            "enforcer RSS at 32 concurrent < 60 MB".into(),
            format!("{:.1} MB", mb(m.max_c32_kib)),
            mb(m.max_c32_kib) < 60.0,
        ));
    }
    // What the per-call features cost, side by side in this run.
    let mut features = Vec::new();
    for (what, key, base) in [
        (
            "audited / --no-audit (intercepted HTTPS)",
            "enforcer-intercept",
            "enforcer-noaudit",
        ),
        (
            "cost-checked / plain allowed (intercepted HTTPS, both audited)",
            "enforcer-cost",
            "enforcer-intercept",
        ),
        (
            "profile rule with field constraints / plain path rule (intercepted HTTPS)",
            "enforcer-profile",
            "enforcer-intercept",
        ),
    ] {
        for shape in [C1, C32] {
            let r = ratio_of(results, key, shape, base, shape);
            if !r.is_nan() {
                features.push(format!("| {what} | {} | {r:.2} |", shape.label()));
            }
        }
    }
    if !features.is_empty() {
        let _ = writeln!(
            t,
            "\nPer-call features (ratio of requests/s, same round):\n"
        );
        let _ = writeln!(t, "| comparison | concurrency | ratio |");
        let _ = writeln!(t, "|---|---|---:|");
        for f in features {
            let _ = writeln!(t, "{f}");
        }
    }
    let _ = writeln!(t, "\nAims (DESIGN.md):\n");
    let _ = writeln!(t, "| aim | measured | |");
    let _ = writeln!(t, "|---|---:|---|");
    for (what, v, ok) in aims {
        let _ = writeln!(
            t,
            "| {what} | {v} | {} |",
            if ok { "met" } else { "**missed**" }
        );
    }
    println!("{t}");
}

/// Whether a row is a baseline (its ratio is 1 by definition).
fn is_baseline(label: &str) -> bool {
    SCENARIOS
        .iter()
        .any(|s| s.via == Via::Direct && s.label == label)
}

/// The median added p50 of a row (µs), if measured.
fn added_p50(rows: &[Row], key: &str, shape: Shape) -> Option<f64> {
    let label = SCENARIOS.iter().find(|s| s.key == key)?.label;
    rows.iter()
        .find(|r| r.label == label && r.shape == shape)
        .and_then(|r| r.added_p50_us)
}
