//! `xenchan xl-channel`: the `channel = [...]` line of an xl domain configuration that
//! gives a domain the xenchan channel, optionally with the placeholder that works around
//! the xl 4.17 channel bug.

use std::path::PathBuf;

use clap::Args;
use thiserror::Error;

/// `--help` text.
pub const LONG_ABOUT: &str = "\
Prints the `channel = [...]` line of an xl domain configuration (xl.cfg(5)) that gives \
domain VM the xenchan channel: a unix socket at <socket-dir>/<VM>.sock that QEMU listens \
on and the broker connects to, named --channel in the guest.

With --xl-4.17-workaround a placeholder pty channel comes first. Xen 4.17's xl gives the \
first channel device id 0, says \"Primary console has invalid configuration\" and boots \
the domain without it (fixed upstream in 2025 by \"tools/xl: fix channel configuration \
setting\"); with a dummy channel first, ours is the second and works. The guest then has \
two channels; the agent only opens the one named --channel.

The VM name must be a broker domain name (1-64 of A-Z a-z 0-9 _ . -, not starting with \
`.`): it is the socket's file name, and the broker only knows domains by such names. The \
socket folder must be absolute and must not hold characters xl's syntax gives a meaning \
(quotes, backslash, comma, `=`, `#`, white space), and the socket path must fit the \
108-byte unix socket limit (107 bytes and the terminating NUL).";

