//! The `time:ntp` and `time:timezone` items.
//!
//! NTP sources go to the guest's own time service, detected in the guest root: chrony
//! (`/etc/chrony/sources.d/xenchan.sources`, which Debian 12's chrony.conf reads through
//! `sourcedir`) or systemd-timesyncd (`/etc/systemd/timesyncd.conf.d/50-xenchan.conf`);
//! chrony wins when both are there (it replaces timesyncd on Debian). With neither the
//! item is `unsupported`, saying so. The zone becomes `/etc/localtime` (a symlink into
//! `/usr/share/zoneinfo`, as `timedatectl` makes it) and `/etc/timezone`; a zone the
//! guest's tzdata does not have is refused.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::info;
use xenchan_protocol::config::{Ntp, NtpSource, Timezone};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use super::command;
use super::put::{put_file, remove_file};
use super::{Applier, ApplyContext, Outcome, status};
use crate::fsat::{self, Owner};

/// The chrony sources file (Debian 12 layout).
pub const CHRONY_DIR: &str = "etc/chrony/sources.d";
/// Its name.
pub const CHRONY_FILE: &str = "xenchan.sources";
/// The timesyncd drop-in folder.
pub const TIMESYNCD_DIR: &str = "etc/systemd/timesyncd.conf.d";
/// Its name.
pub const TIMESYNCD_FILE: &str = "50-xenchan.conf";
const ZONEINFO: &str = "usr/share/zoneinfo";

/// Applies the `time:*` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeApplier;

/// The guest's time service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeService {
    /// chrony.
    Chrony,
    /// systemd-timesyncd.
    Timesyncd,
}

impl TimeService {
    fn file(self) -> (&'static str, &'static str) {
        match self {
            TimeService::Chrony => (CHRONY_DIR, CHRONY_FILE),
            TimeService::Timesyncd => (TIMESYNCD_DIR, TIMESYNCD_FILE),
        }
    }
}

/// Which service gets the sources, from what is installed.
pub fn choose(has_chrony: bool, has_timesyncd: bool) -> Option<TimeService> {
    match (has_chrony, has_timesyncd) {
        (true, _) => Some(TimeService::Chrony),
        (false, true) => Some(TimeService::Timesyncd),
        (false, false) => None,
    }
}

/// Looks for the services in the guest root.
pub fn detect(root: &Path) -> Option<TimeService> {
    let any = |paths: &[&str]| {
        paths
            .iter()
            .any(|p| root.join(p).symlink_metadata().is_ok())
    };
    choose(
        any(&["etc/chrony/chrony.conf", "usr/sbin/chronyd"]),
        any(&[
            "usr/lib/systemd/systemd-timesyncd",
            "lib/systemd/systemd-timesyncd",
            "etc/systemd/timesyncd.conf",
        ]),
    )
}

const HEADER: &str =
    "# Written by xenchan-agent from the broker's configuration; replaced on every push.\n";

/// The file for `service`.
pub fn render(service: TimeService, ntp: &Ntp) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(HEADER);
    match service {
        TimeService::Chrony => {
            for s in &ntp.servers {
                let _ = writeln!(out, "server {s} iburst");
            }
            for p in &ntp.pools {
                let _ = writeln!(out, "pool {p} iburst");
            }
        }
        TimeService::Timesyncd => {
            let all: Vec<&str> = ntp
                .servers
                .iter()
                .chain(&ntp.pools)
                .map(NtpSource::as_str)
                .collect();
            let _ = writeln!(out, "[Time]\nNTP={}", all.join(" "));
        }
    }
    out
}

/// Whether a chrony.conf reads `/etc/chrony/sources.d` (Debian 12's does).
pub fn chrony_reads_sources_d(conf: &str) -> bool {
    conf.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("sourcedir")
            && w.next().map(|d| d.trim_end_matches('/')) == Some("/etc/chrony/sources.d")
    })
}

/// What the applier remembers: the sources file it wrote, to remove it when the
/// document stops asking for NTP.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TimeState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ntp_file: Option<TimeService>,
}

