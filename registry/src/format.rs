//! The registry text format of xen-pv-channel(7): `N:`/`C:`/`D:` entries.
//!
//! The grammar is written out in docs/REGISTRY.md; the short form:
//!
//! * Lines end with LF. Every line that is not blank starts with the *base
//!   indentation*, the leading spaces and tabs of the first line that is neither
//!   blank nor a comment (so the man page's block, indented as a whole, parses as
//!   it is).
//! * After the base indentation: `#` starts a comment line (ignored, as if absent);
//!   a space or tab makes a continuation line (it continues the field above);
//!   anything else must be a field line `X: value` or the legend header `Key:`.
//! * A blank line (only spaces or tabs) ends an entry or the legend block.
//! * An entry is `N:` first, then exactly one `C:` and one `D:` in either order.
//! * `Key:` may appear once, before the first entry; the field and continuation
//!   lines after it, up to a blank line, are a legend and are not an entry.

use std::fmt;

use crate::name::{NameError, validate_name};

/// The longest line accepted, in bytes (without the LF).
///
/// Registry lines are short prose; a longer line is much more likely a binary or
/// a mangled file than real text, and the bound keeps error messages readable.
pub const MAX_LINE_BYTES: usize = 4096;

/// The longest line of a contact or description value, in bytes.
///
/// Written values are prefixed by `D: ` or three spaces, so this keeps every
/// written line within [`MAX_LINE_BYTES`].
pub const MAX_VALUE_LINE_BYTES: usize = MAX_LINE_BYTES - 3;

/// One registered channel name.
///
/// Fields are private so that every `Entry` is valid and writable: build one with
/// [`Entry::new`] or get it from [`parse`]. Values that span several lines in the
/// file keep their line breaks as `\n`, each line trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Entry {
    name: String,
    contact: String,
    description: String,
}

/// Why [`Entry::new`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The channel name is not usable at all.
    #[error("invalid channel name `{name}`")]
    Name {
        /// The name as given (escaped when displayed).
        name: String,
        /// What is wrong with it.
        #[source]
        source: NameError,
    },
    /// The contact or description is empty once blank lines are dropped.
    #[error("empty {field}")]
    Empty {
        /// `contact` or `description`.
        field: &'static str,
    },
    /// The contact or description holds a control character other than tab and LF.
    #[error("{field} contains control character U+{code:04X}")]
    Control {
        /// `contact` or `description`.
        field: &'static str,
        /// The offending character's code point.
        code: u32,
    },
    /// A line of the contact or description is too long.
    #[error(
        "a line of the {field} is {len} bytes long; at most {MAX_VALUE_LINE_BYTES} are allowed"
    )]
    LineTooLong {
        /// `contact` or `description`.
        field: &'static str,
        /// The line's length in bytes.
        len: usize,
    },
}

impl Entry {
    /// Builds an entry after checking it.
    ///
    /// The name must pass [`validate_name`](crate::validate_name) (device-safe and
    /// xl-safe; poor names are allowed). Contact and description may span lines
    /// (`\n`); each line is trimmed and blank lines are dropped, which is exactly
    /// what writing and parsing again would do.
    pub fn new(name: &str, contact: &str, description: &str) -> Result<Self, EntryError> {
        validate_name(name).map_err(|source| EntryError::Name {
            name: name.escape_debug().to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            contact: normalize_value("contact", contact)?,
            description: normalize_value("description", description)?,
        })
    }

    /// The channel name, exactly as xl and the guest see it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who to ask about the name (the `C:` field).
    pub fn contact(&self) -> &str {
        &self.contact
    }

    /// What the channel is used for (the `D:` field), lines joined by `\n`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn normalize_value(field: &'static str, value: &str) -> Result<String, EntryError> {
    let mut lines = Vec::new();
    for line in value.split('\n') {
        if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(EntryError::Control {
                field,
                code: u32::from(c),
            });
        }
        let line = line.trim();
        if line.len() > MAX_VALUE_LINE_BYTES {
            return Err(EntryError::LineTooLong {
                field,
                len: line.len(),
            });
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Err(EntryError::Empty { field });
    }
    Ok(lines.join("\n"))
}

