//! enforcer: kernel-enforced egress control and per-call policy for AI agents.
//!
//! The data path reads top to bottom: [`cli`] -> [`launch`] -> [`kernel`]
//! attach -> [`proxy`] accept -> [`policy`] decision -> upstream, with every
//! decision going through [`decision`].

pub mod kernel;
pub mod policy;
