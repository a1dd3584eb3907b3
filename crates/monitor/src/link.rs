//! The link every component keeps to the monitor: register, then heartbeat
//! with current load; when the monitor vanishes or forgets us (it restarted),
//! keep trying and register again.

use lego_proto::{ErrorCode, ErrorReply, Load, Message, Registration, Role};
use lego_transport::{
    Backoff, Client, ClientConfig, ClusterSecret, Identity, Server, ServerConfig, Service,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tracing::{info, warn};

/// How long to wait between attempts while not registered.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub monitor: SocketAddr,
    pub secret: ClusterSecret,
    pub name: String,
    pub role: Role,
    /// Where this component serves requests.
    pub addr: SocketAddr,
    /// Its Unix socket for requests carrying descriptors, if it has one.
    pub unix_socket: Option<String>,
}

/// A running link. Dropping it stops the heartbeats.
pub struct ComponentLink {
    stop: Arc<AtomicBool>,
}

impl Drop for ComponentLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

enum State {
    Unregistered,
    Registered { interval: Duration },
}

impl ComponentLink {
    /// Starts the heartbeat thread. `load` is called for every heartbeat,
    /// `fenced` when the monitor says this component was taken for dead
    /// and what it held moved on (it must drop it before registering
    /// again).
    pub fn start<F>(
        config: LinkConfig,
        load: F,
        fenced: Box<dyn Fn() + Send>,
    ) -> std::io::Result<ComponentLink>
    where
        F: Fn() -> Load + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::Builder::new()
            .name("monitor link".into())
            .spawn(move || run(config, load, &*fenced, &stopped))?;
        Ok(ComponentLink { stop })
    }
}

fn run(config: LinkConfig, load: impl Fn() -> Load, fenced: &dyn Fn(), stop: &AtomicBool) {
    let mut client_config = ClientConfig::new(
        config.secret.clone(),
        Identity::new(config.role, &config.name),
    );
    client_config.backoff = Backoff {
        give_up_after: Duration::from_secs(1),
        ..Backoff::default()
    };
    client_config.request_timeout = Duration::from_secs(2);
    let client = Client::new(config.monitor, client_config);
    let mut state = State::Unregistered;
    // Whether the last attempt failed, so an outage is logged once.
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        let (message, registering) = match state {
            State::Unregistered => (
                Message::Register(Registration {
                    name: config.name.clone(),
                    role: config.role,
                    addr: config.addr,
                    pid: std::process::id(),
                    load: load(),
                    unix_socket: config.unix_socket.clone(),
                }),
                true,
            ),
            State::Registered { .. } => (
                Message::Heartbeat {
                    name: config.name.clone(),
                    load: load(),
                },
                false,
            ),
        };
        let outcome = client.call(&message, &[]).map(|reply| reply.message);
        state = match (outcome, registering) {
            (
                Ok(Message::Registered {
                    heartbeat_interval_ms,
                }),
                true,
            ) => {
                let interval = Duration::from_millis(heartbeat_interval_ms.clamp(10, 60_000));
                info!(
                    "registered with the monitor at {} as {} (heartbeat every {interval:?})",
                    config.monitor, config.name
                );
                failing = false;
                State::Registered { interval }
            }
            (Ok(Message::HeartbeatAck), false) => {
                failing = false;
                state
            }
            (Ok(Message::Fenced), _) => {
                warn!(
                    "the monitor at {} took us for dead and moved on: dropping what we held, registering again",
                    config.monitor
                );
                fenced();
                // Registers again after a short pause (not at once: a copy
                // thread may still hold a moment what it was sending).
                State::Unregistered
            }
            (
                Ok(Message::Error(ErrorReply {
                    code: ErrorCode::UnknownComponent,
                    ..
                })),
                _,
            ) => {
                info!(
                    "the monitor at {} does not know us (it restarted?): registering again",
                    config.monitor
                );
                // Register right away rather than after a full interval.
                state = State::Unregistered;
                continue;
            }
            (Ok(other), _) => {
                if !failing {
                    warn!(
                        "the monitor at {} answered {message:?} with {other:?}",
                        config.monitor,
                        message = message.kind()
                    );
                }
                failing = true;
                State::Unregistered
            }
            (Err(e), _) => {
                if !failing {
                    warn!("lost contact with the monitor: {e}; retrying");
                }
                failing = true;
                State::Unregistered
            }
        };
        let pause = match state {
            State::Registered { interval } => interval,
            State::Unregistered => RETRY_INTERVAL,
        };
        thread::sleep(pause);
    }
}

/// Where a component listens and which cluster it joins.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub monitor: SocketAddr,
    pub secret: ClusterSecret,
    /// A Unix socket the component serves besides TCP (advertised to the
    /// monitor).
    pub unix_socket: Option<String>,
}

/// A component that serves requests and is registered with the monitor.
/// Dropping it stops both.
pub struct JoinedComponent {
    server: Server,
    _link: ComponentLink,
}

impl JoinedComponent {
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// Binds the component's server, then starts its link to the monitor,
/// advertising the address actually bound.
pub fn join_cluster<F>(
    role: Role,
    config: ComponentConfig,
    service: Arc<dyn Service>,
    load: F,
) -> std::io::Result<JoinedComponent>
where
    F: Fn() -> Load + Send + 'static,
{
    join_cluster_fenced(role, config, service, load, Box::new(|| {}))
}

/// As [`join_cluster`], for a component that holds state the cluster may
/// move elsewhere while it is cut off: `fenced` drops it (see
/// `ComponentLink::start`).
pub fn join_cluster_fenced<F>(
    role: Role,
    config: ComponentConfig,
    service: Arc<dyn Service>,
    load: F,
    fenced: Box<dyn Fn() + Send>,
) -> std::io::Result<JoinedComponent>
where
    F: Fn() -> Load + Send + 'static,
{
    let server = Server::bind(
        config.listen,
        ServerConfig::new(config.secret.clone(), Identity::new(role, &config.name)),
        service,
    )?;
    info!(
        "{role} {} listening on {}",
        config.name,
        server.local_addr()
    );
    let link = ComponentLink::start(
        LinkConfig {
            monitor: config.monitor,
            secret: config.secret,
            name: config.name,
            role,
            addr: server.local_addr(),
            unix_socket: config.unix_socket,
        },
        load,
        fenced,
    )?;
    Ok(JoinedComponent {
        server,
        _link: link,
    })
}