impl Applier for TimeApplier {
    fn name(&self) -> &'static str {
        "time"
    }

    fn owns(&self, item: &str) -> bool {
        item.starts_with("time:")
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let previous: TimeState = ctx
            .previous_state(self.name())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let time = config.time.as_ref();
        let mut items = Vec::new();
        let mut state = TimeState::default();
        let ntp = time.and_then(|t| t.ntp.as_ref());
        let service = detect(&ctx.opts.root);
        if let Some(ntp) = ntp {
            items.push(match service {
                None => ItemResult {
                    item: "time:ntp".into(),
                    status: ItemStatus::Unsupported,
                    reason: Some(
                        "the guest has neither chrony nor systemd-timesyncd installed".into(),
                    ),
                },
                Some(svc) => {
                    let r = apply_ntp(ctx, svc, ntp);
                    if !matches!(r.status, ItemStatus::Failed) {
                        state.ntp_file = Some(svc);
                    }
                    r
                }
            });
        }
        // The document no longer asks for NTP, or the service changed: our old file goes.
        if let Some(old) = previous.ntp_file
            && state.ntp_file != Some(old)
        {
            let (dir, name) = old.file();
            if let Ok(root) = fsat::open_dir(&ctx.opts.root)
                && let Ok(d) = fsat::walk_dirs(&root, Path::new(dir), None)
                && let Ok(true) = remove_file(&d, OsStr::new(name), name)
            {
                info!(file = %format!("/{dir}/{name}"), "removed the NTP sources no longer in the document");
            }
        }
        if let Some(tz) = time.and_then(|t| t.timezone.as_ref()) {
            items.push(match apply_timezone(ctx, tz) {
                Ok(changed) => ItemResult::new("time:timezone", status(changed)),
                Err(e) => ItemResult::failed("time:timezone", e),
            });
        }
        Outcome {
            items,
            state: serde_json::to_value(state).ok(),
        }
    }
}

fn root_owner(root: &std::fs::File, mode: u32) -> Result<Owner, String> {
    let m = root.metadata().map_err(|e| format!("guest root: {e}"))?;
    Ok(Owner {
        uid: m.uid(),
        gid: m.gid(),
        mode,
    })
}

fn apply_ntp(ctx: &ApplyContext<'_>, svc: TimeService, ntp: &Ntp) -> ItemResult {
    let item = "time:ntp";
    let run = || -> Result<bool, String> {
        let root = fsat::open_dir(&ctx.opts.root).map_err(|e| format!("guest root: {e}"))?;
        if svc == TimeService::Chrony {
            let conf = std::fs::File::open(ctx.opts.root.join("etc/chrony/chrony.conf"))
                .and_then(|f| {
                    let mut s = String::new();
                    f.take(1024 * 1024).read_to_string(&mut s).map(|_| s)
                })
                .unwrap_or_default();
            if !chrony_reads_sources_d(&conf) {
                return Err("/etc/chrony/chrony.conf has no `sourcedir /etc/chrony/sources.d` line, so chrony would not read the servers; add it (Debian 12's default has it)".into());
            }
        }
        let (dir, name) = svc.file();
        let d = fsat::walk_dirs(&root, Path::new(dir), Some(0o755)).map_err(|e| e.to_string())?;
        let owner = root_owner(&root, 0o644)?;
        put_file(
            ctx.batch,
            &d,
            OsStr::new(name),
            render(svc, ntp).as_bytes(),
            owner,
            &format!("/{dir}/{name}"),
        )
    };
    match run() {
        Ok(false) => ItemResult::new(item, ItemStatus::Unchanged),
        Ok(true) => {
            // Tell the running service, once the file is in place (committed early);
            // when it is not running yet it reads the file when it starts, so a failed
            // reload is reported but the item stands.
            let note = if ctx.opts.is_live_root() {
                if let Err(e) = ctx.batch.commit() {
                    return ItemResult::failed(
                        item,
                        format!(
                            "the file could not be put in place: {}",
                            xenchan_basics::chain(&e)
                        ),
                    );
                }
                reload(svc).err()
            } else {
                None
            };
            ItemResult {
                item: item.into(),
                status: ItemStatus::Applied,
                reason: note.map(|e| format!("written; the running service was not told: {e}")),
            }
        }
        Err(e) => ItemResult::failed(item, e),
    }
}

