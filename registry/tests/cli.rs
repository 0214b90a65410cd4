//! `xenchan registry ...` through `cli::run`, on temporary registry folders, and
//! its clap definition mounted the way the `xenchan` binary mounts it.

use std::fs;
use std::path::Path;

use clap::{CommandFactory, Parser};
use xenchan_registry::cli::{self, CliError, RegistryCommand, exit};

/// A stand-in for the `xenchan` binary's parser.
#[derive(Debug, Parser)]
#[command(name = "xenchan")]
struct Xenchan {
    #[arg(long, global = true, default_value = xenchan_registry::DEFAULT_REGISTRY_DIR,
          help = cli::REGISTRY_DIR_HELP)]
    registry_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, clap::Subcommand)]
enum Top {
    #[command(subcommand, about = cli::ABOUT, after_help = cli::AFTER_HELP)]
    Registry(RegistryCommand),
}

struct Outcome {
    code: i32,
    out: String,
    err: String,
}

fn run_args(dir: &Path, args: &[&str]) -> Result<Outcome, CliError> {
    let mut argv = vec!["xenchan", "registry"];
    argv.extend_from_slice(args);
    let parsed = Xenchan::try_parse_from(argv).expect("arguments parse");
    let Top::Registry(cmd) = parsed.command;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(cmd, dir, &mut out, &mut err)?;
    Ok(Outcome {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    })
}

fn run(dir: &Path, args: &[&str]) -> Outcome {
    run_args(dir, args).expect("command succeeds")
}

#[test]
fn clap_definition_is_consistent_and_help_teaches() {
    Xenchan::command().debug_assert();
    let mut cmd = Xenchan::command();
    let registry = cmd.find_subcommand_mut("registry").unwrap();
    let help = registry.render_long_help().to_string();
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("Exit codes"), "{help}");
    for sub in ["lookup", "check", "list", "add"] {
        let help = registry
            .find_subcommand_mut(sub)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("Examples:"), "{sub}: {help}");
        assert!(help.contains("xenchan registry"), "{sub}: {help}");
    }
    let err = Xenchan::try_parse_from(["xenchan", "registry", "add", "--name", "x"]).unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE);
}

#[test]
fn lookup_prints_the_entry_or_says_it_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["lookup", "org.qemu.guest_agent.0"]);
    assert_eq!(o.code, exit::OK);
    assert!(
        o.out
            .starts_with("# built-in registry\nN: org.qemu.guest_agent.0\nC: "),
        "{}",
        o.out
    );

    let o = run(tmp.path(), &["lookup", "ORG.QEMU.GUEST_AGENT.0"]);
    assert_eq!(o.code, exit::NOT_FOUND);
    assert!(o.out.is_empty());
    assert!(o.err.contains("is not registered"));
    assert!(
        o.err
            .contains("`org.qemu.guest_agent.0` is registered; names are case-sensitive")
    );
}

#[test]
fn check_exit_codes_say_ok_poor_or_clash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(
        run(d, &["check", "org.example.cloud.agent.1"]).code,
        exit::OK
    );
    let poor = run(d, &["check", "cloudagent"]);
    assert_eq!(poor.code, exit::POOR);
    assert!(
        poor.out.contains("no reverse-DNS domain part"),
        "{}",
        poor.out
    );
    for bad in ["a,b", "a=b", "a\"b"] {
        let o = run(d, &["check", bad]);
        assert_eq!(o.code, exit::DATA, "{bad}");
        assert!(o.out.starts_with("invalid: "), "{}", o.out);
    }
    let clash = run(d, &["check", "com.redhat.spice"]);
    assert_eq!(clash.code, exit::DATA);
    assert!(
        clash
            .out
            .contains("is a prefix of registered `com.redhat.spice.0`"),
        "{}",
        clash.out
    );
}