/// `--help` epilogue.
pub const AFTER_HELP: &str = "\
Examples:
  xenchan xl-channel web1
      channel = [ \"connection=socket, name=org.xenchan.agent.1, path=/run/xenchan/sockets/web1.sock\" ]
  xenchan xl-channel web1 --xl-4.17-workaround >> /etc/xen/web1.cfg
  xenchan xl-channel web1 --socket-dir /srv/xenchan/sockets --channel org.example.agent.1

Exit codes: 0 printed; 2 a name or path that cannot be used (the message says why).";

/// The default socket folder (the broker's `socket_dir`).
pub const DEFAULT_SOCKET_DIR: &str = "/run/xenchan/sockets";

/// Options of `xenchan xl-channel`.
#[derive(Debug, Args)]
pub struct XlChannelArgs {
    /// The domain's name (xl's `name = ...`); its socket is <socket-dir>/<VM>.sock.
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The broker's socket folder (`socket_dir` in /etc/xenchan/broker.toml).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SOCKET_DIR)]
    pub socket_dir: PathBuf,

    /// The channel name the guest agent serves.
    #[arg(long, value_name = "NAME", default_value = xenchan_protocol::DEFAULT_CHANNEL)]
    pub channel: String,

    /// Put a placeholder pty channel first, for xl 4.17 (see above).
    #[arg(long = "xl-4.17-workaround")]
    pub xl_4_17_workaround: bool,
}

/// Why no line can be printed.
#[derive(Debug, Error)]
pub enum XlError {
    /// The VM name is not a broker domain name.
    #[error("VM name `{name}` cannot be used: {reason}")]
    VmName {
        /// The name (escaped when shown).
        name: String,
        /// Why.
        reason: String,
    },
    /// The channel name is not valid.
    #[error("channel name `{name}` cannot be used: {reason}")]
    Channel {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The socket folder is unusable.
    #[error("socket folder `{dir}` cannot be used: {reason}")]
    SocketDir {
        /// The folder (lossy).
        dir: String,
        /// Why.
        reason: String,
    },
    /// The socket path is over the unix limit.
    #[error("{0}")]
    TooLong(String),
}

/// Characters that mean something to xl's configuration syntax or to its
/// `key=value, key=value` channel specification.
fn xl_unsafe(c: char) -> bool {
    !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\' | ',' | '=' | '#' | '[' | ']')
}

/// The line (with a trailing newline; with the workaround, a comment line before it).
pub fn channel_line(args: &XlChannelArgs) -> Result<String, XlError> {
    xenchan_api::paths::check_domain_name(&args.vm).map_err(|reason| XlError::VmName {
        name: args.vm.escape_debug().to_string(),
        reason,
    })?;
    let channel_err = |reason: String| XlError::Channel {
        name: args.channel.escape_debug().to_string(),
        reason,
    };
    xenchan_registry::validate_device_name(&args.channel)
        .map_err(|e| channel_err(e.to_string()))?;
    if let Some(c) = args.channel.chars().find(|c| xl_unsafe(*c)) {
        return Err(channel_err(format!("{c:?} would break the xl syntax")));
    }
    let dir_err = |reason: String| XlError::SocketDir {
        dir: args.socket_dir.to_string_lossy().escape_debug().to_string(),
        reason,
    };
    let Some(dir) = args.socket_dir.to_str() else {
        return Err(dir_err("not UTF-8".into()));
    };
    if !dir.starts_with('/') {
        return Err(dir_err(
            "not absolute (xl would resolve it against its own working folder)".into(),
        ));
    }
    if let Some(c) = dir.chars().find(|c| xl_unsafe(*c)) {
        return Err(dir_err(format!("{c:?} would break the xl syntax")));
    }
    let path = args.socket_dir.join(format!("{}.sock", args.vm));
    xenchan_api::paths::check_socket_path(&path).map_err(XlError::TooLong)?;
    let ours = format!(
        "\"connection=socket, name={}, path={}\"",
        args.channel,
        path.display()
    );
    Ok(if args.xl_4_17_workaround {
        format!(
            "# xl 4.17 gives the first channel devid 0 and drops it: a placeholder goes first.\n\
             channel = [ \"connection=pty, name=placeholder\", {ours} ]\n"
        )
    } else {
        format!("channel = [ {ours} ]\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vm: &str) -> XlChannelArgs {
        XlChannelArgs {
            vm: vm.into(),
            socket_dir: DEFAULT_SOCKET_DIR.into(),
            channel: xenchan_protocol::DEFAULT_CHANNEL.into(),
            xl_4_17_workaround: false,
        }
    }

    #[test]
    fn the_plain_line() {
        assert_eq!(
            channel_line(&args("web1")).unwrap(),
            "channel = [ \"connection=socket, name=org.xenchan.agent.1, path=/run/xenchan/sockets/web1.sock\" ]\n"
        );
    }

    #[test]
    fn the_xl_4_17_placeholder_comes_first() {
        let mut a = args("web1");
        a.xl_4_17_workaround = true;
        let text = channel_line(&a).unwrap();
        let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(
            line,
            "channel = [ \"connection=pty, name=placeholder\", \"connection=socket, name=org.xenchan.agent.1, path=/run/xenchan/sockets/web1.sock\" ]"
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn names_that_break_xl_are_refused() {
        for vm in [
            "", "web 1", "web\"1", "a,b", "a=b", ".hidden", "a/b", "web1\n", "wéb",
        ] {
            assert!(
                matches!(channel_line(&args(vm)), Err(XlError::VmName { .. })),
                "{vm:?}"
            );
        }
        assert!(channel_line(&args(&"a".repeat(64))).is_ok());
        assert!(channel_line(&args(&"a".repeat(65))).is_err());
        for ch in ["a,b", "a=b", "a\"b", "a b", "a/b", ".."] {
            let mut a = args("web1");
            a.channel = ch.into();
            assert!(
                matches!(channel_line(&a), Err(XlError::Channel { .. })),
                "{ch:?}"
            );
        }
        for dir in ["relative/dir", "/run/x,y", "/run/x y", "/run/\"x"] {
            let mut a = args("web1");
            a.socket_dir = dir.into();
            assert!(
                matches!(channel_line(&a), Err(XlError::SocketDir { .. })),
                "{dir:?}"
            );
        }
    }

    #[test]
    fn paths_over_the_unix_limit_are_refused() {
        // "/" + 96 + "/" = 98 bytes of folder; + "web1.sock" (9) = 107: the most allowed.
        let mut a = args("web1");
        a.socket_dir = format!("/{}", "d".repeat(96)).into();
        let ok = channel_line(&a).unwrap();
        assert!(ok.contains(&format!("/{}/web1.sock", "d".repeat(96))));
        a.socket_dir = format!("/{}", "d".repeat(97)).into();
        let err = channel_line(&a).unwrap_err().to_string();
        assert!(err.contains("108 with the terminating NUL"), "{err}");
    }
}