/// A registry text that does not follow the grammar, with the 1-based line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong on that line.
    pub kind: ParseErrorKind,
}

/// The field tags of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `N:` the channel name.
    Name,
    /// `C:` the contact.
    Contact,
    /// `D:` the description.
    Description,
}

impl Tag {
    fn letter(self) -> char {
        match self {
            Tag::Name => 'N',
            Tag::Contact => 'C',
            Tag::Description => 'D',
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.letter())
    }
}

/// What is wrong with a line of registry text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The bytes are not UTF-8 (only from [`parse_bytes`]).
    #[error("not valid UTF-8")]
    NotUtf8,
    /// A byte order mark opens the text.
    #[error("byte order mark at the start; save the file as UTF-8 without a BOM")]
    ByteOrderMark,
    /// A control character other than tab; a CR means CRLF line ends.
    #[error("control character U+{0:04X}{hint}", hint = if *.0 == 0x0d { " (CRLF line ends? use LF)" } else { "" })]
    Control(u32),
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("line is {0} bytes long; at most {MAX_LINE_BYTES} are allowed")]
    LineTooLong(usize),
    /// A continuation line's text is longer than [`MAX_VALUE_LINE_BYTES`].
    #[error("continued text is {0} bytes long; at most {MAX_VALUE_LINE_BYTES} are allowed")]
    ValueLineTooLong(usize),
    /// The line does not start with the base indentation.
    #[error(
        "indented differently from line {first_line}; every line must start with the indentation of the first line that is neither blank nor a comment"
    )]
    Indentation {
        /// The first non-blank line, which set the base indentation.
        first_line: usize,
    },
    /// Neither a field, a comment, a continuation nor `Key:`.
    #[error(
        "expected a field line (`N: `, `C: `, `D: `), a `#` comment, a blank line or an indented continuation line"
    )]
    NotAField,
    /// A field tag other than N, C or D.
    #[error("unknown field `{0}:`; an entry has `N:`, `C:` and `D:` (upper case)")]
    UnknownField(String),
    /// `N:foo` without a space after the colon.
    #[error("put a space after `{0}:`")]
    NoSpaceAfterColon(String),
    /// Text after `Key:` on its line.
    #[error("`Key:` stands alone on its line; the legend lines follow it")]
    KeyWithText,
    /// A second `Key:` block, or one after the first entry.
    #[error(
        "`Key:` legend after the first entry or a second legend; it may only open the registry"
    )]
    LateKey,
    /// An indented line with no field above it to continue.
    #[error(
        "continuation line with no field above it to continue (indented lines continue the field above)"
    )]
    OrphanContinuation,
    /// `C:` or `D:` before any `N:`.
    #[error("`{0}` outside an entry; an entry starts with its `N:` line")]
    FieldOutsideEntry(Tag),
    /// `N:` while an entry is still open.
    #[error("`N:` inside the entry started at line {0}; separate entries with a blank line")]
    NameInsideEntry(usize),
    /// The same field twice in one entry.
    #[error("second `{tag}` line in the entry started at line {entry_line}")]
    DuplicateField {
        /// The repeated field.
        tag: Tag,
        /// The entry's `N:` line.
        entry_line: usize,
    },
    /// The `N:` value continues on the next line.
    #[error("a channel name cannot continue on the next line")]
    NameContinued,
    /// The channel name is not usable.
    #[error("invalid channel name `{name}`: {source}")]
    InvalidName {
        /// The name (escaped).
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// `C:` or `D:` has no text, not even on continuation lines.
    #[error("empty `{0}` value")]
    EmptyValue(Tag),
    /// The entry lacks `C:` or `D:`.
    #[error("entry `{name}` has no `{tag}` line")]
    MissingField {
        /// The entry's name.
        name: String,
        /// The missing field.
        tag: Tag,
    },
    /// The same channel name registered twice in one text.
    #[error("`{name}` is already registered at line {first_line}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The line of its first `N:`.
        first_line: usize,
    },
}

