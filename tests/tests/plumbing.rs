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
