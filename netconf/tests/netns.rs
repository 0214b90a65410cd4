//! Live apply in real network namespaces: a "guest" namespace whose veth carries a Xen
//! MAC, and a "peer" namespace on the other end of the pair. Needs root and `ip`
//! (iproute2); without them each test says why and skips.
//!
//! The test process never changes namespace itself: `NetOptions::netns` makes the
//! library open its rtnetlink socket inside the guest namespace, and the reachability
//! check opens its UDP sockets from short-lived threads that enter a namespace.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{assert_all, doc};
use xenchan_netconf::{ItemStatus, LiveMode, NetOptions, NetState, RendererChoice, apply};

const GUEST_MAC: &str = "00:16:3e:5a:00:01";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted (with its interfaces) on drop, even when a test fails.
struct Ns {
    name: String,
}

impl Ns {
    fn new(name: String) -> Result<Ns, String> {
        ip(&["netns", "add", &name])?;
        Ok(Ns { name })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A guest namespace with `dev` (MAC [`GUEST_MAC`], down, no address) wired to a peer
/// namespace whose end has 192.0.2.1/24 and 2001:db8::1/64.
struct Lab {
    guest: Ns,
    peer: Ns,
    dev: String,
    root: tempfile::TempDir,
}

fn lab() -> Option<Lab> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: live apply tests need root (network namespaces)");
        return None;
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}{n}", std::process::id() % 100_000);
    let build = || -> Result<Lab, String> {
        let guest = Ns::new(format!("xcn-g{tag}"))?;
        let peer = Ns::new(format!("xcn-p{tag}"))?;
        let dev = format!("xg{tag}");
        let pdev = format!("xp{tag}");
        ip(&[
            "link",
            "add",
            &dev,
            "netns",
            &guest.name,
            "type",
            "veth",
            "peer",
            "name",
            &pdev,
            "netns",
            &peer.name,
        ])?;
        ip(&["-n", &guest.name, "link", "set", &dev, "address", GUEST_MAC])?;
        ip(&[
            "-n",
            &peer.name,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            &pdev,
        ])?;
        ip(&[
            "-n",
            &peer.name,
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            &pdev,
            "nodad",
        ])?;
        ip(&["-n", &peer.name, "link", "set", &pdev, "up"])?;
        Ok(Lab {
            guest,
            peer,
            dev,
            root: tempfile::tempdir().map_err(|e| e.to_string())?,
        })
    };
    match build() {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("SKIP: cannot build network namespaces: {e}");
            None
        }
    }
}

impl Lab {
    fn opts(&self) -> NetOptions {
        NetOptions {
            renderer: RendererChoice::None,
            live: LiveMode::Always,
            netns: Some(self.guest.path()),
            sysfs: self.root.path().join("no-sysfs"),
            ..NetOptions::with_root(self.root.path())
        }
    }

    fn addrs(&self) -> String {
        self.guest.ip(&["-o", "addr", "show", "dev", &self.dev])
    }

    fn routes(&self) -> String {
        self.guest.ip(&["route", "show", "dev", &self.dev])
            + &self.guest.ip(&["-6", "route", "show", "dev", &self.dev])
    }

    fn link(&self) -> String {
        self.guest.ip(&["link", "show", "dev", &self.dev])
    }
}

/// Runs `f` on a thread that has entered the namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A datagram from the peer to `to` in the guest comes back: the configured address is
/// reachable across the veth.
fn udp_echo(lab: &Lab, to: SocketAddr) -> Result<(), String> {
    let server = in_netns(lab.guest.path(), move || -> Result<(), String> {
        let s = UdpSocket::bind(to).map_err(|e| format!("bind {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        s.send_to(&buf[..n], from)
            .map_err(|e| format!("send: {e}"))?;
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(100));
    let client = in_netns(lab.peer.path(), move || -> Result<Vec<u8>, String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"xenchan-echo", to)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 64];
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("no echo from {to}: {e}"))?;
        Ok(buf[..n].to_vec())
    });
    let got = client.join().unwrap()?;
    server.join().unwrap()?;
    if got == b"xenchan-echo" {
        Ok(())
    } else {
        Err(format!("echo mismatch: {got:?}"))
    }
}

