//! The file handle format: what the opaque bytes of a [`FileHandle`] hold.
//!
//! ```text
//! handle := version:u8=1 body mac:[u8; 16]
//! body   := 1 mount_id:i32 handle_type:i32 len:u8 kernel_handle[len]   (kernel handle)
//!         | 2 dev:u64 ino:u64 path                                       (path handle)
//! mac    := BLAKE3 keyed hash of version and body, first 16 bytes
//! ```
//!
//! integers little-endian. The key is derived from the cluster secret and
//! the export's canonical path, so only this export of this cluster accepts
//! its handles, and a restarted storage manager with the same secret and
//! export accepts the handles its predecessor issued.
//!
//! A **kernel handle** is what `name_to_handle_at` gives, with the id of
//! the mount it came from (a mount id stays the same while the mount
//! exists, so handles survive a restart of the storage manager but not a
//! remount or reboot). It keeps naming the same file across renames, as an
//! NFS handle does.
//!
//! A **path handle** is the fallback for file systems that cannot make
//! kernel handles (procfs, sysfs and the like answer `EOPNOTSUPP`) and for a
//! storage manager without `CAP_DAC_READ_SEARCH`, which `open_by_handle_at`
//! needs. It holds the file's path inside the export and its device and
//! inode numbers. It is weaker: once the file or any directory above it is
//! renamed, the handle is stale (`ESTALE`) rather than following the file,
//! and the device/inode check is what tells a new file at the old path
//! from the old one.

use lego_proto::FileHandle;
use thiserror::Error;

const VERSION: u8 = 1;
const KIND_KERNEL: u8 = 1;
const KIND_PATH: u8 = 2;
const MAC_LEN: usize = 16;
const KEY_CONTEXT: &str = "lego-storage 2025-01 file handle key v1";

/// What a handle names, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleBody {
    Kernel {
        mount_id: i32,
        handle_type: i32,
        bytes: Vec<u8>,
    },
    Path {
        dev: u64,
        ino: u64,
        /// Relative to the export root; empty for the root itself.
        path: Vec<u8>,
    },
}

/// Why handle bytes were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("the file handle is {0} bytes, too short to be one")]
    TooShort(usize),
    #[error("the file handle is {len} bytes, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("the file handle has version {0}, this storage manager issues version 1")]
    Version(u8),
    #[error("the file handle failed authentication: it was not issued by this export with this cluster secret")]
    Forged,
    #[error("the file handle is malformed: {0}")]
    Malformed(&'static str),
}

