//! Links to backups: how a primary passes each change of a process on to
//! the memory manager holding its copy, in the order it applied them.
//!
//! One connection per backup manager, shared by every process backed up
//! there. A change is sent while its process's lock is held, so changes of
//! one process reach the backup in the order they were made (the backup
//! serves a connection's requests one after another); the answer is
//! waited for after the lock is let go.

use lego_proto::{ErrorCode, Frame, MemoryHolder, Message, ProcessId, Role};
use lego_transport::{Backoff, Client, ClientConfig, ClusterSecret, Connection, Identity, Pending};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a backup may take to answer a change before it is taken for
/// lost (the process then goes on without one).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection to one backup manager.
pub struct Link {
    holder: MemoryHolder,
    client: Client,
}

/// A change sent to a backup, not yet answered.
pub struct Sent {
    connection: Arc<Connection>,
    pending: Pending,
}

impl Link {
    pub fn holder(&self) -> &MemoryHolder {
        &self.holder
    }

    /// Sends `request`, a change of process `pid` (of tree `tree`) as the
    /// primary of epoch `epoch` made it; `None` if the backup cannot be
    /// reached (it is then lost: see `MemoryService::backup_lost`, told
    /// by the `wait` that follows failing).
    pub fn send(
        &self,
        pid: ProcessId,
        tree: ProcessId,
        epoch: u64,
        request: &Frame,
    ) -> Option<Sent> {
        let message = Message::Replicate {
            pid,
            tree,
            epoch,
            inner: Box::new(request.message.clone()),
        };
        let connection = self.client.connection().ok()?;
        let pending = connection.send(&message, &[&request.payload]).ok()?;
        Some(Sent {
            connection,
            pending,
        })
    }

    /// Sends `message` (a part of a copy) with `payload`; `None` if the
    /// backup cannot be reached.
    pub fn send_message(&self, message: &Message, payload: &[&[u8]]) -> Option<Sent> {
        let connection = self.client.connection().ok()?;
        let pending = connection.send(message, payload).ok()?;
        Some(Sent {
            connection,
            pending,
        })
    }

    /// Sends `message` and waits for the answer, an error answer
    /// included; `Err` when none came.
    pub fn ask(&self, message: &Message) -> Result<Message, String> {
        let sent = self
            .send_message(message, &[])
            .ok_or("it cannot be reached")?;
        sent.connection
            .wait(sent.pending, BACKUP_TIMEOUT)
            .map(|reply| reply.message)
            .map_err(|e| e.to_string())
    }

    /// Waits for the backup to hold a change sent with `send`.
    pub fn wait(&self, sent: Sent) -> Result<(), String> {
        self.wait_change(sent).map_err(|refused| refused.why)
    }

    /// Waits for the backup to hold a change sent with `send`, telling a
    /// backup that moved on (promoted, or following a later epoch) from
    /// one lost or refusing.
    pub fn wait_change(&self, sent: Sent) -> Result<(), Refused> {
        let reply = sent
            .connection
            .wait(sent.pending, BACKUP_TIMEOUT)
            .map_err(|e| Refused {
                superseded: false,
                why: e.to_string(),
            })?;
        match reply.message {
            Message::Error(e) => Err(Refused {
                superseded: e.code == ErrorCode::NotHeld,
                why: format!("it refused the change: {}", e.message),
            }),
            _ => Ok(()),
        }
    }
}

/// Why a backup did not take a change.
pub struct Refused {
    /// The copy there moved on past this primary: this primary's copy is
    /// stale, and must serve nothing more.
    pub superseded: bool,
    pub why: String,
}

/// The links of one memory manager, made as backups are first named.
#[derive(Clone)]
pub struct Links {
    /// The cluster secret and this manager's name; `None`: no backups.
    access: Option<(ClusterSecret, String)>,
    links: Arc<Mutex<HashMap<MemoryHolder, Arc<Link>>>>,
}

impl Links {
    pub fn new(access: Option<(ClusterSecret, String)>) -> Links {
        Links {
            access,
            links: Arc::default(),
        }
    }

    fn config(&self, timeout: Duration) -> Option<ClientConfig> {
        let (secret, name) = self.access.as_ref()?;
        let mut config = ClientConfig::new(secret.clone(), Identity::new(Role::Memory, name));
        config.request_timeout = timeout;
        config.connect_timeout = Duration::from_secs(1);
        config.backoff = Backoff {
            give_up_after: Duration::from_secs(1),
            ..Backoff::default()
        };
        Some(config)
    }

    /// The link to `holder`, the backup of some process here; `None`
    /// without the cluster secret.
    pub fn to(&self, holder: &MemoryHolder) -> Option<Arc<Link>> {
        let config = self.config(BACKUP_TIMEOUT)?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(links.entry(holder.clone()).or_insert_with(
            || {
                Arc::new(Link {
                    holder: holder.clone(),
                    client: Client::new(holder.addr, config),
                })
            },
        )))
    }

    /// Asks the monitor at `monitor` `message`, as this manager.
    pub fn ask_monitor(&self, monitor: SocketAddr, message: &Message) -> Result<Message, String> {
        let config = self
            .config(Duration::from_secs(10))
            .ok_or("no cluster secret")?;
        let reply = Client::new(monitor, config)
            .call(message, &[])
            .map_err(|e| e.to_string())?;
        match reply.message {
            Message::Error(e) => Err(e.message),
            other => Ok(other),
        }
    }
}
