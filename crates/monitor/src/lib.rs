//! The global monitor and the link components keep to it.
//!
//! The monitor owns cluster membership: components register with their
//! role, address and capacity, then heartbeat with their load; one silent
//! for longer than the dead-after interval is marked dead, and one that
//! speaks again comes back. Its state is soft: a restarted monitor starts
//! empty and live components re-register on their own (the [`link`] sees
//! the monitor vanish and registers again), so nothing is lost by killing it.
//!
//! It also places new processes (`PlaceProcess`: the least-busy live
//! processor, the live memory manager with the most uncommitted memory
//! and a backup on another) and fails a process over when a memory
//! manager of its is lost (`Failover`).

pub mod link;
mod membership;

pub use link::{
    join_cluster, join_cluster_fenced, ComponentConfig, ComponentLink, JoinedComponent, LinkConfig,
};
pub use membership::{Membership, MonitorConfig, MonitorServer};
