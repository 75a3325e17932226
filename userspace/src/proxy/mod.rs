//! The enforcer's proxy: the listeners the kernel redirects the agent's TCP
//! to, and the per-connection decision that follows.

pub mod listeners;
pub mod relay;
pub mod transparent;

pub use listeners::Listeners;
