//! The registry itself: the built-in entries plus local ones from registry folders.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::format::{Entry, ParseError, decode, parse_located};

/// The registry text shipped with the crate: xen-pv-channel(7)'s entries, names
/// seen in the wild (each D: says where), and xenchan's own name.
pub const BUILTIN_TEXT: &str = include_str!("../data/registry.txt");

/// The largest local registry file read, in bytes. A registry file holds a few
/// short entries; anything near this is a mistake, and reading stays bounded.
pub const MAX_LOCAL_FILE_BYTES: u64 = 1024 * 1024;

/// The most files read from one registry folder.
pub const MAX_LOCAL_FILES: usize = 4096;

/// Where an entry came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The data shipped with the crate ([`BUILTIN_TEXT`]).
    Builtin,
    /// A local file in a registry folder.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in registry"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An entry with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The entry.
    pub entry: Entry,
    /// The file (or the built-in data) that registered it.
    pub origin: Origin,
    /// The 1-based line of its `N:` in that file.
    pub line: usize,
}

impl Registered {
    /// `origin:line`, or `built-in registry` (whose lines mean nothing to users).
    pub fn location(&self) -> String {
        match &self.origin {
            Origin::Builtin => self.origin.to_string(),
            Origin::File(_) => format!("{}:{}", self.origin, self.line),
        }
    }
}

/// Something odd but not fatal found while loading local entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A local entry replaces a built-in one.
    OverridesBuiltin {
        /// The name.
        name: String,
        /// The local file and line.
        path: PathBuf,
        /// Line of the `N:`.
        line: usize,
    },
    /// Two local files register the same name; the later one (by folder order,
    /// then file name) wins.
    Redefined {
        /// The name.
        name: String,
        /// The winning file.
        path: PathBuf,
        /// Its line.
        line: usize,
        /// The losing registration.
        previous: String,
    },
    /// A local name is a label prefix of another registered name, or the reverse.
    PrefixClash {
        /// The shorter name.
        short: String,
        /// Where it is registered.
        short_at: String,
        /// The longer name.
        long: String,
        /// Where it is registered.
        long_at: String,
    },
    /// A folder entry that is not read.
    SkippedFile {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::OverridesBuiltin { name, path, line } => write!(
                f,
                "{}:{line}: `{name}` overrides the built-in registry entry",
                path.display()
            ),
            Warning::Redefined {
                name,
                path,
                line,
                previous,
            } => write!(
                f,
                "{}:{line}: `{name}` is also registered at {previous}; this entry wins",
                path.display()
            ),
            Warning::PrefixClash {
                short,
                short_at,
                long,
                long_at,
            } => write!(
                f,
                "`{short}` ({short_at}) is a prefix of `{long}` ({long_at}); programs that \
                 match names by prefix will confuse them"
            ),
            Warning::SkippedFile { path, reason } => {
                write!(f, "{}: skipped: {reason}", path.display())
            }
        }
    }
}

/// A local registry folder or file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The folder exists but cannot be listed.
    #[error("cannot list registry folder {}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// More files than [`MAX_LOCAL_FILES`].
    #[error("registry folder {} holds more than {MAX_LOCAL_FILES} files", path.display())]
    TooManyFiles {
        /// The folder.
        path: PathBuf,
    },
    /// A file cannot be opened or read.
    #[error("cannot read registry file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file is larger than [`MAX_LOCAL_FILE_BYTES`].
    #[error("registry file {} is larger than {MAX_LOCAL_FILE_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A file does not follow the registry grammar.
    #[error("bad registry file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where (`line N: ...`).
        #[source]
        source: ParseError,
    },
}

impl LoadError {
    /// The file or folder at fault.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::ReadDir { path, .. }
            | LoadError::TooManyFiles { path }
            | LoadError::Read { path, .. }
            | LoadError::TooLarge { path }
            | LoadError::Parse { path, .. } => path,
        }
    }
}

/// The set of registered channel names.
///
/// Look-ups are exact and case-sensitive, as xl compares channel names.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    records: BTreeMap<String, Registered>,
}

impl Registry {
    /// A registry with no entries.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The entries shipped with the crate.
    pub fn builtin() -> Self {
        let located = parse_located(BUILTIN_TEXT)
            .expect("the built-in registry data parses (checked by the crate's tests)");
        let records = located
            .into_iter()
            .map(|l| {
                let registered = Registered {
                    entry: l.entry,
                    origin: Origin::Builtin,
                    line: l.line,
                };
                (registered.entry.name().to_owned(), registered)
            })
            .collect();
        Self { records }
    }

