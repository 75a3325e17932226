//! The `enforcer` binary: parses the command line and maps errors to exit codes.

use clap::Parser as _;
use enforcer::cli::{Cli, Command, PolicyCommand};

fn main() {
    // The run's unix connector is this binary, re-executed: it must not
    // parse a command line or start anything before dropping privileges.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(enforcer::launch::connector::ARG)) {
        let rest: Vec<std::ffi::OsString> = args.collect();
        std::process::exit(enforcer::launch::connector::main(&rest));
    }
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
                    for w in p.warnings() {
                        eprintln!("warning: {w}");
                    }
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
        Command::Audit(cmd) => match enforcer::audit_cli::run(cmd) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("enforcer: error: {e}");
                1
            }
        },
        Command::Status { json } => exit_on_error(enforcer::control::client::status(json)),
        Command::Revoke { run_id } => exit_on_error(enforcer::control::client::revoke(&run_id)),
        Command::Reset { run_id, key } => {
            exit_on_error(enforcer::control::client::reset(&run_id, key.as_deref()))
        }
        Command::Approvals { json } => exit_on_error(enforcer::control::approvals::list(json)),
        Command::Approve { id, always, run } => {
            let answer = if always {
                enforcer::approval::Answer::Always
            } else {
                enforcer::approval::Answer::Approve
            };
            exit_on_error(enforcer::control::approvals::answer(
                id,
                answer,
                run.as_deref(),
            ))
        }
        Command::Deny { id, run } => exit_on_error(enforcer::control::approvals::answer(
            id,
            enforcer::approval::Answer::Deny,
            run.as_deref(),
        )),
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

fn exit_on_error(r: Result<(), enforcer::control::client::ControlError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("enforcer: error: {e}");
            1
        }
    }
}
