//! What the simulator plays for each domain, checked against the real helper and agent:
//! the xenstore nodes a toolstack writes, the link `xen-console-setup` makes from the
//! uevent, the guest root layout, and the demo command itself.

use std::time::Duration;

use xenchan_e2e::{binaries, new_sim, sim_binary};
use xenchan_sim::domain::DomainSpec;
use xenchan_xenstore::Client as Xs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_has_its_xenstore_nodes_hotplug_link_and_agent() {
    let mut sim = new_sim();
    let spec = DomainSpec::new("web1", 7);
    let uuid = spec.uuid.clone();
    sim.add_domains(vec![spec]).await.unwrap();
    let d = sim.domain("web1").unwrap();
    let domid = d.domid().unwrap();
    let socket = d.socket_path();
    assert!(socket.exists(), "QEMU's socket is listening");

    // The toolstack's nodes, read through the dom0 socket with the real client.
    let xs_path = sim.env().xenstore.dom0_socket().to_path_buf();
    let (front_name, backend_path, vm_name) = tokio::task::spawn_blocking(move || {
        let mut xs = Xs::connect_unix(&xs_path)
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let front = format!("/local/domain/{domid}/device/console/1");
        let backend = xs.read_string(&format!("{front}/backend")).unwrap();
        (
            xs.read_string(&format!("{front}/name")).unwrap(),
            xs.read_string(&format!("{backend}/path")).unwrap(),
            xs.read_string(&format!("/local/domain/{domid}/name"))
                .unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(front_name, "org.xenchan.agent.1");
    assert_eq!(backend_path, socket.to_str().unwrap());
    assert_eq!(vm_name, "web1");

    // The link the real helper made from the uevent and the fake sysfs.
    let root = d.root();
    let link = root.channel_dir().join("org.xenchan.agent.1");
    let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert_eq!(target, std::path::PathBuf::from("../hvc1"));
    let hvc = std::fs::read_link(root.hvc()).unwrap();
    assert!(hvc.starts_with("/dev/pts/"), "{}", hvc.display());
    assert_eq!(
        std::fs::read_to_string(root.join("sys/hypervisor/uuid"))
            .unwrap()
            .trim(),
        uuid
    );
    assert!(d.agent_running());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_command_runs_to_completion_and_cleans_up() {
    let _ = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("xcs-e2e")
        .tempdir()
        .unwrap();
    let out = tokio::process::Command::new(sim_binary())
        .args(["demo", "--domains", "3", "--no-pause"])
        .env("TMPDIR", tmp.path())
        .env("XENCHAN_BIN_DIR", &binaries().dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the demo finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("DOMAIN"), "table printed:\n{stdout}");
    for name in ["vm01", "vm02", "vm03"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} in the table:\n{stdout}"
        );
    }
    assert!(stdout.contains("demo passed"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo removed its folder: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_an_unknown_scenario_as_a_usage_error() {
    let out = tokio::process::Command::new(sim_binary())
        .args(["demo", "--scenario", "nope"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong-uuid"));
}

/// Processes whose command line mentions `needle` (children left behind).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    want: &str,
    seen: &mut String,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(want) {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_demo_its_children_and_removes_its_folder() {
    use tokio::io::AsyncBufReadExt;
    let _ = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("xcs-int")
        .tempdir()
        .unwrap();
    let mut child = tokio::process::Command::new(sim_binary())
        .args(["demo", "--domains", "3", "--no-pause"])
        .env("TMPDIR", tmp.path())
        .env("XENCHAN_BIN_DIR", &binaries().dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    assert!(
        read_until(&mut lines, "configs put", &mut seen).await,
        "the demo got going:\n{seen}"
    );
    let needle = tmp.path().to_str().unwrap().to_string();
    assert!(
        processes_mentioning(&needle).len() >= 4,
        "broker and agents run: {:?}",
        processes_mentioning(&needle)
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stopped in time")
        .unwrap();
    assert_eq!(status.code(), Some(130), "exit code of an interrupted demo");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo removed its folder: {left:?}");
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<String>::new(),
        "no child left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_domains_for_an_outside_broker_until_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let _ = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("xcs-run")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("sim");
    let mut child = tokio::process::Command::new(sim_binary())
        .args(["run", "--domains", "2", "--prefix", "web", "--dir"])
        .arg(&dir)
        .env("XENCHAN_BIN_DIR", &binaries().dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    assert!(read_until(&mut lines, "Ctrl-C", &mut seen).await, "{seen}");
    assert!(seen.contains("web01") && seen.contains("web02"), "{seen}");
    // A broker-like client gets the agent's beacons (held while nobody was connected).
    let sock = dir.join("sockets/web01.sock");
    let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&got).contains("\"type\":\"hello\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
            .await
            .expect("the agent's beacon arrives")
            .unwrap();
        assert!(n > 0, "EOF before a beacon");
        got.extend_from_slice(&buf[..n]);
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("run stopped in time")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "sockets removed on stop");
    assert!(
        dir.join("guests/web01/etc/passwd").exists(),
        "an explicit --dir is kept"
    );
}
