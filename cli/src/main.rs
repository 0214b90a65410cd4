//! `xenchan`: the operator CLI over the broker's control API (docs/API.md), and the
//! libvirt hook entry. A thin wrapper over [`xenchan_cli::main`].

fn main() -> std::process::ExitCode {
    xenchan_cli::main()
}