#[test]
fn list_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("local"),
        "N: org.example.cloud.agent.1\nC: Cloud team\nD: first boot\n   config\n",
    )
    .unwrap();
    let text = run(tmp.path(), &["list"]);
    assert_eq!(text.code, exit::OK);
    let line = text
        .out
        .lines()
        .find(|l| l.starts_with("org.example.cloud.agent.1 "))
        .unwrap();
    assert!(
        line.contains("local:1") && line.ends_with("first boot"),
        "{line}"
    );
    assert!(
        text.out
            .lines()
            .any(|l| l.starts_with("org.xenchan.agent.1 ") && l.contains("built-in"))
    );

    let json = run(tmp.path(), &["list", "--json"]);
    let items: Vec<serde_json::Value> = serde_json::from_str(&json.out).unwrap();
    assert_eq!(items.len(), xenchan_registry::Registry::builtin().len() + 1);
    let local = items
        .iter()
        .find(|i| i["name"] == "org.example.cloud.agent.1")
        .unwrap();
    assert_eq!(local["description"], "first boot\nconfig");
    assert_eq!(local["line"], 1);
    assert_eq!(
        local["origin"],
        tmp.path().join("local").display().to_string()
    );
    let builtin = items
        .iter()
        .find(|i| i["name"] == "org.xenchan.agent.1")
        .unwrap();
    assert_eq!(builtin["origin"], "builtin");
    assert!(builtin["line"].is_null());
}

#[test]
fn add_checks_then_writes_and_refuses_clashes_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registry.d");
    let args = [
        "add",
        "--name",
        "org.example.cloud.agent.1",
        "--contact",
        "Cloud team <cloud@example.org>",
        "--description",
        "Example Cloud first-boot agent",
    ];
    let o = run(&dir, &args);
    assert_eq!(o.code, exit::OK, "{}", o.err);
    assert!(o.out.contains("registered `org.example.cloud.agent.1`"));
    assert!(dir.join("org.example.cloud.agent.1").is_file());
    let found = run(&dir, &["lookup", "org.example.cloud.agent.1"]);
    assert!(found.out.contains("C: Cloud team <cloud@example.org>"));

    // Again: now it clashes with itself.
    let again = run(&dir, &args);
    assert_eq!(again.code, exit::DATA);
    assert!(again.err.contains("refusing"), "{}", again.err);

    // Overriding a built-in name needs --force, and then warns on load.
    let builtin = [
        "add",
        "--name",
        "org.qemu.guest_agent.0",
        "--contact",
        "us",
        "--description",
        "fork",
    ];
    assert_eq!(run(&dir, &builtin).code, exit::DATA);
    assert!(!dir.join("org.qemu.guest_agent.0").exists());
    let mut forced = builtin.to_vec();
    forced.push("--force");
    let o = run(&dir, &forced);
    assert_eq!(o.code, exit::OK);
    assert!(o.err.contains("--force"));
    let o = run(&dir, &["lookup", "org.qemu.guest_agent.0"]);
    assert!(o.out.contains("C: us"));
    assert!(
        o.err.contains("overrides the built-in registry entry"),
        "{}",
        o.err
    );
}

#[test]
fn add_writes_poor_names_with_a_warning_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = run(
        d,
        &[
            "add",
            "--name",
            "cloudagent",
            "--contact",
            "c",
            "--description",
            "d",
        ],
    );
    assert_eq!(o.code, exit::OK);
    assert!(o.err.starts_with("warning: poor: "), "{}", o.err);

    let err = run_args(
        d,
        &[
            "add",
            "--name",
            "a,b",
            "--contact",
            "c",
            "--description",
            "d",
        ],
    )
    .err()
    .unwrap();
    assert_eq!(err.exit_code(), exit::DATA);
    assert!(xenchan_registry::error_chain(&err).contains("','"));
    let err = run_args(
        d,
        &[
            "add",
            "--name",
            "org.a.b.1",
            "--contact",
            " ",
            "--description",
            "d",
        ],
    )
    .err()
    .unwrap();
    assert_eq!(err.exit_code(), exit::DATA);
}

#[test]
fn bad_local_files_exit_78_and_unwritable_folders_74() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("broken"), "N: org.a.b.1\nC: x\n").unwrap();
    let err = run_args(tmp.path(), &["list"]).err().unwrap();
    assert_eq!(err.exit_code(), exit::CONFIG);
    assert!(
        xenchan_registry::error_chain(&err).contains("line 1: entry `org.a.b.1` has no `D:` line")
    );

    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("file");
    fs::write(&blocker, "").unwrap();
    // A folder below a plain file can be neither listed nor created: loading
    // fails first, with the config code.
    let err = run_args(&blocker, &["list"]).err().unwrap();
    assert_eq!(err.exit_code(), exit::CONFIG);
    let err = run_args(
        &blocker.join("sub"),
        &[
            "add",
            "--name",
            "org.a.b.1",
            "--contact",
            "c",
            "--description",
            "d",
        ],
    )
    .err()
    .unwrap();
    assert_eq!(err.exit_code(), exit::CONFIG, "{err:?}");
}
