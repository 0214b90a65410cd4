//! `xenchan hook`: the libvirt hook entry (`/etc/libvirt/hooks/libxl`, `.../qemu`, or a
//! script in `libxl.d/` / `qemu.d/`).
//!
//! libvirtd runs hooks synchronously as `<hook> <domain> <op> <subop> <extra>` with the
//! domain XML on stdin, waits for them, and aborts a start when a `prepare`/`start` hook
//! exits non-zero (its stderr becomes the error). So this entry:
//!
//! - reads at most [`MAX_XML`] bytes of stdin, and does everything within `--deadline`;
//! - never calls libvirt (libvirtd is waiting for us: a deadlock) and never writes to
//!   stdout (for `migrate` and `restore`, and for every script in a `.d` folder, stdout
//!   replaces the domain XML; empty output keeps it);
//! - touches the broker only for domains that have our channel;
//! - at `prepare begin`, registers the domain (`POST /v1/domains/{name}/prepare`) and
//!   aborts the start when the broker *refuses* (a lease or UUID conflict, a prepare hook);
//!   an *unreachable* broker or an unreadable XML only warns, unless `--strict`;
//! - at `release end`, releases it (`POST /v1/domains/{name}/release`); never fails;
//! - at `reconnect begin` / `attach begin` (libvirtd restarted with running domains),
//!   registers again but never fails: a failing reconnect hook makes libvirtd kill the
//!   running domain.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use xenchan_api::client::{Client, ClientError};
use xenchan_api::types::ApiError;

use crate::domain_xml::{self, DomainXml, MAX_XML};
use crate::syslog::{self, Severity};
use xenchan_basics::{Exit, chain};

/// `--help` text.
pub const LONG_ABOUT: &str = "\
libvirt hook entry: registers a domain with the xenchan broker when libvirt prepares to \
start it, and releases it when libvirt has released it. Install it as (or call it from) \
/etc/libvirt/hooks/libxl (Xen through libvirt's libxl driver) and/or \
/etc/libvirt/hooks/qemu (QEMU/KVM); libvirt passes `<domain> <op> <subop> <extra>` and \
the domain XML on standard input. The package ships /usr/libexec/xenchan/libvirt-hook, \
which runs `xenchan hook -- \"$@\"`.

Only domains with a unix channel named --channel (`<channel type='unix'>` with \
`<target type='xen'|'virtio' name='org.xenchan.agent.1'/>`) are sent to the broker; \
every other domain is left alone, at once. The hook never writes to standard output \
(libvirt would take it as a replacement domain XML), never calls libvirt, reads at most \
4 MiB of XML and finishes within --deadline.

What each libvirt call does (the same for the libxl and the qemu hook):

`prepare begin`: register the domain, its UUID and channels (POST \
/v1/domains/{name}/prepare). The broker checks that no other domain has this UUID, \
confirms the domain's leases and runs its own prepare hooks. If it refuses, this exits \
65 with the reason on stderr and libvirt aborts the start.

`start begin`, `started begin`, `stopped end`: nothing. The broker finds the channel \
socket when QEMU makes it, and sees it close.

`release end`: release the domain (POST /v1/domains/{name}/release): its session stops, \
its desired configuration stays. Never fails the operation.

