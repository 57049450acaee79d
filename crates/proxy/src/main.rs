//! `trellis-proxy`: see [`trellis_proxy::cli`].

fn main() -> std::process::ExitCode {
    trellis_proxy::cli::main()
}
