//! A local cluster's state directory: what `lego up` started and how to
//! reach it.
//!
//! ```text
//! DIR/secret         the cluster secret (mode 0600)
//! DIR/cluster.json   monitor address; per component: name, role, pid, address, log, argv
//! DIR/logs/NAME.log  each component's log
//! DIR/monitor.addr   the address the monitor bound (written by the monitor)
//! ```

use anyhow::{bail, Context, Result};
use lego_proto::Role;
use serde::{Deserialize, Serialize};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Format version of cluster.json.
const STATE_VERSION: u32 = 1;

/// The default state directory: `$XDG_STATE_HOME/lego`, else
/// `~/.local/state/lego`, else `/tmp/lego-$UID`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("lego");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/lego");
    }
    // Safety: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/lego-{uid}"))
}

/// One process `lego up` started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ComponentRecord {
    pub name: String,
    pub role: Role,
    pub pid: u32,
    /// Where it serves, once known.
    pub addr: Option<SocketAddr>,
    pub log: PathBuf,
    /// Arguments after the `lego` executable, to start it again.
    pub args: Vec<String>,
}

impl ComponentRecord {
    /// True while the recorded pid is this very component: alive, not a
    /// zombie, and running `lego ROLE ... --name NAME` (so a recycled pid is
    /// never mistaken for it).
    pub fn is_running(&self) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let role_matches = args.get(1) == Some(&self.role.as_str().as_bytes());
        let name_matches = args
            .windows(2)
            .any(|w| w[0] == b"--name" && w[1] == self.name.as_bytes());
        role_matches && name_matches && !is_zombie(self.pid)
    }
}

fn is_zombie(pid: u32) -> bool {
    // The state is the field after the parenthesised command name.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(true)
}

/// What cluster.json holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    pub version: u32,
    pub monitor: SocketAddr,
    pub components: Vec<ComponentRecord>,
}

impl ClusterRecord {
    pub fn new(monitor: SocketAddr) -> ClusterRecord {
        ClusterRecord {
            version: STATE_VERSION,
            monitor,
            components: Vec::new(),
        }
    }

    pub fn component(&self, name: &str) -> Option<&ComponentRecord> {
        self.components.iter().find(|c| c.name == name)
    }

    pub fn component_mut(&mut self, name: &str) -> Option<&mut ComponentRecord> {
        self.components.iter_mut().find(|c| c.name == name)
    }

    pub fn running(&self) -> impl Iterator<Item = &ComponentRecord> {
        self.components.iter().filter(|c| c.is_running())
    }
}

/// Paths inside one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    pub fn secret(&self) -> PathBuf {
        self.root.join("secret")
    }

    pub fn record_path(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }

    pub fn monitor_addr_file(&self) -> PathBuf {
        self.root.join("monitor.addr")
    }

    /// Creates the directory (mode 0700) and its logs folder.
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.logs())
            .with_context(|| format!("cannot create the state directory {}", self.root.display()))
    }

    /// The cluster record, or `None` when no cluster was started here.
    pub fn load(&self) -> Result<Option<ClusterRecord>> {
        let path = self.record_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let record: ClusterRecord = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt; remove it after stopping any lego processes",
                path.display()
            )
        })?;
        if record.version != STATE_VERSION {
            bail!(
                "{} was written by another version of lego (state format {}, this build reads {STATE_VERSION})",
                path.display(),
                record.version
            );
        }
        Ok(Some(record))
    }

    /// The cluster record, or an error telling the user to start one.
    pub fn require(&self) -> Result<ClusterRecord> {
        self.load()?.with_context(|| {
            format!(
                "no Lego cluster in {}: start one with `lego up` (or pass --state DIR)",
                self.root.display()
            )
        })
    }

    /// Writes the record atomically (write to a temporary file, rename).
    pub fn save(&self, record: &ClusterRecord) -> Result<()> {
        let path = self.record_path();
        let tmp = self.root.join("cluster.json.tmp");
        let text = serde_json::to_string_pretty(record)?;
        fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
        // Readable by the users the cluster lets in (the directory decides
        // who reaches it): it holds addresses and pids, no secret.
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Removes what describes a running cluster; keeps the logs.
    pub fn clear(&self) -> Result<()> {
        for path in [self.record_path(), self.secret(), self.monitor_addr_file()] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
            }
        }
        Ok(())
    }
}

/// The last `lines` lines of a log file, for error reports.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
