//! One Linux errno type for every component: the memory manager's
//! address-space calls, the storage manager's file calls and the runtime's
//! syscall handlers all fail with an [`Errno`], and the protocol carries it
//! as the plain number (x86-64 Linux numbering).

use serde::{Deserialize, Serialize};

/// A Linux errno value (x86-64), always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(pub const $name: Errno = Errno(libc::$name);)*

            /// The symbolic name (`"ENOENT"`), or `None` for a number
            /// this list does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(libc::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    ERANGE,
    EDEADLK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOVERFLOW,
    ENOTSUP,
    ESTALE,
    ETIMEDOUT,
    ECONNREFUSED,
    ENOTSOCK,
    EMSGSIZE,
    EADDRINUSE,
);

impl Errno {
    /// The same number as ENOTSUP on Linux.
    pub const EOPNOTSUPP: Errno = Errno::ENOTSUP;

    /// The errno of the last failed libc call on this thread (EIO if none).
    pub fn last() -> Errno {
        Errno::from(std::io::Error::last_os_error())
    }

    /// The value a syscall returns for it in `rax`.
    pub fn negated(self) -> i64 {
        -(self.0 as i64)
    }

    /// The errno of a raw syscall's return value, if it failed (Linux
    /// returns -4095..=-1 for errors).
    pub fn of_return(ret: i64) -> Option<Errno> {
        (-4095..0).contains(&ret).then(|| Errno(-ret as i32))
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0);
        match self.name() {
            Some(name) => write!(f, "{name} ({text})"),
            None => write!(f, "errno {} ({text})", self.0),
        }
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_raw_returns() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::ENOENT.name(), Some("ENOENT"));
        assert_eq!(Errno(4000).name(), None);
        assert_eq!(Errno::of_return(-2), Some(Errno::ENOENT));
        assert_eq!(Errno::of_return(0), None);
        assert_eq!(Errno::of_return(-5000), None);
        assert_eq!(Errno::EINVAL.negated(), -22);
        assert!(Errno::ENOSYS.to_string().starts_with("ENOSYS ("));
        assert_eq!(
            postcard::to_stdvec(&Errno(13)).unwrap(),
            postcard::to_stdvec(&13i32).unwrap()
        );
    }
}
