//! The items a template maintainer expects besides hostname, network and keys, pushed
//! over the channel to the real agent and applied under a temporary guest root: time
//! (NTP for chrony or timesyncd, the zone), write_files (allow list, symlinks refused,
//! owner and mode, per-instance runs), each re-push `unchanged`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use xenchan_protocol::{ItemStatus, message::ApplyResult};

async fn session(guest: &Guest) -> (Broker, Running) {
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.handshake().await;
    (broker, agent)
}

fn statuses(r: &ApplyResult) -> Vec<(String, ItemStatus)> {
    r.items.iter().map(|i| (i.item.clone(), i.status)).collect()
}

fn reason<'a>(r: &'a ApplyResult, item: &str) -> &'a str {
    r.items
        .iter()
        .find(|i| i.item == item)
        .and_then(|i| i.reason.as_deref())
        .unwrap_or("")
}

fn touch(guest: &Guest, rel: &str, content: &[u8]) {
    let p = guest.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn read(guest: &Guest, rel: &str) -> String {
    std::fs::read_to_string(guest.path(rel)).unwrap()
}

const TIME_DOC: &str = r#"{"time":{"ntp":{"servers":["192.0.2.123"],"pools":["pool.example.org"]},"timezone":"Europe/Berlin"}}"#;

#[tokio::test]
async fn ntp_goes_to_timesyncd_and_the_zone_to_localtime() {
    let guest = Guest::new();
    touch(&guest, "usr/lib/systemd/systemd-timesyncd", b"");
    touch(
        &guest,
        "usr/share/zoneinfo/Europe/Berlin",
        b"TZif2 fake zone",
    );
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(TIME_DOC)).await;
    assert_eq!(
        statuses(&r),
        [
            ("time:ntp".into(), ItemStatus::Applied),
            ("time:timezone".into(), ItemStatus::Applied)
        ],
        "{r:?}"
    );
    let dropin = read(&guest, "etc/systemd/timesyncd.conf.d/50-xenchan.conf");
    assert!(
        dropin.ends_with("[Time]\nNTP=192.0.2.123 pool.example.org\n"),
        "{dropin}"
    );
    assert_eq!(
        std::fs::read_link(guest.path("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    assert_eq!(read(&guest, "etc/timezone"), "Europe/Berlin\n");
    let r = broker.push(2, &config(TIME_DOC)).await;
    assert!(
        r.items.iter().all(|i| i.status == ItemStatus::Unchanged),
        "{r:?}"
    );

    // NTP dropped from the document: our drop-in goes, the zone stays.
    let r = broker
        .push(3, &config(r#"{"time":{"timezone":"Europe/Berlin"}}"#))
        .await;
    assert_eq!(
        statuses(&r),
        [("time:timezone".into(), ItemStatus::Unchanged)]
    );
    assert!(
        !guest
            .path("etc/systemd/timesyncd.conf.d/50-xenchan.conf")
            .exists()
    );
}

#[tokio::test]
async fn ntp_goes_to_chrony_sources_d_only_when_chrony_reads_it() {
    let guest = Guest::new();
    touch(
        &guest,
        "etc/chrony/chrony.conf",
        b"pool 2.debian.pool.ntp.org iburst\n",
    );
    let doc = r#"{"time":{"ntp":{"servers":["ntp.example.com"]}}}"#;
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(doc)).await;
    assert_eq!(statuses(&r), [("time:ntp".into(), ItemStatus::Failed)]);
    assert!(
        reason(&r, "time:ntp").contains("sourcedir /etc/chrony/sources.d"),
        "{r:?}"
    );
    touch(
        &guest,
        "etc/chrony/chrony.conf",
        b"pool 2.debian.pool.ntp.org iburst\nsourcedir /etc/chrony/sources.d\n",
    );
    let r = broker.push(2, &config(doc)).await;
    assert_eq!(
        statuses(&r),
        [("time:ntp".into(), ItemStatus::Applied)],
        "{r:?}"
    );
    assert!(
        read(&guest, "etc/chrony/sources.d/xenchan.sources")
            .ends_with("server ntp.example.com iburst\n")
    );
}

#[tokio::test]
async fn no_time_service_is_unsupported_and_an_unknown_zone_fails() {
    let guest = Guest::new();
    let (mut broker, _agent) = session(&guest).await;
    let r = broker
        .push(
            1,
            &config(r#"{"time":{"ntp":{"servers":["192.0.2.1"]},"timezone":"Mars/Olympus_Mons"}}"#),
        )
        .await;
    assert_eq!(
        statuses(&r),
        [
            ("time:ntp".into(), ItemStatus::Unsupported),
            ("time:timezone".into(), ItemStatus::Failed)
        ]
    );
    assert!(reason(&r, "time:ntp").contains("neither chrony nor systemd-timesyncd"));
    assert!(reason(&r, "time:timezone").contains("unknown time zone `Mars/Olympus_Mons`"));
    assert!(!guest.path("etc/localtime").exists());
}

#[tokio::test]
async fn write_files_with_owner_mode_allow_list_and_no_symlinks() {
    let guest = Guest::new();
    std::fs::create_dir_all(guest.path("srv")).unwrap();
    // /srv/link -> /usr: a write through it would land outside the allow list.
    std::fs::create_dir_all(guest.path("usr")).unwrap();
    std::os::unix::fs::symlink(guest.path("usr"), guest.path("srv/link")).unwrap();
    let doc = r#"{"write_files":[
        {"path":"/etc/motd","content":"hello\n"},
        {"path":"/home/cloud/app/key","content":"AAEC","encoding":"base64","owner":"cloud:cloud","permissions":"0600"},
        {"path":"/usr/bin/evil","content":"x"},
        {"path":"/srv/link/evil","content":"x"}]}"#;
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(doc)).await;
    assert_eq!(
        statuses(&r),
        [
            ("file:/etc/motd".into(), ItemStatus::Applied),
            ("file:/home/cloud/app/key".into(), ItemStatus::Applied),
            ("file:/usr/bin/evil".into(), ItemStatus::Failed),
            ("file:/srv/link/evil".into(), ItemStatus::Failed),
        ],
        "{r:?}"
    );
    assert!(reason(&r, "file:/usr/bin/evil").contains("--write-files-allow"));
    assert!(
        reason(&r, "file:/srv/link/evil").contains("symbolic link"),
        "{r:?}"
    );
    assert!(!guest.path("usr/evil").exists() && !guest.path("usr/bin/evil").exists());
    assert_eq!(read(&guest, "etc/motd"), "hello\n");
    let key = guest.path("home/cloud/app/key");
    assert_eq!(std::fs::read(&key).unwrap(), [0, 1, 2]);
    let m = std::fs::metadata(&key).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o600, guest.uid, guest.gid)
    );
    let ino = m.ino();
    let r = broker.push(2, &config(doc)).await;
    assert_eq!(r.items[0].status, ItemStatus::Unchanged);
    assert_eq!(r.items[1].status, ItemStatus::Unchanged);
    assert_eq!(
        std::fs::metadata(&key).unwrap().ino(),
        ino,
        "an unchanged file is not rewritten"
    );
}