`migrate begin`, `restore begin`: nothing, and no output (the XML stays as it is). The \
`prepare begin` that follows registers the domain (on the destination host for a \
migration; the source host's `release end` releases it there).

`reconnect begin`, `attach begin` (libvirtd restarted with running domains): register \
again, but never fail: a failing reconnect hook makes libvirtd kill the domain.

Anything else: nothing.

When the broker cannot be reached at `prepare` (no socket, refused, no answer within the \
deadline, 5xx, a broker without these endpoints) or the XML cannot be read, the start is \
NOT aborted: a warning goes to stderr and to the system log (libvirt only logs a hook's \
stderr when it fails), and the broker configures the domain anyway once its channel \
socket appears. --strict (or XENCHAN_HOOK_STRICT=1) aborts the start instead.";

/// `--help` epilogue.
pub const AFTER_HELP: &str = "\
Examples:
  /etc/libvirt/hooks/qemu.d/xenchan (and libxl.d/xenchan), executable:
      #!/bin/sh
      exec /usr/bin/xenchan hook -- \"$@\"
  or, where a single hook script exists already, call `xenchan hook -- \"$@\"` from it
  with the XML on stdin. Restart libvirtd after adding a hook.

  By hand (what libvirt does):
      virsh dumpxml web1 | xenchan hook -- web1 prepare begin -
      xenchan hook --strict -- web1 prepare begin - < web1.xml

Exit codes: 0 done, nothing to do, or a tolerated problem (warned); 65 the broker refused
the domain (the start is aborted), or, with --strict, the XML cannot be read; 69 with
--strict, the broker is unreachable; 2 bad command line.";

/// The arguments libvirt passes, and our options.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Abort the start (exit non-zero) when the broker cannot be reached or the domain
    /// XML cannot be read at `prepare`. Without it those only warn. A refusal by the
    /// broker always aborts.
    /// In the environment, any value but an empty one, 0, false, no, off, n or f is on.
    #[arg(long, env = "XENCHAN_HOOK_STRICT",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub strict: bool,

    /// The channel name that marks a domain as ours (the target name of its unix
    /// channel); domains without such a channel are ignored.
    #[arg(
        long,
        value_name = "NAME",
        env = "XENCHAN_CHANNEL",
        default_value = xenchan_protocol::DEFAULT_CHANNEL
    )]
    pub channel: String,

    /// Seconds the whole hook may take (reading the XML and the broker's answer). Keep it
    /// above the broker's `timeouts.hook` if the broker runs prepare hooks.
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub deadline: u64,

    /// Datagram socket of the system log that warnings and refusals are also sent to
    /// (`none` sends nothing).
    #[arg(long, value_name = "PATH", default_value = "/dev/log")]
    pub syslog: PathBuf,

    /// The domain's name (libvirt's first argument).
    #[arg(value_name = "DOMAIN")]
    pub domain: String,

    /// The operation: prepare, start, started, stopped, release, migrate, restore,
    /// reconnect, attach.
    #[arg(value_name = "OP")]
    pub op: String,

    /// The sub-operation: begin, end or `-`.
    #[arg(value_name = "SUBOP")]
    pub subop: String,

    /// The extra argument: `-`, or (release, libvirt >= 10.5) the shutoff reason. Ignored.
    #[arg(value_name = "EXTRA")]
    pub extra: Vec<String>,
}

/// What a libvirt call asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register the domain; a refusal aborts the start.
    Prepare,
    /// Register the domain again; never fail.
    Reattach,
    /// Release the domain; never fail (unless strict).
    Release,
    /// Nothing.
    Nothing,
}

impl Action {
    /// The action for libvirt's `<op> <subop>`.
    pub fn of(op: &str, subop: &str) -> Action {
        match (op, subop) {
            ("prepare", "begin") => Action::Prepare,
            ("reconnect" | "attach", "begin") => Action::Reattach,
            ("release", "end") => Action::Release,
            _ => Action::Nothing,
        }
    }
}

/// How a problem ends the hook.
enum Problem {
    /// The broker said no: always abort a prepare.
    Refused(String),
    /// The broker could not be asked.
    Unavailable(String),
    /// The XML could not be read.
    BadInput(String),
}

struct Reporter<'a> {
    syslog: Option<&'a Path>,
}

impl Reporter<'_> {
    fn say(&self, severity: Severity, message: &str) {
        eprintln!("xenchan hook: {message}");
        if let Some(s) = self.syslog {
            syslog::send(s, severity, message);
        }
    }
}

