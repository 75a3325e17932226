//! The launching terminal as an approver. The agent does not get the real
//! terminal: its terminal stdio is a pseudo-terminal (in a session of its
//! own) whose other end enforcer relays to and from the real one. Nothing
//! the agent does can answer a prompt: its writes to its terminal reach the
//! screen only through enforcer, and are held back while a prompt is up;
//! reading its stdin gives it only what enforcer relays, and enforcer stops
//! relaying while it prompts; typing into a terminal (TIOCSTI) is refused by
//! the seccomp filter; keys that were waiting before a prompt appeared, and
//! escape sequences (terminal replies an agent can provoke), never count as
//! an answer. Every real prompt carries a code printed at launch straight to
//! the real terminal, before the agent starts: a "prompt" without it is forged.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use nix::{
    pty::{OpenptyResult, openpty},
    sys::termios::{self, OutputFlags, SetArg, Termios},
};
use rand::Rng as _;
use tokio::sync::mpsc;

use super::{Answer, ApprovalHub, Pending, printable};

/// Who answered, in audit rows.
pub const APPROVER: &str = "the launching terminal";

/// The agent's pseudo-terminal and the state of the real one.
pub struct Terminal {
    master: OwnedFd,
    slave: Option<OwnedFd>,
    /// The real terminal (enforcer's controlling terminal).
    tty: File,
    saved: Termios,
    code: String,
    /// Which of the agent's fds 0, 1 and 2 get the pseudo-terminal (those
    /// that are the real terminal in enforcer; the others are inherited).
    stdio: [bool; 3],
}

/// A random code like `K7QX-92MD`.
fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let mut pick = || char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]);
    let a: String = (0..4).map(|_| pick()).collect();
    let b: String = (0..4).map(|_| pick()).collect();
    format!("{a}-{b}")
}

fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty on a descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Copies the real terminal's size onto the agent's.
fn sync_size(from: RawFd, to: RawFd) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize; TIOCSWINSZ reads one.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// The screen: agent output waits while a prompt is up.
#[derive(Default)]
struct Screen {
    prompting: Mutex<bool>,
    idle: Condvar,
}

impl Screen {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.prompting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the screen for a prompt (after any agent write in progress).
    fn take(&self) {
        *self.lock() = true;
    }

    fn give_back(&self) {
        *self.lock() = false;
        self.idle.notify_all();
    }

    /// Writes agent output once no prompt is up.
    fn write_agent(&self, tty: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        let mut prompting = self.lock();
        while *prompting {
            prompting = self.idle.wait(prompting).unwrap_or_else(|e| e.into_inner());
        }
        tty.write_all(bytes)?;
        tty.flush()
    }
}

