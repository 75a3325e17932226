//! The command line: `enforcer launch`, `enforcer policy check|explain`,
//! `enforcer cleanup`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    #[command(
        after_help = "Examples (from a checkout of enforcer; sudo keeps the keys the \
        policies read only when told to, with --preserve-env):\n  \
        sudo --preserve-env=GITHUB_TOKEN enforcer launch \\\n      \
        --policy policies/ci-readonly.toml -- curl -sS https://api.github.com/zen\n  \
        sudo --preserve-env=STRIPE_SECRET_KEY enforcer launch \\\n      \
        --policy policies/billing.toml --user agent -- python3 agent.py\n\n\
        The agent runs as the user who invoked sudo (or --user), never as root unless \
        --allow-root is given. Exit status: the command's own, 128+N if it was killed by \
        signal N, 2 for a bad policy or usage, 126/127 if CMD cannot be run, 74 if the audit \
        log failed during the run (the summary then says since when nothing was forwarded), \
        1 for other errors."
    )]
    Launch(LaunchArgs),
    /// Govern every agent unit of a systemd slice: attach the
    /// kernel programs to the slice once and start a run for each unit
    /// that starts through `enforcer exec`.
    #[command(
        after_help = "The configuration (default /etc/enforcer/enforcer.toml):\n  \
        slice = \"agents.slice\"            # cgroup below the cgroup2 root\n  \
        audit_db = \"/var/lib/enforcer/audit.db\"\n  \
        [[unit]]\n  match = \"billing-*.service\"  # unit name pattern, first match wins\n  \
        policy = \"billing.toml\"         # relative to the configuration's directory\n\n\
        A cgroup in the slice without a run (no matching [[unit]], or not started through \
        `enforcer exec`) reaches nothing, not even DNS. Runs started by root are refused. \
        When the daemon stops, its programs stay attached: the slice reaches nothing until it \
        starts again, and every run it had is ended (units get a new run when they restart).\n\n\
        Under systemd: `systemctl enable --now enforcer.service` (shipped with the package, \
        with agents.slice). The daemon tells systemd READY=1 ($NOTIFY_SOCKET, Type=notify) once \
        its programs are attached and its socket listens."
    )]
    Daemon(DaemonArgs),
    /// Make a running daemon read its configuration and policies again
    /// (what `systemctl reload enforcer` runs; SIGHUP does the same).
    #[command(
        after_help = "Every policy is checked first: if anything is wrong, nothing changes and \
        the reason is printed (exit status 1). Otherwise each live run decides its next requests \
        by its unit's new policy and keeps its connections, credentials, spend and TTL (caps \
        and limits take the new values; what was spent and called counts against them). A run \
        whose unit no longer maps to a policy ends. The slice and audit_db need a restart."
    )]
    Reload {
        /// The daemon's socket.
        #[arg(long, value_name = "PATH", default_value = crate::daemon::protocol::SOCKET)]
        socket: PathBuf,
        /// Print the outcome as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// The entry point of an agent unit (ExecStart=enforcer exec -- CMD):
    /// ask the daemon for a run for this unit, then run CMD confined.
    Exec(ExecArgs),
    /// Validate and inspect policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Remove what a crashed or pinned run left behind (cgroup, pinned programs).
    #[command(
        after_help = "Exit status: 0 when the run (or every dead run) was removed, or \
        nothing was left to remove; 1 for a RUN_ID of which nothing is left on this host, a \
        run whose enforcer is still alive, or another error."
    )]
    Cleanup(CleanupArgs),
    /// Query the audit log: runs, their events, and pruning.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List live runs (launch's and the daemon's units): unit, secrets
    /// (names), credential state, TTL left, counts, each cap's spend,
    /// waiting approvals.
    Status {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a live run's credentials now: no further request of the run
    /// gets a real key (placeholders stop working).
    Revoke {
        /// A run id, a daemon unit's name (`billing-agent` or
        /// `billing-agent.service`) or a run's label.
        #[arg(value_name = "RUN")]
        run: String,
        /// Print the outcome as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Reset a run's tripped loop breaker: one call (KEY, from the 429 body
    /// or `enforcer status`), or every tripped call of the run.
    Reset {
        /// A run id, a unit name or a label.
        #[arg(value_name = "RUN")]
        run: String,
        #[arg(value_name = "KEY")]
        key: Option<String>,
        /// Print the outcome as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// List requests of live runs waiting for a human (`action = "ask"`).
    Approvals {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting request (its ID from `enforcer approvals`).
    Approve {
        #[arg(value_name = "ID")]
        id: u64,
        /// Also approve every later request of the same rule in this run.
        #[arg(long)]
        always: bool,
        /// The run the request belongs to: run id, unit name or label
        /// (needed only when several live runs have a request with this ID).
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// Print the outcome as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Deny a waiting request (its ID from `enforcer approvals`).
    Deny {
        #[arg(value_name = "ID")]
        id: u64,
        /// The run the request belongs to: run id, unit name or label
        /// (when several have this ID).
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// Print the outcome as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// (packaging) Write shell completions and man pages under DIR.
    #[command(name = "__generate", hide = true)]
    Generate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The daemon's configuration file.
    #[arg(long, value_name = "FILE", default_value = crate::daemon::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Resolve NAME to ADDR for every run instead of asking DNS (repeatable).
    #[arg(long = "resolve", value_name = "NAME=ADDR")]
    pub resolve: Vec<String>,
    /// Also trust this CA for upstream TLS (repeatable).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// How long an upstream may take to send response headers.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = duration)]
    pub upstream_timeout: Duration,
    /// How long an ask waits for `enforcer approve` before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub approval_timeout: Duration,
    /// The socket units' `enforcer exec` asks on.
    #[arg(long, value_name = "PATH", default_value = crate::daemon::protocol::SOCKET)]
    pub socket: PathBuf,
    /// Log decisions as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The orchestrator's name for this run (e.g. billing/run_abc123): the
    /// audit log's `agent_run_id`. Default: the unit's invocation id.
    /// Need not be unique.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<crate::run::label::Label>,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = crate::daemon::protocol::SOCKET)]
    pub socket: PathBuf,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// Who answers `action = "ask"` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Approver {
    /// The launching terminal prompts (when stdin is a terminal), and root
    /// may also answer from another terminal with `enforcer approve`/`deny`.
    Terminal,
    /// Only root from another terminal, with `enforcer approve`/`deny`.
    Socket,
    /// Nobody: every ask is denied at once (CI, unattended runs).
    None,
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
    /// The orchestrator's name for this run (e.g. billing/run_abc123),
    /// recorded with it: the audit log's `agent_run_id` (enforcer's run id
    /// when there is no label). Need not be unique.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<crate::run::label::Label>,
    /// Start even if this kernel cannot isolate the run from the user's other
    /// processes (needs Landlock ABI 6+ and IPC namespaces). Without that
    /// isolation, other processes of the agent's user, other runs included,
    /// can read the agent's environment, memory and connections; avoid.
    #[arg(long)]
    pub allow_unisolated: bool,
    /// How long the run's credentials stay usable (e.g. 30m, 3h, 1h30m);
    /// overrides the policy's `[run] ttl`. After it, placeholders stop working.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub ttl: Option<Duration>,
    /// End the run (kill the agent) when its credentials expire.
    #[arg(long)]
    pub kill_on_expiry: bool,
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
    /// How long an upstream may take to send its response headers before
    /// the agent gets a 504 (the row says `failure = timeout`).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = duration)]
    pub upstream_timeout: Duration,
    /// The audit database (SQLite). Every decision is a row in it.
    #[arg(long, value_name = "PATH", default_value = crate::audit::DEFAULT_PATH)]
    pub audit_db: PathBuf,
    /// Run without an audit log (not recommended: nothing records what the agent did).
    #[arg(long)]
    pub no_audit: bool,
    /// Who answers requests whose rule says `action = "ask"`.
    #[arg(long, value_enum, default_value = "terminal")]
    pub approver: Approver,
    /// How long a request waits for an answer before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub approval_timeout: Duration,
    /// Write the run's report as JSON to FILE (versioned; the schema is
    /// docs/ci.md's report.v1.schema.json): the summary, what was allowed,
    /// refused, asked and would have been denied, every exfiltration attempt.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// enforce (default) refuses what the policy does not allow. observe
    /// lets through every HTTP(S) request, connection and DNS name the policy
    /// would refuse and records each as "would deny" (the kernel boundary
    /// stays as it is): for a trusted recording run whose audit log
    /// `enforcer policy suggest` turns into a policy. It opens DNS and HTTPS
    /// exfiltration for the run: never use it on untrusted input.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: crate::ci::report::RunMode,
    #[command(flatten)]
    pub ci: crate::ci::CiArgs,
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
    #[command(after_help = "Exit status: 0 when the policy loads, 2 when it does not.")]
    Check {
        /// Print one JSON object: {"ok", "file", "errors": [{"line",
        /// "column", "message"}], "warnings": [...], "summary"} (editors, CI).
        #[arg(long)]
        json: bool,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a minimal policy that allows exactly what recorded runs did
    /// (record them with `launch --mode observe`), ids in paths generalised.
    #[command(after_help = "Example:
          sudo enforcer launch --mode observe --policy empty.toml --audit-db rec.db -- ./job.sh
          enforcer policy suggest --audit-db rec.db --run 20261130-081502-3fa9c1 > policy.toml
          enforcer policy check policy.toml

        Exit status: 0 when a policy was printed; 1 when a run is unknown or the database         cannot be read.")]
    Suggest {
        /// A recorded run (repeatable; `enforcer audit runs` lists them).
        #[arg(long = "run", value_name = "RUN_ID", required = true)]
        runs: Vec<String>,
        #[command(flatten)]
        db: AuditDbArg,
        /// The suggested policy's `[run] name` (default: the run's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Replay recorded requests through POLICY (nothing is sent) and print
    /// what it would decide differently: newly refused, newly asked, newly
    /// allowed. For a CI check on changes to a policy.
    #[command(after_help = "Example:
          enforcer policy test policies/ci.toml --against audit.db --run 20261130-081502-3fa9c1

        Exit status: 0 when nothing would change, 1 when something would, 2 for a policy that         does not load or a database that cannot be read.")]
    Test {
        #[arg(value_name = "POLICY")]
        policy: PathBuf,
        /// The audit database holding the recorded runs.
        #[arg(long, value_name = "AUDIT_DB")]
        against: PathBuf,
        /// Only these runs (repeatable; default: every run in the database).
        #[arg(long = "run", value_name = "RUN_ID")]
        runs: Vec<String>,
    },
    /// Print the policy file's JSON Schema (for editors; the package also
    /// installs it under /usr/share/enforcer).
    Schema,
    /// Show the decision FILE makes for one request, the rule that makes
    /// it, and what applies on the way out (cost, caps, rate and call
    /// limits, secrets injected).
    #[command(after_help = "Example:\n  \
        enforcer policy explain policies/billing.toml POST https://api.stripe.com/v1/refunds\n  \
        enforcer policy explain --exit-code policies/ci-readonly.toml GET https://api.github.com/zen\n\n\
        Exit status: 0 when it answers; with --exit-code, 0 for ALLOW, 1 for DENY, 3 for ASK. \
        2 for a policy that does not load, a bad method or URL, or bad usage.")]
    Explain {
        /// Exit 1 when the request is denied and 3 when it needs a human
        /// (0 when allowed), for scripts and CI checks.
        #[arg(long)]
        exit_code: bool,
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
    #[arg(value_name = "RUN_ID", conflicts_with = "daemon")]
    pub run_id: Option<String>,
    /// Instead: remove what a stopped `enforcer daemon` of SLICE (the
    /// `slice` of its configuration, e.g. agents.slice) keeps attached on
    /// purpose, so that its slice reaches nothing while it is down. After
    /// this the slice's processes are no longer confined (uninstall).
    #[arg(long, value_name = "SLICE")]
    pub daemon: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditDbArg {
    /// The audit database.
    #[arg(long, value_name = "PATH", default_value = crate::audit::DEFAULT_PATH)]
    pub audit_db: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List runs, newest first.
    Runs {
        #[command(flatten)]
        db: AuditDbArg,
        /// Only runs started within this long (e.g. 1h, 7d).
        #[arg(long, value_name = "AGE", value_parser = age)]
        since: Option<Duration>,
        #[arg(long)]
        limit: Option<usize>,
        /// table, jsonl or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show decisions (one per row), oldest first.
    #[command(
        after_help = "Examples:\n  enforcer audit events --run 20261122-101502-3fa9c1\n  \
        enforcer audit events --since 1d --verdict deny --format csv\n  \
        enforcer audit events --host '*.stripe.com' --layer request --format jsonl"
    )]
    Events {
        #[command(flatten)]
        db: AuditDbArg,
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// Only events within this long (e.g. 30m, 1d).
        #[arg(long, value_name = "AGE", value_parser = age)]
        since: Option<Duration>,
        /// allow, deny or ask.
        #[arg(long)]
        verdict: Option<String>,
        /// A host name, or *.domain for it and its subdomains.
        #[arg(long)]
        host: Option<String>,
        /// kernel, dns, connection, request or control.
        #[arg(long)]
        layer: Option<String>,
        /// Keep only the most recent N.
        #[arg(long)]
        limit: Option<usize>,
        /// table, jsonl or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Delete events and finished runs older than AGE.
    Prune {
        #[command(flatten)]
        db: AuditDbArg,
        /// E.g. 30d, 2w.
        #[arg(long, value_name = "AGE", value_parser = age)]
        older_than: Duration,
    },
}

/// `--ttl`, `--approval-timeout`: the policy's duration grammar, longer than zero.
fn duration(text: &str) -> Result<Duration, crate::policy::DurationError> {
    crate::policy::parse_duration(text)
}

/// `--since`, `--older-than`: the same grammar, zero included.
fn age(text: &str) -> Result<Duration, crate::policy::DurationError> {
    crate::policy::parse_duration_or_zero(text)
}
