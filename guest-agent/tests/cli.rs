//! The binaries' command lines: help that explains every option, and bad options or
//! configuration answered with one clear line and a sysexits code.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xenchan-agent"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("xenchan-agent: "), "{err}");
    err
}

#[test]
fn agent_help_explains_every_option() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--channel <NAME>",
        "--channel-dir <DIR>",
        "--virtio-dir <DIR>",
        "--device <PATH>",
        "--root <DIR>",
        "--state-dir <DIR>",
        "--no-live-hostname",
        "--keepalive-secs <SECS>",
        "--beacon-max-secs <SECS>",
        "--registry-dir <DIR>",
        "--log-format <FORMAT>",
        "consoles",
    ] {
        assert!(help.contains(opt), "--help does not mention {opt}:\n{help}");
    }
    for default in [
        "org.xenchan.agent.1",
        "/dev/xen-channel",
        "/dev/virtio-ports",
        "/var/lib/xenchan-agent",
        "[default: 15]",
        "Examples:",
        "Exit status:",
    ] {
        assert!(help.contains(default), "--help lacks {default}");
    }
}

#[test]
fn agent_usage_errors_are_one_line_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--channel", "a/b"],
        &["--channel", ".."],
        &["--keepalive-secs", "0"],
        &["--log-format", "xml"],
    ] {
        let out = agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        one_line_error(&out);
    }
}

#[test]
fn agent_bad_configuration_is_one_line_exit_78() {
    let state = tempfile::tempdir().unwrap();
    let out = agent(&[
        "--root",
        "/nonexistent/guest",
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(one_line_error(&out).contains("/nonexistent/guest"));
}

#[test]
fn agent_unusable_state_folder_is_one_line_exit_74() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = agent(&[
        "--root",
        dir.path().to_str().unwrap(),
        "--state-dir",
        file.join("state").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(74), "{out:?}");
    assert!(one_line_error(&out).contains("a-file"));
}

#[test]
fn helper_help_explains_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_xen-console-setup"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "<ACTION>",
        "env: ACTION",
        "--devpath <DEVPATH>",
        "--sysfs <DIR>",
        "--dev <DIR>",
        "--channel-dir <DIR>",
        "--xenstore <PATH>",
        "--timeout-ms <MS>",
        "env: DEVPATH",
        "env: XENSTORED_PATH",
        "Exit status:",
    ] {
        assert!(help.contains(opt), "--help does not mention {opt}:\n{help}");
    }
}

#[test]
fn consoles_lists_what_udev_knows() {
    let out = agent(&["consoles", "--channel-dir", "/nonexistent"]);
    if out.status.code() == Some(69) {
        eprintln!(
            "skipping: libudev cannot enumerate devices here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Xen console devices (SUBSYSTEM=xen):"),
        "{text}"
    );
    assert!(
        text.contains("hvc ttys (channel links in /nonexistent):"),
        "{text}"
    );
}
