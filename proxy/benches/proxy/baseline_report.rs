//! The benchmark report's comparison with a baseline build of braid-proxy (`make bench
//! BASELINE=<git revision>`): each braid setup's CPU per request against the same setup run
//! with the baseline binary, in the same run, in turns.

use std::fmt::Write as _;

use crate::report::{Load, Measured, Setup};

/// CPU per request of each process of `setup` under `load`.
fn cpu_per_request(all: &[Measured], setup: Setup, load: Load) -> Vec<f64> {
    all.iter()
        .filter(|m| m.setup == setup && m.load == load)
        .flat_map(|m| m.processes.iter().map(|p| p.cpu_us_per_request))
        .collect()
}

/// The report's section on the baseline build at `baseline`.
pub fn section(baseline: &str, all: &[Measured]) -> String {
    let mut out = String::new();
    let cost = |setup: Setup, load: Load| cpu_per_request(all, setup, load);
    let _ = writeln!(
        out,
        "\n## Against the baseline build\n\nThe same setups with `{baseline}` \
         (`BRAID_BASELINE_PROXY`), in the same run, in turns: CPU per request of this build \
         and of the baseline (ratio).\n"
    );
    for load in [Load::FixedRate, Load::Closed, Load::Http2] {
        let pairs = [
            ("one hop", Setup::BraidHop, Setup::BaselineHop),
            ("pair", Setup::BraidPair, Setup::BaselinePair),
        ];
        let text: Vec<String> = pairs
            .iter()
            .flat_map(|(name, now, before)| {
                let (now, before) = (cost(*now, load), cost(*before, load));
                let hops = if now.len() == 2 {
                    vec!["client hop", "server hop"]
                } else {
                    vec![""]
                };
                now.into_iter()
                    .zip(before)
                    .zip(hops)
                    .map(move |((n, b), hop)| {
                        let what = if hop.is_empty() {
                            name.to_string()
                        } else {
                            format!("{name} {hop}")
                        };
                        format!("{what} {n:.1} vs {b:.1} µs (×{:.3})", n / b)
                    })
            })
            .collect();
        let _ = writeln!(out, "- {}: {}.", load.title(), text.join("; "));
    }
    out
}
