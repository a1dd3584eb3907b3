//! The memory manager (LegoOS's mComponent).
//!
//! It will own the address spaces of the processes homed on it — VMA trees,
//! page allocation from a capacity-bounded pool, page contents, replicas and
//! checkpoints. So far it joins the cluster and reports its pool's capacity
//! and use; the pool and the memory requests arrive with the
//! disaggregated-memory issue.

use lego_monitor::{join_cluster, ComponentConfig, JoinedComponent};
use lego_proto::{ErrorCode, Frame, Load, Message, Role};
use lego_transport::{PeerInfo, Reply, Service};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub component: ComponentConfig,
    /// Bytes of memory this manager may hand out as pages.
    pub capacity: u64,
}

struct Pool {
    capacity: u64,
    used: AtomicU64,
}

impl Service for Pool {
    fn handle(&self, _peer: &PeerInfo, request: Frame) -> Reply {
        Message::error(
            ErrorCode::Unsupported,
            format!(
                "the memory manager does not serve {} yet",
                request.message.kind()
            ),
        )
        .into()
    }
}

/// A running memory manager.
pub struct MemoryManager {
    joined: JoinedComponent,
}

impl MemoryManager {
    pub fn start(config: MemoryConfig) -> std::io::Result<MemoryManager> {
        let pool = Arc::new(Pool {
            capacity: config.capacity,
            used: AtomicU64::new(0),
        });
        let reporter = Arc::clone(&pool);
        let joined = join_cluster(Role::Memory, config.component, pool, move || Load::Memory {
            capacity: reporter.capacity,
            used: reporter.used.load(Ordering::Relaxed),
            committed: 0,
        })?;
        Ok(MemoryManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
