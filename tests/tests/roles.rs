//! Roles on the control socket, over the real socket: the `xenchan` binary run as other
//! uids (and groups) against a broker in this process. A read-only caller may read and
//! is refused writes (403, exit 77, naming the role and its uid); an operator may write;
//! a caller in neither group may do nothing; the events an operator's call caused name
//! it (uid, pid, command).
//!
//! Needs root (to run the CLI as other users): skipped, saying so, otherwise. The two
//! roles are given to two groups that exist on any Debian machine and have no members
//! (the test does not change the group database).

#[path = "../../broker/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Dirs, TestBroker};
use xenchan_api::query::EventQuery;

const READ_ONLY_UID: u32 = 64_101;
const OPERATOR_UID: u32 = 64_102;
const NOBODY_UID: u32 = 64_103;
const SUPPLEMENTARY_UID: u32 = 64_104;
/// `nogroup`: no role.
const NO_ROLE_GID: u32 = 65_534;

/// Who runs the CLI.
#[derive(Debug, Clone)]
struct As {
    uid: u32,
    gid: u32,
    /// Supplementary groups (set with setpriv; none when empty).
    groups: Vec<u32>,
}

/// Runs `xenchan` as `who` and returns its output and pid.
async fn xenchan_as(bin: &Path, socket: &Path, who: &As, args: &[&str]) -> (Output, u32) {
    let (bin, socket, who) = (bin.to_path_buf(), socket.to_path_buf(), who.clone());
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = if who.groups.is_empty() {
            let mut c = Command::new(&bin);
            // std drops the supplementary groups when root sets a uid.
            c.uid(who.uid).gid(who.gid);
            c
        } else {
            // setpriv execs the CLI in its own process: the pid and the groups are the
            // CLI's.
            let groups: Vec<String> = who.groups.iter().map(u32::to_string).collect();
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", who.uid))
                .arg(format!("--regid={}", who.gid))
                .arg(format!("--groups={}", groups.join(",")))
                .arg("--")
                .arg(&bin);
            c
        };
        cmd.env("XENCHAN_SOCKET", &socket)
            .env_remove("XENCHAN_REGISTRY_DIR")
            .current_dir("/")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // ETXTBSY: another test copying its binary had the file open for writing when
        // a fork of ours inherited that descriptor; it is closed at that child's exec.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.unwrap(),
            }
        };
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two groups that exist and have no members, for the two roles.
fn two_spare_groups() -> Option<((String, u32), (String, u32))> {
    let mut found = Vec::new();
    for name in [
        "games", "users", "staff", "src", "news", "floppy", "fax", "voice",
    ] {
        if let Ok(Some(g)) = nix::unistd::Group::from_name(name)
            && g.mem.is_empty()
        {
            found.push((name.to_string(), g.gid.as_raw()));
        }
    }
    let mut it = found.into_iter();
    Some((it.next()?, it.next()?))
}

/// Why this test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to run the CLI as other users".into());
    }
    if two_spare_groups().is_none() {
        return Some("needs two existing groups without members (games, users...)".into());
    }
    None
}

