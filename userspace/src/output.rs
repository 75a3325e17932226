//! What the commands print on stdout. A reader that stops early
//! (`enforcer audit events | head`) ends the command quietly, with the
//! status of a process killed by SIGPIPE (141 in a shell), as other
//! command-line tools do: no "Broken pipe" error, no panic. Other write
//! errors (a full disk behind `> file`) are reported once, at exit.

use std::{
    fmt,
    io::{self, Write},
    sync::Mutex,
};

/// The first error writing to stdout, if any.
static FAILURE: Mutex<Option<io::ErrorKind>> = Mutex::new(None);

fn note(e: &io::Error) {
    let mut f = FAILURE.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(e.kind());
    }
}

/// The first write error on stdout so far.
pub fn failure() -> Option<io::ErrorKind> {
    *FAILURE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locked stdout that remembers its write errors (see [`finish`]).
pub struct Stdout(io::StdoutLock<'static>);

/// Locks stdout for a command's output.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).inspect_err(note)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().inspect_err(note)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).inspect_err(note)
    }
}

/// Prints one line on stdout, like `println!` but without panicking. A
/// closed stdout ends the process here ([`exit_closed`]: nobody reads what
/// would follow); another failed write is remembered for [`finish`].
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = stdout();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n"))
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        exit_closed();
    }
}

/// `outln!("...", args)`: [`line`] with `format!` syntax.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// Flushes stdout and returns the exit code to use: a closed stdout ends
/// the process here as if SIGPIPE had killed it; another write error turns
/// a success into 1 (after saying so on stderr).
pub fn finish(code: i32) -> i32 {
    let _ = stdout().flush();
    match failure() {
        None => code,
        Some(io::ErrorKind::BrokenPipe) => exit_closed(),
        Some(kind) => {
            crate::logging::error(format!(
                "cannot write the output: {}",
                io::Error::from(kind)
            ));
            if code == 0 { 1 } else { code }
        }
    }
}

/// Ends the process the way a closed pipe ends other tools: killed by
/// SIGPIPE (its default action), so that a shell reports 141 and prints
/// nothing; 141 by `exit` should the signal not end it.
pub fn exit_closed() -> ! {
    // SAFETY: restoring the default action of SIGPIPE installs no handler.
    let restored = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    if restored.is_ok() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
