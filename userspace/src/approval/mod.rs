//! Approvals for `action = "ask"`: a request is held, not forwarded, while a
//! human decides: on the launching terminal (see [`terminal`]) or from
//! another terminal through the control socket (`enforcer approvals`,
//! `enforcer approve`, `enforcer deny`). `always` allows that rule for the
//! rest of the run; no answer within the timeout is a denial; with
//! `--approver none` every ask is denied at once.

pub mod terminal;
pub mod webhook;

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

/// Who may approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproverMode {
    /// Nobody: every ask is denied at once (`--approver none`).
    None,
    /// CI mode: nobody, and the denial says it was asked in CI.
    Ci,
    /// Root, through the control socket (and the terminal when there is one).
    Humans,
}

/// One request waiting for a human: everything they need to see to know
/// what they approve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    /// Unique within the run.
    pub id: u64,
    pub run_id: String,
    /// `https` or `http`.
    #[serde(default)]
    pub scheme: String,
    pub host: String,
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The full request target, query included (placeholders shown by name).
    #[serde(default)]
    pub target: String,
    /// The start of the body, as text (placeholders shown by name).
    #[serde(default)]
    pub body_preview: Option<String>,
    /// The request's headers as `name: value` (placeholders shown by name;
    /// credentials' values hidden).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Names of the secrets that would be injected.
    pub secrets: Vec<String>,
    /// The parsed cost, if the rule has one (e.g. "$50.00 (5000 usd)").
    pub cost: Option<String>,
    /// What each cap has left, after this call if it is approved.
    #[serde(default)]
    pub caps: Vec<String>,
    /// The values of the headers and fields the rule requires (the
    /// merchant: `header Stripe-Account: acct_1`).
    #[serde(default)]
    pub scope: Vec<String>,
    /// Why an `allow` rule's call is asked: above `ask_above_usd`, or a
    /// requirement it misses (`unmet = "ask"`).
    #[serde(default)]
    pub why: Vec<String>,
    pub rule: String,
    /// Seconds left before it is denied for lack of an answer.
    pub expires_in_secs: u64,
}

