//! What a scenario found, and the summary printed at the end (Markdown, so it can go into
//! docs/BENCHMARKS.md as it is).

use std::fmt::Write as _;
use std::time::Duration;

/// One scenario's result.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub scenario: String,
    /// `figure: value` lines for the summary.
    pub figures: Vec<(String, String)>,
    /// Checks that failed, each a sentence; empty when the scenario passed.
    pub failures: Vec<String>,
    /// A table of its own (the attacks), in Markdown.
    pub table: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    pub(crate) fn new(scenario: &str) -> Outcome {
        Outcome {
            scenario: scenario.to_owned(),
            ..Outcome::default()
        }
    }

    pub(crate) fn failed(scenario: &str, why: String) -> Outcome {
        let mut o = Outcome::new(scenario);
        o.failures.push(why);
        o
    }

    pub(crate) fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.figures.push((name.to_owned(), value.to_string()));
    }

    /// Records a failure unless `ok`.
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let why = what();
            eprintln!("  FAILED: {why}");
            self.failures.push(why);
        }
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub(crate) fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Thousands separators, for counts in the tables.
pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn render(outcomes: &[Outcome], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## chaos summary\n\n{header}\n");
    let _ = writeln!(out, "| scenario | result | time | figures |");
    let _ = writeln!(out, "|---|---|---|---|");
    for o in outcomes {
        let figures: Vec<String> = o.figures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} s | {} |",
            o.scenario,
            if o.failures.is_empty() {
                "ok"
            } else {
                "**FAILED**"
            },
            o.seconds,
            figures.join("; ")
        );
    }
    for o in outcomes {
        if let Some(table) = &o.table {
            let _ = writeln!(out, "\n### {}\n\n{table}", o.scenario);
        }
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.failures.is_empty()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n### failures\n");
        for o in failed {
            for f in &o.failures {
                let _ = writeln!(out, "- {}: {f}", o.scenario);
            }
        }
    }
    out
}