#[tokio::test]
async fn per_instance_files_run_once_per_vm_uuid() {
    let guest = Guest::new();
    let doc = r#"{"write_files":[
        {"path":"/etc/once","content":"first boot\n","run":"per_instance"},
        {"path":"/etc/always","content":"managed\n"}]}"#;
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(doc)).await;
    assert!(
        r.items.iter().all(|i| i.status == ItemStatus::Applied),
        "{r:?}"
    );
    // The guest's owner edits both files.
    std::fs::write(guest.path("etc/once"), "edited\n").unwrap();
    std::fs::write(guest.path("etc/always"), "edited\n").unwrap();
    let r = broker.push(2, &config(doc)).await;
    assert_eq!(r.items[0].status, ItemStatus::Unchanged);
    assert!(
        reason(&r, "file:/etc/once").contains("per_instance: already applied on instance 4d1f0a2b"),
        "{r:?}"
    );
    assert_eq!(r.items[1].status, ItemStatus::Applied);
    assert_eq!(read(&guest, "etc/once"), "edited\n");
    assert_eq!(read(&guest, "etc/always"), "managed\n");
    // A clone: same disk, new VM UUID.
    std::fs::write(
        guest.path("sys/hypervisor/uuid"),
        "11111111-2222-3333-4444-555555555555\n",
    )
    .unwrap();
    let r = broker.push(3, &config(doc)).await;
    assert_eq!(r.items[0].status, ItemStatus::Applied, "{r:?}");
    assert_eq!(read(&guest, "etc/once"), "first boot\n");
}