fn reload(svc: TimeService) -> Result<(), String> {
    let (tool, args): (&str, &[&str]) = match svc {
        TimeService::Chrony => ("chronyc", &["reload", "sources"]),
        TimeService::Timesyncd => ("systemctl", &["try-restart", "systemd-timesyncd.service"]),
    };
    let path = command::find_tool(tool).ok_or_else(|| format!("{tool} is not installed"))?;
    command::run(&path, args, command::TOOL_DEADLINE)
}

/// Whether `<root>/usr/share/zoneinfo/<tz>` is a compiled zone (TZif magic).
fn zone_exists(root: &Path, tz: &Timezone) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(root.join(ZONEINFO).join(tz.as_str()))
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::ErrorKind::InvalidInput.into());
            }
            f.read_exact(&mut magic)
        })
        .is_ok()
        && &magic == b"TZif"
}

fn apply_timezone(ctx: &ApplyContext<'_>, tz: &Timezone) -> Result<bool, String> {
    let root_path = ctx.opts.root.as_path();
    if !zone_exists(root_path, tz) {
        return Err(format!(
            "unknown time zone `{tz}`: the guest has no /{ZONEINFO}/{tz} (is tzdata installed?)"
        ));
    }
    let root = fsat::open_dir(root_path).map_err(|e| format!("guest root: {e}"))?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let target = format!("/{ZONEINFO}/{tz}");
    let mut changed = set_symlink(&etc, "localtime", &target)?;
    changed |= put_file(
        ctx.batch,
        &etc,
        OsStr::new("timezone"),
        format!("{tz}\n").as_bytes(),
        root_owner(&root, 0o644)?,
        "/etc/timezone",
    )?;
    Ok(changed)
}

/// Makes `dir/name` a symlink to `target` atomically (a new link renamed over it).
fn set_symlink(dir: &std::fs::File, name: &str, target: &str) -> Result<bool, String> {
    let fd = dir.as_raw_fd();
    if let Ok(now) = nix::fcntl::readlinkat(Some(fd), name)
        && now.as_os_str() == OsStr::new(target)
    {
        return Ok(false);
    }
    if let Ok(Some(st)) = fsat::lstat_at(dir, OsStr::new(name))
        && fsat::kind(&st) == nix::sys::stat::SFlag::S_IFDIR
    {
        return Err(format!("/etc/{name} is a folder; refused"));
    }
    let tmp = format!(".{name}.xenchan-{}", std::process::id());
    let _ = fsat::unlink_at(dir, OsStr::new(&tmp));
    nix::unistd::symlinkat(target, Some(fd), tmp.as_str())
        .map_err(|e| format!("cannot make /etc/{name}: {e}"))?;
    if let Err(e) = nix::fcntl::renameat(Some(fd), tmp.as_str(), Some(fd), name) {
        let _ = fsat::unlink_at(dir, OsStr::new(&tmp));
        return Err(format!("cannot replace /etc/{name}: {e}"));
    }
    dir.sync_all().map_err(|e| format!("/etc: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ntp(servers: &[&str], pools: &[&str]) -> Ntp {
        Ntp {
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            pools: pools.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn choice_and_renderings() {
        assert_eq!(choose(true, true), Some(TimeService::Chrony));
        assert_eq!(choose(false, true), Some(TimeService::Timesyncd));
        assert_eq!(choose(false, false), None);
        let n = ntp(&["192.0.2.1", "ntp.example.com"], &["pool.example.org"]);
        assert_eq!(
            render(TimeService::Chrony, &n),
            format!(
                "{HEADER}server 192.0.2.1 iburst\nserver ntp.example.com iburst\npool pool.example.org iburst\n"
            )
        );
        assert_eq!(
            render(TimeService::Timesyncd, &n),
            format!("{HEADER}[Time]\nNTP=192.0.2.1 ntp.example.com pool.example.org\n")
        );
    }

    #[test]
    fn chrony_sourcedir_is_recognised() {
        assert!(chrony_reads_sources_d(
            "pool x iburst\nsourcedir /etc/chrony/sources.d\n"
        ));
        assert!(chrony_reads_sources_d("sourcedir   /etc/chrony/sources.d/"));
        assert!(!chrony_reads_sources_d(
            "# sourcedir /etc/chrony/sources.d\n"
        ));
        assert!(!chrony_reads_sources_d("sourcedir /run/chrony-dhcp\n"));
    }
}