/// Text from the agent made safe and unambiguous for a person: control
/// characters (NUL included) and invisible or direction-changing Unicode
/// (zero-width spaces, bidirectional overrides, soft hyphens) are shown as
/// escapes, never passed to the screen.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let invisible = matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        );
        if c == '\0' {
            out.push_str("\\0");
        } else if c.is_control() || invisible {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

impl Pending {
    /// `POST https://api.stripe.com/v1/refunds?charge=ch_1`
    pub fn request_line(&self) -> String {
        let scheme = if self.scheme.is_empty() {
            "https"
        } else {
            &self.scheme
        };
        let target = if self.target.is_empty() {
            &self.path
        } else {
            &self.target
        };
        format!("{} {scheme}://{}{target}", self.method, self.host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Approve,
    Deny,
    /// Approve, and approve every later call of the same rule in this run.
    Always,
}

/// How an ask ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
    },
    TimedOut,
    NoApprover,
    /// CI mode: nobody is asked.
    DeniedInCi,
    /// The run already has [`MAX_WAITING`] requests waiting.
    TooManyWaiting,
}

/// Requests of one run that may wait for a human at once; more are denied
/// at once (a run cannot flood the approvers, or the webhook).
pub const MAX_WAITING: usize = 32;

impl Outcome {
    pub fn approved(&self) -> bool {
        matches!(self, Self::Approved { .. })
    }

    /// For the audit row and the 403 body.
    pub fn reason(&self) -> String {
        match self {
            Self::Approved { by } => format!("approved by {by}"),
            Self::Denied { by } => format!("denied by {by}"),
            Self::TimedOut => String::from("no answer before the approval timeout: denied"),
            Self::NoApprover => {
                String::from("approval required, and no approver (--approver none): denied")
            }
            Self::DeniedInCi => String::from(
                "asked in CI: denied (approval required, and no one is asked in CI mode)",
            ),
            Self::TooManyWaiting => {
                format!("denied: {MAX_WAITING} requests of this run already wait for approval")
            }
        }
    }

    /// Who (or what) decided, for the audit row's `approver`.
    pub fn approver(&self) -> &str {
        match self {
            Self::Approved { by } | Self::Denied { by } => by,
            Self::TimedOut => "nobody (approval timeout)",
            Self::NoApprover => "nobody (--approver none)",
            Self::DeniedInCi => "nobody (CI mode)",
            Self::TooManyWaiting => "nobody (too many waiting)",
        }
    }
}

struct Waiting {
    pending: Pending,
    rule_key: (usize, usize),
    /// The policy version the rule key belongs to.
    generation: u64,
    deadline: Instant,
    reply: oneshot::Sender<(Answer, String)>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    always: HashSet<(usize, usize)>,
    /// Bumped when the rules are reloaded: rule keys of an older version
    /// name other rules now.
    generation: u64,
}

/// The run's approval queue.
pub struct ApprovalHub {
    mode: ApproverMode,
    timeout: Duration,
    inner: Mutex<Inner>,
    /// Woken whenever a request starts waiting (the terminal prompter listens).
    pub arrived: Notify,
    /// Whether a terminal prompts for answers (otherwise each waiting
    /// request is announced with how to answer it).
    terminal: std::sync::atomic::AtomicBool,
}

/// A request in the queue: its id, and the answer to wait for. Dropped
/// before its answer came (the agent went away), it leaves the queue.
pub struct Ticket {
    pub id: u64,
    wait: Option<(oneshot::Receiver<(Answer, String)>, Duration)>,
    decided: Option<Outcome>,
    hub: Option<std::sync::Weak<ApprovalHub>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.as_ref().and_then(std::sync::Weak::upgrade) {
            hub.lock().waiting.remove(&self.id);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no pending approval {0} in this run")]
pub struct NotPending(pub u64);

impl ApprovalHub {
    pub fn new(mode: ApproverMode, timeout: Duration) -> Self {
        Self {
            mode,
            timeout,
            inner: Mutex::new(Inner::default()),
            arrived: Notify::new(),
            terminal: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Says whether a terminal prompts for answers.
    pub fn set_terminal(&self, on: bool) {
        self.terminal.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn has_terminal(&self) -> bool {
        self.terminal.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn mode(&self) -> ApproverMode {
        self.mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the caller until a human answers (or the timeout passes).
    /// `rule_key` is (host index, rule index) for `always`.
    pub async fn ask(self: &Arc<Self>, p: Pending, rule_key: (usize, usize)) -> Outcome {
        let ticket = self.submit(p, rule_key);
        self.wait(ticket).await
    }

    /// Queues a request (or decides it at once: no approver, an earlier
    /// `always`). Wait for the answer with [`ApprovalHub::wait`].
    pub fn submit(self: &Arc<Self>, mut p: Pending, rule_key: (usize, usize)) -> Ticket {
        if let Some(outcome) = match self.mode {
            ApproverMode::None => Some(Outcome::NoApprover),
            ApproverMode::Ci => Some(Outcome::DeniedInCi),
            ApproverMode::Humans => None,
        } {
            return Ticket {
                id: 0,
                wait: None,
                decided: Some(outcome),
                hub: None,
            };
        }
        let mut inner = self.lock();
        if inner.always.contains(&rule_key) && p.why.is_empty() {
            return Ticket {
                id: 0,
                wait: None,
                decided: Some(Outcome::Approved {
                    by: String::from("an earlier 'always' for this rule"),
                }),
                hub: None,
            };
        }
        if inner.waiting.len() >= MAX_WAITING {
            return Ticket {
                id: 0,
                wait: None,
                decided: Some(Outcome::TooManyWaiting),
                hub: None,
            };
        }
        inner.next += 1;
        p.id = inner.next;
        p.expires_in_secs = self.timeout.as_secs();
        let (tx, rx) = oneshot::channel();
        let id = p.id;
        let generation = inner.generation;
        inner.waiting.insert(
            id,
            Waiting {
                pending: p,
                rule_key,
                generation,
                deadline: Instant::now() + self.timeout,
                reply: tx,
            },
        );
        drop(inner);
        // A permit is kept if the prompter is busy: it will look again.
        self.arrived.notify_one();
        Ticket {
            id,
            wait: Some((rx, self.timeout)),
            decided: None,
            hub: Some(Arc::downgrade(self)),
        }
    }

    /// The answer to a submitted request.
    pub async fn wait(&self, mut ticket: Ticket) -> Outcome {
        if let Some(o) = ticket.decided.take() {
            return o;
        }
        let Some((rx, timeout)) = ticket.wait.take() else {
            return Outcome::TimedOut;
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((Answer::Deny, by))) => Outcome::Denied { by },
            Ok(Ok((_, by))) => Outcome::Approved { by },
            Ok(Err(_)) => Outcome::TimedOut,
            Err(_) => {
                self.lock().waiting.remove(&ticket.id);
                Outcome::TimedOut
            }
        }
    }

    /// Forgets every `always` answer: they name rules by position, which a
    /// reloaded policy may give to other rules.
    /// Says whether there were any.
    /// Requests still waiting keep their answer, but an `always` given to
    /// one of them no longer carries over.
    pub fn forget_always(&self) -> bool {
        let mut inner = self.lock();
        let had = !inner.always.is_empty();
        inner.always.clear();
        inner.generation += 1;
        had
    }

    /// Denies every request waiting now (`by` says why): asked under rules
    /// a reload replaced, each is decided again when the agent retries.
    pub fn deny_all(&self, by: &str) -> usize {
        let waiting = std::mem::take(&mut self.lock().waiting);
        let n = waiting.len();
        for (_, w) in waiting {
            let _ = w.reply.send((Answer::Deny, by.to_string()));
        }
        n
    }

    /// Requests waiting now, oldest first (not those past their deadline).
    pub fn pending(&self) -> Vec<Pending> {
        let now = Instant::now();
        self.lock()
            .waiting
            .values()
            .filter(|w| w.deadline > now)
            .map(|w| {
                let mut p = w.pending.clone();
                p.expires_in_secs = w.deadline.saturating_duration_since(now).as_secs();
                p
            })
            .collect()
    }

    /// Answers request `id`; `by` says who (for the audit row).
    pub fn answer(&self, id: u64, answer: Answer, by: &str) -> Result<(), NotPending> {
        let mut inner = self.lock();
        let w = inner.waiting.remove(&id).ok_or(NotPending(id))?;
        // An `always` is remembered for a rule's own asks only: a call
        // asked for its amount or a missing requirement (`why`) is approved
        // once, and the next one above the threshold is asked again.
        // Nor is it kept across a reload: its rule key was the old policy's.
        if answer == Answer::Always && w.pending.why.is_empty() && w.generation == inner.generation
        {
            inner.always.insert(w.rule_key);
        }
        let _ = w.reply.send((answer, by.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn invisible_and_control_characters_are_shown_as_escapes() {
        assert_eq!(printable("a\0b"), "a\\0b");
        assert_eq!(printable("amount=1\u{200B}0000"), "amount=1\\u{200b}0000");
        assert_eq!(printable("x\u{202E}y\u{1b}[2J"), "x\\u{202e}y\\u{1b}[2J");
        assert_eq!(printable("café ok"), "café ok");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pending() -> Pending {
        Pending {
            id: 0,
            run_id: "r".into(),
            scheme: "https".into(),
            host: "api.example.com".into(),
            method: "POST".into(),
            path: "/v1/refunds".into(),
            target: "/v1/refunds?charge=ch_1".into(),
            body_preview: None,
            headers: Vec::new(),
            secrets: vec!["KEY".into()],
            cost: Some("5.00 USD".into()),
            caps: Vec::new(),
            scope: Vec::new(),
            why: Vec::new(),
            rule: "POST /v1/refunds -> ask".into(),
            expires_in_secs: 0,
        }
    }

    #[tokio::test]
    async fn an_always_does_not_cover_asks_for_an_amount_or_a_requirement() {
        let hub = Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_secs(5),
        ));
        let mut asked = pending();
        asked.why = vec!["$480.00 (48000 usd) is above ask_above_usd $50.00".into()];
        let t = hub.submit(asked.clone(), (0, 1));
        hub.answer(t.id, Answer::Always, "test").unwrap();
        assert!(hub.wait(t).await.approved());
        // The next call above the threshold is asked again.
        let t = hub.submit(asked.clone(), (0, 1));
        assert_ne!(t.id, 0, "asked again");
        hub.answer(t.id, Answer::Deny, "test").unwrap();
        assert!(!hub.wait(t).await.approved());
        // An `always` for the rule's own asks does not cover a call asked
        // for its amount.
        let t = hub.submit(pending(), (0, 1));
        hub.answer(t.id, Answer::Always, "test").unwrap();
        assert!(hub.wait(t).await.approved());
        assert_eq!(hub.submit(pending(), (0, 1)).id, 0);
        assert_ne!(hub.submit(asked, (0, 1)).id, 0);
    }

    #[tokio::test]
    async fn a_reload_forgets_always_even_one_given_to_a_request_asked_before_it() {
        let hub = Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_secs(5),
        ));
        let t = hub.submit(pending(), (0, 1));
        hub.answer(t.id, Answer::Always, "test").unwrap();
        assert!(hub.wait(t).await.approved());
        assert_eq!(hub.submit(pending(), (0, 1)).id, 0, "covered by always");
        // Asked under the old rules, answered after the reload.
        let before = hub.submit(pending(), (0, 2));
        assert!(hub.forget_always());
        assert_ne!(hub.submit(pending(), (0, 1)).id, 0, "asked again");
        hub.answer(before.id, Answer::Always, "test").unwrap();
        assert!(hub.wait(before).await.approved(), "approved once");
        assert_ne!(
            hub.submit(pending(), (0, 2)).id,
            0,
            "rule (0, 2) is another rule now: its always is not kept"
        );
    }

    #[tokio::test]
    async fn a_run_cannot_keep_more_than_max_waiting_asks_and_a_reload_denies_them() {
        let hub = Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_secs(5),
        ));
        let tickets: Vec<_> = (0..MAX_WAITING)
            .map(|_| hub.submit(pending(), (0, 1)))
            .collect();
        let over = hub.submit(pending(), (0, 1));
        assert_eq!(hub.wait(over).await, Outcome::TooManyWaiting);
        assert_eq!(hub.deny_all("enforcer (policy reloaded)"), MAX_WAITING);
        for t in tickets {
            assert_eq!(
                hub.wait(t).await,
                Outcome::Denied {
                    by: "enforcer (policy reloaded)".into()
                }
            );
        }
        assert!(hub.pending().is_empty());
    }

    #[tokio::test]
    async fn approve_deny_always_and_timeout() {
        let hub = Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_secs(5),
        ));
        let h = Arc::clone(&hub);
        let asking = tokio::spawn(async move { h.ask(pending(), (0, 1)).await });
        while hub.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        let id = hub.pending()[0].id;
        hub.answer(id, Answer::Deny, "root").unwrap();
        assert_eq!(asking.await.unwrap(), Outcome::Denied { by: "root".into() });
        assert!(
            hub.answer(id, Answer::Approve, "root").is_err(),
            "answered twice"
        );

        let h = Arc::clone(&hub);
        let asking = tokio::spawn(async move { h.ask(pending(), (0, 1)).await });
        while hub.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        hub.answer(hub.pending()[0].id, Answer::Always, "terminal")
            .unwrap();
        assert!(asking.await.unwrap().approved());
        // The same rule now passes without asking; another rule still asks.
        assert!(hub.ask(pending(), (0, 1)).await.approved());
        let quick = Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_millis(50),
        ));
        assert_eq!(quick.ask(pending(), (0, 2)).await, Outcome::TimedOut);
        assert!(quick.pending().is_empty());
        let none = Arc::new(ApprovalHub::new(
            ApproverMode::None,
            Duration::from_secs(60),
        ));
        assert_eq!(none.ask(pending(), (0, 1)).await, Outcome::NoApprover);
    }
}
