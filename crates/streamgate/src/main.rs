//! The `streamgate` binary.

fn main() -> std::process::ExitCode {
    streamgate::cli::main()
}