/// An entry together with the line of its `N:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) entry: Entry,
    pub(crate) line: usize,
}

/// Parses registry text into entries, in file order.
///
/// Exact: anything outside the grammar (see the module docs and docs/REGISTRY.md)
/// is an error naming the 1-based line. Never panics.
pub fn parse(text: &str) -> Result<Vec<Entry>, ParseError> {
    parse_located(text).map(|v| v.into_iter().map(|l| l.entry).collect())
}

/// Like [`parse`], for raw bytes: text that is not UTF-8 is an error naming the
/// line of the first bad byte.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Entry>, ParseError> {
    parse(decode(bytes)?)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|e| ParseError {
        // n newlines before the bad byte put it on line n + 1.
        line: bytes[..e.valid_up_to()].split(|&b| b == b'\n').count(),
        kind: ParseErrorKind::NotUtf8,
    })
}

/// A value being collected.
struct Field {
    tag: Tag,
    lines: Vec<String>,
    line: usize,
}

/// An entry being collected.
struct Partial {
    line: usize,
    name: String,
    contact: Option<String>,
    description: Option<String>,
    open: Option<Field>,
}

enum State {
    /// Before anything, or between entries.
    Outside,
    /// Inside the `Key:` legend; `true` once a legend line can be continued.
    Key(bool),
    Entry(Partial),
}

fn at(line: usize) -> impl Fn(ParseErrorKind) -> ParseError {
    move |kind| ParseError { line, kind }
}

pub(crate) fn parse_located(text: &str) -> Result<Vec<Located>, ParseError> {
    let mut parser = Parser {
        entries: Vec::new(),
        names: std::collections::HashMap::new(),
        state: State::Outside,
        base: None,
        seen_key_or_entry: false,
    };
    // A final LF ends the last line; it does not start an empty one.
    let body = text.strip_suffix('\n').unwrap_or(text);
    for (index, raw) in body.split('\n').enumerate() {
        parser.line(index + 1, raw)?;
    }
    parser.finish_entry()?;
    Ok(parser.entries)
}

struct Parser {
    entries: Vec<Located>,
    /// Name -> line of its `N:`, to refuse duplicates.
    names: std::collections::HashMap<String, usize>,
    state: State,
    /// Base indentation and the line that set it.
    base: Option<(String, usize)>,
    seen_key_or_entry: bool,
}

