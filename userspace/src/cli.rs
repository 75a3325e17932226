//! The command line: `enforcer launch`, `enforcer policy check|explain`,
//! `enforcer cleanup`.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "enforcer",
    version,
    about = "Run an AI agent with real API keys and a real network, without handing it the keys to the kingdom",
    long_about = "enforcer runs a command in its own cgroup where eBPF programs force every TCP \
                  connection through enforcer's proxy and every DNS query through its resolver, and \
                  refuse everything else in the kernel. The proxy then applies a TOML policy to each \
                  connection and request. Anything the policy does not name is denied."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD under enforcement (needs root: run it with sudo).
    #[command(after_help = "Examples:\n  \
        sudo enforcer launch --policy policies/demo.toml -- curl -sS https://api.github.com/zen\n  \
        sudo enforcer launch --policy billing.toml --user agent -- python agent.py\n\n\
        The agent runs as the user who invoked sudo (or --user), never as root unless \
        --allow-root is given. Exit status: the command's own, 128+N if it was killed by \
        signal N, 2 for a bad policy or usage, 126/127 if CMD cannot be run, 1 for other errors.")]
    Launch(LaunchArgs),
    /// Validate and inspect policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Remove what a crashed or pinned run left behind (cgroup, pinned programs).
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The policy file (TOML). It is validated before anything else happens.
    #[arg(long, short = 'p', value_name = "FILE")]
    pub policy: PathBuf,
    /// Run the agent as this user (name or uid) instead of the sudo caller.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Allow the agent to run as root. A root agent can undo its confinement; avoid.
    #[arg(long)]
    pub allow_root: bool,
    /// Keep enforcement (and the agent) in place if enforcer itself dies;
    /// the agent then stays cut off from the network until `enforcer cleanup RUN_ID`.
    #[arg(long)]
    pub pin: bool,
    /// Resolve NAME to ADDR for the enforcer (tests, air-gapped hosts). Repeatable.
    #[arg(long = "resolve", value_name = "NAME=ADDR")]
    pub resolve: Vec<String>,
    /// Upstream DNS server for allowed names (IP or IP:PORT; repeatable).
    /// Default: the nameservers in /etc/resolv.conf.
    #[arg(long = "resolver", value_name = "ADDR")]
    pub resolver: Vec<String>,
    /// Also trust this CA (PEM) when verifying upstream servers (private
    /// vendors, tests). Repeatable. The system's roots are always trusted.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Log every decision as a JSON line on stderr (default: human-readable refusals).
    #[arg(long)]
    pub log_json: bool,
    /// Also log allowed decisions (refusals are always logged).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// The command to run, and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE and print a normalized summary of what it allows.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show the decision FILE makes for one request, and the rule that makes it.
    #[command(
        after_help = "Example:\n  enforcer policy explain policies/billing.toml POST https://api.stripe.com/v1/refunds"
    )]
    Explain {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(value_name = "METHOD")]
        method: String,
        #[arg(value_name = "URL")]
        url: String,
    },
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The run to remove (as printed at launch). Without it, every run whose
    /// enforcer is no longer alive is removed.
    #[arg(value_name = "RUN_ID")]
    pub run_id: Option<String>,
}
