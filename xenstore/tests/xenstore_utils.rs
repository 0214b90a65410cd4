//! Interop with Debian's xenstore-utils (libxenstore's own client) pointed at
//! the test server through `XENSTORED_PATH`: what the C tools read and write
//! must agree with this crate's client. Skipped, with a printed reason, when
//! the tools are not installed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Env, GUEST};

/// The tool's path, or `None` after printing why the test is skipped.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: {name} not found in PATH (Debian package xenstore-utils); interop not checked"
        );
    }
    found
}

/// Runs a xenstore tool against `socket` with a clean environment.
fn run(tool: &Path, socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .env_clear()
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "{} {args:?} -> {:?}\nstdout: {}stderr: {}",
        tool.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "tool failed: {out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn xenstore_write_then_client_reads() {
    let (Some(write), Some(read)) = (tool("xenstore-write"), tool("xenstore-read")) else {
        return;
    };
    let env = Env::new();
    let sock = env.sock(0);
    // Several pairs at once: xenstore-write wraps them in a transaction.
    stdout(&run(
        &write,
        &sock,
        &["/interop/a", "alpha", "/interop/b/c", "with space"],
    ));
    let mut c = env.dom0();
    assert_eq!(c.read_string("/interop/a").unwrap(), "alpha");
    assert_eq!(c.read_string("/interop/b/c").unwrap(), "with space");
    // And back: the client writes, the tool reads (one key, and several in a transaction).
    c.write("/interop/d", "delta").unwrap();
    assert_eq!(stdout(&run(&read, &sock, &["/interop/d"])), "delta\n");
    assert_eq!(
        stdout(&run(&read, &sock, &["/interop/a", "/interop/d"])),
        "alpha\ndelta\n"
    );
    // Escapes: the tool writes real control bytes for \t, the client sees them.
    stdout(&run(&write, &sock, &["/interop/esc", "a\\tb"]));
    assert_eq!(c.read("/interop/esc").unwrap(), b"a\tb");
}