impl Parser {
    fn line(&mut self, line: usize, raw: &str) -> Result<(), ParseError> {
        let err = at(line);
        if raw.len() > MAX_LINE_BYTES {
            return Err(err(ParseErrorKind::LineTooLong(raw.len())));
        }
        if line == 1 && raw.starts_with('\u{feff}') {
            return Err(err(ParseErrorKind::ByteOrderMark));
        }
        if let Some(c) = raw.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(err(ParseErrorKind::Control(u32::from(c))));
        }
        if raw.trim().is_empty() {
            // A blank line ends the entry or legend in progress.
            return match self.state {
                State::Entry(_) => self.finish_entry(),
                State::Key(_) | State::Outside => {
                    self.state = State::Outside;
                    Ok(())
                }
            };
        }
        let unindented = raw.trim_start_matches([' ', '\t']);
        if self.base.is_none() && unindented.starts_with('#') {
            // Comments above the first real line may sit at any indentation;
            // the base is set by the first line that is neither blank nor comment.
            return Ok(());
        }
        let indent_len = raw.len() - unindented.len();
        let (base, first_line) = self
            .base
            .get_or_insert_with(|| (raw[..indent_len].to_owned(), line));
        let Some(rest) = raw.strip_prefix(base.as_str()) else {
            return Err(err(ParseErrorKind::Indentation {
                first_line: *first_line,
            }));
        };
        if rest.starts_with('#') {
            return Ok(());
        }
        if rest.starts_with([' ', '\t']) {
            return self.continuation(rest.trim()).map_err(err);
        }
        self.field(line, rest)
    }

    fn continuation(&mut self, text: &str) -> Result<(), ParseErrorKind> {
        match &mut self.state {
            State::Key(true) => Ok(()),
            State::Key(false) | State::Outside => Err(ParseErrorKind::OrphanContinuation),
            State::Entry(partial) => match &mut partial.open {
                None => Err(ParseErrorKind::OrphanContinuation),
                Some(field) if field.tag == Tag::Name => Err(ParseErrorKind::NameContinued),
                Some(field) => {
                    if text.len() > MAX_VALUE_LINE_BYTES {
                        return Err(ParseErrorKind::ValueLineTooLong(text.len()));
                    }
                    field.lines.push(text.to_owned());
                    Ok(())
                }
            },
        }
    }

    fn field(&mut self, line: usize, rest: &str) -> Result<(), ParseError> {
        let err = at(line);
        let Some((tag, value)) = rest.split_once(':') else {
            return Err(err(ParseErrorKind::NotAField));
        };
        if tag.is_empty() || tag.len() > 16 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(err(ParseErrorKind::NotAField));
        }
        if !value.is_empty() && !value.starts_with([' ', '\t']) {
            // `N:x` is a typo; `http://...` is just not a field line.
            let known = matches!(tag, "N" | "C" | "D" | "Key")
                || (matches!(self.state, State::Key(_))
                    && tag.len() == 1
                    && tag.chars().all(|c| c.is_ascii_uppercase()));
            return Err(err(if known {
                ParseErrorKind::NoSpaceAfterColon(tag.to_owned())
            } else {
                ParseErrorKind::NotAField
            }));
        }
        let value = value.trim();
        if tag == "Key" {
            if !value.is_empty() {
                return Err(err(ParseErrorKind::KeyWithText));
            }
            if self.seen_key_or_entry {
                return Err(err(ParseErrorKind::LateKey));
            }
            self.seen_key_or_entry = true;
            self.state = State::Key(false);
            return Ok(());
        }
        match &mut self.state {
            State::Key(open) => {
                // A legend line: any one-letter upper-case tag documents a field.
                if tag.len() == 1 && tag.chars().all(|c| c.is_ascii_uppercase()) {
                    *open = true;
                    Ok(())
                } else {
                    Err(err(ParseErrorKind::UnknownField(tag.to_owned())))
                }
            }
            State::Outside => match tag {
                "N" => {
                    self.seen_key_or_entry = true;
                    self.start_entry(line, value).map_err(err)
                }
                "C" => Err(err(ParseErrorKind::FieldOutsideEntry(Tag::Contact))),
                "D" => Err(err(ParseErrorKind::FieldOutsideEntry(Tag::Description))),
                other => Err(err(ParseErrorKind::UnknownField(other.to_owned()))),
            },
            State::Entry(partial) => {
                let tag = match tag {
                    "N" => return Err(err(ParseErrorKind::NameInsideEntry(partial.line))),
                    "C" => Tag::Contact,
                    "D" => Tag::Description,
                    other => return Err(err(ParseErrorKind::UnknownField(other.to_owned()))),
                };
                close_field(partial)?;
                let already = match tag {
                    Tag::Contact => partial.contact.is_some(),
                    _ => partial.description.is_some(),
                };
                if already {
                    return Err(err(ParseErrorKind::DuplicateField {
                        tag,
                        entry_line: partial.line,
                    }));
                }
                partial.open = Some(Field {
                    tag,
                    lines: if value.is_empty() {
                        Vec::new()
                    } else {
                        vec![value.to_owned()]
                    },
                    line,
                });
                Ok(())
            }
        }
    }

    fn start_entry(&mut self, line: usize, name: &str) -> Result<(), ParseErrorKind> {
        validate_name(name).map_err(|source| ParseErrorKind::InvalidName {
            name: name.escape_debug().to_string(),
            source,
        })?;
        if let Some(&first_line) = self.names.get(name) {
            return Err(ParseErrorKind::DuplicateName {
                name: name.to_owned(),
                first_line,
            });
        }
        self.names.insert(name.to_owned(), line);
        self.state = State::Entry(Partial {
            line,
            name: name.to_owned(),
            contact: None,
            description: None,
            open: Some(Field {
                tag: Tag::Name,
                lines: Vec::new(),
                line,
            }),
        });
        Ok(())
    }

    fn finish_entry(&mut self) -> Result<(), ParseError> {
        let State::Entry(mut partial) = std::mem::replace(&mut self.state, State::Outside) else {
            return Ok(());
        };
        close_field(&mut partial)?;
        let missing = |tag| {
            at(partial.line)(ParseErrorKind::MissingField {
                name: partial.name.clone(),
                tag,
            })
        };
        let contact = partial
            .contact
            .clone()
            .ok_or_else(|| missing(Tag::Contact))?;
        let description = partial
            .description
            .clone()
            .ok_or_else(|| missing(Tag::Description))?;
        self.entries.push(Located {
            entry: Entry {
                name: partial.name,
                contact,
                description,
            },
            line: partial.line,
        });
        Ok(())
    }
}

