//! The `streamgate` command line under a test-only name; see Cargo.toml.

fn main() -> std::process::ExitCode {
    streamgate::cli::main()
}
