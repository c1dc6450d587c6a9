//! Standard output that never panics. `println!` panics when standard output is closed
//! (`scalewise info | head -1`) or full (`> /dev/full`); [`line`] (the `outln!` macro) returns a
//! [`StdoutError`] instead, which `main` turns into a quiet exit for a closed pipe and one error line
//! for anything else.

use std::fmt;
use std::io::Write;

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub(crate) struct StdoutError(pub(crate) std::io::Error);

impl StdoutError {
    /// Whether the reader went away (`| head`): not a fault of this run, so no message.
    pub(crate) fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `args` and a line break to standard output (locked, so a line is never split).
pub(crate) fn line(args: fmt::Arguments) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(StdoutError)
}