/// Runs the hook and returns its exit code. Prints nothing on stdout.
pub fn run(socket: &Path, args: &HookArgs) -> ExitCode {
    let end = Instant::now() + Duration::from_secs(args.deadline);
    let reporter = Reporter {
        syslog: (args.syslog != Path::new("none") && !args.syslog.as_os_str().is_empty())
            .then_some(args.syslog.as_path()),
    };
    let action = Action::of(&args.op, &args.subop);
    // Drain stdin whatever the operation, so that libvirtd never writes into a closed
    // pipe; bounded in size and time.
    let input = read_input(MAX_XML, end);
    if action == Action::Nothing {
        return Exit::Ok.into();
    }
    let domain = &args.domain;
    let xml = input.and_then(|bytes| {
        let d = domain_xml::parse(&bytes).map_err(|e| chain(&e))?;
        match &d.name {
            Some(n) if n != domain => Err(format!(
                "the XML describes domain `{}`, but the hook was called for `{}`",
                n.escape_debug(),
                domain.escape_debug()
            )),
            _ => Ok(d),
        }
    });
    let shown = domain.escape_debug();
    match action {
        Action::Nothing => Exit::Ok.into(),
        Action::Prepare | Action::Reattach => {
            let tolerant = action == Action::Reattach;
            match prepare(socket, &args.channel, domain, xml, end) {
                Ok(()) => Exit::Ok.into(),
                Err(Problem::Refused(why)) if !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!("the xenchan broker refused domain {shown}: {why}"),
                    );
                    Exit::DataErr.into()
                }
                Err(Problem::Refused(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!("the xenchan broker refused to re-register running domain {shown} (it keeps running): {why}"),
                    );
                    Exit::Ok.into()
                }
                Err(Problem::Unavailable(why)) if args.strict && !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!("start of domain {shown} aborted (--strict): {why}"),
                    );
                    Exit::Unavailable.into()
                }
                Err(Problem::BadInput(why)) if args.strict && !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!(
                            "start of domain {shown} aborted (--strict): cannot read its domain XML: {why}"
                        ),
                    );
                    Exit::DataErr.into()
                }
                Err(Problem::Unavailable(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!(
                            "domain {shown} goes on without being registered with the xenchan broker: {why} \
                             (the broker still configures it once its channel socket appears{})",
                            if tolerant { "" } else { "; --strict aborts the start instead" }
                        ),
                    );
                    Exit::Ok.into()
                }
                Err(Problem::BadInput(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!(
                            "cannot read the domain XML of {shown}, so it is not registered with the xenchan broker: {why}{}",
                            if tolerant { "" } else { " (the start goes on; --strict aborts it instead)" }
                        ),
                    );
                    Exit::Ok.into()
                }
            }
        }
        Action::Release => match release(socket, &args.channel, domain, &xml, end) {
            Ok(()) => Exit::Ok.into(),
            Err(p) => {
                let (why, code) = match p {
                    Problem::Refused(w) | Problem::BadInput(w) => (w, Exit::DataErr),
                    Problem::Unavailable(w) => (w, Exit::Unavailable),
                };
                reporter.say(
                    Severity::Warning,
                    &format!("cannot release domain {shown} at the xenchan broker: {why}"),
                );
                // A release cannot be undone by failing; only --strict reports it.
                if args.strict { code } else { Exit::Ok }.into()
            }
        },
    }
}

/// Reads stdin up to `limit` bytes (a terminal counts as empty), until `end`.
fn read_input(limit: usize, end: Instant) -> Result<Vec<u8>, String> {
    if std::io::stdin().is_terminal() {
        return Ok(Vec::new());
    }
    let (tx, rx) = mpsc::channel();
    // A plain thread: if libvirtd never closes our stdin, the process exits at the
    // deadline with the thread still blocked in read(2).
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        Ok(Ok(buf)) if buf.len() > limit => {
            Err(format!("the domain XML is larger than {limit} bytes"))
        }
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(format!("cannot read standard input: {e}")),
        Err(_) => Err("standard input was not closed before the hook's deadline".into()),
    }
}

/// The request body of `prepare` for our channels.
fn prepare_body(xml: &DomainXml, channel: &str) -> Value {
    let channels: Vec<Value> = xml
        .channels_named(channel)
        .map(|c| json!({"name": c.name, "path": c.path, "type": c.kind.as_str()}))
        .collect();
    json!({"uuid": xml.uuid, "channels": channels})
}