fn ping_available() -> bool {
    Command::new("ping")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

const FULL: &str = r#"{"network":{"version":2,"ethernets":{"eth0":{
    "match":{"macaddress":"00:16:3e:5a:00:01"},
    "addresses":["192.0.2.10/24","2001:db8::10/64"],
    "routes":[{"to":"default","via":"192.0.2.1","metric":50},
              {"to":"198.51.100.0/24","via":"192.0.2.1","metric":100},
              {"to":"2001:db8:1::/48","via":"2001:db8::1"}],
    "nameservers":{"addresses":["192.0.2.53"],"search":["example.com"]},
    "mtu":1400}}}}"#;

#[test]
fn live_apply_configures_the_interface_found_by_mac() {
    let Some(lab) = lab() else { return };
    let cfg = doc(FULL);
    let (results, state) = apply(&lab.opts(), &cfg, None);
    assert_all(&results, ItemStatus::Applied);
    assert_eq!(results.len(), 2);

    let addrs = lab.addrs();
    assert!(addrs.contains("inet 192.0.2.10/24"), "{addrs}");
    assert!(addrs.contains("inet6 2001:db8::10/64"), "{addrs}");
    let routes = lab.routes();
    assert!(
        routes.contains("default via 192.0.2.1 proto static metric 50"),
        "{routes}"
    );
    assert!(
        routes.contains("198.51.100.0/24 via 192.0.2.1 proto static metric 100"),
        "{routes}"
    );
    assert!(
        routes.contains("2001:db8:1::/48 via 2001:db8::1"),
        "{routes}"
    );
    let link = lab.link();
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    // No manager: resolv.conf in the guest root.
    let rc = std::fs::read_to_string(lab.root.path().join("etc/resolv.conf")).unwrap();
    assert!(
        rc.contains("nameserver 192.0.2.53\nsearch example.com\n"),
        "{rc}"
    );

    udp_echo(&lab, "192.0.2.10:7777".parse().unwrap()).unwrap();
    if ping_available() {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.peer.name,
                "ping",
                "-c1",
                "-W2",
                "192.0.2.10",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ping: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        eprintln!("NOTE: ping is not installed; reachability was shown by the UDP echo only");
    }

    let eth0 = &state.interfaces["eth0"];
    assert_eq!(eth0.name, lab.dev);
    assert_eq!(eth0.live_addresses.len(), 2);
    assert_eq!(eth0.live_routes.len(), 3);

    // Re-applying changes nothing.
    let state: NetState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let (again, state2) = apply(&lab.opts(), &cfg, Some(&state));
    assert_all(&again, ItemStatus::Unchanged);
    assert_eq!(state2, state);
}

#[test]
fn a_new_config_removes_only_what_we_added() {
    let Some(lab) = lab() else { return };
    // Someone else's address and route on the same interface.
    lab.guest
        .ip(&["addr", "add", "192.0.2.99/24", "dev", &lab.dev]);
    lab.guest.ip(&["link", "set", &lab.dev, "up"]);
    lab.guest.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.1",
        "dev",
        &lab.dev,
    ]);
    let (r1, s1) = apply(&lab.opts(), &doc(FULL), None);
    assert_all(&r1, ItemStatus::Applied);
    let second = r#"{"network":{"version":2,"ethernets":{"eth0":{
        "match":{"macaddress":"00:16:3e:5a:00:01"},
        "addresses":["192.0.2.11/24"],
        "routes":[{"to":"default","via":"192.0.2.1","metric":60}]}}}}"#;
    let (r2, _) = apply(&lab.opts(), &doc(second), Some(&s1));
    assert_all(&r2, ItemStatus::Applied);
    let addrs = lab.addrs();
    assert!(addrs.contains("192.0.2.11/24"), "{addrs}");
    assert!(!addrs.contains("192.0.2.10/"), "{addrs}");
    assert!(!addrs.contains("2001:db8::10/"), "{addrs}");
    assert!(
        addrs.contains("192.0.2.99/24"),
        "others' address kept: {addrs}"
    );
    let routes = lab.routes();
    assert!(
        routes.contains("default via 192.0.2.1 proto static metric 60"),
        "{routes}"
    );
    assert!(!routes.contains("metric 50"), "{routes}");
    assert!(!routes.contains("198.51.100.0/24"), "{routes}");
    assert!(
        routes.contains("203.0.113.0/24 via 192.0.2.1"),
        "others' route kept: {routes}"
    );
}

