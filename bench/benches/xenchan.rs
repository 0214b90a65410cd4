//! `cargo bench -p xenchan-bench [-- OPTIONS]`: the same program as `xenchan-bench`
//! (cargo builds this target with the release settings and passes `--bench`, which the
//! command line accepts and ignores).

fn main() -> std::process::ExitCode {
    xenchan_bench::cli::main()
}
