//! Why a lookup of an allowed name failed, typed: the agent's DNS answer
//! (SERVFAIL with an Extended DNS Error), the proxy's answer to a request it
//! could not dial, and the log all say it from this one value.

use std::{fmt, net::SocketAddr, time::Duration};

use hickory_proto::op::ResponseCode;

use super::budget::BudgetError;

/// A failed lookup of `name` by enforcer's resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    /// The name looked up (normalized: lower case, no trailing dot).
    pub name: String,
    pub failure: Failure,
    /// How long this failure is remembered: lookups of the name until then
    /// get it at once, without asking upstream (zero: not remembered).
    pub retry_in: Duration,
    /// This failure was remembered from an earlier lookup.
    pub cached: bool,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The upstream server says the name does not exist.
    NxDomain { server: SocketAddr },
    /// The name exists upstream but has neither an A nor an AAAA record.
    NoAddress { server: SocketAddr },
    /// The upstream server answered with an error code (SERVFAIL, REFUSED...).
    Rcode {
        server: SocketAddr,
        rcode: ResponseCode,
    },
    /// No upstream server answered in time (every attempt at every server).
    Timeout {
        servers: Vec<SocketAddr>,
        waited: Duration,
    },
    /// An upstream server could not be reached (ICMP unreachable, no route,
    /// a broken TCP fallback); `reason` is the system's word for it.
    Unreachable { server: SocketAddr, reason: String },
    /// enforcer has no upstream server to ask (none in /etc/resolv.conf and
    /// no `--resolver`).
    NoUpstream,
    /// A wildcard's budget or label limits refused the name: it was never
    /// sent upstream.
    Budget(BudgetError),
    /// Not a valid DNS name.
    BadName,
}

/// The mnemonic of a response code (`SERVFAIL`, not "Server Failure").
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{ms} ms")
    }
}

/// Whole seconds, rounded up: how long a remembered failure has left.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn servers(list: &[SocketAddr]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Failure {
    /// The full story, upstream servers included (logs, audit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NxDomain { server } => {
                write!(f, "NXDOMAIN from {server} (the name does not exist)")
            }
            Self::NoAddress { server } => {
                write!(f, "{server} has no A or AAAA record for it")
            }
            Self::Rcode { server, rcode } => write!(f, "{} from {server}", rcode_name(*rcode)),
            Self::Timeout { servers: s, waited } => write!(
                f,
                "no answer from {} within {} (timeout)",
                servers(s),
                seconds(*waited)
            ),
            Self::Unreachable { server, reason } => write!(f, "{server} unreachable: {reason}"),
            Self::NoUpstream => f.write_str(
                "enforcer has no upstream DNS server (use --resolver, or --resolve NAME=ADDR)",
            ),
            Self::Budget(e) => write!(f, "refused before any query: {e}"),
            Self::BadName => f.write_str("not a valid DNS name"),
        }
    }
}

impl Failure {
    /// Whether nothing answered in time (a gateway would say 504).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The same without the upstream servers' addresses or the system's
    /// error text: what the agent is told.
    pub fn summary(&self) -> String {
        match self {
            Self::NxDomain { .. } => "the upstream DNS server says the name does not exist".into(),
            Self::NoAddress { .. } => "the name has no A or AAAA record upstream".into(),
            Self::Rcode { rcode, .. } => {
                format!("the upstream DNS server answered {}", rcode_name(*rcode))
            }
            Self::Timeout { waited, .. } => format!(
                "the upstream DNS server did not answer within {}",
                seconds(*waited)
            ),
            Self::Unreachable { .. } => "the upstream DNS server is unreachable".into(),
            Self::NoUpstream => "enforcer has no upstream DNS server for this name".into(),
            Self::Budget(e) => e.to_string(),
            Self::BadName => "not a valid DNS name".into(),
        }
    }
}

impl fmt::Display for LookupError {
    /// `DNS lookup of api.example.com failed: SERVFAIL from 10.0.0.53:53`,
    /// with the upstream servers named: for enforcer's log and audit row.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DNS lookup of {} failed: {}", self.name, self.failure)?;
        if self.cached {
            write!(
                f,
                " (remembered: upstream is asked again in {} s)",
                whole_seconds(self.retry_in)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LookupError {}

impl LookupError {
    pub fn new(name: impl Into<String>, failure: Failure) -> Self {
        Self {
            name: name.into(),
            failure,
            retry_in: Duration::ZERO,
            cached: false,
        }
    }

    /// Whether nothing answered in time (a gateway would say 504).
    pub fn is_timeout(&self) -> bool {
        self.failure.is_timeout()
    }

    /// What the agent may be told: the name and what failed, without the
    /// upstream servers' addresses or the system's error text.
    /// `DNS lookup of api.example.com failed: the upstream DNS server answered SERVFAIL`.
    pub fn agent_text(&self) -> String {
        let mut s = format!(
            "DNS lookup of {} failed: {}",
            self.name,
            self.failure.summary()
        );
        if self.cached {
            s.push_str(&format!(
                " (remembered: asked again in {} s)",
                whole_seconds(self.retry_in)
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        "10.0.0.53:53".parse().unwrap()
    }

    #[test]
    fn the_text_says_which_name_failed_and_why() {
        let e = LookupError::new(
            "api.example.com",
            Failure::Rcode {
                server: server(),
                rcode: ResponseCode::ServFail,
            },
        );
        assert_eq!(
            e.to_string(),
            "DNS lookup of api.example.com failed: SERVFAIL from 10.0.0.53:53"
        );
        assert_eq!(
            e.agent_text(),
            "DNS lookup of api.example.com failed: the upstream DNS server answered SERVFAIL"
        );
        assert!(!e.is_timeout());

        let t = LookupError {
            name: "api.example.com".into(),
            failure: Failure::Timeout {
                servers: vec![server(), "[fd00::53]:53".parse().unwrap()],
                waited: Duration::from_secs(4),
            },
            retry_in: Duration::from_millis(2500),
            cached: true,
        };
        assert!(t.is_timeout());
        assert_eq!(
            t.to_string(),
            "DNS lookup of api.example.com failed: no answer from 10.0.0.53:53, [fd00::53]:53 \
             within 4 s (timeout) (remembered: upstream is asked again in 3 s)"
        );
        // The agent is not told where enforcer's resolvers are.
        assert!(!t.agent_text().contains("10.0.0.53"), "{}", t.agent_text());
        let u = LookupError::new(
            "api.example.com",
            Failure::Unreachable {
                server: server(),
                reason: "connection refused".into(),
            },
        );
        assert!(!u.agent_text().contains("10.0.0.53"));
        assert!(u.to_string().contains("10.0.0.53:53 unreachable"));
        assert!(
            LookupError::new("x.test", Failure::NoUpstream)
                .to_string()
                .contains("--resolver")
        );
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
        assert_eq!(rcode_name(ResponseCode::from(0, 11)), "RCODE11");
    }
}