impl Terminal {
    /// A pseudo-terminal for the agent, when enforcer's stdin is a terminal
    /// (otherwise there is nobody to prompt here: `None`).
    pub fn open() -> std::io::Result<Option<Self>> {
        if !isatty(0) {
            return Ok(None);
        }
        use std::os::unix::fs::OpenOptionsExt as _;
        let tty = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
        {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        // In the background, reading the terminal would stop enforcer (SIGTTIN).
        let foreground = nix::unistd::tcgetpgrp(tty.as_fd()).ok() == Some(nix::unistd::getpgrp());
        if !foreground {
            return Ok(None);
        }
        let saved = termios::tcgetattr(tty.as_fd()).map_err(std::io::Error::from)?;
        let OpenptyResult { master, slave } =
            openpty(None, Some(&saved)).map_err(std::io::Error::from)?;
        sync_size(tty.as_raw_fd(), master.as_raw_fd());
        Ok(Some(Self {
            master,
            slave: Some(slave),
            tty,
            saved,
            code: new_code(),
            stdio: [isatty(0), isatty(1), isatty(2)],
        }))
    }

    /// The pseudo-terminal's agent end, and which of fds 0..2 it replaces.
    pub fn agent_side(&self) -> Option<(RawFd, [bool; 3])> {
        self.slave.as_ref().map(|s| (s.as_raw_fd(), self.stdio))
    }

    /// The code real prompts carry.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Writes straight to the real terminal (the agent never sees it).
    pub fn say(&self, text: &str) {
        let mut tty = &self.tty;
        let _ = tty.write_all(text.as_bytes());
        let _ = tty.flush();
    }

    /// Relays between the real terminal and the agent's until the agent's
    /// side closes, prompting for approvals in between. Call after the agent
    /// started. The real terminal gets its settings back when this ends or
    /// is dropped.
    pub async fn run(mut self, hub: Arc<ApprovalHub>, run_id: String) {
        // The agent has its copy; ours would keep the terminal open forever.
        self.slave = None;
        let mut raw = self.saved.clone();
        termios::cfmakeraw(&mut raw);
        // Keep newline translation: enforcer's own log lines stay readable.
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        let _ = termios::tcsetattr(self.tty.as_fd(), SetArg::TCSANOW, &raw);
        let screen = Arc::new(Screen::default());

        // Agent -> real terminal, paused while a prompt is up (the agent
        // then blocks on its full pseudo-terminal: nothing piles up here).
        let (Ok(master_out), Ok(tty_out)) = (self.master.try_clone(), self.tty.try_clone()) else {
            return;
        };
        let s = Arc::clone(&screen);
        let output = std::thread::spawn(move || {
            let mut m = File::from(master_out);
            let mut tty = tty_out;
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 || s.write_agent(&mut tty, &buf[..n]).is_err() {
                    break;
                }
            }
        });
        // Real terminal -> us (a thread: the terminal is a blocking fd).
        let (tx, mut keys) = mpsc::unbounded_channel::<Vec<u8>>();
        let Ok(mut tty_in) = self.tty.try_clone() else {
            return;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = tty_in.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        let Ok(master_in) = self.master.try_clone() else {
            return;
        };
        let mut master_in = File::from(master_in);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            if output.is_finished() {
                break;
            }
            tokio::select! {
                bytes = keys.recv() => {
                    let Some(bytes) = bytes else { break };
                    let _ = master_in.write_all(&bytes);
                }
                () = hub.arrived.notified() => {
                    prompt_all(&self.tty, &self.code, &hub, &run_id, &screen, &mut keys).await;
                }
                _ = tick.tick() => {
                    if !hub.pending().is_empty() {
                        prompt_all(&self.tty, &self.code, &hub, &run_id, &screen, &mut keys).await;
                    }
                }
                _ = async {
                    match winch.as_mut() {
                        Some(w) => w.recv().await,
                        None => std::future::pending().await,
                    }
                } => sync_size(self.tty.as_raw_fd(), self.master.as_raw_fd()),
            }
        }
    }
}

/// Prompts for every waiting request in turn, oldest first.
async fn prompt_all(
    tty: &File,
    code: &str,
    hub: &ApprovalHub,
    run_id: &str,
    screen: &Screen,
    keys: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let say = |text: &str| {
        let mut t = tty;
        let _ = t.write_all(text.as_bytes());
        let _ = t.flush();
    };
    screen.take();
    while let Some(p) = hub.pending().into_iter().next() {
        // Keys typed before the prompt appeared were meant for the agent
        // (or were provoked by it): they never answer.
        while keys.try_recv().is_ok() {}
        say(&prompt_text(&p, code, run_id));
        match read_answer(&p, hub, keys, tty).await {
            Some(answer) => {
                if hub.answer(p.id, answer, APPROVER).is_err() {
                    say("  (already answered elsewhere)\r\n");
                }
            }
            None => say("\r\n  (answered elsewhere or timed out)\r\n"),
        }
    }
    screen.give_back();
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.tty.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The prompt. It starts by ending any escape sequence the agent may have
/// left half-written and resetting colours, so the agent cannot hide it.
pub fn prompt_text(p: &Pending, code: &str, run_id: &str) -> String {
    let mut text = format!(
        "\x1b\\\x1b[0m\r\n\x1b[1;33m[enforcer approval {code}]\x1b[0m run {run_id} wants to send:\r\n  {}\r\n  rule: {}\r\n",
        printable(&p.request_line()),
        printable(&p.rule)
    );
    for h in &p.headers {
        text.push_str(&format!("  header: {}\r\n", printable(h)));
    }
    if let Some(b) = &p.body_preview {
        text.push_str(&format!("  body: {}\r\n", printable(b)));
    }
    if !p.secrets.is_empty() {
        text.push_str(&format!("  secrets injected: {}\r\n", p.secrets.join(", ")));
    }
    for w in &p.why {
        text.push_str(&format!("  asked because: {}\r\n", printable(w)));
    }
    for s in &p.scope {
        text.push_str(&format!("  scope: {}\r\n", printable(s)));
    }
    if let Some(c) = &p.cost {
        text.push_str(&format!("  cost: {}\r\n", printable(c)));
    }
    for cap in &p.caps {
        text.push_str(&format!("  {}\r\n", printable(cap)));
    }
    text.push_str(&format!(
        "  (denied in {} s without an answer; request #{})\r\nAllow? [y/N/always] ",
        p.expires_in_secs, p.id
    ));
    text
}

/// What a line typed at the prompt means.
pub fn parse_answer(line: &str) -> Answer {
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Answer::Approve,
        "always" | "a" => Answer::Always,
        _ => Answer::Deny,
    }
}

