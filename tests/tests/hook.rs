//! `xenchan hook`, the libvirt hook entry, run as libvirtd runs it (`<domain> <op> <subop>
//! <extra>`, the domain XML on stdin) against a real broker in this process: Xen PV and
//! KVM virtio domains are registered at `prepare begin` and released at `release end`;
//! domains without our channel are left alone; malformed XML, an unreachable or silent
//! broker and a refusing broker end the way docs/OPERATING.md says.

#[path = "../../broker/tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Dirs, TestBroker, sample_config};
use xenchan_api::client::ClientError;
use xenchan_api::types::Lifecycle;

const U_WEB1: &str = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";
const U_KVM1: &str = "0b8e9c1d-2f3a-4b5c-8d7e-6f5a4b3c2d1e";

/// A fixture with `@SOCKET_DIR@` (the broker's socket folder) and `@ROOT@` (the test's
/// temporary root) replaced.
fn fixture(name: &str, socket_dir: &Path) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p)
        .unwrap()
        .replace("@SOCKET_DIR@", socket_dir.to_str().unwrap())
        .replace("@ROOT@", socket_dir.parent().unwrap().to_str().unwrap())
        .into_bytes()
}

/// How the hook is run.
struct Run<'a> {
    socket: &'a Path,
    args: Vec<String>,
    /// Bytes on stdin (closed afterwards); `None` keeps stdin open until the hook exits.
    stdin: Option<Vec<u8>>,
    syslog: Option<&'a Path>,
}

impl<'a> Run<'a> {
    fn new(socket: &'a Path, args: &[&str], stdin: Vec<u8>) -> Run<'a> {
        Run {
            socket,
            args: args.iter().map(|s| (*s).to_string()).collect(),
            stdin: Some(stdin),
            syslog: None,
        }
    }
}

/// Runs `xenchan hook ...` (off the runtime's threads) and returns its output and how
/// long it took.
async fn hook(run: Run<'_>) -> (Output, Duration) {
    let socket = run.socket.to_path_buf();
    let syslog = run
        .syslog
        .map_or_else(|| "none".to_string(), |p| p.to_str().unwrap().to_string());
    let mut args = vec!["hook".to_string(), "--syslog".into(), syslog];
    // The host's /etc/xenchan/hook.toml must not leak into a test: a missing file is the
    // defaults.
    if !run.args.iter().any(|a| a == "--config") {
        args.push("--config".into());
        args.push(
            socket
                .with_file_name("absent-hook.toml")
                .to_str()
                .unwrap()
                .into(),
        );
    }
    args.extend(run.args);
    let stdin = run.stdin;
    let bin = xenchan_e2e::cli_binary();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .env("XENCHAN_SOCKET", &socket)
            .env_remove("XENCHAN_HOOK_STRICT")
            .env_remove("XENCHAN_HOOK_CONFIG")
            .env_remove("XENCHAN_CHANNEL")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let (writer, held) = match stdin {
            Some(bytes) => (
                Some(std::thread::spawn(move || {
                    // The hook may stop reading (too large, deadline): EPIPE then.
                    let _ = pipe.write_all(&bytes);
                })),
                None,
            ),
            None => (None, Some(pipe)),
        };
        let out = child.wait_with_output().unwrap();
        let took = t0.elapsed();
        drop(held);
        if let Some(w) = writer {
            w.join().unwrap();
        }
        (out, took)
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code, and libvirt's rule: a hook never writes to stdout (it would replace the
/// domain XML for migrate/restore and for every script of a `.d` folder).
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    assert!(o.stdout.is_empty(), "the hook wrote to stdout: {}", text(o));
}

async fn unknown(broker: &TestBroker, name: &str) {
    match broker.client.get_domain(name).await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("{name} should be unknown to the broker: {other:?}"),
    }
}

