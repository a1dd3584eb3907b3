//! The processor manager (LegoOS's pComponent).
//!
//! It will start one runtime per application process and account the
//! ExCache those runtimes hold. So far it joins the cluster and reports its
//! cores and ExCache quota; running programs arrives with the
//! disaggregated-memory issue.

use lego_monitor::{join_cluster, ComponentConfig, JoinedComponent};
use lego_proto::{ErrorCode, Frame, Load, Message, Role};
use lego_transport::{PeerInfo, Reply, Service};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub component: ComponentConfig,
    /// ExCache quota granted to runtimes on this processor, in bytes.
    pub excache: u64,
}

struct Processor {
    cores: u32,
    excache_quota: u64,
    excache_used: AtomicU64,
}

impl Service for Processor {
    fn handle(&self, _peer: &PeerInfo, request: Frame) -> Reply {
        Message::error(
            ErrorCode::Unsupported,
            format!(
                "the processor manager does not serve {} yet",
                request.message.kind()
            ),
        )
        .into()
    }
}

/// A running processor manager.
pub struct ProcessorManager {
    joined: JoinedComponent,
}

impl ProcessorManager {
    pub fn start(config: ProcessorConfig) -> std::io::Result<ProcessorManager> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let processor = Arc::new(Processor {
            cores,
            excache_quota: config.excache,
            excache_used: AtomicU64::new(0),
        });
        let reporter = Arc::clone(&processor);
        let joined = join_cluster(Role::Processor, config.component, processor, move || {
            Load::Processor {
                cores: reporter.cores,
                excache_quota: reporter.excache_quota,
                excache_used: reporter.excache_used.load(Ordering::Relaxed),
                processes: Vec::new(),
            }
        })?;
        Ok(ProcessorManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
