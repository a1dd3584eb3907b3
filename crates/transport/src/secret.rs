//! The cluster secret: 32 random bytes, stored as hex in a file of mode
//! 0600 that `lego up` writes into the cluster's state directory.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const SECRET_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the cluster secret {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster secret {path} is not {expected} hex digits")]
    Malformed { path: PathBuf, expected: usize },
    #[error(
        "the cluster secret {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot draw random bytes for a cluster secret: {0}")]
    Random(String),
}

/// A shared key every component and client of one cluster holds. On the
/// heap, so that moving one (a config into a client, a client into the
/// runtime) copies a pointer, never the key, onto the stack.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Box<[u8; SECRET_LEN]>);

impl Drop for ClusterSecret {
    /// A key given up is overwritten, not left in freed memory (a forked
    /// runtime replaces its parent's with its own).
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // Safety: a write to a byte we own; volatile so that it is
            // not elided as a store to memory about to be freed.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> ClusterSecret {
        ClusterSecret(Box::new(bytes))
    }

    /// A fresh secret from the kernel's random source.
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(ClusterSecret(Box::new(bytes)))
    }

    pub(crate) fn key(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The key of process `pid` of tree `tree`, derived from this secret:
    /// what that process's runtime holds and authenticates with. It proves
    /// nothing about any other process, and the secret cannot be had back
    /// from it.
    pub fn process_key(&self, tree: u64, pid: u64) -> ClusterSecret {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"lego process key v1 ");
        hasher.update(&tree.to_le_bytes());
        hasher.update(&pid.to_le_bytes());
        ClusterSecret(Box::new(*hasher.finalize().as_bytes()))
    }

    /// The key as bytes, to hand to the process it is for (a forked
    /// child's, from its memory manager).
    pub fn to_bytes(&self) -> [u8; SECRET_LEN] {
        *self.0
    }

    /// Seals `voucher` (see `lego_proto::Voucher`): what a processor does
    /// for the credentials it read of one of its processes.
    pub fn seal_voucher(&self, voucher: &mut lego_proto::Voucher) {
        voucher.seal = *self.voucher_seal(voucher).as_bytes();
    }

    /// Whether `voucher` carries this cluster's seal over exactly its
    /// fields (compared in constant time).
    pub fn voucher_is_sealed(&self, voucher: &lego_proto::Voucher) -> bool {
        self.voucher_seal(voucher) == blake3::Hash::from(voucher.seal)
    }

    fn voucher_seal(&self, voucher: &lego_proto::Voucher) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"lego credentials voucher v3 ");
        for word in [
            voucher.tree,
            voucher.pid,
            voucher.issued_ms,
            voucher.expires_ms,
        ] {
            hasher.update(&word.to_le_bytes());
        }
        match &voucher.scope {
            lego_proto::VoucherScope::Process => hasher.update(&[0]),
            lego_proto::VoucherScope::ReadFile(handle) => hasher
                .update(&[1])
                .update(&(handle.0.len() as u64).to_le_bytes())
                .update(&handle.0),
            lego_proto::VoucherScope::OpenFile {
                handle,
                read,
                write,
            } => hasher
                .update(&[2, *read as u8, *write as u8])
                .update(&(handle.0.len() as u64).to_le_bytes())
                .update(&handle.0),
        };
        for id in voucher.uids.iter().chain(&voucher.gids) {
            hasher.update(&id.to_le_bytes());
        }
        hasher.update(&(voucher.groups.len() as u64).to_le_bytes());
        for group in &voucher.groups {
            hasher.update(&group.to_le_bytes());
        }
        hasher.update(&voucher.caps.effective.to_le_bytes());
        hasher.update(&voucher.caps.permitted.to_le_bytes());
        hasher.finalize()
    }

    /// Reads a secret written by [`ClusterSecret::write_new`]. Refuses a
    /// file that others can read, as ssh does for private keys.
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        let read_err = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        Self::parse_hex(text.trim()).ok_or_else(|| SecretError::Malformed {
            path: path.to_owned(),
            expected: SECRET_LEN * 2,
        })
    }

    /// Creates `path` with mode 0600 holding this secret; fails if it exists.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        let write_err = |source| SecretError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        writeln!(file, "{}", self.to_hex()).map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn parse_hex(text: &str) -> Option<ClusterSecret> {
        let digits = text.as_bytes();
        if digits.len() != SECRET_LEN * 2 {
            return None;
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *byte = (hi * 16 + lo) as u8;
        }
        Some(ClusterSecret(Box::new(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voucher_is_sealed_only_as_issued() {
        let secret = ClusterSecret::generate().unwrap();
        let mut voucher = lego_proto::Voucher {
            tree: 7,
            uids: [1000; 4],
            gids: [100; 4],
            groups: vec![100, 27],
            pid: 9,
            issued_ms: 1_000,
            expires_ms: 121_000,
            ..Default::default()
        };
        assert!(!secret.voucher_is_sealed(&voucher));
        secret.seal_voucher(&mut voucher);
        assert!(secret.voucher_is_sealed(&voucher));
        assert!(!ClusterSecret::generate()
            .unwrap()
            .voucher_is_sealed(&voucher));
        let changed: [fn(&mut lego_proto::Voucher); 11] = [
            |v| v.tree = 8,
            |v| v.pid = 7,
            |v| v.issued_ms += 1,
            |v| v.expires_ms = 0,
            |v| v.scope = lego_proto::VoucherScope::ReadFile(lego_proto::FileHandle(vec![1])),
            |v| v.uids[3] = 0,
            |v| v.gids[0] = 0,
            |v| v.groups.push(0),
            |v| v.groups = vec![27, 100],
            |v| v.caps.effective = lego_proto::CAP_DAC_OVERRIDE,
            |v| v.caps.permitted = u64::MAX,
        ];
        for change in changed {
            let mut forged = voucher.clone();
            change(&mut forged);
            assert!(!secret.voucher_is_sealed(&forged), "{forged:?}");
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let secret = ClusterSecret::generate().unwrap();
        assert_eq!(ClusterSecret::parse_hex(&secret.to_hex()), Some(secret));
        assert_eq!(ClusterSecret::parse_hex("zz"), None);
        assert_eq!(ClusterSecret::parse_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn written_secret_is_private_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("lego-secret-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let secret = ClusterSecret::generate().unwrap();
        secret.write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ClusterSecret::load(&path).unwrap(), secret);
        assert!(
            secret.write_new(&path).is_err(),
            "an existing secret is not overwritten"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterSecret::load(&path),
            Err(SecretError::Exposed { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