/// The lines a datagram "syslog" socket received.
fn syslog_lines(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = sock.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xen_pv_domain_is_registered_at_prepare_and_released_at_release() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let xml = fixture("xen-pv.xml", &dirs.sockets());

    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "prepare", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(o.stderr.is_empty(), "{}", text(&o));
    let v = broker.client.get_domain("web1").await.unwrap();
    assert_eq!(v.uuid.as_deref(), Some(U_WEB1));
    assert_eq!(v.lifecycle, Some(Lifecycle::Running));
    // <socket_dir>/web1.sock is where the broker looks anyway: nothing special recorded.
    assert_eq!(v.socket, None);

    // prepare is idempotent (libvirt retries a failed start from the beginning).
    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "prepare", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    // The orchestrator's configuration, which a release must keep.
    broker
        .client
        .put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();

    // start/started/stopped change nothing; release end (with libvirt >= 10.5's shutoff
    // reason as extra) releases.
    for (op, sub) in [("start", "begin"), ("started", "begin"), ("stopped", "end")] {
        let (o, _) = hook(Run::new(&sock, &["web1", op, sub, "-"], xml.clone())).await;
        assert_exit(&o, 0);
        let v = broker.client.get_domain("web1").await.unwrap();
        assert_eq!(v.lifecycle, Some(Lifecycle::Running), "after {op} {sub}");
    }
    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "release", "end", "shutdown"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(o.stderr.is_empty(), "{}", text(&o));
    let v = broker.client.get_domain("web1").await.unwrap();
    assert_eq!(v.lifecycle, Some(Lifecycle::Stopped));
    assert_eq!(v.desired_generation, Some(1), "the configuration stays");
    // Released twice: still fine.
    let (o, _) = hook(Run::new(&sock, &["web1", "release", "end", "-"], xml)).await;
    assert_exit(&o, 0);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_virtio_domain_is_registered_and_other_domains_are_left_alone() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;

    let xml = fixture("kvm-virtio.xml", &dirs.sockets());
    let (o, _) = hook(Run::new(&sock, &["kvm1", "prepare", "begin", "-"], xml)).await;
    assert_exit(&o, 0);
    let v = broker.client.get_domain("kvm1").await.unwrap();
    assert_eq!(
        v.uuid.as_deref(),
        Some(U_KVM1),
        "the 32-digit form is canonicalised"
    );
    assert_eq!(v.lifecycle, Some(Lifecycle::Running));
    // The path libvirt chose, outside the socket folder, is where the broker connects.
    assert_eq!(
        v.socket,
        Some(dirs.root.path().join("libvirt/kvm1.org.xenchan.agent.1"))
    );

    // No channel, or only other channels (the guest agent of QEMU, another vendor's):
    // no-op, silent, and the broker never hears of the domain, at prepare or release.
    for (name, file) in [
        ("plain1", "no-channel.xml"),
        ("other1", "other-channel.xml"),
    ] {
        let xml = fixture(file, &dirs.sockets());
        for (op, sub) in [("prepare", "begin"), ("release", "end")] {
            let (o, _) = hook(Run::new(&sock, &[name, op, sub, "-"], xml.clone())).await;
            assert_exit(&o, 0);
            assert!(o.stderr.is_empty(), "{}", text(&o));
        }
        unknown(&broker, name).await;
    }

    // A domain is ours by --channel: with the other vendor's name, other1 is ours.
    let xml = fixture("other-channel.xml", &dirs.sockets());
    let (o, _) = hook(Run::new(
        &sock,
        &[
            "--channel",
            "org.example.cloud.agent.1",
            "other1",
            "prepare",
            "begin",
            "-",
        ],
        xml,
    ))
    .await;
    assert_exit(&o, 0);
    let v = broker.client.get_domain("other1").await.unwrap();
    assert_eq!(
        v.uuid.as_deref(),
        Some("22222222-3333-4444-8555-666666666666")
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_warns_and_aborts_only_when_strict() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let log_path = dirs.root.path().join("log");
    let log = UnixDatagram::bind(&log_path).unwrap();

    let web1 = fixture("xen-pv.xml", &dirs.sockets());
    let too_large = vec![b' '; 4 * 1024 * 1024 + 1];
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "broken1",
            fixture("malformed.xml", &dirs.sockets()),
            "malformed",
        ),
        (
            "bomb1",
            fixture("entities.xml", &dirs.sockets()),
            "malformed",
        ),
        ("big1", too_large, "larger than 4194304 bytes"),
        ("empty1", Vec::new(), "no domain XML"),
        // The XML of another domain than the hook was called for.
        ("web9", web1, "describes domain `web1`"),
    ];
    for (name, xml, why) in cases {
        let mut run = Run::new(&sock, &[name, "prepare", "begin", "-"], xml.clone());
        run.syslog = Some(&log_path);
        let (o, _) = hook(run).await;
        assert_exit(&o, 0);
        let err = stderr(&o);
        assert!(
            err.contains("cannot read the domain XML") && err.contains(why),
            "{name}: {err}"
        );
        assert!(err.contains("on_bad_xml = \"abort\""), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        unknown(&broker, name).await;
        let lines = syslog_lines(&log);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(lines[0].starts_with("<28>xenchan-hook["), "{lines:?}");
        assert!(lines[0].contains(why), "{lines:?}");

        let (o, _) = hook(Run::new(
            &sock,
            &["--strict", name, "prepare", "begin", "-"],
            xml,
        ))
        .await;
        assert_exit(&o, 65);
        let err = stderr(&o);
        assert!(
            err.contains("aborted (on_bad_xml = \"abort\" or --strict)") && err.contains(why),
            "{err}"
        );
        unknown(&broker, name).await;
    }
    // The environment can make it strict too (by hand: libvirtd passes none).
    let o = tokio::task::spawn_blocking({
        let sock = sock.clone();
        let xml = fixture("malformed.xml", &dirs.sockets());
        move || {
            let mut child = Command::new(xenchan_e2e::cli_binary())
                .env("XENCHAN_SOCKET", &sock)
                .env("XENCHAN_HOOK_STRICT", "1")
                .args([
                    "hook",
                    "--syslog",
                    "none",
                    "--config",
                    "/nonexistent/hook.toml",
                    "broken1",
                    "prepare",
                    "begin",
                    "-",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&xml).unwrap();
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();
    assert_exit(&o, 65);

    // At release an unreadable XML still releases (always safe): exit 0, no warning.
    let (o, _) = hook(Run::new(
        &sock,
        &["broken1", "release", "end", "-"],
        b"<domain".to_vec(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(o.stderr.is_empty(), "{}", text(&o));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_broker_aborts_the_start_with_its_reason() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let log_path = dirs.root.path().join("log");
    let log = UnixDatagram::bind(&log_path).unwrap();
    let xml = fixture("xen-pv.xml", &dirs.sockets());

    // Another registered domain has this UUID: 409, naming it.
    let clone_xml = String::from_utf8(xml.clone())
        .unwrap()
        .replace("<name>web1</name>", "<name>web2</name>")
        .replace("web1.sock", "web2.sock")
        .into_bytes();
    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "prepare", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    let mut run = Run::new(&sock, &["web2", "prepare", "begin", "-"], clone_xml);
    run.syslog = Some(&log_path);
    let (o, _) = hook(run).await;
    assert_exit(&o, 65);
    let err = stderr(&o);
    assert!(
        err.starts_with("xenchan hook: the xenchan broker refused domain web2: ")
            && err.contains("web1"),
        "{err}"
    );
    let lines = syslog_lines(&log);
    assert!(
        lines.len() == 1 && lines[0].starts_with("<27>") && lines[0].contains("web1"),
        "{lines:?}"
    );

    // A prepare hook of the broker refuses: its stderr reaches libvirt (and the operator).
    dirs.hook(
        "10-capacity",
        "echo 'no room for web3 on this host' >&2\nexit 1",
    );
    let web3 = String::from_utf8(xml)
        .unwrap()
        .replace("<name>web1</name>", "<name>web3</name>")
        .replace("web1.sock", "web3.sock")
        .replace(U_WEB1, "9d9d9d9d-0000-4000-8000-000000000003")
        .into_bytes();
    let (o, _) = hook(Run::new(
        &sock,
        &["web3", "prepare", "begin", "-"],
        web3.clone(),
    ))
    .await;
    assert_exit(&o, 65);
    assert!(
        stderr(&o).contains("no room for web3 on this host"),
        "{}",
        text(&o)
    );
    unknown(&broker, "web3").await;

    // A refusal at reconnect (libvirtd restarted) is only a warning: a failing reconnect
    // hook would make libvirtd kill the running domain.
    let (o, _) = hook(Run::new(&sock, &["web3", "reconnect", "begin", "-"], web3)).await;
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("keeps running"), "{}", text(&o));

    // A name the broker cannot serve, on a domain with our channel: refused here.
    let bad = br"<domain><name>web 1</name><devices><channel type='unix'>
        <source mode='bind' path='/run/xenchan/sockets/web1.sock'/>
        <target type='xen' name='org.xenchan.agent.1'/></channel></devices></domain>";
    let (o, _) = hook(Run::new(
        &sock,
        &["web 1", "prepare", "begin", "-"],
        bad.to_vec(),
    ))
    .await;
    assert_exit(&o, 65);
    assert!(stderr(&o).contains("rename it"), "{}", text(&o));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_does_not_abort_unless_strict() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let sock = dirs.root.path().join("no-broker.sock");
    let log_path = dirs.root.path().join("log");
    let log = UnixDatagram::bind(&log_path).unwrap();
    let xml = fixture("xen-pv.xml", &dirs.sockets());

    let mut run = Run::new(&sock, &["web1", "prepare", "begin", "-"], xml.clone());
    run.syslog = Some(&log_path);
    let (o, took) = hook(run).await;
    assert_exit(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("without being registered")
            && err.contains("cannot reach the broker")
            && err.contains("on_unreachable = \"abort\" in the hook's config file aborts"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let lines = syslog_lines(&log);
    assert!(
        lines.len() == 1 && lines[0].starts_with("<28>") && lines[0].contains("web1"),
        "{lines:?}"
    );

    let (o, _) = hook(Run::new(
        &sock,
        &["--strict", "web1", "prepare", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 69);
    assert!(
        stderr(&o).contains("aborted (on_unreachable = \"abort\" or --strict)"),
        "{}",
        text(&o)
    );

    // release and reconnect never fail on an unreachable broker (release only reports
    // it with --strict; reconnect never).
    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "release", "end", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(
        stderr(&o).contains("cannot release domain web1"),
        "{}",
        text(&o)
    );
    for op in ["reconnect", "attach"] {
        let (o, _) = hook(Run::new(
            &sock,
            &["--strict", "web1", op, "begin", "-"],
            xml.clone(),
        ))
        .await;
        assert_exit(&o, 0);
    }

    // An incoming migration (`migrate begin`) follows on_unreachable like a prepare:
    // strict, the migration is aborted; else it goes on, warned, with nothing on stdout
    // (libvirt would take it as a replacement XML).
    let (o, _) = hook(Run::new(
        &sock,
        &["--strict", "web1", "migrate", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 69);
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let (o, _) = hook(Run::new(
        &sock,
        &["web1", "migrate", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(
        stderr(&o).contains("migration of domain web1 goes on"),
        "{}",
        text(&o)
    );

    // Operations that need nothing (or whose problem `prepare begin` already reported,
    // `started`) succeed silently, strict and brokerless, with nothing on stdout
    // (restore keeps the XML).
    for (op, sub) in [
        ("start", "begin"),
        ("started", "begin"),
        ("stopped", "end"),
        ("restore", "begin"),
        ("prepare", "end"),
        ("some-future-op", "-"),
    ] {
        let (o, _) = hook(Run::new(
            &sock,
            &["--strict", "web1", op, sub, "-"],
            xml.clone(),
        ))
        .await;
        assert_exit(&o, 0);
        assert!(o.stderr.is_empty(), "{op} {sub}: {}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_hook_has_a_deadline() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let xml = fixture("xen-pv.xml", &dirs.sockets());

    // A "broker" that accepts and never answers.
    let silent = dirs.root.path().join("silent.sock");
    let listener = UnixListener::bind(&silent).unwrap();
    let (o, took) = hook(Run::new(
        &silent,
        &["--deadline", "1", "web1", "prepare", "begin", "-"],
        xml.clone(),
    ))
    .await;
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("the hook's deadline"), "{}", text(&o));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    drop(listener);

    // libvirtd (or whoever) never closes stdin: the hook stops at its deadline.
    let sock: PathBuf = dirs.root.path().join("none.sock");
    let run = Run {
        socket: &sock,
        args: ["--deadline", "1", "web1", "prepare", "begin", "-"]
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
        stdin: None,
        syslog: None,
    };
    let (o, took) = hook(run).await;
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("not closed"), "{}", text(&o));
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn hook_help_documents_every_libvirt_operation() {
    let o = Command::new(xenchan_e2e::cli_binary())
        .args(["hook", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for word in [
        "prepare begin",
        "start begin",
        "started begin",
        "stopped end",
        "release end",
        "migrate begin",
        "restore begin",
        "reconnect begin",
        "/etc/libvirt/hooks/libxl",
        "/etc/libvirt/hooks/qemu",
        "--strict",
        "--deadline <SECS>",
        "[default: 10]",
        "/etc/xenchan/hook.toml",
        "on_unreachable",
        "Exit codes:",
    ] {
        assert!(help.contains(word), "hook --help lacks {word}:\n{help}");
    }
}

/// Runs the hook exactly as libvirtd does: argv `<domain> <op> <subop> <extra>`, the XML
/// on stdin, and an environment of only `LC_ALL`, `PATH` and `HOME`, so every setting
/// must come from the config file. (`--config` stands for the packaged
/// /etc/xenchan/hook.toml, `--syslog none` keeps the host's log clean.)
async fn as_libvirt(conf: &Path, argv: [&str; 4], xml: Vec<u8>) -> Output {
    let mut args: Vec<String> = ["hook", "--syslog", "none", "--config"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    args.push(conf.to_str().unwrap().into());
    args.push("--".into());
    args.extend(argv.iter().map(|s| (*s).to_string()));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(xenchan_e2e::cli_binary())
            .env_clear()
            .env("LC_ALL", "C")
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&xml);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirts_calling_convention_with_settings_from_the_config_file() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    // A broker prepare hook that refuses web3 only.
    dirs.hook(
        "10-capacity",
        "if [ \"$1\" = web3 ] && [ \"$2\" = prepare ]; then echo 'no room for web3 on this host' >&2; exit 1; fi\nexit 0",
    );
    let broker = TestBroker::start(config).await;
    let conf = dirs.root.path().join("hook.toml");
    // The socket is not the default one: only the config file can say where it is.
    std::fs::write(
        &conf,
        format!(
            "socket = \"{}\"\ndeadline = 10\non_unreachable = \"abort\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let xml = fixture("xen-pv.xml", &dirs.sockets());

    // What libvirtd 9.0 calls for `virsh start`, in order.
    for (i, argv) in [
        ["web1", "prepare", "begin", "-"],
        ["web1", "start", "begin", "-"],
        ["web1", "started", "begin", "-"],
    ]
    .into_iter()
    .enumerate()
    {
        let o = as_libvirt(&conf, argv, xml.clone()).await;
        assert_exit(&o, 0);
        assert!(o.stderr.is_empty(), "{argv:?}: {}", text(&o));
        let v = broker.client.get_domain("web1").await.unwrap();
        assert_eq!(v.uuid.as_deref(), Some(U_WEB1), "after call {i}");
        assert_eq!(v.lifecycle, Some(Lifecycle::Running), "{argv:?}");
    }
    // The orchestrator's configuration, which keeps the domain known after a release.
    broker
        .client
        .put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();
    // `virsh destroy`/shutdown: stopped, then release.
    let o = as_libvirt(&conf, ["web1", "stopped", "end", "-"], xml.clone()).await;
    assert_exit(&o, 0);
    let o = as_libvirt(&conf, ["web1", "release", "end", "-"], xml.clone()).await;
    assert_exit(&o, 0);
    let v = broker.client.get_domain("web1").await.unwrap();
    assert_eq!(v.lifecycle, Some(Lifecycle::Stopped));
    // libvirtd restarted with web1 running: reconnect registers it again.
    let o = as_libvirt(&conf, ["web1", "reconnect", "begin", "-"], xml.clone()).await;
    assert_exit(&o, 0);
    assert!(o.stderr.is_empty(), "{}", text(&o));
    let v = broker.client.get_domain("web1").await.unwrap();
    assert_eq!(v.lifecycle, Some(Lifecycle::Running));
    // migrate: nothing, and no output (stdout would replace the XML).
    let o = as_libvirt(&conf, ["web1", "migrate", "begin", "-"], xml.clone()).await;
    assert_exit(&o, 0);
    assert!(o.stderr.is_empty(), "{}", text(&o));

    // The broker refuses (its prepare hook said no, 422): libvirt aborts the start with
    // the hook's words.
    let web3 = String::from_utf8(xml.clone())
        .unwrap()
        .replace("<name>web1</name>", "<name>web3</name>")
        .replace("web1.sock", "web3.sock")
        .replace(U_WEB1, "9d9d9d9d-0000-4000-8000-000000000003")
        .into_bytes();
    let o = as_libvirt(&conf, ["web3", "prepare", "begin", "-"], web3.clone()).await;
    assert_exit(&o, 65);
    assert!(
        stderr(&o).contains("no room for web3 on this host"),
        "{}",
        text(&o)
    );
    unknown(&broker, "web3").await;
    broker.stop().await.unwrap();

    // The broker is gone: the config file's choice. "abort" fails the start...
    let o = as_libvirt(&conf, ["web1", "prepare", "begin", "-"], xml.clone()).await;
    assert_exit(&o, 69);
    assert!(
        stderr(&o).contains("aborted (on_unreachable = \"abort\""),
        "{}",
        text(&o)
    );
    // ... "continue" (the default) warns and lets it go on.
    std::fs::write(&conf, format!("socket = \"{}\"\n", sock.display())).unwrap();
    let o = as_libvirt(&conf, ["web1", "prepare", "begin", "-"], xml.clone()).await;
    assert_exit(&o, 0);
    assert!(
        stderr(&o).contains("without being registered"),
        "{}",
        text(&o)
    );

    // A malformed config file: the key is named and the start is aborted (exit 78)...
    std::fs::write(&conf, "socket = \"/run/x.sock\"\ndedline = 10\n").unwrap();
    let o = as_libvirt(&conf, ["web1", "prepare", "begin", "-"], xml.clone()).await;
    assert_exit(&o, 78);
    let err = stderr(&o);
    assert!(
        err.contains("config file is malformed") && err.contains("`dedline`"),
        "{err}"
    );
    // ... but reconnect and release go on (failing them cannot help), with a warning,
    std::fs::write(&conf, "deadline = 0\n").unwrap();
    for argv in [
        ["web1", "reconnect", "begin", "-"],
        ["web1", "release", "end", "-"],
    ] {
        let o = as_libvirt(&conf, argv, xml.clone()).await;
        assert_exit(&o, 0);
        assert!(stderr(&o).contains("`deadline`"), "{}", text(&o));
    }
    // ... and a domain without any unix channel is not ours under any name: it starts.
    let plain = b"<domain><name>plain1</name><devices/></domain>".to_vec();
    let o = as_libvirt(&conf, ["plain1", "prepare", "begin", "-"], plain).await;
    assert_exit(&o, 0);
}

/// Opt-in (`XENCHAN_TEST_LIBVIRTD=1`, root, libvirtd and QEMU installed, no libvirtd
/// running): a real libvirtd runs the hook from `/etc/libvirt/hooks/qemu.d/`, with its
/// settings from a config file. `virsh start` registers the domain with its UUID; a
/// refusing broker hook makes `virsh start` fail with the hook's words. Measured here
/// (libvirt 9.0, QEMU 7.2, TCG): installing libvirt-daemon-system, libvirt-clients,
/// libvirt-daemon-driver-qemu and qemu-system-x86 (no recommends) 41 s; this test about
/// 100 s, each `virsh start` with the hook about 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_libvirtd_runs_the_hook() {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("XENCHAN_TEST_LIBVIRTD").is_none() {
        eprintln!("skipped: set XENCHAN_TEST_LIBVIRTD=1 to run it against a real libvirtd");
        return;
    }
    xenchan_e2e::cli_binary();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (libvirtd, /etc/libvirt/hooks)");
        return;
    }
    if Path::new("/run/libvirtd.pid").exists() {
        eprintln!("skipped: a libvirtd runs already (hooks are only found at its start)");
        return;
    }
    let virsh = |args: &[&str]| {
        Command::new("virsh")
            .arg("-c")
            .arg("qemu:///system")
            .args(args)
            .output()
            .unwrap()
    };
    let dirs = Dirs::new();
    std::fs::set_permissions(dirs.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dirs.hook(
        "10-capacity",
        "if [ \"$1\" = xctest2 ] && [ \"$2\" = prepare ]; then echo 'no room for xctest2 on this host' >&2; exit 1; fi\nexit 0",
    );
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let conf = dirs.root.path().join("hook.toml");
    std::fs::write(&conf, format!("socket = \"{}\"\n", sock.display())).unwrap();
    let hook_path = Path::new("/etc/libvirt/hooks/qemu.d/50-xenchan-test");
    std::fs::create_dir_all(hook_path.parent().unwrap()).unwrap();
    std::fs::write(
        hook_path,
        format!(
            "#!/bin/sh\nexec {} hook --config {} -- \"$@\"\n",
            xenchan_e2e::cli_binary().display(),
            conf.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(hook_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        Command::new("virtlogd")
            .arg("-d")
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("libvirtd")
            .arg("-d")
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    while virsh(&["version"]).status.code() != Some(0) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in ["xctest1", "xctest2"] {
        let xml = dirs.root.path().join(format!("{n}.xml"));
        std::fs::write(
            &xml,
            format!(
                "<domain type='qemu'><name>{n}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                 <os><type arch='x86_64'>hvm</type></os><devices><channel type='unix'>\
                 <source mode='bind' path='{}/{n}.sock'/>\
                 <target type='virtio' name='org.xenchan.agent.1'/></channel></devices></domain>",
                dirs.sockets().display()
            ),
        )
        .unwrap();
        assert!(virsh(&["define", xml.to_str().unwrap()]).status.success());
    }
    let started = virsh(&["start", "xctest1"]);
    let refused = virsh(&["start", "xctest2"]);
    let registered = broker.client.get_domain("xctest1").await;
    let uuid = virsh(&["domuuid", "xctest1"]);
    // Clean up before asserting: libvirtd and virtlogd are ours.
    let _ = virsh(&["destroy", "xctest1"]);
    for n in ["xctest1", "xctest2"] {
        let _ = virsh(&["undefine", n]);
    }
    for pid in ["/run/libvirtd.pid", "/run/virtlogd.pid"] {
        if let Ok(p) = std::fs::read_to_string(pid) {
            let _ = Command::new("kill").arg(p.trim()).status();
        }
    }
    let _ = std::fs::remove_file(hook_path);
    broker.stop().await.unwrap();

    assert!(started.status.success(), "{}", text(&started));
    let v = registered.unwrap();
    assert_eq!(
        v.uuid.as_deref(),
        Some(String::from_utf8_lossy(&uuid.stdout).trim())
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("no room for xctest2 on this host"),
        "{}",
        text(&refused)
    );
}