/// Our address is the subnet's primary: a new one in the same subnet must survive the
/// old one's removal (the kernel deletes a primary's secondaries with it), and the route
/// through the subnet that the removal drops must come back.
#[test]
fn a_new_address_in_the_same_subnet_replaces_the_old_one() {
    let Some(lab) = lab() else { return };
    let config = |addr: &str| {
        format!(
            r#"{{"network":{{"version":2,"ethernets":{{"eth0":{{
            "match":{{"macaddress":"00:16:3e:5a:00:01"}},
            "addresses":["{addr}"],
            "routes":[{{"to":"default","via":"192.0.2.1","metric":60}}]}}}}}}}}"#
        )
    };
    let (r1, s1) = apply(&lab.opts(), &doc(&config("192.0.2.10/24")), None);
    assert_all(&r1, ItemStatus::Applied);
    let (r2, _) = apply(&lab.opts(), &doc(&config("192.0.2.11/24")), Some(&s1));
    assert_all(&r2, ItemStatus::Applied);
    let addrs = lab.addrs();
    assert!(addrs.contains("192.0.2.11/24"), "new address kept: {addrs}");
    assert!(
        !addrs.contains("192.0.2.10/"),
        "old address removed: {addrs}"
    );
    let routes = lab.routes();
    assert!(
        routes.contains("default via 192.0.2.1 proto static metric 60"),
        "route through the subnet restored: {routes}"
    );
}

#[test]
fn a_forced_failure_rolls_back_to_the_previous_addresses() {
    let Some(lab) = lab() else { return };
    let first = r#"{"network":{"version":2,"ethernets":{"eth0":{
        "match":{"macaddress":"00:16:3e:5a:00:01"},
        "addresses":["192.0.2.10/24"],"mtu":1400}}}}"#;
    let (r1, s1) = apply(&lab.opts(), &doc(first), None);
    assert_all(&r1, ItemStatus::Applied);

    // Steps: mtu 1400 -> 1300, remove address .10 (ours, no longer wanted; old
    // addresses go first), address .20, address .21, route. The 4th (index 3) is made
    // to fail.
    let second = r#"{"network":{"version":2,"ethernets":{"eth0":{
        "match":{"macaddress":"00:16:3e:5a:00:01"},
        "addresses":["192.0.2.20/24","192.0.2.21/24"],
        "routes":[{"to":"198.51.100.0/24","via":"192.0.2.1"}],"mtu":1300}}}}"#;
    let opts = NetOptions {
        fail_after_step: Some(3),
        ..lab.opts()
    };
    let (r2, s2) = apply(&opts, &doc(second), Some(&s1));
    assert_eq!(r2[0].status, ItemStatus::Failed);
    let why = r2[0].reason.as_deref().unwrap();
    assert_eq!(
        why,
        "live apply failed: address 192.0.2.21/24: injected failure (test hook); \
         rolled back addresses [192.0.2.20/24, 192.0.2.10/24] and mtu"
    );
    let addrs = lab.addrs();
    assert!(addrs.contains("192.0.2.10/24"), "{addrs}");
    assert!(
        !addrs.contains("192.0.2.20") && !addrs.contains("192.0.2.21"),
        "{addrs}"
    );
    assert!(lab.link().contains("mtu 1400"), "{}", lab.link());
    assert!(!lab.routes().contains("198.51.100.0/24"));
    assert_eq!(
        s2.interfaces, s1.interfaces,
        "the item keeps its previous state"
    );
    udp_echo(&lab, "192.0.2.10:7778".parse().unwrap()).unwrap();
}