const HASH: &str = "$6$rounds=5000$saltsalt$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./0123456789abcdef";

fn accounts_guest() -> Guest {
    let guest = Guest::new();
    touch(&guest, "bin/bash", b"");
    touch(&guest, "usr/bin/zsh", b"");
    let g = std::fs::read_to_string(guest.path("etc/group")).unwrap();
    std::fs::write(
        guest.path("etc/group"),
        format!("{g}sudo:x:27:alice\nshadow:x:42:\n"),
    )
    .unwrap();
    std::fs::write(
        guest.path("etc/gshadow"),
        "root:*::\nsudo:*::alice\nshadow:*::\n",
    )
    .unwrap();
    std::fs::write(
        guest.path("etc/shadow"),
        "root:*:19000:0:99999:7:::\ncloud:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    guest
}

fn visudo_usable() -> bool {
    let ok = is_root()
        && ["/usr/sbin/visudo", "/usr/bin/visudo"]
            .iter()
            .any(|p| Path::new(p).exists());
    if !ok {
        eprintln!("skipped: needs root and visudo (the sudo package) to check sudoers files");
    }
    ok
}

#[tokio::test]
async fn accounts_v2_create_groups_shell_sudo_password_and_removal() {
    if !visudo_usable() {
        return;
    }
    let guest = accounts_guest();
    let doc = format!(
        r#"{{"users":[
        {{"name":"ops","create":true,"groups":["sudo","devs"],"shell":"/usr/bin/zsh",
          "sudo":"ALL=(ALL) NOPASSWD:ALL","hashed_passwd":"{HASH}"}},
        {{"name":"cloud","groups":["devs"],"lock_passwd":true}}]}}"#
    );
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(&doc)).await;
    assert_eq!(
        statuses(&r),
        [
            ("user:ops".into(), ItemStatus::Applied),
            ("user:cloud".into(), ItemStatus::Applied)
        ],
        "{r:?}"
    );
    let passwd = read(&guest, "etc/passwd");
    let ops = passwd.lines().find(|l| l.starts_with("ops:")).unwrap();
    assert!(ops.ends_with(":/home/ops:/usr/bin/zsh"), "{ops}");
    let shadow = read(&guest, "etc/shadow");
    assert!(shadow.contains(&format!("ops:{HASH}:")), "{shadow}");
    assert!(
        shadow.contains("cloud:!:"),
        "already locked stays locked: {shadow}"
    );
    let group = read(&guest, "etc/group");
    assert!(group.contains("sudo:x:27:alice,ops\n"), "{group}");
    let devs = group.lines().find(|l| l.starts_with("devs:")).unwrap();
    assert!(devs.ends_with(":ops,cloud"), "{devs}");
    assert!(read(&guest, "etc/gshadow").contains("sudo:*::alice,ops\n"));
    let rule = guest.path("etc/sudoers.d/xenchan-ops");
    assert!(read(&guest, "etc/sudoers.d/xenchan-ops").ends_with("ops ALL=(ALL) NOPASSWD:ALL\n"));
    let m = std::fs::metadata(&rule).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o440, 0));

    let r = broker.push(2, &config(&doc)).await;
    assert!(
        r.items.iter().all(|i| i.status == ItemStatus::Unchanged),
        "{r:?}"
    );

    // Both users dropped: ops (created by the agent) goes with its own group, sudo rule
    // and memberships; cloud (not created by the agent) keeps its account, loses only
    // the membership the agent added; the group devs (created by the agent) goes.
    let r = broker.push(3, &config(r#"{"hostname":"h1"}"#)).await;
    assert_eq!(statuses(&r), [("hostname".into(), ItemStatus::Applied)]);
    let passwd = read(&guest, "etc/passwd");
    assert!(
        !passwd.contains("ops:") && passwd.contains("cloud:"),
        "{passwd}"
    );
    let shadow = read(&guest, "etc/shadow");
    assert!(
        !shadow.contains("ops:") && shadow.contains("cloud:"),
        "{shadow}"
    );
    let group = read(&guest, "etc/group");
    assert!(group.contains("sudo:x:27:alice\n"), "{group}");
    assert!(
        !group.contains("devs:") && !group.contains("\nops:"),
        "{group}"
    );
    assert!(group.contains("cloud:"), "{group}");
    assert!(!rule.exists());
    assert!(guest.path("home/ops").is_dir(), "the home folder is kept");
}

#[tokio::test]
async fn a_sudo_rule_visudo_refuses_is_a_failed_item_and_nothing_is_left() {
    if !visudo_usable() {
        return;
    }
    let guest = accounts_guest();
    let doc = r#"{"users":[{"name":"cloud","sudo":"ALL=(ALL) NOPASSWD: not-a-path"}]}"#;
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(doc)).await;
    assert_eq!(statuses(&r), [("user:cloud".into(), ItemStatus::Failed)]);
    assert!(
        reason(&r, "user:cloud").contains("the sudo rule does not parse"),
        "{r:?}"
    );
    let left: Vec<_> = std::fs::read_dir(guest.path("etc/sudoers.d"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_missing_shell_fails_and_changes_nothing() {
    let guest = accounts_guest();
    let before = read(&guest, "etc/passwd");
    let doc = r#"{"users":[{"name":"cloud","shell":"/bin/fish"}]}"#;
    let (mut broker, _agent) = session(&guest).await;
    let r = broker.push(1, &config(doc)).await;
    assert_eq!(statuses(&r), [("user:cloud".into(), ItemStatus::Failed)]);
    assert!(
        reason(&r, "user:cloud").contains("shell /bin/fish does not exist"),
        "{r:?}"
    );
    assert_eq!(read(&guest, "etc/passwd"), before);
}

/// Another program (like `useradd`) holding lckpwdf's lock: the agent waits for it
/// instead of writing next to it, and goes on once it is released.
#[tokio::test]
async fn account_edits_wait_for_the_passwd_lock_of_other_programs() {
    let Ok(python) = which_python() else {
        eprintln!("skipped: needs python3 to hold an fcntl lock from another process");
        return;
    };
    let guest = accounts_guest();
    let lock = guest.path("etc/.pwd.lock");
    let mut holder = std::process::Command::new(python)
        .arg("-c")
        .arg("import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(1.5)")
        .arg(&lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let doc = r#"{"users":[{"name":"cloud","groups":["devs"]}]}"#;
    let (mut broker, _agent) = session(&guest).await;
    let started = std::time::Instant::now();
    let r = broker.push(1, &config(doc)).await;
    let took = started.elapsed();
    holder.wait().unwrap();
    assert_eq!(
        statuses(&r),
        [("user:cloud".into(), ItemStatus::Applied)],
        "{r:?}"
    );
    assert!(
        took >= std::time::Duration::from_millis(800),
        "the agent did not wait for the lock ({took:?})"
    );
    assert!(read(&guest, "etc/group").contains(":cloud\n"));
}

fn which_python() -> Result<&'static str, ()> {
    ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or(())
}
