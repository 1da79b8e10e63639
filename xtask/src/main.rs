//! `cargo xtask`: the developer tasks behind the README's two commands.
//!
//! Each task installs what it needs first (idempotent, see scripts/install-deps.sh), so a
//! fresh Debian 12 machine needs nothing but this repository and rustup.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for the gateway")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and the packages the build and the tests need.
    Setup,
    /// Build and run gatewayd in the foreground with the shipped policies (needs root).
    Run {
        /// Arguments passed on to gatewayd.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, build, and run every test (needs root).
    Test {
        /// Arguments passed on to `cargo test` (a test name filter, `--nocapture`...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks in bench/ and print their results (needs root): the interception
    /// layer, pgbench through the gateway against direct and pgbouncer, and the per-statement
    /// criterion bench.
    Bench,
}

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "--package", "gateway-user", "--bins"])?;
            let mut cmd = Command::new(root.join("target/release/gatewayd"));
            cmd.arg("--policies").arg(root.join("policies")).args(args);
            run(&mut cmd)
        }
        Task::Test { args } => {
            setup()?;
            cargo(&["fmt", "--all", "--check"])?;
            // The default members: everything but gateway-ebpf, which build.rs compiles for
            // the BPF target.
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // gateway-ebpf on its own target, with the toolchain aya-build compiles it with.
            run(Command::new("cargo")
                .current_dir(root.join("gateway-ebpf"))
                .args(["+nightly", "clippy", "--target", "bpfel-unknown-none"])
                .args(["-Z", "build-std=core", "--target-dir"])
                .arg(root.join("target/ebpf-clippy"))
                .args(["--", "-D", "warnings"]))?;
            cargo(&["build", "--bins"])?;
            let mut test = vec!["test", "--"];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)
        }
        Task::Bench => {
            setup()?;
            cargo(&["build", "--release", "--bins"])?;
            run(Command::new("bash").arg(root.join("bench/run.sh")))?;
            run(Command::new("bash").arg(root.join("bench/pgbench.sh")))?;
            cargo(&["bench", "--package", "gateway-user", "--bench", "statement"])
        }
    }
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg("scripts/install-deps.sh"))
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