/// The CLI binary where every uid can run it.
fn public_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("xenchan");
    std::fs::copy(xenchan_e2e::cli_binary(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_may_read_and_who_may_write() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    xenchan_e2e::cli_binary();
    let ((op_name, op_gid), (ro_name, ro_gid)) = two_spare_groups().unwrap();
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.control.operator_group = op_name.clone();
    config.control.read_only_group = ro_name.clone();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    // The socket's mode and group are the first gate (0660, the unit's group); here it
    // is opened to everyone so that what is tested is the broker's own check.
    std::fs::set_permissions(dirs.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bin = public_binary(dirs.root.path());

    let read_only = As {
        uid: READ_ONLY_UID,
        gid: ro_gid,
        groups: vec![],
    };
    let operator = As {
        uid: OPERATOR_UID,
        gid: op_gid,
        groups: vec![],
    };
    let nobody = As {
        uid: NOBODY_UID,
        gid: NO_ROLE_GID,
        groups: vec![],
    };
    let set = ["domain", "set", "web1", "--hostname", "web1.example"];

    // Read-only: GETs work, a write is 403 naming the role and the uid (exit 77).
    let (o, _) = xenchan_as(&bin, &sock, &read_only, &["domain", "ls"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (o, _) = xenchan_as(&bin, &sock, &read_only, &["status"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (o, _) = xenchan_as(&bin, &sock, &read_only, &set).await;
    assert_eq!(o.status.code(), Some(77), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("PUT /v1/domains/web1/config needs the operator role")
            && err.contains(&format!("uid {READ_ONLY_UID}"))
            && err.contains("has the read-only role")
            && err.contains(&format!("group `{op_name}`")),
        "{}",
        text(&o)
    );

    // Operator: the write is accepted (201), and so are reads.
    let (o, op_pid) = xenchan_as(&bin, &sock, &operator, &set).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("configuration created"),
        "{}",
        text(&o)
    );
    let (o, _) = xenchan_as(&bin, &sock, &operator, &["domain", "get", "web1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Neither group: nothing, not even a read.
    for args in [&["domain", "ls"][..], &set[..]] {
        let (o, _) = xenchan_as(&bin, &sock, &nobody, args).await;
        assert_eq!(o.status.code(), Some(77), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("uid {NOBODY_UID}")) && err.contains("has no role"),
            "{}",
            text(&o)
        );
    }

    // A supplementary group counts like the primary one.
    let member = As {
        uid: SUPPLEMENTARY_UID,
        gid: NO_ROLE_GID,
        groups: vec![],
    };
    if which_setpriv() {
        let member = As {
            groups: vec![ro_gid],
            ..member
        };
        let (o, _) = xenchan_as(&bin, &sock, &member, &["domain", "ls"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (o, _) = xenchan_as(&bin, &sock, &member, &["domain", "rm", "web1"]).await;
        assert_eq!(o.status.code(), Some(77), "{}", text(&o));
    } else {
        eprintln!("supplementary groups not tested: no setpriv");
    }

    // The event of the operator's call names it: uid, pid and command; the read-only
    // caller may read it.
    let page = broker
        .client
        .events(&EventQuery {
            domain: Some("web1".into()),
            kind: Some("config".into()),
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "{page:?}");
    let caller = page.events[0]
        .caller
        .clone()
        .expect("the event names its caller");
    assert_eq!(caller.uid, OPERATOR_UID);
    assert_eq!(caller.pid, Some(op_pid.cast_signed()));
    assert_eq!(caller.comm.as_deref(), Some("xenchan"));
    let (o, _) = xenchan_as(
        &bin,
        &sock,
        &read_only,
        &["events", "--domain", "web1", "--kind", "config"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("uid {OPERATOR_UID} xenchan[{op_pid}]")),
        "{}",
        text(&o)
    );
    // The refused calls caused no event.
    let all = broker.client.events(&EventQuery::default()).await.unwrap();
    assert!(
        all.events.iter().all(|e| e
            .caller
            .as_ref()
            .is_none_or(|c| c.uid != READ_ONLY_UID && c.uid != NOBODY_UID)),
        "{all:?}"
    );
    broker.stop().await.unwrap();
}

fn which_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The packaged layout: the socket's folder is 0750 and both are the operators' group
/// (the unit's `RuntimeDirectory`, `Group=`), nothing opened by hand. A member of only
/// the read-only group still reads, through the ACL entries the broker adds at start;
/// a caller in neither group cannot even connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_group_reaches_the_packaged_socket_through_an_acl() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    xenchan_e2e::cli_binary();
    let ((op_name, op_gid), (ro_name, ro_gid)) = two_spare_groups().unwrap();
    let dirs = Dirs::new();
    std::fs::set_permissions(dirs.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = dirs.root.path().join("acl-probe");
    std::fs::write(&probe, b"").unwrap();
    if let Err(e) = xenchan_broker::acl::grant_group(&probe, ro_gid, xenchan_broker::acl::R) {
        eprintln!("skipped: the test folder's file system takes no ACL ({e})");
        return;
    }
    let run = dirs.root.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(0), Some(op_gid)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut config = dirs.config();
    config.control_socket = run.join("broker.sock");
    config.control.operator_group = op_name;
    config.control.read_only_group = ro_name;
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    // What the unit's Group= gives the socket.
    std::os::unix::fs::chown(&sock, None, Some(op_gid)).unwrap();
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    assert_eq!(
        xenchan_broker::acl::group_perm(&sock, ro_gid).unwrap(),
        Some(xenchan_broker::acl::R | xenchan_broker::acl::W)
    );
    assert_eq!(
        xenchan_broker::acl::group_perm(&run, ro_gid).unwrap(),
        Some(xenchan_broker::acl::X)
    );
    let bin = public_binary(dirs.root.path());

    let read_only = As {
        uid: READ_ONLY_UID,
        gid: ro_gid,
        groups: vec![],
    };
    let (o, _) = xenchan_as(&bin, &sock, &read_only, &["domain", "ls"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let set = ["domain", "set", "web1", "--hostname", "web1.example"];
    let (o, _) = xenchan_as(&bin, &sock, &read_only, &set).await;
    assert_eq!(o.status.code(), Some(77), "{}", text(&o));

    let operator = As {
        uid: OPERATOR_UID,
        gid: op_gid,
        groups: vec![],
    };
    let (o, _) = xenchan_as(&bin, &sock, &operator, &set).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Neither group: the file system refuses the connection before the broker is asked.
    let nobody = As {
        uid: NOBODY_UID,
        gid: NO_ROLE_GID,
        groups: vec![],
    };
    let (o, _) = xenchan_as(&bin, &sock, &nobody, &["domain", "ls"]).await;
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ermission denied"),
        "{}",
        text(&o)
    );
    broker.stop().await.unwrap();
}
