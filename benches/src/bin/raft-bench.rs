//! `raft-bench`: the comparison tool with the built-in storage choices (see
//! [`raft_benches::cli`] to add your own from another crate).

fn main() -> std::process::ExitCode {
    raft_benches::cli::main()
}
