//! The `enforcer` binary: parses the command line, sets up stderr (human
//! text or `--log-json` lines), runs the command and maps its outcome to an
//! exit code. A closed stdout (`| head`) ends any command quietly.

use clap::Parser as _;
use enforcer::{
    cli::{Cli, Command, PolicyCommand},
    logging, output,
    policy::{Action, Policy},
};

fn main() {
    // The run's unix connector is this binary, re-executed: it must not
    // parse a command line or start anything before dropping privileges.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(enforcer::launch::connector::ARG)) {
        let rest: Vec<std::ffi::OsString> = args.collect();
        std::process::exit(enforcer::launch::connector::main(&rest));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(&e),
    };
    let json = matches!(&cli.command, Command::Launch(a) if a.log_json);
    logging::init(if json {
        logging::Format::Json
    } else {
        logging::Format::Human
    });
    let code = run(cli.command);
    std::process::exit(output::finish(code));
}

/// A command line clap refuses: its message as usual, or as a JSON line
/// when `--log-json` was given (before the agent's `--`), so that every
/// stderr line still parses. `--help` and `--version` print as usual.
fn usage_error(e: &clap::Error) -> ! {
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--log-json");
    if !json || !e.use_stderr() {
        e.exit()
    }
    logging::init(logging::Format::Json);
    logging::verbatim(logging::Level::Error, e.to_string().trim_end());
    std::process::exit(e.exit_code())
}

/// `policy explain --exit-code`: how the decision shows in the exit status.
fn explain_code(action: Action) -> i32 {
    match action {
        Action::Allow => 0,
        Action::Deny => 1,
        Action::Ask => 3,
    }
}

fn run(command: Command) -> i32 {
    match command {
        Command::Launch(args) => match enforcer::launch::run(args) {
            Ok(code) => code,
            Err(e) => failed(&e, e.exit_code()),
        },
        Command::Daemon(args) => match enforcer::daemon::run(enforcer::daemon::DaemonOptions {
            config: args.config,
            resolve: args.resolve,
            upstream_ca: args.upstream_ca,
            upstream_timeout: args.upstream_timeout,
            approval_timeout: args.approval_timeout,
            log_json: args.log_json,
            socket: args.socket,
        }) {
            Ok(()) => 0,
            Err(e) => failed(&e, 1),
        },
        Command::Reload { socket, json } => match enforcer::daemon::client::reload(&socket, json) {
            Ok(()) => 0,
            Err(e) => failed(&e, 1),
        },
        Command::Exec(args) => {
            let e = enforcer::daemon::exec::exec(
                &args.socket,
                args.label.map(|l| l.to_string()),
                &args.command,
            );
            failed(&e, 126)
        }
        Command::Policy(PolicyCommand::Check { file, json }) => {
            enforcer::policy_cli::check(&file, json)
        }
        Command::Policy(PolicyCommand::Suggest { runs, db, name }) => {
            match enforcer::policy_cli::suggest(&runs, &db.audit_db, name.as_deref()) {
                Ok(()) => 0,
                Err(e) => failed(&e, 1),
            }
        }
        Command::Policy(PolicyCommand::Schema) => {
            enforcer::outln!(
                "{}",
                enforcer::policy::json_schema::POLICY_SCHEMA.trim_end()
            );
            0
        }
        Command::Generate { dir } => match enforcer::generate::write_all(&dir) {
            Ok(files) => {
                for f in files {
                    enforcer::outln!("{}", f.display());
                }
                0
            }
            Err(e) => failed(&e, 1),
        },
        Command::Policy(PolicyCommand::Test {
            policy,
            against,
            runs,
        }) => match enforcer::policy_cli::test(&policy, &against, &runs) {
            Ok(changed) => i32::from(changed),
            Err(e) => failed(&e, 2),
        },
        Command::Policy(PolicyCommand::Explain {
            file,
            method,
            url,
            exit_code,
        }) => match Policy::load(&file).and_then(|p| p.explain(&method, &url)) {
            Ok(x) => {
                enforcer::outln!("{x}");
                if exit_code { explain_code(x.action) } else { 0 }
            }
            Err(e) => {
                logging::verbatim(logging::Level::Error, &e);
                2
            }
        },
        Command::Audit(cmd) => match enforcer::audit_cli::run(cmd) {
            Ok(()) => 0,
            Err(e) => failed(&e, 1),
        },
        Command::Status { json } => control(enforcer::control::client::status(json)),
        Command::Revoke { run, json } => control(enforcer::control::client::revoke(&run, json)),
        Command::Reset { run, key, json } => {
            control(enforcer::control::client::reset(&run, key.as_deref(), json))
        }
        Command::Approvals { json } => control(enforcer::control::approvals::list(json)),
        Command::Approve {
            id,
            always,
            run,
            json,
        } => {
            let answer = if always {
                enforcer::approval::Answer::Always
            } else {
                enforcer::approval::Answer::Approve
            };
            control(enforcer::control::approvals::answer(
                id,
                answer,
                run.as_deref(),
                json,
            ))
        }
        Command::Deny { id, run, json } => control(enforcer::control::approvals::answer(
            id,
            enforcer::approval::Answer::Deny,
            run.as_deref(),
            json,
        )),
        Command::Cleanup(args) if args.daemon.is_some() => {
            let slice = args.daemon.unwrap_or_default();
            match enforcer::cleanup::daemon(&slice) {
                Ok(removed) => {
                    for what in removed {
                        logging::note(format!("removed {what}"));
                    }
                    logging::note(format!(
                        "{} is no longer governed: its processes are not confined by enforcer",
                        slice.display()
                    ));
                    0
                }
                Err(e) => failed(&e, 1),
            }
        }
        Command::Cleanup(args) => match enforcer::cleanup::run(args.run_id.as_deref()) {
            Ok(removed) if removed.is_empty() => {
                logging::note("nothing to clean up");
                0
            }
            Ok(removed) => {
                for id in removed {
                    logging::note(format!("removed run {id}"));
                }
                0
            }
            Err(e) => failed(&e, 1),
        },
    }
}

fn control(r: Result<(), enforcer::control::client::ControlError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => failed(&e, 1),
    }
}

/// Reports `e` and returns `code`; an error that is only stdout having been
/// closed by its reader ends the process quietly instead.
fn failed(e: &dyn std::fmt::Display, code: i32) -> i32 {
    if output::failure() == Some(std::io::ErrorKind::BrokenPipe) {
        output::exit_closed();
    }
    logging::error(e);
    code
}
