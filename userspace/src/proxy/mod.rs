//! The enforcer's proxy: the listeners the kernel redirects the agent's TCP
//! to (and the explicit HTTP_PROXY listener), the per-connection decision,
//! TLS interception and the per-request boundary.

pub mod body_watch;
pub mod buffer;
pub mod context;
pub mod dial;
pub mod explicit;
pub mod forward;
pub mod http;
pub mod intercept;
pub mod listeners;
pub mod observe;
pub mod outcome;
pub mod pipeline;
pub mod prefixed;
pub mod refusal;
pub mod relay;
pub mod sniff;
pub mod transparent;
pub mod tunnel;
pub mod upstream;
pub mod websocket;

pub use context::ProxyContext;
pub use listeners::Listeners;
