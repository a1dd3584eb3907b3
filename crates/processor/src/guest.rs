//! Launches by users other than the cluster's owner. They hold no secret,
//! so they can neither ask the monitor where to run nor look their
//! program up on storage: the processor does both for them, placing the
//! program on itself and finding it with the user's own credentials (a
//! voucher of the ids the kernel gave for their connection), so they
//! learn nothing of files they could not see natively.

use crate::{Guests, Processor};
use lego_proto::{
    ErrorCode, FileType, LaunchSpec, Load, Message, Role, StorageReply, StorageRequest, Voucher,
};
use lego_transport::peercred::PeerCredentials;
use lego_transport::{Client, ClientConfig, Identity};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

impl Guests {
    /// Who is allowed, for an error message.
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "no other user".into();
        }
        let list = |ids: &[u32]| {
            ids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.uids.is_empty(), self.gids.is_empty()) {
            (false, true) => format!("uids {}", list(&self.uids)),
            (true, false) => format!("members of gids {}", list(&self.gids)),
            _ => format!(
                "uids {} and members of gids {}",
                list(&self.uids),
                list(&self.gids)
            ),
        }
    }
}

/// `stat` of `path` (absolute) through the storage manager `client`
/// reaches, acting for `caller` (the manager's own rights without one):
/// (is a directory, mode), or `None` if it is not there or not visible.
pub fn stat_on_storage(
    client: &Client,
    caller: Option<&Voucher>,
    path: &Path,
) -> Option<(bool, u32)> {
    let call = |request| match client
        .call(
            &Message::Storage {
                request,
                caller: caller.cloned(),
            },
            &[],
        )
        .ok()?
        .message
    {
        Message::StorageDone(StorageReply::Found { handle, attr }) => Some((handle, attr)),
        _ => None,
    };
    let (root, _) = call(StorageRequest::Root)?;
    let (_, attr) = call(StorageRequest::Lookup {
        dir: root,
        path: path.as_os_str().as_bytes().to_vec(),
        follow: true,
    })?;
    Some((attr.file_type == FileType::Directory, attr.mode))
}

/// `path` made absolute against `cwd`, without `.` components (as
/// `std::path::absolute` does for `lego run`'s own).
fn absolute(cwd: &[u8], path: &[u8]) -> PathBuf {
    let path = Path::new(std::ffi::OsStr::from_bytes(path));
    let joined = Path::new(std::ffi::OsStr::from_bytes(cwd)).join(path);
    joined
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// The guest's launch as the owner's `lego run` would have sent it:
/// placed on this processor by the monitor, its ExCache within this
/// processor's quota, its program found as the guest. A refusal is the
/// answer to send.
pub fn place(
    processor: &Processor,
    mut spec: LaunchSpec,
    caller: &PeerCredentials,
) -> Result<LaunchSpec, Box<Message>> {
    let me = Identity::new(Role::Processor, processor.name.clone());
    let mut config = ClientConfig::new(processor.secret.clone(), me.clone());
    config.backoff.give_up_after = Duration::from_secs(2);
    let monitor = Client::new(processor.monitor, config.clone());
    let asked = Message::PlaceProcess {
        processor: Some(processor.name.clone()),
    };
    let unplaced = |why: String| Box::new(Message::error(ErrorCode::Internal, why));
    let reply = monitor
        .call(&asked, &[])
        .map_err(|e| unplaced(format!("cannot reach the monitor: {e}")))?;
    let (memory, backup, storage) = match reply.message {
        Message::Placement {
            memory,
            backup,
            storage,
            ..
        } => (memory, backup, storage.map(|s| *s)),
        Message::Error(e) => {
            return Err(unplaced(format!(
                "the monitor cannot place the program: {}",
                e.message
            )))
        }
        other => {
            return Err(unplaced(format!(
                "the monitor answered PlaceProcess with {}",
                other.kind()
            )))
        }
    };
    if let Load::Memory {
        capacity,
        committed,
        ..
    } = memory.load
    {
        spec.memory_capacity = capacity;
        spec.memory_available = capacity.saturating_sub(committed);
    }
    spec.memory = memory.addr;
    spec.memory_name = memory.name;
    spec.memory_backup = backup.map(|b| lego_proto::MemoryHolder {
        name: b.name,
        addr: b.addr,
    });
    spec.excache = match spec.excache {
        0 => processor.excache_quota,
        asked => asked.min(processor.excache_quota),
    };
    let path_var = spec
        .envp
        .iter()
        .find_map(|entry| entry.strip_prefix(b"PATH="));
    let found = match &storage {
        Some(storage) => {
            // For no process: the lookups alone.
            let voucher = processor.issue(Voucher {
                uids: [caller.uid; 4],
                gids: [caller.gid; 4],
                groups: caller.groups.clone(),
                caps: lego_proto::Capabilities::of_uid(caller.uid).fs(),
                ..Voucher::default()
            });
            let client = Client::new(storage.addr, config);
            lego_proto::resolve_program(&spec.program, path_var, |candidate| {
                stat_on_storage(&client, Some(&voucher), &absolute(&spec.cwd, candidate))
            })
        }
        // The processor's own files: the program will reach them with the
        // guest's host ids, which the kernel checks then.
        None => lego_proto::resolve_program(&spec.program, path_var, |candidate| {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(absolute(&spec.cwd, candidate)).ok()?;
            Some((meta.is_dir(), meta.permissions().mode()))
        }),
    }
    .map_err(|not_run| Box::new(Message::NotRun(not_run)))?;
    spec.program = absolute(&spec.cwd, &found).into_os_string().into_vec();
    spec.storage = storage.as_ref().map(|s| s.addr);
    spec.storage_name = storage.map(|s| s.name).unwrap_or_default();
    Ok(spec)
}
