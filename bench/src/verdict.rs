//! The lines under "Targets (reported, not asserted)": one issue target per line, met or not,
//! with the figure, its ratio to the target, and its ratio to the best peer on the same row
//! (every peer counts, Y-Sweet included). Scenarios build them from the medians in
//! [`crate::scenarios::Prepared::verdicts`].

use crate::report::{Better, MedianRow, Medians, fmt_value};
use crate::target::{TARGETS, Target};

/// The Lattice targets the issues' targets are about, with their labels in the lines.
pub(crate) const LATTICE: [&str; 2] = ["lattice", "lattice-yjs"];

/// The best peer of a row: highest or lowest median among the peers.
pub(crate) fn best_peer(row: &MedianRow) -> Option<(&'static Target, f64)> {
    TARGETS
        .iter()
        .filter(|t| t.is_peer())
        .filter_map(|t| row.values.get(t.id).map(|v| (t, *v)))
        .reduce(|a, b| {
            let b_wins = match row.better {
                Better::Higher => b.1 > a.1,
                Better::Lower => b.1 < a.1,
            };
            if b_wins { b } else { a }
        })
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// `; 0.45× the best peer's (Y-Sweet: 12.30 ms)`, or nothing when no peer was measured.
pub(crate) fn vs_best_peer(
    m: &Medians,
    scenario: &str,
    case: &str,
    metric: &str,
    value: f64,
) -> String {
    let Some(row) = m.row(scenario, case, metric) else {
        return String::new();
    };
    match best_peer(row) {
        Some((peer, v)) if v != 0.0 && v.is_finite() => format!(
            "; {:.2}× the best peer's ({}: {} {})",
            value / v,
            peer.label,
            fmt_value(v, row.unit),
            row.unit
        ),
        _ => String::new(),
    }
}

/// A target on one figure of each Lattice target: `` `lattice` WHAT: **met** (FIGURE, 0.50× the
/// target; 0.45× the best peer's (…)) ``, for every Lattice target measured on the row.
pub(crate) fn against_target(
    m: &Medians,
    (scenario, case, metric): (&str, &str, &str),
    what: &str,
    target_value: f64,
) -> Vec<String> {
    let Some(row) = m.row(scenario, case, metric) else {
        return Vec::new();
    };
    LATTICE
        .iter()
        .filter_map(|t| {
            let v = *row.values.get(*t)?;
            let ok = match row.better {
                Better::Higher => v >= target_value,
                Better::Lower => v <= target_value,
            };
            Some(format!(
                "`{t}` {what}: {} ({} {}, {:.2}× the target{})",
                met(ok),
                fmt_value(v, row.unit),
                row.unit,
                v / target_value,
                vs_best_peer(m, scenario, case, metric, v)
            ))
        })
        .collect()
}

/// A target relative to the best peer on each Lattice target's figure: met when the figure is
/// at least `factor` × the best peer's (a rate), or at most `factor` × it (a time).
pub(crate) fn against_best_peer(
    m: &Medians,
    (scenario, case, metric): (&str, &str, &str),
    what: &str,
    factor: f64,
) -> Vec<String> {
    let Some(row) = m.row(scenario, case, metric) else {
        return Vec::new();
    };
    let Some((peer, p)) = best_peer(row) else {
        return Vec::new();
    };
    LATTICE
        .iter()
        .filter_map(|t| {
            let v = *row.values.get(*t)?;
            let ok = match row.better {
                Better::Higher => v >= factor * p,
                Better::Lower => v <= factor * p,
            };
            Some(format!(
                "`{t}` {what}: {} ({} vs {} {}, the best peer's ({}); {:.2}×)",
                met(ok),
                fmt_value(v, row.unit),
                fmt_value(p, row.unit),
                row.unit,
                peer.label,
                v / p
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Figure, Sample};

    fn medians(values: &[(&str, f64)], better: Better) -> Medians {
        let figures: Vec<Figure> = values
            .iter()
            .map(|(t, v)| Figure {
                scenario: "s",
                target: (*t).to_owned(),
                run: 0,
                sample: Sample::new("c", "m", "ms", better, *v),
            })
            .collect();
        Medians::from_figures(&figures)
    }

    #[test]
    fn the_best_peer_is_any_peer_and_never_lattice() {
        let m = medians(
            &[
                ("lattice", 1.0),
                ("hocuspocus", 8.0),
                ("y-sweet", 4.0),
                ("y-websocket", 6.0),
            ],
            Better::Lower,
        );
        let (peer, v) = m.row("s", "c", "m").and_then(best_peer).expect("a peer");
        assert_eq!((peer.id, v), ("y-sweet", 4.0));
        let lines = against_best_peer(&m, ("s", "c", "m"), "p50 ≤ ½ the best peer's", 0.5);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("**met**") && lines[0].contains("Y-Sweet"),
            "{}",
            lines[0]
        );
        let lines = against_target(&m, ("s", "c", "m"), "p50 ≤ 0.5 ms", 0.5);
        assert!(lines[0].contains("**not met**") && lines[0].contains("2.00× the target"));
        assert!(
            lines[0].contains("0.25× the best peer's (Y-Sweet"),
            "{}",
            lines[0]
        );
    }
}
