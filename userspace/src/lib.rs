//! enforcer: kernel-enforced egress control and per-call policy for AI agents.
//!
//! The data path reads top to bottom: [`cli`] -> [`launch`] -> [`kernel`]
//! attach -> [`proxy`] accept -> [`policy`] decision -> upstream, with every
//! decision going through [`decision`].

pub mod cleanup;
pub mod cli;
pub mod decision;
pub mod dns;
pub mod kernel;
pub mod launch;
pub mod policy;
pub mod proxy;
pub mod runid;
pub mod runs;
pub mod tls;
