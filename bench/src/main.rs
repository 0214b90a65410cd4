//! `xenchan-bench`: see [`xenchan_bench::cli`] and `--help`.

fn main() -> std::process::ExitCode {
    xenchan_bench::cli::main()
}
