//! The `trellis` binary: all logic lives in the library so that it can be tested.

fn main() -> std::process::ExitCode {
    trellis_cli::main_with_args(std::env::args_os())
}
