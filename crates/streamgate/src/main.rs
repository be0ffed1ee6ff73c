//! The `streamgate` binary.

// mimalloc: per-thread free lists suit a proxy's many short-lived allocations; measured in the
// commit that added it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    streamgate::cli::main()
}