/// Stores the field in progress into the entry.
fn close_field(partial: &mut Partial) -> Result<(), ParseError> {
    let Some(field) = partial.open.take() else {
        return Ok(());
    };
    let slot = match field.tag {
        Tag::Name => return Ok(()),
        Tag::Contact => &mut partial.contact,
        Tag::Description => &mut partial.description,
    };
    if field.lines.is_empty() {
        return Err(at(field.line)(ParseErrorKind::EmptyValue(field.tag)));
    }
    *slot = Some(field.lines.join("\n"));
    Ok(())
}

/// Writes entries in the canonical registry form: `N:`, `C:`, `D:` in that order,
/// multi-line values continued with three spaces, a blank line between entries,
/// LF line ends. `parse(&write(e)) == Ok(e)` for any entries with distinct names.
pub fn write(entries: &[Entry]) -> String {
    let mut out = String::new();
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_field(&mut out, Tag::Name, &entry.name);
        write_field(&mut out, Tag::Contact, &entry.contact);
        write_field(&mut out, Tag::Description, &entry.description);
    }
    out
}

fn write_field(out: &mut String, tag: Tag, value: &str) {
    for (i, line) in value.split('\n').enumerate() {
        if i == 0 {
            out.push(tag.letter());
            out.push_str(": ");
        } else {
            out.push_str("   ");
        }
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ParseError {
        parse(text).expect_err("text should be refused")
    }

    #[test]
    fn single_entry_with_continuations() {
        let entries =
            parse("N: org.example.app.1\nC: Jo <jo@example.org>\nD: first\n   second\n").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name(), "org.example.app.1");
        assert_eq!(entries[0].contact(), "Jo <jo@example.org>");
        assert_eq!(entries[0].description(), "first\nsecond");
    }

    #[test]
    fn empty_and_blank_texts_have_no_entries() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("\n").unwrap(), vec![]);
        assert_eq!(parse("  \n\t\n# only a comment\n").unwrap(), vec![]);
    }

    #[test]
    fn value_may_start_on_the_continuation_line() {
        let e = parse("N: org.example.app.1\nC:\n  Jo\nD: x\n").unwrap();
        assert_eq!(e[0].contact(), "Jo");
    }

    #[test]
    fn comments_are_transparent_inside_entries() {
        let e =
            parse("# head\nN: org.example.app.1\n# mid\nC: Jo\nD: a\n# between\n   b\n").unwrap();
        assert_eq!(e[0].description(), "a\nb");
    }

    #[test]
    fn c_and_d_in_either_order() {
        let e = parse("N: org.example.app.1\nD: what\nC: who\n").unwrap();
        assert_eq!(e[0].contact(), "who");
        assert_eq!(e[0].description(), "what");
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("N: org.a.b.1\nC: x\nD: y\r\n", 3, "U+000D"),
            ("N: org.a.b.1\nC: x\nX: y\n", 3, "unknown field `X:`"),
            ("N: org.a.b.1\nC: x\n", 1, "has no `D:` line"),
            ("\n\nC: x\n", 3, "outside an entry"),
            ("   continued\n", 1, "expected a field line"),
            (
                "N: org.a.b.1\nC: x\nD: y\n\n  orphan\n",
                5,
                "no field above it",
            ),
            (
                "N: org.a.b.1\nC: x\nD: y\nN: org.a.b.2\n",
                4,
                "separate entries",
            ),
            ("N: org.a.b.1\nC: x\nC: y\nD: z\n", 3, "second `C:`"),
            ("N: org.a.b.1\n  more\nC: x\nD: y\n", 2, "cannot continue"),
            ("N: a,b\nC: x\nD: y\n", 1, "invalid channel name"),
            ("N:org.a.b.1\n", 1, "space after `N:`"),
            (
                "N: org.a.b.1\nC: x\nD: y\n\nN: org.a.b.1\nC: x\nD: y\n",
                5,
                "already registered at line 1",
            ),
            ("N: org.a.b.1\nC:\nD: y\n", 2, "empty `C:`"),
            (
                "    N: org.a.b.1\n  C: x\n",
                2,
                "indented differently from line 1",
            ),
            ("N: org.a.b.1\nC: x\nD: y\n\nKey:\n", 5, "legend"),
            ("Key: legend\n", 1, "stands alone"),
            ("hello world\n", 1, "expected a field line"),
            ("\u{feff}N: org.a.b.1\n", 1, "byte order mark"),
            ("N: org.a.b.1\nC: x\nD: y\n\n\n\nN: \n", 7, "empty name"),
        ];
        for (text, line, needle) in cases {
            let e = err(text);
            assert_eq!(e.line, *line, "{text:?} -> {e}");
            assert!(e.to_string().contains(needle), "{text:?} -> {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn overlong_line_is_refused() {
        let text = format!("N: org.a.b.1\nC: x\nD: {}\n", "y".repeat(MAX_LINE_BYTES));
        let e = err(&text);
        assert_eq!(e.line, 3);
        assert!(matches!(e.kind, ParseErrorKind::LineTooLong(_)));
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_line() {
        let e = parse_bytes(b"N: org.a.b.1\nC: x\nD: \xff\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.kind, ParseErrorKind::NotUtf8);
    }

    #[test]
    fn write_is_canonical_and_round_trips() {
        let a = Entry::new("org.a.b.1", "  who \n\n  else ", "what").unwrap();
        let b = Entry::new("org.a.c.1", "x", "y\nz").unwrap();
        let text = write(&[a.clone(), b.clone()]);
        assert_eq!(
            text,
            "N: org.a.b.1\nC: who\n   else\nD: what\n\nN: org.a.c.1\nC: x\nD: y\n   z\n"
        );
        assert_eq!(parse(&text).unwrap(), vec![a, b]);
    }

    #[test]
    fn entry_new_refuses_bad_values() {
        assert!(matches!(
            Entry::new("org.a.b.1", " \n ", "d"),
            Err(EntryError::Empty { field: "contact" })
        ));
        assert!(matches!(
            Entry::new("org.a.b.1", "c", "a\rb"),
            Err(EntryError::Control { code: 0x0d, .. })
        ));
        assert!(matches!(
            Entry::new("a=b", "c", "d"),
            Err(EntryError::Name { .. })
        ));
    }
}
