//! `cargo xtask`: the project's own commands. `setup` installs what a fresh
//! machine lacks, `test` runs every test (privileged ones as root), `demo`
//! runs the agent demo, `bench` measures.

mod bench;
mod demo;
mod dist;
mod netns;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "enforcer's build, test and demo commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; seconds when done).
    Setup,
    /// Run all tests: unit tests, then the privileged end-to-end suite as root.
    Test {
        /// Extra arguments for the end-to-end test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Launch a real program under enforcement against a local fake vendor.
    Demo,
    /// Build the stripped release binary and the Debian package (binary,
    /// systemd files, example policies, completions, man pages, schemas).
    Dist(dist::DistArgs),
    /// Benchmarks, side by side, as ratios in one run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// (internal) The privileged half of `test`, run as root.
    #[command(name = "__e2e", hide = true)]
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { filter } => test::run(&filter),
        Command::Demo => demo::run(),
        Command::Dist(args) => dist::run(&args),
        Command::Bench { which } => bench::run(which),
        Command::E2e { args } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            test::e2e(&args)
        }
    }
}