#[test]
fn a_kernel_refusal_rolls_back_and_names_the_step() {
    let Some(lab) = lab() else { return };
    let first = r#"{"network":{"version":2,"ethernets":{"eth0":{
        "match":{"macaddress":"00:16:3e:5a:00:01"},"addresses":["192.0.2.10/24"]}}}}"#;
    let (_, s1) = apply(&lab.opts(), &doc(first), None);
    // The gateway is on no connected network: the kernel refuses the route.
    let second = r#"{"network":{"version":2,"ethernets":{"eth0":{
        "match":{"macaddress":"00:16:3e:5a:00:01"},
        "addresses":["192.0.2.10/24","192.0.2.30/24"],
        "routes":[{"to":"198.51.100.0/24","via":"203.0.113.1"}]}}}}"#;
    let (r2, _) = apply(&lab.opts(), &doc(second), Some(&s1));
    assert_eq!(r2[0].status, ItemStatus::Failed);
    let why = r2[0].reason.as_deref().unwrap();
    eprintln!("reason reported: {why}");
    assert!(
        why.starts_with("live apply failed: route 198.51.100.0/24 via 203.0.113.1 metric 0: "),
        "{why}"
    );
    assert!(
        why.ends_with("; rolled back addresses [192.0.2.30/24]"),
        "{why}"
    );
    let addrs = lab.addrs();
    assert!(
        addrs.contains("192.0.2.10/24") && !addrs.contains("192.0.2.30"),
        "{addrs}"
    );
}

#[test]
fn a_mac_missing_from_the_namespace_is_a_failed_item() {
    let Some(lab) = lab() else { return };
    let cfg = doc(r#"{"network":{"version":2,"ethernets":{"eth9":{
        "match":{"macaddress":"00:16:3e:5a:00:09"},"addresses":["192.0.2.10/24"]}}}}"#);
    let (r, _) = apply(&lab.opts(), &cfg, None);
    assert_eq!(r[0].status, ItemStatus::Failed);
    let why = r[0].reason.as_deref().unwrap();
    assert!(
        why.contains("no interface with MAC 00:16:3e:5a:00:09"),
        "{why}"
    );
    assert!(why.contains(&format!("{} {GUEST_MAC}", lab.dev)), "{why}");
    assert!(!lab.addrs().contains("192.0.2.10"));
}

/// The capabilities the shipped agent unit bounds the agent (and every command it runs)
/// to, as setpriv(1) names them (`net_admin`...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-agent/systemd/xenchan-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// Under the unit's bounding set, what the live apply and `ifup` do in a guest before its
/// network manager runs works: address, MTU, route (the packaged agent once got
/// "Operation not permitted" here).
#[test]
fn the_agent_units_capabilities_allow_the_network_steps() {
    let Some(lab) = lab() else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    }
    let caps = unit_capabilities();
    assert!(!caps.is_empty(), "no CapabilityBoundingSet in the unit");
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let bounded_ip = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("setpriv")
            .args([
                "--bounding-set",
                &bounding,
                "--",
                "ip",
                "-n",
                &lab.guest.name,
            ])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    // The check itself can fail: without CAP_NET_ADMIN the kernel refuses.
    let bare = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-all,+sys_admin",
            "--",
            "ip",
            "-n",
            &lab.guest.name,
        ])
        .args(["link", "set", &lab.dev, "mtu", "1400"])
        .output()
        .unwrap();
    assert!(!bare.status.success(), "setpriv did not restrict anything");
    for step in [
        vec!["link", "set", &lab.dev, "mtu", "1450"],
        vec!["link", "set", &lab.dev, "up"],
        vec!["addr", "add", "192.0.2.50/24", "dev", &lab.dev],
        vec![
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
            "dev",
            &lab.dev,
        ],
    ] {
        bounded_ip(&step).unwrap_or_else(|e| panic!("under the unit's capabilities {caps:?}: {e}"));
    }
    assert!(
        lab.routes().contains("198.51.100.0/24 via 192.0.2.1"),
        "{}",
        lab.routes()
    );
}
