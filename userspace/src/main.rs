//! The `enforcer` binary: parses the command line and maps errors to exit codes.

use clap::Parser as _;
use enforcer::cli::{Cli, Command, PolicyCommand};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let code = match cli.command {
        Command::Launch(args) => match enforcer::launch::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("enforcer: error: {e}");
                e.exit_code()
            }
        },
        Command::Policy(PolicyCommand::Check { file }) => {
            match enforcer::policy::Policy::load(&file) {
                Ok(p) => {
                    println!("{}", p.summary());
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    2
                }
            }
        }
        Command::Policy(PolicyCommand::Explain { file, method, url }) => {
            match enforcer::policy::Policy::load(&file).and_then(|p| p.explain(&method, &url)) {
                Ok(x) => {
                    println!("{x}");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    2
                }
            }
        }
        Command::Cleanup(args) => match enforcer::cleanup::run(args.run_id.as_deref()) {
            Ok(removed) if removed.is_empty() => {
                eprintln!("enforcer: nothing to clean up");
                0
            }
            Ok(removed) => {
                for id in removed {
                    eprintln!("enforcer: removed run {id}");
                }
                0
            }
            Err(e) => {
                eprintln!("enforcer: error: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
