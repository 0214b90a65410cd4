//! `xenchan xl-channel`: the xl configuration line, through the binary.

use std::process::{Command, Output};

fn xenchan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xenchan"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn prints_the_channel_line_with_and_without_the_workaround() {
    let o = xenchan(&["xl-channel", "web1"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "channel = [ \"connection=socket, name=org.xenchan.agent.1, path=/run/xenchan/sockets/web1.sock\" ]\n"
    );
    let o = xenchan(&[
        "xl-channel",
        "web1",
        "--xl-4.17-workaround",
        "--socket-dir",
        "/srv/xc",
        "--channel",
        "org.example.agent.1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.ends_with("\nchannel = [ \"connection=pty, name=placeholder\", \"connection=socket, name=org.example.agent.1, path=/srv/xc/web1.sock\" ]\n"),
        "{out}"
    );
}

#[test]
fn refuses_what_xl_or_unix_sockets_cannot_take() {
    let long = format!("/{}", "d".repeat(100));
    for (args, why) in [
        (
            vec!["xl-channel", "web 1"],
            "VM name `web 1` cannot be used",
        ),
        (vec!["xl-channel", "a,b"], "VM name `a,b` cannot be used"),
        (
            vec!["xl-channel", "web1", "--socket-dir", &long],
            "108 with the terminating NUL",
        ),
        (
            vec!["xl-channel", "web1", "--socket-dir", "rel/dir"],
            "not absolute",
        ),
        (
            vec!["xl-channel", "web1", "--channel", "a=b"],
            "would break the xl syntax",
        ),
    ] {
        let o = xenchan(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("xenchan: ") && err.contains(why),
            "{args:?}: {err}"
        );
    }
}
