//! Property tests: writing then parsing gives the entries back, and the parser
//! never panics.

use std::collections::BTreeSet;

use proptest::prelude::*;
use xenchan_registry::{Entry, parse, write};

/// Names following the convention, plus odd but valid ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{2,6}\\.[a-z0-9-]{1,10}(\\.[a-z_]{1,8}){0,3}\\.[0-9]{1,3}",
        "[A-Za-z0-9._~:;!$@+-]{1,40}"
            .prop_filter("not only dots", |s| !s.chars().all(|c| c == '.')),
    ]
}

/// Values: a few lines of arbitrary printable text, including `#`, `:` and
/// non-ASCII, with surrounding whitespace that normalisation removes.
fn value() -> impl Strategy<Value = String> {
    prop::collection::vec("[ \t]{0,2}[^\\p{Cc}]{1,40}[ \t]{0,2}", 1..4)
        .prop_map(|lines| lines.join("\n"))
        .prop_filter("some text", |v| !v.trim().is_empty())
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec((name(), value(), value()), 0..6).prop_map(|raw| {
        let mut seen = BTreeSet::new();
        raw.into_iter()
            .filter(|(n, _, _)| seen.insert(n.clone()))
            .filter_map(|(n, c, d)| Entry::new(&n, &c, &d).ok())
            .collect()
    })
}

/// How one entry is laid out: all choices the grammar allows.
#[derive(Debug, Clone)]
struct Layout {
    description_first: bool,
    value_on_next_line: bool,
    comment_inside: bool,
    continuation_indent: &'static str,
    trailing_space: bool,
    blank_lines_after: usize,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![" ", "   ", "\t", " \t  "]),
        any::<bool>(),
        1usize..3,
    )
        .prop_map(|(d, v, c, i, t, b)| Layout {
            description_first: d,
            value_on_next_line: v,
            comment_inside: c,
            continuation_indent: i,
            trailing_space: t,
            blank_lines_after: b,
        })
}

/// Renders entries by hand with `base` indentation and per-entry layouts.
fn render(entries: &[Entry], layouts: &[Layout], base: &str, legend: bool) -> String {
    let mut lines: Vec<String> = vec!["# generated".into()];
    if legend {
        for l in ["Key:", "N: Name", "D: Description", "   more", ""] {
            lines.push(format!("{base}{l}"));
        }
    }
    for (e, l) in entries.iter().zip(layouts.iter().cycle()) {
        let tail = if l.trailing_space { " \t" } else { "" };
        let indent = l.continuation_indent;
        let field = |lines: &mut Vec<String>, tag: &str, value: &str| {
            let mut values = value.split('\n');
            let first = values.next().unwrap();
            if l.value_on_next_line {
                lines.push(format!("{base}{tag}:{tail}"));
                lines.push(format!("{base}{indent}{first}{tail}"));
            } else {
                lines.push(format!("{base}{tag}: {first}{tail}"));
            }
            for v in values {
                if l.comment_inside {
                    lines.push(format!("{base}# between continuation lines"));
                }
                lines.push(format!("{base}{indent}{v}{tail}"));
            }
        };
        lines.push(format!("{base}N: {}{tail}", e.name()));
        if l.comment_inside {
            lines.push(format!("{base}#"));
        }
        if l.description_first {
            field(&mut lines, "D", e.description());
            field(&mut lines, "C", e.contact());
        } else {
            field(&mut lines, "C", e.contact());
            field(&mut lines, "D", e.description());
        }
        for _ in 0..l.blank_lines_after {
            lines.push(if l.trailing_space {
                "  ".into()
            } else {
                String::new()
            });
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn write_then_parse_is_identity(entries in entries()) {
        let text = write(&entries);
        prop_assert_eq!(parse(&text), Ok(entries));
    }

    #[test]
    fn every_layout_the_grammar_allows_parses_to_the_same_entries(
        entries in entries(),
        layouts in prop::collection::vec(layout(), 1..4),
        base in prop::sample::select(vec!["", "    ", "\t", "  \t"]),
        legend in any::<bool>(),
    ) {
        let text = render(&entries, &layouts, base, legend);
        prop_assert_eq!(parse(&text), Ok(entries), "{}", text);
    }

    #[test]
    fn parse_never_panics(text in "[NCD:Key# \t\n.a-z,=\"\r\u{0}-\u{7f}é]{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn whatever_parses_round_trips(lines in prop::collection::vec(
        prop_oneof![
            Just(String::new()),
            Just("Key:".to_owned()),
            Just("# c".to_owned()),
            "[NCDX]: [a-z.]{0,12}",
            "[ \t]{1,3}[a-z#:]{1,12}",
        ],
        0..24,
    )) {
        let text = lines.join("\n");
        if let Ok(entries) = parse(&text) {
            prop_assert_eq!(parse(&write(&entries)), Ok(entries));
        }
    }
}
