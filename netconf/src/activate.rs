//! Telling a running manager to pick up the files we wrote, with its own command line
//! tool, each call bounded by a deadline.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs one command; `Err` carries what it said.
pub(crate) fn run(cmd: &[String]) -> Result<(), String> {
    run_with(cmd, None, &[]).map(drop)
}

/// Runs one command with `input` on its standard input and `env` added to its
/// environment, within the deadline. `Ok`: what it wrote on standard error (a tool may
/// warn and still succeed); `Err`: why it failed, with that output.
pub(crate) fn run_with(
    cmd: &[String],
    input: Option<&[u8]>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<String, String> {
    let shown = cmd.join(" ");
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    // A thread feeds the input so that a tool that writes before it reads cannot
    // deadlock us; it ends when the pipe closes.
    let feeder = input.zip(child.stdin.take()).map(|(bytes, mut pipe)| {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = pipe.write_all(&bytes);
        })
    });
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
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let mut err = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(OUTPUT_LIMIT).read_to_string(&mut err);
    }
    if status.success() {
        return Ok(err);
    }
    Err(format!("`{shown}` failed ({status}): {}", err.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_failures_with_their_output() {
        assert!(run(&["true".to_string()]).is_ok());
        let e = run(&["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()]).unwrap_err();
        assert!(e.contains("nope") && e.contains("exit status: 3"), "{e}");
        let e = run(&["/nonexistent/xenchan-tool".into()]).unwrap_err();
        assert!(e.starts_with("cannot run"), "{e}");
        // Input and environment reach the command; its warnings come back.
        let out = run_with(
            &[
                "sh".into(),
                "-c".into(),
                "read l; echo \"$l $X\" >&2".into(),
            ],
            Some(b"from-stdin\n"),
            &[("X", std::ffi::OsStr::new("from-env"))],
        )
        .unwrap();
        assert_eq!(out.trim(), "from-stdin from-env");
        let e = run(&["/nonexistent/xenchan-tool".into()]).unwrap_err();
        assert!(e.starts_with("cannot run"), "{e}");
    }
}
