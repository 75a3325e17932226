//! The human's side of a pseudo-terminal: what a person at the keyboard
//! sees and types while `enforcer launch` runs on it.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::FromRawFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub struct Terminal {
    master: File,
    screen: Arc<Mutex<String>>,
}

impl Terminal {
    /// A new pseudo-terminal: the human's side, and the side for enforcer.
    pub fn open() -> (Self, File) {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty into two ints, with a winsize; no name, default termios.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two descriptors we now own.
        let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().expect("dup master");
        let s = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every process holding the other side is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut screen) = s.lock() {
                    screen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        (Self { master, screen }, slave)
    }

    /// Everything shown so far.
    pub fn screen(&self) -> String {
        self.screen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the screen, after byte `from`, contains `needle`;
    /// returns the offset just past it.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(from..).and_then(|s| s.find(needle)) {
                return from + at + needle.len();
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear on the terminal within {timeout:?}; screen:\n{}",
                screen.get(from..).unwrap_or(&screen)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `keys`.
    pub fn type_keys(&self, keys: &str) {
        let mut m = &self.master;
        m.write_all(keys.as_bytes()).expect("type on the terminal");
    }
}
