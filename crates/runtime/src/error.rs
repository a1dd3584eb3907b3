//! What a call made for the application can end in, for every layer:
//! the application's [`Errno`], or a fault of the runtime itself that
//! ends the process (see `syscall::serve`).

pub use lego_proto::Errno;

/// Why a call did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysError {
    /// The application's error: the call returns it.
    Errno(Errno),
    /// The runtime cannot go on (a lost memory manager, a broken
    /// invariant): the process ends, reporting this.
    Fatal(String),
}

impl SysError {
    pub fn fatal(why: impl Into<String>) -> SysError {
        SysError::Fatal(why.into())
    }
}

impl From<Errno> for SysError {
    fn from(e: Errno) -> SysError {
        SysError::Errno(e)
    }
}
