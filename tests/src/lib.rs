//! Harness for the privileged end-to-end tests: a fake internet in a network
//! namespace (with a packet capture that detects any escape), a way to run
//! `enforcer launch`, and checks that nothing is left behind.
//!
//! Tests only ever aim traffic at addresses a [`TestHost`] created.

pub mod action;
pub mod daemon;
pub mod deb;
pub mod debroot;
pub mod files;
pub mod launch;
pub mod leftovers;
pub mod netns;
pub mod nspawn;
pub mod sdk;
pub mod servers;
pub mod terminal;
pub mod vendor;
pub mod world;
pub mod ws;

pub use launch::{Launch, Outcome};
pub use netns::TestHost;