#[test]
fn xenstore_read_reports_missing_nodes() {
    let Some(read) = tool("xenstore-read") else {
        return;
    };
    let env = Env::new();
    let out = run(&read, &env.sock(0), &["/no/such/node"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't read path /no/such/node"));
}

#[test]
fn xenstore_ls_agrees_with_client_on_a_channel() {
    let Some(ls) = tool("xenstore-ls") else {
        return;
    };
    let env = Env::with_guests();
    let mut c = env.dom0();
    for dir in [
        "/local/domain/5/device/console/1",
        "/local/domain/0/backend/console/5/1",
    ] {
        // Plain listing: "name = \"value\"" per child, in directory order.
        let text = stdout(&run(&ls, &env.sock(0), &[dir]));
        let expected: Vec<String> = c
            .directory(dir)
            .unwrap()
            .into_iter()
            .map(|name| {
                let value = c.read_string(&format!("{dir}/{name}")).unwrap();
                format!("{name} = \"{value}\"")
            })
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{dir}");
        // Full paths with permissions (-f -p).
        let text = stdout(&run(&ls, &env.sock(0), &["-f", "-p", dir]));
        for line in text.lines() {
            let (path, rest) = line.split_once(" = ").unwrap();
            let perms = rest.rsplit_once("  (").unwrap().1.trim_end_matches(')');
            assert_eq!(perms, c.get_perms(path).unwrap().to_string(), "{line}");
        }
        assert_eq!(text.lines().count(), 7, "{dir}");
    }
}

#[test]
fn xenstore_ls_walks_the_whole_tree() {
    let Some(ls) = tool("xenstore-ls") else {
        return;
    };
    let env = Env::with_guests();
    let text = stdout(&run(&ls, &env.sock(0), &["-f"]));
    let mut c = env.dom0();
    // Every node the tool prints exists with that value for the client.
    let mut count = 0;
    for line in text.lines() {
        let (path, value) = line.split_once(" = ").unwrap();
        let value = value.trim_matches('"');
        assert_eq!(c.read_string(path).unwrap(), value, "{path}");
        count += 1;
    }
    // All nodes but the root.
    assert_eq!(count, env.server.node_count() - 1);
}

#[test]
fn xenstore_list_rm_exists_chmod() {
    let (Some(list), Some(rm), Some(exists), Some(chmod)) = (
        tool("xenstore-list"),
        tool("xenstore-rm"),
        tool("xenstore-exists"),
        tool("xenstore-chmod"),
    ) else {
        return;
    };
    let env = Env::with_guests();
    let sock = env.sock(0);
    let mut c = env.dom0();
    c.write("/u/one", "1").unwrap();
    c.write("/u/two/deep", "2").unwrap();
    let listed = stdout(&run(&list, &sock, &["/u"]));
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        c.directory("/u").unwrap()
    );
    assert_eq!(run(&exists, &sock, &["/u/one"]).status.code(), Some(0));
    assert_eq!(run(&exists, &sock, &["/u/nope"]).status.code(), Some(1));
    stdout(&run(&rm, &sock, &["/u/two"]));
    assert!(!c.exists("/u/two/deep").unwrap());
    stdout(&run(&chmod, &sock, &["/u/one", "n0", "r5", "b6"]));
    assert_eq!(c.get_perms("/u/one").unwrap().to_string(), "n0,r5,b6");
}

#[test]
fn xenstore_tools_as_a_guest() {
    let (Some(read), Some(write)) = (tool("xenstore-read"), tool("xenstore-write")) else {
        return;
    };
    let env = Env::with_guests();
    let sock = env.sock(GUEST);
    // Relative paths resolve against the guest's home, as in a real domU.
    assert_eq!(
        stdout(&run(&read, &sock, &["device/console/1/name"])),
        "org.xenchan.0\n"
    );
    assert_eq!(stdout(&run(&read, &sock, &["name"])), "vm-five\n");
    // The read-only frontend nodes stay read-only for libxenstore too.
    let out = run(&write, &sock, &["device/console/1/name", "evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        env.dom0()
            .read_string("/local/domain/5/device/console/1/name")
            .unwrap(),
        "org.xenchan.0"
    );
    // Another domain's nodes are out of reach.
    assert_eq!(
        run(&read, &sock, &["/local/domain/6/name"]).status.code(),
        Some(1)
    );
    // Guest-writable area works.
    stdout(&run(&write, &sock, &["data/from-tool", "hi"]));
    assert_eq!(
        env.dom0()
            .read_string("/local/domain/5/data/from-tool")
            .unwrap(),
        "hi"
    );
}

#[test]
fn xenstore_watch_sees_first_event_and_client_writes() {
    let Some(watch) = tool("xenstore-watch") else {
        return;
    };
    let env = Env::new();
    let mut child = Command::new(&watch)
        .args(["-n", "2", "/watched"])
        .env_clear()
        .env("XENSTORED_PATH", env.sock(0))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Kill the tool if the test hangs, so no process outlives it.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(15)).is_err() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The immediate first event.
    assert_eq!(lines.next().unwrap().unwrap(), "/watched");
    env.dom0().write("/watched/child", "x").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "/watched/child");
    assert!(child.wait().unwrap().success());
    done_tx.send(()).unwrap();
    guard.join().unwrap();
}

#[test]
fn tools_honour_xenstored_rundir() {
    let Some(read) = tool("xenstore-read") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = xenchan_xenstore::server::Server::new();
    let _l = server.listen(dir.path().join("socket"), 0).unwrap();
    let out = Command::new(&read)
        .arg("/local/domain/0/name")
        .env_clear()
        .env("XENSTORED_RUNDIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Domain-0\n",
        "{out:?}"
    );
    // And our default-path helper agrees with libxenstore's rule.
    let rundir = dir.path().as_os_str().to_owned();
    let paths = xenchan_xenstore::client::default_paths_from(|k| {
        (k == xenchan_xenstore::client::ENV_RUNDIR).then(|| rundir.clone())
    });
    let mut c = xenchan_xenstore::Client::open_first(&paths).unwrap();
    assert_eq!(c.read_string("/local/domain/0/name").unwrap(), "Domain-0");
}

#[test]
fn xenstore_list_of_a_long_directory_uses_directory_part() {
    let Some(list) = tool("xenstore-list") else {
        return;
    };
    let env = Env::new();
    let mut c = env.dom0();
    // ~6 KB of names: more than one DIRECTORY reply can carry, so libxenstore
    // falls back to DIRECTORY_PART.
    let names: Vec<String> = (0..300).map(|i| format!("entry-{i:014}")).collect();
    c.transaction(|tx| {
        for n in &names {
            tx.write(&format!("/long/{n}"), "")?;
        }
        Ok(())
    })
    .unwrap();
    let out = Command::new(&list)
        .arg("/long")
        .env_clear()
        .env("XENSTORED_PATH", env.sock(0))
        .output()
        .unwrap();
    let text = stdout(&out);
    let mut got: Vec<&str> = text.lines().collect();
    got.sort_unstable();
    assert_eq!(got, names);
    assert_eq!(c.directory("/long").unwrap().len(), 300);
}
