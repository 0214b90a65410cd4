//! Best-effort lines to the system log (`/dev/log`), for what the libvirt hook must
//! report when it exits 0: libvirtd only logs a hook's stderr when the hook fails, so a
//! warning such as "the broker was unreachable, the domain started unregistered" would
//! otherwise be seen by nobody.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Severity of a line (RFC 5424 numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The operation was refused or failed.
    Error = 3,
    /// The operation went on, but something is not as it should be.
    Warning = 4,
}

/// Facility `daemon` (3), as libvirtd's own lines.
const FACILITY_DAEMON: u8 = 3;

/// Longest line sent (syslog daemons truncate or drop longer datagrams anyway).
const MAX_LINE: usize = 2048;

/// Sends `message` to the datagram socket at `socket` as `xenchan-hook[pid]: message`.
/// Never fails and never waits long: a missing or full log socket loses the line.
pub fn send(socket: &Path, severity: Severity, message: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_write_timeout(Some(Duration::from_millis(200)));
    let pri = FACILITY_DAEMON * 8 + severity as u8;
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = format!("<{pri}>xenchan-hook[{}]: {clean}", std::process::id());
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    let _ = sock.send_to(line.as_bytes(), socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reaches_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        send(&path, Severity::Warning, "broker\nunreachable");
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.starts_with("<28>xenchan-hook["), "{line}");
        assert!(line.ends_with("]: broker unreachable"), "{line}");
        // A missing socket is not an error.
        send(&dir.path().join("none"), Severity::Error, "lost");
    }
}
