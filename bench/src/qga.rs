//! Driving qemu-guest-agent the way a host-side client does (QMP-style JSON over its
//! serial channel): `guest-sync-delimited` to resynchronise, then the commands. It has no
//! configuration call, so the same job as one xenchan push is: `guest-ssh-add-authorized-keys`
//! (with `reset`, like our managed block), and `guest-exec` of `hostname` and of `ip`,
//! each polled with `guest-exec-status` until it exited.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};

/// Where qemu-ga is installed, if it is.
pub fn binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

/// A client connection to a qemu-ga channel.
#[derive(Debug)]
pub struct Qga {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Qga {
    /// Connects to the channel's socket.
    pub fn connect(socket: &Path) -> io::Result<Qga> {
        Ok(Qga {
            s: UnixStream::connect(socket)?,
            buf: Vec::with_capacity(4096),
        })
    }

    fn fill(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("qemu-ga did not answer in time");
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 60_000)).unwrap_or(60_000);
        let mut fds = [PollFd::new(self.s.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(ms)).context("poll")? == 0 {
            return Ok(());
        }
        let mut chunk = [0u8; 8192];
        let n = self.s.read(&mut chunk).context("read")?;
        if n == 0 {
            bail!("the channel closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self, deadline: Instant) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return Ok(line);
            }
            self.fill(deadline)?;
        }
    }

    fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        let mut text = serde_json::to_vec(v)?;
        text.push(b'\n');
        self.s.write_all(&text).context("write")
    }

    /// `guest-sync-delimited`: everything before the 0xFF sentinel is someone else's.
    pub fn sync(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let id: u32 = rand::random::<u32>() >> 1;
        self.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))?;
        loop {
            if let Some(p) = self.buf.iter().position(|b| *b == 0xff) {
                self.buf.drain(..=p);
                break;
            }
            self.buf.clear();
            self.fill(deadline)?;
        }
        loop {
            let line = self.line(deadline)?;
            if let Ok(v) = serde_json::from_slice::<Value>(&line)
                && v["return"].as_u64() == Some(u64::from(id))
            {
                return Ok(());
            }
        }
    }

    /// One command; its `return` value, or its `error` as an error.
    pub fn call(
        &mut self,
        execute: &str,
        args: &Value,
        deadline: Instant,
    ) -> anyhow::Result<Value> {
        self.send(&json!({"execute": execute, "arguments": args}))?;
        loop {
            let line = self.line(deadline)?;
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("{execute}: {}", e["desc"].as_str().unwrap_or("error"));
            }
        }
    }

    /// `guest-exec` of `path args` (with `input` on stdin), then `guest-exec-status`
    /// until it exited; its exit code.
    pub fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        input: Option<&[u8]>,
        deadline: Instant,
    ) -> anyhow::Result<i64> {
        let mut a = json!({"path": path, "arg": args, "capture-output": false});
        if let Some(data) = input {
            a["input-data"] = Value::String(base64(data));
        }
        let r = self.call("guest-exec", &a, deadline)?;
        let pid = r["pid"].as_i64().context("guest-exec returned no pid")?;
        loop {
            let st = self.call("guest-exec-status", &json!({"pid": pid}), deadline)?;
            if st["exited"].as_bool() == Some(true) {
                return Ok(st["exitcode"].as_i64().unwrap_or(-1));
            }
        }
    }
}

/// What one qemu-ga "push" does.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The user whose keys are set.
    pub user: &'a str,
    /// The keys (replacing the user's keys, `reset`).
    pub keys: &'a [String],
    /// The hostname to set.
    pub hostname: &'a str,
    /// The interface.
    pub iface: &'a str,
    /// The address to add (CIDR).
    pub add: &'a str,
    /// The address to remove first (the previous variant's).
    pub del: &'a str,
}

/// Connect, sync, set keys, run `hostname` and `ip`; returns the exit codes of the two
/// programs (`hostname`, `ip`).
pub fn push_once(socket: &Path, job: &Job<'_>, timeout: Duration) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + timeout;
    let mut q = Qga::connect(socket).context("connect")?;
    q.sync(deadline)?;
    q.call(
        "guest-ssh-add-authorized-keys",
        &json!({"username": job.user, "keys": job.keys, "reset": true}),
        deadline,
    )?;
    let h = q.exec("/usr/bin/hostname", &[job.hostname], None, deadline)?;
    let script = format!(
        "address del {} dev {}\naddress add {} dev {}\n",
        job.del, job.iface, job.add, job.iface
    );
    let i = q.exec(
        "/usr/sbin/ip",
        &["-force", "-batch", "-"],
        Some(script.as_bytes()),
        deadline,
    )?;
    Ok((h, i))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(T[(n >> 18) as usize & 63]));
        out.push(char::from(T[(n >> 12) as usize & 63]));
        out.push(if chunk.len() > 1 {
            char::from(T[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            char::from(T[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
