//! The bench's stderr: messages ([`say`]) and the live progress line they are printed above
//! ([`show`], [`clear`]). One lock keeps a message from tearing the line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Whether a progress line is on screen now (terminal mode).
static LINE_SHOWN: AtomicBool = AtomicBool::new(false);
static STDERR: Mutex<()> = Mutex::new(());

/// Prints a line on stderr, above the progress line if one is shown.
pub fn say(msg: &str) {
    let _guard = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if LINE_SHOWN.swap(false, Ordering::Relaxed) {
        let _ = write!(err, "\r\x1b[K");
    }
    let _ = writeln!(err, "{msg}");
}

/// Shows the progress line: redrawn in place on a terminal, one more line otherwise.
pub fn show(line: &str, terminal: bool) {
    let _guard = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if terminal {
        let _ = write!(err, "\r\x1b[K{line}");
        LINE_SHOWN.store(true, Ordering::Relaxed);
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Erases the progress line, if one is shown.
pub fn clear() {
    if LINE_SHOWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
}
