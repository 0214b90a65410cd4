//! The registry text of xen-pv-channel(7), copied verbatim, must parse.

use xenchan_registry::{Registry, parse, write};

/// The "Channel name registry" block of docs/man/xen-pv-channel.pod.7, as it is
/// in the pod source: a verbatim paragraph indented by four spaces, whose blank
/// separator line holds four spaces.
const MAN_PAGE: &str = include_str!("fixtures/xen-pv-channel.7-registry.txt");

#[test]
fn man_page_registry_parses_to_its_one_entry() {
    let entries = parse(MAN_PAGE).expect("the man page's registry text parses");
    assert_eq!(entries.len(), 1, "the Key: legend is not an entry");
    let e = &entries[0];
    assert_eq!(e.name(), "org.xenproject.guest.clipboard.0.1");
    assert_eq!(e.contact(), "David Scott <dave.scott@citrix.com>");
    assert_eq!(
        e.description(),
        "Share clipboard data via an in-guest agent. See:\n\
         http://wiki.xenproject.org/wiki/Clipboard_sharing_protocol"
    );
}

#[test]
fn man_page_text_parses_whatever_its_uniform_indentation() {
    let expected = parse(MAN_PAGE).unwrap();
    let stripped: Vec<&str> = MAN_PAGE
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect();
    for indent in ["", "       ", "\t", "  \t"] {
        let text: Vec<String> = stripped
            .iter()
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{indent}{l}")
                }
            })
            .collect();
        assert_eq!(
            parse(&text.join("\n")).unwrap(),
            expected,
            "indent {indent:?}"
        );
    }
    // The seed copy of the page ends without a final newline.
    assert_eq!(parse(MAN_PAGE.trim_end_matches('\n')).unwrap(), expected);
}

#[test]
fn man_page_entry_is_shipped_unchanged() {
    let entry = &parse(MAN_PAGE).unwrap()[0];
    assert_eq!(Registry::builtin().lookup(entry.name()), Some(entry));
}

#[test]
fn man_page_entries_round_trip_through_the_writer() {
    let entries = parse(MAN_PAGE).unwrap();
    let text = write(&entries);
    assert_eq!(
        text,
        "N: org.xenproject.guest.clipboard.0.1\n\
         C: David Scott <dave.scott@citrix.com>\n\
         D: Share clipboard data via an in-guest agent. See:\n   \
         http://wiki.xenproject.org/wiki/Clipboard_sharing_protocol\n"
    );
    assert_eq!(parse(&text).unwrap(), entries);
}
