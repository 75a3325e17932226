//! Forwarding signals to the agent. A signal someone sent the enforcer
//! (kill, systemd, a test harness) is passed on to the child; a Ctrl-C from
//! the terminal already reached the child when it shares our process group,
//! so it is not sent twice. A third interrupt stops the whole run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI32, AtomicU32, Ordering},
    },
    thread::JoinHandle,
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM},
    iterator::{Handle, SignalsInfo, exfiltrator::WithOrigin},
    low_level::siginfo::Cause,
};

/// Interrupts after which the whole run is killed, not just signalled.
const HARD_STOP_AFTER: u32 = 3;

/// Shared with the forwarding thread.
#[derive(Debug, Default)]
pub struct SignalState {
    /// Pid of the direct child, 0 until it exists.
    pub child: AtomicI32,
    /// Interrupts received so far.
    pub interrupts: AtomicU32,
}

pub struct Forwarder {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    pub state: Arc<SignalState>,
}

impl Forwarder {
    /// Starts listening before the child exists so no signal kills the enforcer.
    /// `hard_stop` runs when the user insists (third interrupt).
    pub fn start(hard_stop: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let state = Arc::new(SignalState::default());
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let sig = origin.signal;
                    let n = st.interrupts.fetch_add(1, Ordering::SeqCst) + 1;
                    // Zero once the child is reaped, so a recycled pid is never signalled.
                    let child = st.child.load(Ordering::SeqCst);
                    if child > 0 && !(origin.cause == Cause::Kernel && shares_our_group(child)) {
                        // SAFETY: kill(2) on the child's pid.
                        unsafe { libc::kill(child, sig) };
                    }
                    if n >= HARD_STOP_AFTER && (sig == SIGINT || sig == SIGTERM) {
                        hard_stop();
                    }
                }
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
            state,
        })
    }

    pub fn set_child(&self, pid: u32) {
        self.state.child.store(pid as i32, Ordering::SeqCst);
    }

    /// True when an interrupt arrived (used before the child exists).
    pub fn interrupted(&self) -> bool {
        self.state.interrupts.load(Ordering::SeqCst) > 0
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn shares_our_group(child: i32) -> bool {
    // SAFETY: getpgid/getpgrp have no memory effects.
    unsafe { libc::getpgid(child) == libc::getpgrp() }
}
