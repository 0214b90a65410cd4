//! Local registry folders: loading, overriding, clashes, bad files, and the
//! atomic writer, all on real files in temporary folders.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use xenchan_registry::{
    Entry, LoadError, Origin, Registry, StoreError, Warning, parse, store_local_entry,
};

fn put(dir: &Path, file: &str, text: &str) {
    fs::write(dir.join(file), text).unwrap();
}

#[test]
fn missing_folder_means_builtin_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, w) = Registry::load(&[tmp.path().join("absent")]).unwrap();
    assert!(w.is_empty());
    assert_eq!(r.len(), Registry::builtin().len());
}

#[test]
fn local_entries_extend_and_override_with_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    put(
        tmp.path(),
        "cloud",
        "# ours\nN: org.example.cloud.agent.1\nC: Cloud team\nD: first boot\n",
    );
    put(
        tmp.path(),
        "qemu-override",
        "N: org.qemu.guest_agent.0\nC: our qemu fork\nD: patched qemu-ga\n",
    );
    let (r, warnings) = Registry::load(&[tmp.path()]).unwrap();
    let cloud = r.get("org.example.cloud.agent.1").unwrap();
    assert_eq!(cloud.origin, Origin::File(tmp.path().join("cloud")));
    assert_eq!(cloud.line, 2);
    assert_eq!(
        r.lookup("org.qemu.guest_agent.0").unwrap().contact(),
        "our qemu fork"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        matches!(&warnings[0], Warning::OverridesBuiltin { name, line: 1, .. }
        if name == "org.qemu.guest_agent.0")
    );
    assert!(warnings[0].to_string().contains("qemu-override:1"));
}

#[test]
fn later_files_and_folders_win_and_clashes_are_reported() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    put(a.path(), "10-x", "N: org.example.x.1\nC: first\nD: one\n");
    put(a.path(), "20-x", "N: org.example.x.1\nC: second\nD: two\n");
    put(b.path(), "x", "N: org.example.x.1\nC: third\nD: three\n");
    let (r, w) = Registry::load(&[a.path(), b.path()]).unwrap();
    assert_eq!(r.lookup("org.example.x.1").unwrap().contact(), "third");
    let redefined: Vec<_> = w
        .iter()
        .filter(|w| matches!(w, Warning::Redefined { .. }))
        .collect();
    assert_eq!(redefined.len(), 2, "{w:?}");
    assert!(redefined[0].to_string().contains("10-x:1"));
}

#[test]
fn prefix_clashes_with_local_names_are_warned_once() {
    let tmp = tempfile::tempdir().unwrap();
    put(
        tmp.path(),
        "p",
        "N: org.qemu.guest_agent\nC: a\nD: b\n\n\
         N: org.example.a\nC: a\nD: b\n\n\
         N: org.example.a.b.1\nC: a\nD: b\n",
    );
    let (_, w) = Registry::load(&[tmp.path()]).unwrap();
    let clashes: Vec<String> = w
        .iter()
        .filter(|w| matches!(w, Warning::PrefixClash { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(clashes.len(), 2, "{clashes:?}");
    assert!(
        clashes
            .iter()
            .any(|c| c.starts_with("`org.qemu.guest_agent` (")
                && c.contains("`org.qemu.guest_agent.0` (built-in registry)"))
    );
    assert!(clashes.iter().any(|c| c.contains("`org.example.a.b.1`")));
}

#[test]
fn ignored_and_special_entries_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = "this is not a registry\n";
    for name in [".hidden", "backup~", "x.dpkg-old", "x.rpmsave", "x.rpmnew"] {
        put(tmp.path(), name, bad);
    }
    fs::create_dir(tmp.path().join("subfolder")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", tmp.path().join("dangling")).unwrap();
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let start = Instant::now();
    let (r, w) = Registry::load(&[tmp.path()]).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a FIFO must not block loading"
    );
    assert_eq!(r.len(), Registry::builtin().len());
    let skipped: Vec<String> = w.iter().map(ToString::to_string).collect();
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("subfolder: skipped: is a folder")),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().any(|s| s.contains("dangling: skipped")),
        "{skipped:?}"
    );
    if made.is_ok_and(|s| s.success()) {
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("fifo: skipped: not a regular file")),
            "{skipped:?}"
        );
    } else {
        eprintln!("mkfifo unavailable; FIFO case not exercised");
    }
}

#[test]
fn a_malformed_file_is_an_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    put(tmp.path(), "good", "N: org.example.g.1\nC: a\nD: b\n");
    put(
        tmp.path(),
        "bad",
        "N: org.example.b.1\nC: a\nD: b\nX: what\n",
    );
    let err = Registry::load(&[tmp.path()]).unwrap_err();
    let LoadError::Parse { path, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, &tmp.path().join("bad"));
    assert_eq!(source.line, 4);
    assert_eq!(
        xenchan_registry::error_chain(&err),
        format!(
            "bad registry file {}: line 4: unknown field `X:`; an entry has `N:`, `C:` and \
             `D:` (upper case)",
            path.display()
        )
    );
}

#[test]
fn non_utf8_and_oversized_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("latin1"),
        b"N: org.example.b.1\nC: Jos\xe9\nD: b\n",
    )
    .unwrap();
    let err = Registry::load(&[tmp.path()]).unwrap_err();
    assert!(
        matches!(&err, LoadError::Parse { source, .. } if source.line == 2),
        "{err:?}"
    );
    fs::remove_file(tmp.path().join("latin1")).unwrap();

    let big = "# padding\n".repeat(120_000);
    put(tmp.path(), "big", &big);
    let err = Registry::load(&[tmp.path()]).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { .. }), "{err:?}");
}

#[test]
fn an_unlistable_folder_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-folder");
    put(tmp.path(), "not-a-folder", "");
    let err = Registry::load(&[&file]).unwrap_err();
    assert!(matches!(err, LoadError::ReadDir { .. }), "{err:?}");
    assert_eq!(err.path(), file);
}

#[test]
fn store_writes_atomically_a_parseable_world_readable_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registry.d");
    let entry = Entry::new(
        "org.example.cloud.agent.1",
        "Cloud team",
        "first boot\nconfig",
    )
    .unwrap();
    let path = store_local_entry(&dir, &entry).unwrap();
    assert_eq!(path, dir.join("org.example.cloud.agent.1"));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Local channel name registration"));
    assert_eq!(parse(&text).unwrap(), vec![entry.clone()]);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");

    // Replacing keeps one file and the new content.
    let newer = Entry::new("org.example.cloud.agent.1", "Cloud team", "changed").unwrap();
    store_local_entry(&dir, &newer).unwrap();
    let (r, _) = Registry::load(&[&dir]).unwrap();
    assert_eq!(r.lookup(newer.name()), Some(&newer));
}

#[test]
fn store_refuses_names_the_loader_would_ignore() {
    let tmp = tempfile::tempdir().unwrap();
    let entry = Entry::new(".org.example.a.1", "c", "d").unwrap();
    let err = store_local_entry(tmp.path(), &entry).unwrap_err();
    assert!(matches!(err, StoreError::IgnoredFileName(_)), "{err:?}");
}

#[test]
fn store_reports_io_errors_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("file");
    put(tmp.path(), "file", "");
    let entry = Entry::new("org.example.a.1", "c", "d").unwrap();
    let err = store_local_entry(&blocker.join("registry.d"), &entry).unwrap_err();
    let StoreError::Io { path, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, &blocker.join("registry.d"));
}
