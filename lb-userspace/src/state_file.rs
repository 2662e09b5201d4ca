//! Durable, atomic file writes for lbd's state (`admin.json`, the
//! primary's configuration kept by the secondary, the file `lbctl apply`
//! saves, the VIP record): a reader, or lbd after a power loss, sees the old
//! contents or the new ones, never a mix.
//!
//! The new contents go to a temporary file beside the target (same file
//! system, so the rename is atomic), which is fsynced, given the original's
//! mode, renamed over the target, and then the directory is fsynced so the
//! rename itself is durable (rename(2) and fsync(2); ext4 and xfs document
//! that a rename is only durable once its directory is synced).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Mode of a new file that has no original to copy from: owner only, since
/// state files may name servers and hold configuration.
const NEW_FILE_MODE: u32 = 0o600;

/// Replaces `path` with `contents` atomically and durably, keeping the
/// original file's mode (0600 for a new file).
///
/// # Errors
/// When the directory cannot be written or synced; `path` is then unchanged
/// and the temporary file removed.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.lbd-tmp"));
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => NEW_FILE_MODE,
        Err(e) => return Err(e),
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` at creation is masked by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lbd-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        d
    }

    #[test]
    fn replaces_contents_and_keeps_the_mode() {
        let d = dir("mode");
        let path = d.join("lbd.yaml");
        fs::write(&path, "old").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&path, b"new").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read_to_string(&path).unwrap_or_default(), "new");
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o640));
        let leftovers: Vec<_> = fs::read_dir(&d)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_new_file_is_private() {
        let d = dir("new");
        let path = d.join("admin.json");
        write_atomically(&path, b"{}").unwrap_or_else(|e| panic!("{e}"));
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_leaves_the_original() {
        let d = dir("fail");
        let path = d.join("missing-dir").join("x");
        assert!(write_atomically(&path, b"x").is_err());
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&d);
    }
}