    /// The built-in entries plus every local file in `dirs`, in order.
    ///
    /// Each folder's files are read in byte order of their names; later entries
    /// override earlier ones (and the built-in ones), with a [`Warning`]. A folder
    /// that does not exist adds nothing. Hidden files (`.*`, which includes the
    /// temporary files of `add`), backups (`*~`) and package-manager leftovers
    /// (`*.dpkg-*`, `*.rpmnew`, `*.rpmsave`, `*.rpmorig`) are skipped, as are
    /// sub-folders and special files (with a warning).
    pub fn load<P: AsRef<Path>>(dirs: &[P]) -> Result<(Self, Vec<Warning>), LoadError> {
        let mut registry = Self::builtin();
        let mut warnings = Vec::new();
        let mut local = BTreeSet::new();
        for dir in dirs {
            for path in list_dir(dir.as_ref(), &mut warnings)? {
                let Some(bytes) = read_bounded(&path, &mut warnings)? else {
                    continue;
                };
                let located =
                    decode(&bytes)
                        .and_then(parse_located)
                        .map_err(|source| LoadError::Parse {
                            path: path.clone(),
                            source,
                        })?;
                for l in located {
                    let name = l.entry.name().to_owned();
                    let registered = Registered {
                        entry: l.entry,
                        origin: Origin::File(path.clone()),
                        line: l.line,
                    };
                    if let Some(previous) = registry.records.get(&name) {
                        warnings.push(match previous.origin {
                            Origin::Builtin => Warning::OverridesBuiltin {
                                name: name.clone(),
                                path: path.clone(),
                                line: l.line,
                            },
                            Origin::File(_) => Warning::Redefined {
                                name: name.clone(),
                                path: path.clone(),
                                line: l.line,
                                previous: previous.location(),
                            },
                        });
                    }
                    local.insert(name.clone());
                    registry.records.insert(name, registered);
                }
            }
        }
        // Built-in names are checked against each other by the tests; report the
        // prefix clashes that involve a local name, each pair once.
        for name in &local {
            for other in registry.extensions_of(name) {
                warnings.push(prefix_clash(&registry.records[name], other));
            }
            for short in registry.prefixes_of(name) {
                if !local.contains(short.entry.name()) {
                    warnings.push(prefix_clash(short, &registry.records[name]));
                }
            }
        }
        Ok((registry, warnings))
    }

    /// The entry registered under exactly `name` (case-sensitive).
    pub fn lookup(&self, name: &str) -> Option<&Entry> {
        self.records.get(name).map(|r| &r.entry)
    }

    /// The entry registered under exactly `name`, with its origin.
    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.records.get(name)
    }

    /// All entries, ordered by name (bytewise).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.records.values().map(|r| &r.entry)
    }

    /// All entries with their origins, ordered by name (bytewise).
    pub fn records(&self) -> impl Iterator<Item = &Registered> {
        self.records.values()
    }

    /// Adds or replaces an entry; returns the one it replaced.
    pub fn insert(&mut self, registered: Registered) -> Option<Registered> {
        self.records
            .insert(registered.entry.name().to_owned(), registered)
    }

    /// Registered names that `name` is a label prefix of (`org.a` -> `org.a.b`).
    pub fn extensions_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Registered> + 'a {
        // Names starting with `name.` sort between `name.` and `name/` ('/' follows '.').
        let from = format!("{name}.");
        let to = format!("{name}/");
        self.records.range(from..to).map(|(_, r)| r)
    }

    /// Registered names that are label prefixes of `name` (`org.a.b` -> `org.a`),
    /// shortest first.
    pub fn prefixes_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Registered> + 'a {
        let cuts: Vec<&Registered> = name
            .match_indices('.')
            .filter_map(|(i, _)| self.records.get(&name[..i]))
            .collect();
        cuts.into_iter()
    }

    /// How many names are registered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no name is registered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn prefix_clash(short: &Registered, long: &Registered) -> Warning {
    Warning::PrefixClash {
        short: short.entry.name().to_owned(),
        short_at: short.location(),
        long: long.entry.name().to_owned(),
        long_at: long.location(),
    }
}

/// True for folder entries that are never registry files: hidden files (including
/// the temporary files of an atomic write), editor backups and package leftovers.
pub fn is_ignored_file_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.contains(".dpkg-")
        || name.ends_with(".rpmnew")
        || name.ends_with(".rpmsave")
        || name.ends_with(".rpmorig")
}

/// The readable candidate files of one folder, sorted by name.
fn list_dir(dir: &Path, warnings: &mut Vec<Warning>) -> Result<Vec<PathBuf>, LoadError> {
    let read_dir_error = |source| LoadError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "no local registry folder");
            return Ok(Vec::new());
        }
        Err(e) => return Err(read_dir_error(e)),
    };
    let mut paths = Vec::new();
    for item in iter {
        let item = item.map_err(read_dir_error)?;
        let file_name = item.file_name();
        let path = item.path();
        match file_name.to_str() {
            None => {
                warnings.push(Warning::SkippedFile {
                    path,
                    reason: "file name is not UTF-8",
                });
                continue;
            }
            Some(n) if is_ignored_file_name(n) => {
                tracing::debug!(path = %path.display(), "ignored registry folder entry");
                continue;
            }
            Some(_) => {}
        }
        if paths.len() == MAX_LOCAL_FILES {
            return Err(LoadError::TooManyFiles {
                path: dir.to_owned(),
            });
        }
        paths.push(path);
    }
    paths.sort();
    Ok(paths)
}

/// Reads a regular file of at most [`MAX_LOCAL_FILE_BYTES`]; `None` (with a
/// warning) for folders and special files.
fn read_bounded(path: &Path, warnings: &mut Vec<Warning>) -> Result<Option<Vec<u8>>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK so that a FIFO dropped in the folder cannot hang the open; the
    // type is checked on the opened file, so a swap after the check cannot matter.
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Removed while we listed, or a dangling symlink.
            warnings.push(Warning::SkippedFile {
                path: path.to_owned(),
                reason: "vanished or dangling symlink",
            });
            return Ok(None);
        }
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            warnings.push(Warning::SkippedFile {
                path: path.to_owned(),
                reason: "is a folder",
            });
            return Ok(None);
        }
        Err(e) => return Err(read_error(e)),
    };
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_dir() {
        warnings.push(Warning::SkippedFile {
            path: path.to_owned(),
            reason: "is a folder",
        });
        return Ok(None);
    }
    if !meta.is_file() {
        warnings.push(Warning::SkippedFile {
            path: path.to_owned(),
            reason: "not a regular file",
        });
        return Ok(None);
    }
    if meta.len() > MAX_LOCAL_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_LOCAL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_LOCAL_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(Some(bytes))
}
