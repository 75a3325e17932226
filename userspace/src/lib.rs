//! enforcer: kernel-enforced egress control and per-call policy for AI agents.
//!
//! The data path reads top to bottom: [`cli`] -> [`launch`] -> [`kernel`]
//! attach -> [`proxy`] accept -> [`policy`] decision -> upstream, with every
//! decision going through [`decision`].

pub mod approval;
pub mod audit;
pub mod audit_cli;
pub mod ci;
pub mod cleanup;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod decision;
pub mod dns;
pub mod generate;
pub mod jsonline;
pub mod kernel;
pub mod launch;
pub mod logging;
pub mod output;
pub mod policy;
pub mod policy_cli;
pub mod proxy;
pub mod run;
pub mod runid;
pub mod runs;
pub mod secrets;
pub mod spend;
pub mod tls;
