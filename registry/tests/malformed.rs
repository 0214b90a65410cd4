//! Malformed registry texts: each is refused with the line at fault named.

use xenchan_registry::{ParseErrorKind, Tag, parse, parse_bytes};

/// Parses `text`, expecting an error on `line` whose message contains `needle`.
fn refused(text: &str, line: usize, needle: &str) -> ParseErrorKind {
    let err = parse(text).expect_err(text);
    let message = err.to_string();
    assert_eq!(err.line, line, "{text:?}: {message}");
    assert!(
        message.starts_with(&format!("line {line}: ")),
        "{text:?}: {message}"
    );
    assert!(message.contains(needle), "{text:?}: {message}");
    err.kind
}

const GOOD: &str = "N: org.example.one.1\nC: One <one@example.org>\nD: the first\n";

#[test]
fn missing_fields_name_the_entry_line() {
    let text = format!("{GOOD}\n# comment\nN: org.example.two.1\nC: Two\n");
    let kind = refused(&text, 6, "has no `D:` line");
    assert_eq!(
        kind,
        ParseErrorKind::MissingField {
            name: "org.example.two.1".into(),
            tag: Tag::Description
        }
    );
    refused("N: org.example.two.1\nD: what\n\n", 1, "has no `C:` line");
}

#[test]
fn entries_need_a_blank_line_between_them() {
    let text = format!("{GOOD}N: org.example.two.1\nC: x\nD: y\n");
    assert_eq!(
        refused(&text, 4, "inside the entry started at line 1"),
        ParseErrorKind::NameInsideEntry(1)
    );
}

#[test]
fn duplicate_names_and_fields() {
    let text = format!("{GOOD}\n{GOOD}");
    refused(&text, 5, "already registered at line 1");
    refused(
        "N: org.example.one.1\nC: a\nD: b\nD: c\n",
        4,
        "second `D:` line in the entry started at line 1",
    );
}

#[test]
fn fields_outside_entries_and_orphan_continuations() {
    refused("C: who\n", 1, "`C:` outside an entry");
    refused(&format!("{GOOD}\nD: what\n"), 5, "`D:` outside an entry");
    // The first real line sets the base indentation, so it is never a continuation.
    refused("  floating text\n", 1, "expected a field line");
    refused(
        "Key:\n  indented first\n",
        2,
        "continuation line with no field",
    );
    refused(
        &format!("{GOOD}\n   after blank\n"),
        5,
        "continuation line with no field",
    );
}

#[test]
fn unknown_and_malformed_field_lines() {
    refused("N: org.example.one.1\nE: mail\n", 2, "unknown field `E:`");
    refused("N: org.example.one.1\nc: lower\n", 2, "unknown field `c:`");
    refused("Name: org.example.one.1\n", 1, "unknown field `Name:`");
    refused("just words\n", 1, "expected a field line");
    refused("N-org.example\n", 1, "expected a field line");
    refused("N:org.example.one.1\n", 1, "put a space after `N:`");
    refused("http://example.org/\n", 1, "expected a field line");
}

#[test]
fn names_are_validated_where_they_stand() {
    refused(&format!("{GOOD}\nN: a,b\nC: x\nD: y\n"), 5, "','");
    refused("N: a=b\nC: x\nD: y\n", 1, "'='");
    refused("N: a\"b\nC: x\nD: y\n", 1, "'\"'");
    refused("N: a/b\nC: x\nD: y\n", 1, "'/'");
    refused("N: ..\nC: x\nD: y\n", 1, "only of dots");
    refused("N: two words\nC: x\nD: y\n", 1, "whitespace");
    refused("N:\nC: x\nD: y\n", 1, "empty name");
    refused(
        &format!("N: {}\nC: x\nD: y\n", "a".repeat(256)),
        1,
        "256 bytes",
    );
    refused(
        "N: org.example.one.1\n   .continued\nC: x\n",
        2,
        "cannot continue",
    );
}

#[test]
fn empty_values() {
    refused("N: org.example.one.1\nC:\nD: y\n", 2, "empty `C:` value");
    refused("N: org.example.one.1\nC: x\nD:   \n", 3, "empty `D:` value");
}

#[test]
fn key_legend_rules() {
    refused(&format!("{GOOD}\nKey:\nN: Name\n"), 5, "legend");
    refused("Key:\nN: Name\n\nKey:\n", 4, "legend");
    refused("Key: legend\n", 1, "stands alone");
    refused("Key:\nName: the name\n", 2, "unknown field `Name:`");
}

#[test]
fn indentation_must_be_uniform() {
    refused(
        "  N: org.example.one.1\n C: x\n",
        2,
        "indented differently from line 1",
    );
    refused(
        "\tN: org.example.one.1\n    C: x\n",
        2,
        "indented differently from line 1",
    );
    // Comments above the first real line do not set the base.
    refused(
        "# head\n  N: org.example.one.1\n C: x\n",
        3,
        "indented differently from line 2",
    );
    // After it, a comment must start at the base indentation too.
    refused(
        "  N: org.example.one.1\n# c\n",
        2,
        "indented differently from line 1",
    );
}

#[test]
fn bytes_that_are_not_text() {
    refused("N: org.example.one.1\r\nC: x\r\n", 1, "CRLF");
    refused("N: org.example.one.1\nC: x\0y\n", 2, "U+0000");
    refused("N: org.example.one.1\nC: x\u{1b}[31m\n", 2, "U+001B");
    refused("\u{feff}N: org.example.one.1\n", 1, "byte order mark");
    let err = parse_bytes(b"N: org.example.one.1\nC: ok\nD: \xc3\x28\n").unwrap_err();
    assert_eq!((err.line, &err.kind), (3, &ParseErrorKind::NotUtf8));
    assert_eq!(err.to_string(), "line 3: not valid UTF-8");
}

#[test]
fn overlong_lines() {
    let long = "x".repeat(5000);
    refused(
        &format!("N: org.example.one.1\nC: {long}\n"),
        2,
        "5003 bytes",
    );
    let continued = format!(" {}", "x".repeat(4095));
    refused(
        &format!("N: org.example.one.1\nC: x\nD: y\n{continued}\n"),
        4,
        "continued text is 4095 bytes",
    );
}

#[test]
fn what_is_accepted_stays_accepted() {
    // Blank lines may hold whitespace; several blank lines are one separator;
    // comments may sit anywhere, also between a field and its continuation.
    let text = "\n \t\n# a registry\nKey:\nN: Name\n   more legend\n\n\n\
                N: org.example.one.1\n# who\nC: x\n\tcontinued with a tab\nD: y\n# z\n   z\n  \n";
    let entries = parse(text).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].contact(), "x\ncontinued with a tab");
    assert_eq!(entries[0].description(), "y\nz");
}