fn prepare(
    socket: &Path,
    channel: &str,
    domain: &str,
    xml: Result<DomainXml, String>,
    end: Instant,
) -> Result<(), Problem> {
    let xml = xml.map_err(Problem::BadInput)?;
    if xml.channels_named(channel).next().is_none() {
        return Ok(());
    }
    // The broker would refuse the name the same way (400); saying so here is clearer.
    xenchan_api::paths::check_domain_name(domain).map_err(|e| {
        Problem::Refused(format!(
            "{e}; xenchan cannot serve this domain: rename it or remove its {channel} channel"
        ))
    })?;
    let body = serde_json::to_vec(&prepare_body(&xml, channel)).expect("JSON serialises");
    call(socket, &format!("/v1/domains/{domain}/prepare"), body, end)
}

fn release(
    socket: &Path,
    channel: &str,
    domain: &str,
    xml: &Result<DomainXml, String>,
    end: Instant,
) -> Result<(), Problem> {
    // Releasing is always safe, so an unreadable XML still releases; a readable one
    // without our channel means the broker never heard of the domain from us.
    if let Ok(x) = xml
        && x.channels_named(channel).next().is_none()
    {
        return Ok(());
    }
    if xenchan_api::paths::check_domain_name(domain).is_err() {
        return Ok(());
    }
    call(
        socket,
        &format!("/v1/domains/{domain}/release"),
        b"{}".to_vec(),
        end,
    )
}

/// POSTs `body` to `path` within the time left until `end`.
fn call(socket: &Path, path: &str, body: Vec<u8>, end: Instant) -> Result<(), Problem> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Problem::Unavailable(
            "the hook's deadline passed before the broker could be asked".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Problem::Unavailable(format!("cannot start the async runtime: {e}")))?;
    let client = Client::new(socket).with_timeout(left);
    let answer = rt.block_on(client.request(Method::POST, path, Some(body)));
    // The runtime has no task left but a connection driver; do not wait for it.
    rt.shutdown_background();
    let (status, bytes) = answer.map_err(|e| {
        let mut why = chain(&e);
        if matches!(e, ClientError::Timeout(_)) {
            why.push_str(" (the hook's --deadline)");
        }
        Problem::Unavailable(why)
    })?;
    if status.is_success() {
        return Ok(());
    }
    let error = serde_json::from_slice::<ApiError>(&bytes).map_or_else(
        |_| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                .trim()
                .to_string()
        },
        |e| e.error,
    );
    let at = socket.display();
    match status {
        // A broker older than the lifecycle endpoints: as if it were not there.
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Err(Problem::Unavailable(
            format!("the broker at {at} does not support {path} ({status}: {error})"),
        )),
        StatusCode::REQUEST_TIMEOUT => Err(Problem::Unavailable(format!(
            "the broker at {at} timed out ({status}: {error})"
        ))),
        s if s.is_server_error() => Err(Problem::Unavailable(format!(
            "the broker at {at} failed ({status}: {error})"
        ))),
        _ => Err(Problem::Refused(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_operations_map_to_actions() {
        assert_eq!(Action::of("prepare", "begin"), Action::Prepare);
        assert_eq!(Action::of("release", "end"), Action::Release);
        assert_eq!(Action::of("reconnect", "begin"), Action::Reattach);
        assert_eq!(Action::of("attach", "begin"), Action::Reattach);
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("stopped", "end"),
            ("migrate", "begin"),
            ("restore", "begin"),
            ("prepare", "end"),
            ("frobnicate", "-"),
        ] {
            assert_eq!(Action::of(op, sub), Action::Nothing, "{op} {sub}");
        }
    }

    #[test]
    fn the_prepare_body_lists_only_our_channels() {
        let xml = domain_xml::parse(
            b"<domain><name>w</name><uuid>6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a</uuid><devices>
              <channel type='unix'><source mode='bind' path='/s/w.sock'/><target type='xen' name='org.xenchan.agent.1'/></channel>
              <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
              </devices></domain>",
        )
        .unwrap();
        assert_eq!(
            prepare_body(&xml, "org.xenchan.agent.1"),
            json!({"uuid": "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a",
                   "channels": [{"name": "org.xenchan.agent.1", "path": "/s/w.sock", "type": "xen"}]})
        );
    }
}
