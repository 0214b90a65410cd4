//! Before and after in one run: with `--baseline-bin-dir`, every section that runs
//! binaries runs once for the baseline's and once for the current ones, back to back, so
//! that the machine's load hits both alike; this module joins the two reports into one
//! table (both medians and their ratio). Pure: table-tested on plain values.

use std::fmt::Write as _;

use crate::report::{Figure, Report, fmt_num};

/// One row of the comparison: a figure found in either report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Section of the figure.
    pub section: String,
    /// Name of the figure.
    pub name: String,
    /// Unit of both values.
    pub unit: String,
    /// The baseline's median (`None`: not measured there).
    pub base: Option<f64>,
    /// The current binaries' median.
    pub current: Option<f64>,
}

impl Row {
    /// current / baseline, when both exist and the baseline is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.base, self.current) {
            (Some(b), Some(c)) if b != 0.0 => Some(c / b),
            _ => None,
        }
    }
}

fn median(f: &Figure) -> Option<f64> {
    f.value.map(|v| v.median)
}

/// Joins the figures of `base` and `current` by (section, name), in the current run's
/// order; figures only the baseline has (a figure removed since) come last.
pub fn rows(base: &[Figure], current: &[Figure]) -> Vec<Row> {
    let key = |f: &Figure| (f.section.clone(), f.name.clone());
    let mut out: Vec<Row> = current
        .iter()
        .map(|c| Row {
            section: c.section.clone(),
            name: c.name.clone(),
            unit: c.unit.clone(),
            base: base.iter().find(|b| key(b) == key(c)).and_then(median),
            current: median(c),
        })
        .collect();
    for b in base {
        if !current.iter().any(|c| key(c) == key(b)) {
            out.push(Row {
                section: b.section.clone(),
                name: b.name.clone(),
                unit: b.unit.clone(),
                base: median(b),
                current: None,
            });
        }
    }
    out
}

/// The comparison table, Markdown, with the baseline's notes.
pub fn table(base: &Report, current: &Report, base_label: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Before and after, same run: baseline = binaries of {base_label}, current = this \
         run's binaries; each section ran for both back to back. Ratio = current / baseline \
         (below 1 is smaller: faster, or less memory; for rates and x-fold figures, above 1 \
         is better).\n"
    );
    o.push_str("| section | figure | baseline | current | current / baseline |\n");
    o.push_str("|---|---|---:|---:|---:|\n");
    let cell = |v: Option<f64>, unit: &str| {
        v.map_or_else(|| "-".into(), |v| format!("{} {unit}", fmt_num(v)))
    };
    for r in rows(&base.figures, &current.figures) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            r.section,
            r.name,
            cell(r.base, &r.unit),
            cell(r.current, &r.unit),
            r.ratio()
                .map_or_else(|| "-".into(), |x| format!("{}x", fmt_num(x)))
        );
    }
    if !base.notes.is_empty() {
        o.push_str("\nBaseline notes:\n\n");
        for n in &base.notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn fig(section: &str, name: &str, v: Option<f64>) -> Figure {
        Figure {
            section: section.into(),
            name: name.into(),
            unit: "ms".into(),
            value: v.and_then(|x| Summary::of(&[x])),
            target: None,
            note: String::new(),
        }
    }

    /// (section, name, baseline, current, ratio) of a row.
    type Cells<'a> = (&'a str, &'a str, Option<f64>, Option<f64>, Option<f64>);

    #[test]
    fn rows_join_by_section_and_name() {
        let base = [
            fig("a", "x", Some(4.0)),
            fig("a", "gone", Some(1.0)),
            fig("b", "x", Some(10.0)),
        ];
        let cur = [
            fig("b", "x", Some(5.0)),
            fig("a", "x", Some(2.0)),
            fig("a", "new", Some(3.0)),
        ];
        let r = rows(&base, &cur);
        let got: Vec<Cells<'_>> = r
            .iter()
            .map(|r| {
                (
                    r.section.as_str(),
                    r.name.as_str(),
                    r.base,
                    r.current,
                    r.ratio(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("b", "x", Some(10.0), Some(5.0), Some(0.5)),
                ("a", "x", Some(4.0), Some(2.0), Some(0.5)),
                ("a", "new", None, Some(3.0), None),
                ("a", "gone", Some(1.0), None, None),
            ]
        );
    }

    #[test]
    fn ratio_needs_both_and_a_nonzero_baseline() {
        let row = |b, c| Row {
            section: String::new(),
            name: String::new(),
            unit: String::new(),
            base: b,
            current: c,
        };
        assert_eq!(row(Some(0.0), Some(1.0)).ratio(), None);
        assert_eq!(row(None, Some(1.0)).ratio(), None);
        assert_eq!(row(Some(2.0), None).ratio(), None);
        assert_eq!(row(Some(2.0), Some(3.0)).ratio(), Some(1.5));
    }

    #[test]
    fn table_shows_both_columns_ratio_and_baseline_notes() {
        let base = Report {
            figures: vec![fig("s", "f", Some(4.0)), fig("s", "skipped", None)],
            notes: vec!["qga skipped".into()],
            ..Report::default()
        };
        let cur = Report {
            figures: vec![fig("s", "f", Some(1.0)), fig("s", "skipped", None)],
            ..Report::default()
        };
        let t = table(&base, &cur, "abc123");
        assert!(t.contains("binaries of abc123"), "{t}");
        assert!(t.contains("| s | f | 4.00 ms | 1.00 ms | 0.25x |"), "{t}");
        assert!(t.contains("| s | skipped | - | - | - |"), "{t}");
        assert!(t.contains("- qga skipped"), "{t}");
    }
}
