//! The task layer: what the runtime keeps per application thread and per
//! process for the kernel's notion of a task — thread control blocks and
//! how threads enter and leave application code ([`thread`]), the thread
//! registry and execve's ending of other threads ([`threads`]), signal
//! dispositions, masks, alternate stacks and delivery ([`signals`]), and
//! calls made with the application's signal mask ([`blocking`]).
//!
//! May call: `host`. Invariant: nothing here knows the syscall table or
//! the process's other subsystems.

pub mod blocking;
pub mod dispatch;
pub mod signals;
pub mod thread;
pub mod threads;