/// The key handles are authenticated with.
#[derive(Clone)]
pub struct HandleKey {
    key: [u8; 32],
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    /// Derives the key from the cluster secret (in any stable encoding) and
    /// the export's canonical path.
    pub fn derive(secret: &[u8], export: &[u8]) -> HandleKey {
        let mut material = Vec::with_capacity(secret.len() + 1 + export.len());
        material.extend_from_slice(secret);
        material.push(0);
        material.extend_from_slice(export);
        HandleKey {
            key: blake3::derive_key(KEY_CONTEXT, &material),
        }
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let hash = blake3::keyed_hash(&self.key, data);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hash.as_bytes()[..MAC_LEN]);
        mac
    }

    pub fn encode(&self, body: &HandleBody) -> FileHandle {
        let mut out = vec![VERSION];
        match body {
            HandleBody::Kernel {
                mount_id,
                handle_type,
                bytes,
            } => {
                out.push(KIND_KERNEL);
                out.extend_from_slice(&mount_id.to_le_bytes());
                out.extend_from_slice(&handle_type.to_le_bytes());
                // Kernel handles are at most MAX_HANDLE_SZ (128) bytes.
                out.push(bytes.len().min(u8::MAX as usize) as u8);
                out.extend_from_slice(&bytes[..bytes.len().min(u8::MAX as usize)]);
            }
            HandleBody::Path { dev, ino, path } => {
                out.push(KIND_PATH);
                out.extend_from_slice(&dev.to_le_bytes());
                out.extend_from_slice(&ino.to_le_bytes());
                out.extend_from_slice(path);
            }
        }
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        FileHandle(out)
    }

    /// Authenticates and parses a handle a client sent.
    pub fn decode(&self, handle: &FileHandle) -> Result<HandleBody, HandleError> {
        let bytes = &handle.0;
        let max = lego_proto::MAX_HANDLE_LEN;
        if bytes.len() > max {
            return Err(HandleError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        if bytes.len() < 2 + MAC_LEN {
            return Err(HandleError::TooShort(bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(HandleError::Version(bytes[0]));
        }
        let (data, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        if !constant_time_eq(&self.mac(data), mac) {
            return Err(HandleError::Forged);
        }
        // Authentic bytes were written by `encode`, so the checks below
        // only fail for a key shared with a differently built server.
        let body = &data[2..];
        match data[1] {
            KIND_KERNEL => {
                let (Some(mount_id), Some(handle_type), Some(&len)) =
                    (le_i32(body, 0), le_i32(body, 4), body.get(8))
                else {
                    return Err(HandleError::Malformed("kernel handle header cut short"));
                };
                let bytes = &body[9..];
                if bytes.len() != len as usize {
                    return Err(HandleError::Malformed("kernel handle length"));
                }
                Ok(HandleBody::Kernel {
                    mount_id,
                    handle_type,
                    bytes: bytes.to_vec(),
                })
            }
            KIND_PATH => {
                let (Some(dev), Some(ino)) = (le_u64(body, 0), le_u64(body, 8)) else {
                    return Err(HandleError::Malformed("path handle header cut short"));
                };
                Ok(HandleBody::Path {
                    dev,
                    ino,
                    path: body[16..].to_vec(),
                })
            }
            _ => Err(HandleError::Malformed("unknown handle kind")),
        }
    }
}

fn le_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed MAC was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HandleKey {
        HandleKey::derive(b"secret", b"/srv/export")
    }

    #[test]
    fn both_kinds_round_trip() {
        for body in [
            HandleBody::Kernel {
                mount_id: 27,
                handle_type: 1,
                bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
            HandleBody::Path {
                dev: 5,
                ino: 77,
                path: b"proc/version".to_vec(),
            },
            HandleBody::Path {
                dev: 0,
                ino: 0,
                path: Vec::new(),
            },
        ] {
            assert_eq!(key().decode(&key().encode(&body)), Ok(body));
        }
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let handle = key().encode(&HandleBody::Path {
            dev: 1,
            ino: 2,
            path: b"etc".to_vec(),
        });
        for i in 0..handle.0.len() {
            let mut bad = handle.clone();
            bad.0[i] ^= 0x40;
            assert!(key().decode(&bad).is_err(), "byte {i} changed unnoticed");
        }
    }

    #[test]
    fn another_export_or_secret_refuses_the_handle() {
        let body = HandleBody::Path {
            dev: 1,
            ino: 2,
            path: b"x".to_vec(),
        };
        let handle = key().encode(&body);
        assert_eq!(
            HandleKey::derive(b"secret", b"/srv/other").decode(&handle),
            Err(HandleError::Forged)
        );
        assert_eq!(
            HandleKey::derive(b"other", b"/srv/export").decode(&handle),
            Err(HandleError::Forged)
        );
    }

    #[test]
    fn short_long_and_foreign_versions_are_refused() {
        assert_eq!(
            key().decode(&FileHandle(vec![1; 5])),
            Err(HandleError::TooShort(5))
        );
        assert!(matches!(
            key().decode(&FileHandle(vec![1; lego_proto::MAX_HANDLE_LEN + 1])),
            Err(HandleError::TooLong { .. })
        ));
        assert_eq!(
            key().decode(&FileHandle(vec![9; 40])),
            Err(HandleError::Version(9))
        );
    }
}
