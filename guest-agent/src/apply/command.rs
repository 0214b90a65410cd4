//! Running the guest's own tools (`visudo -c`, `chronyc`, `ssh-keygen -A`) with a
//! deadline and bounded output, so a hung tool costs one item, never the agent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one tool may run.
pub(crate) const TOOL_DEADLINE: Duration = Duration::from_secs(20);
/// Output kept for the message.
const OUTPUT_LIMIT: u64 = 4096;

/// Finds `name` in the usual system folders of the running system (the agent's own
/// PATH under systemd may be minimal).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs `program args` and waits at most `deadline`. `Ok(())` on exit status 0;
/// otherwise a message with the status and the tool's first output line(s).
pub(crate) fn run(program: &Path, args: &[&str], deadline: Duration) -> Result<(), String> {
    let shown = format!(
        "{} {}",
        program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        args.join(" ")
    );
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Readers in their own threads so a chatty tool cannot block on a full pipe.
    let read = |pipe: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = pipe {
                let _ = p.take(OUTPUT_LIMIT).read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(stdout);
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stderr {
            let _ = p.take(OUTPUT_LIMIT).read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {deadline:?}; killed"
                ));
            }
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        err.join().unwrap_or_default(),
        out.join().unwrap_or_default()
    );
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    Err(format!(
        "{shown} failed ({status}){}{}",
        if text.is_empty() { "" } else { ": " },
        text.join(" / ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_and_deadline() {
        let sh = Path::new("/bin/sh");
        assert!(run(sh, &["-c", "exit 0"], TOOL_DEADLINE).is_ok());
        let e = run(sh, &["-c", "echo bad line >&2; exit 3"], TOOL_DEADLINE).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("bad line"),
            "{e}"
        );
        let t = Instant::now();
        let e = run(sh, &["-c", "sleep 5"], Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