/// Reads one answer; `None` when the request stopped waiting (answered
/// through the control socket, or timed out) first.
async fn read_answer(
    p: &Pending,
    hub: &ApprovalHub,
    keys: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    tty: &File,
) -> Option<Answer> {
    let echo = |s: &str| {
        let mut t = tty;
        let _ = t.write_all(s.as_bytes());
        let _ = t.flush();
    };
    let mut line = String::new();
    loop {
        let bytes = match tokio::time::timeout(Duration::from_millis(250), keys.recv()).await {
            Ok(Some(b)) => b,
            // The terminal is gone: nobody can answer here.
            Ok(None) => return None,
            Err(_) => {
                if !hub.pending().iter().any(|w| w.id == p.id) {
                    return None;
                }
                continue;
            }
        };
        // Terminal replies (to queries the agent can print) arrive as escape
        // sequences: a chunk with one is never typing.
        if bytes.contains(&0x1b) {
            continue;
        }
        for b in bytes {
            match b {
                b'\r' | b'\n' => {
                    echo("\r\n");
                    return Some(parse_answer(&line));
                }
                0x7f | 0x08 if line.pop().is_some() => echo("\x08 \x08"),
                0x03 | 0x04 => {
                    echo("^C\r\n");
                    return Some(Answer::Deny);
                }
                b if b.is_ascii_graphic() && line.len() < 16 => {
                    line.push(char::from(b));
                    echo(&char::from(b).to_string());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_look_alike_and_differ() {
        let (a, b) = (new_code(), new_code());
        assert_ne!(a, b);
        assert_eq!(a.len(), 9);
        assert_eq!(&a[4..5], "-");
    }

    #[test]
    fn answers_default_to_deny() {
        assert_eq!(parse_answer("y"), Answer::Approve);
        assert_eq!(parse_answer(" YES "), Answer::Approve);
        assert_eq!(parse_answer("always"), Answer::Always);
        for no in ["", "n", "no", "yy", "sure", "y es"] {
            assert_eq!(parse_answer(no), Answer::Deny, "{no:?}");
        }
    }

    #[test]
    fn prompts_carry_no_agent_control_characters() {
        let p = Pending {
            id: 3,
            run_id: "r".into(),
            scheme: "https".into(),
            host: "api.example.com".into(),
            method: "POST".into(),
            path: "/v1/x\u{1b}[2J".into(),
            target: "/v1/x\u{1b}[2J?charge=ch_0&amount=0".into(),
            body_preview: Some("amount=5000\u{7}".into()),
            headers: vec!["stripe-account: acct_1".into()],
            secrets: vec![],
            cost: Some("$50.00 (5000 usd)".into()),
            caps: vec!["run cap $500.00: $450.00 left after this call".into()],
            scope: vec!["header Stripe-Account: acct_1".into()],
            why: vec!["$50.00 (5000 usd) is above ask_above_usd $20.00".into()],
            rule: "POST /v1/** -> ask".into(),
            expires_in_secs: 60,
        };
        let text = prompt_text(&p, "AAAA-BBBB", "r");
        assert!(
            text.contains("POST https://api.example.com/v1/x\\u{1b}[2J?charge=ch_0&amount=0"),
            "{text}"
        );
        assert!(text.contains("body: amount=5000\\u{7}"), "{text}");
        assert!(text.contains("header: stripe-account: acct_1"), "{text}");
        assert!(text.contains("$450.00 left"), "{text}");
        assert!(text.contains("[enforcer approval AAAA-BBBB]"));
        assert!(text.contains("request #3"));
    }
}
