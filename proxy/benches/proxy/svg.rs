//! The benchmark's plot: latency at the fixed rate and CPU per request, as grouped bars.

use std::fmt::Write as _;

use crate::report::{Load, Measured};

/// Latency at the fixed rate and CPU per request, as grouped bars.
pub fn svg(all: &[Measured]) -> String {
    let fixed: Vec<&Measured> = all.iter().filter(|m| m.load == Load::FixedRate).collect();
    let (width, height, left, top, plot_h) = (760.0, 360.0, 60.0, 40.0, 240.0);
    let max_ms = fixed
        .iter()
        .map(|m| m.outcome.percentiles_us[2] as f64 / 1000.0)
        .fold(0.1_f64, f64::max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">Latency at {} requests/s (ms): p50, p99, p99.9</text>\n",
        crate::RATE
    );
    let colours = ["#4c78a8", "#f58518", "#e45756"];
    for (i, (name, colour)) in ["p50", "p99", "p99.9"].iter().zip(colours).enumerate() {
        let x = width - 200.0 + i as f64 * 60.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"19\">{name}</text>",
            x + 16.0
        );
    }
    let group = (width - left - 20.0) / fixed.len().max(1) as f64;
    for (g, m) in fixed.iter().enumerate() {
        let x0 = left + g as f64 * group + 10.0;
        for (i, us) in m.outcome.percentiles_us.iter().enumerate() {
            let v = *us as f64 / 1000.0;
            let h = v / max_ms * plot_h;
            let x = x0 + i as f64 * (group - 20.0) / 3.0;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\">{v:.2}</text>",
                top + plot_h - h,
                (group - 20.0) / 3.0 - 2.0,
                colours[i],
                top + plot_h - h - 3.0
            );
        }
        let cpu = if m.processes.is_empty() {
            "no proxy".to_string()
        } else {
            let total: f64 = m.processes.iter().map(|p| p.cpu_us_per_request).sum();
            format!("proxy CPU {total:.1} µs/req")
        };
        let _ = writeln!(
            out,
            "<text x=\"{x0:.1}\" y=\"{:.1}\">{}</text><text x=\"{x0:.1}\" y=\"{:.1}\" font-size=\"10\">{cpu}</text>",
            top + plot_h + 18.0,
            m.setup.label(),
            top + plot_h + 34.0
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n</svg>",
        top + plot_h,
        width - 10.0,
        top + plot_h
    );
    out
}
