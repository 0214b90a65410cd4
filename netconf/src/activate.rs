//! Telling a running manager to pick up the files we wrote, with its own command line
//! tool, each call bounded by a deadline.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::render::Renderer;

/// How long one manager command may take (DHCP on `ifup` is the slow one).
const DEADLINE: Duration = Duration::from_secs(30);

/// Output kept for the reason of a failed item.
const OUTPUT_LIMIT: u64 = 2048;

/// One interface whose configuration changed: its label and kernel name.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    pub id: String,
    pub name: String,
}

/// A command and the interface label it is for (`None`: all of them).
pub(crate) type Cmd = (Option<String>, Vec<String>);

/// The commands that make `renderer` apply what we wrote for `changed`, in order. The
/// first word of each is the program.
pub(crate) fn commands(renderer: Renderer, changed: &[Changed]) -> Vec<Cmd> {
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut out = Vec::new();
    match renderer {
        Renderer::Networkd => {
            out.push((None, s(&["networkctl", "reload"])));
            for c in changed {
                out.push((
                    Some(c.id.clone()),
                    s(&["networkctl", "reconfigure", &c.name]),
                ));
            }
        }
        Renderer::NetworkManager => {
            out.push((None, s(&["nmcli", "connection", "reload"])));
            for c in changed {
                let id = format!("xenchan-{}", c.id);
                out.push((
                    Some(c.id.clone()),
                    s(&["nmcli", "connection", "up", "id", &id]),
                ));
            }
        }
        Renderer::Netplan => out.push((None, s(&["netplan", "apply"]))),
        Renderer::Ifupdown => {
            for c in changed {
                out.push((Some(c.id.clone()), s(&["ifdown", "--force", &c.name])));
                out.push((Some(c.id.clone()), s(&["ifup", &c.name])));
            }
        }
        Renderer::None => {}
    }
    out
}

/// Runs one command; `Err` carries what it said.
pub(crate) fn run(cmd: &[String]) -> Result<(), String> {
    let shown = cmd.join(" ");
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not finish within {}s",
                    DEADLINE.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for `{shown}`: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(OUTPUT_LIMIT).read_to_string(&mut err);
    }
    Err(format!("`{shown}` failed ({status}): {}", err.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_per_manager() {
        let c = [Changed {
            id: "eth0".into(),
            name: "enX0".into(),
        }];
        let words = |r| -> Vec<Vec<String>> { commands(r, &c).into_iter().map(|x| x.1).collect() };
        assert_eq!(
            words(Renderer::Networkd),
            vec![
                vec!["networkctl", "reload"],
                vec!["networkctl", "reconfigure", "enX0"]
            ]
        );
        assert_eq!(
            commands(Renderer::Networkd, &c)[1].0.as_deref(),
            Some("eth0")
        );
        assert_eq!(
            words(Renderer::NetworkManager)[1],
            vec!["nmcli", "connection", "up", "id", "xenchan-eth0"]
        );
        assert_eq!(words(Renderer::Netplan), vec![vec!["netplan", "apply"]]);
        assert_eq!(commands(Renderer::Ifupdown, &c).len(), 2);
        assert!(commands(Renderer::None, &c).is_empty());
    }

    #[test]
    fn run_reports_failures_with_their_output() {
        assert!(run(&["true".to_string()]).is_ok());
        let e = run(&["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()]).unwrap_err();
        assert!(e.contains("nope") && e.contains("exit status: 3"), "{e}");
        let e = run(&["/nonexistent/xenchan-tool".into()]).unwrap_err();
        assert!(e.starts_with("cannot run"), "{e}");
    }
}
