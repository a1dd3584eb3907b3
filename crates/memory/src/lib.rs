//! The memory manager (LegoOS's mComponent).
//!
//! It owns the virtual memory of the processes homed on it: their address
//! spaces ([`vma`]: VMA trees, program breaks, Linux's semantics for
//! anonymous memory), the page contents, held in one capacity-bounded
//! [`pool`] with a strict commit charge, and the ELF [`loader`] that builds
//! an address space for `Exec`. [`service`] serves the memory protocol of
//! `lego-proto` to processors' runtimes, as the primary of a process (it
//! passes every change on to the process's backup, `replica`) or as its
//! backup (until the monitor promotes it). [`regions`] is the store for
//! the regions other managers' processes spill here: the service holds
//! one at the home's `HoldRegion` and serves its pages to the process's
//! runtime (no home spills one yet).

mod files;
pub mod loader;
pub mod pool;
pub mod regions;
mod replica;
pub mod service;
pub mod vma;

use lego_monitor::{join_cluster_fenced, ComponentConfig, JoinedComponent};
use lego_proto::Role;
use service::MemoryService;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub component: ComponentConfig,
    /// Bytes of memory this manager may hand out as pages.
    pub capacity: u64,
}

/// A running memory manager.
pub struct MemoryManager {
    joined: JoinedComponent,
}

impl MemoryManager {
    pub fn start(config: MemoryConfig) -> std::io::Result<MemoryManager> {
        let service = Arc::new(MemoryService::new(config.capacity).with_storage_access(
            config.component.secret.clone(),
            config.component.name.clone(),
        ));
        service.started();
        let reporter = Arc::clone(&service);
        let (name, monitor) = (config.component.name.clone(), config.component.monitor);
        let fenced = Arc::clone(&service);
        let joined = join_cluster_fenced(
            Role::Memory,
            config.component,
            service.clone(),
            move || reporter.load(),
            Box::new(move || fenced.drop_everything()),
        )?;
        service.joined(
            lego_proto::MemoryHolder {
                name,
                addr: joined.local_addr(),
            },
            monitor,
        );
        Ok(MemoryManager { joined })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.joined.local_addr()
    }
}
