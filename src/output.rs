//! Output files written so that a failure never leaves a partial file behind and never touches
//! anything but the regular file the user named.
//!
//! [`StagedOutput`] is the building block: [`StagedOutput::create`] first checks the target (an
//! existing target must be a regular, writable file: never a directory, a symbolic link, a device
//! node, a FIFO or a socket), then creates a temporary file beside it under an unpredictable name
//! with `O_CREAT | O_EXCL`, which never opens an existing file or follows a planted symbolic link.
//! The bytes go to that file; [`StagedOutput::commit`] gives it the permission bits (`rwx` for user,
//! group and others; setuid, setgid and sticky are dropped on purpose) and, where the process may
//! (as root), the owner and group of the file it replaces, and renames it over the target (a hard
//! link to the old file keeps the old content). Dropped without a commit, the temporary file is
//! removed and the target keeps its old content.
//!
//! Every staged temporary, and any other file a caller registers with [`create_partial`], is listed
//! in a process-wide registry until it is committed or removed, so that a process stopped by a
//! signal can remove them all first ([`remove_partials`], called by the CLI's signal thread). A caller with
//! several outputs checks each target before any expensive work (a staging dropped at once proves
//! its folder writable), stages them all once everything is computed, checks them all again
//! ([`StagedOutput::check`]) and only then commits them.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result, shown_path};

/// The partial files of this process: staged temporaries and registered partial files, not yet
/// committed or removed. Creating, renaming and removing them happen under its lock, so a signal
/// handler's [`remove_partials`] never races a commit: a file is either renamed into place or
/// removed, never both, and nothing is created once the handler holds the lock.
static PARTIALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registry, whatever a panicking holder left: a list of paths cannot be left inconsistent.
fn partials() -> MutexGuard<'static, Vec<PathBuf>> {
    PARTIALS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates `path` with `options` (which must include `create_new`, so that nothing existing is
/// opened) and registers it as partial: [`remove_partials`] removes it until [`keep_partial`] or
/// [`discard_partial`] is called. The registration happens under the same lock as the creation, so
/// no signal can come between them.
pub fn create_partial(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    let mut list = partials();
    let file = options.open(path)?;
    list.push(path.to_path_buf());
    Ok(file)
}

/// Takes `path` out of the registry: the file is complete and stays.
pub fn keep_partial(path: &Path) {
    partials().retain(|p| p != path);
}

/// Removes the partial file `path` and takes it out of the registry.
pub fn discard_partial(path: &Path) {
    let mut list = partials();
    let _ = std::fs::remove_file(path);
    list.retain(|p| p != path);
}

/// Removes every registered partial file; for a process about to die of a signal. The registry's
/// lock is held until the process ends, so that no other thread creates or commits a file after
/// this cleanup (both would wait for the lock).
pub fn remove_partials() -> MutexGuard<'static, Vec<PathBuf>> {
    let mut list = partials();
    for path in list.drain(..) {
        let _ = std::fs::remove_file(path);
    }
    list
}

/// The longest file name most file systems take (NAME_MAX on Linux and the BSDs, in bytes).
const NAME_MAX: usize = 255;

/// Writes `bytes` to a temporary file beside `path` and renames it into place, so `path` either keeps
/// its old content or gets the whole new one. See [`StagedOutput`] for what `path` may be.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staged = StagedOutput::create(path)?;
    staged.write_all(bytes)?;
    staged.commit()
}

/// An output file being written: see the module documentation.
#[derive(Debug)]
pub struct StagedOutput {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl StagedOutput {
    /// Checks `target` ([`check_target`]) and creates the temporary file beside it.
    pub fn create(target: &Path) -> Result<Self> {
        check_target(target)?;
        let fail = |reason: String| Error::Output { path: target.to_path_buf(), reason };
        let name = target.file_name().ok_or_else(|| fail("the path names no file".into()))?;
        let dir = folder_of(target);
        // Random names, so another user of a shared folder cannot plant the temporary name in advance;
        // O_EXCL (`create_new`) is what makes a planted name harmless, the randomness only avoids the
        // retries.
        // The temporary is created with the replaced file's permission bits (setuid and the like
        // aside), so a private file's new content is never readable by others, even while staged.
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Ok(existing) = std::fs::metadata(target) {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            options.mode(existing.permissions().mode() & 0o777);
        }
        let name = name.to_string_lossy();
        let stem = temporary_stem(&name);
        for _ in 0..16 {
            let temp = dir.join(format!(".{stem}.{:016x}.tmp", random_u64()));
            match create_partial(&temp, &options) {
                Ok(file) => return Ok(Self { target: target.to_path_buf(), temp, file: Some(file), committed: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(fail(format!("cannot create a file in the folder {}: {e}", shown_path(&dir))));
                }
            }
        }
        Err(fail(format!("could not find a free temporary name in {}", shown_path(&dir))))
    }

    /// The file this output replaces when committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether the target may still be replaced ([`check_target`]): a caller committing several
    /// outputs checks them all before the first commit.
    pub fn check(&self) -> Result<()> {
        check_target(&self.target)
    }

    /// Appends `bytes` to the staged file.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::Output {
            path: self.target.clone(),
            reason: "the staged file was already closed".into(),
        })?;
        file.write_all(bytes).map_err(|e| Error::Output { path: self.target.clone(), reason: e.to_string() })
    }

    /// Flushes the staged file to disk and renames it over the target. The target is checked again
    /// first: something other than a regular file put there since [`StagedOutput::create`] is left
    /// alone and the commit fails.
    pub fn commit(mut self) -> Result<()> {
        let fail = |reason: String| Error::Output { path: self.target.clone(), reason };
        check_target(&self.target)?;
        if let Some(file) = self.file.take() {
            #[cfg(unix)]
            if let Ok(existing) = std::fs::metadata(&self.target) {
                keep_mode_and_owner(&file, &existing);
            }
            file.sync_all().map_err(|e| fail(e.to_string()))?;
        }
        // Under the registry's lock: a signal's cleanup either runs before (and removes the
        // temporary) or after (and finds it renamed).
        let mut list = partials();
        std::fs::rename(&self.temp, &self.target).map_err(|e| fail(e.to_string()))?;
        list.retain(|p| *p != self.temp);
        self.committed = true;
        Ok(())
    }
}

/// Gives the staged `file` what the file it replaces had: its permission bits, exactly (the temporary
/// got them at creation, less the umask; check_target refused read-only targets, so the copy is
/// writable), and its owner and group, which only root may give away (a user may still keep a group
/// they belong to). Setuid, setgid and sticky bits are not copied: new content must not inherit
/// privileges. Best effort: a file system without Unix modes or owners (FAT, some network mounts)
/// refuses the calls, and there they meant nothing to keep.
#[cfg(unix)]
fn keep_mode_and_owner(file: &File, existing: &std::fs::Metadata) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Owner first: a chown may clear mode bits, so the mode is set once, after it.
    if let Ok(staged) = file.metadata()
        && (staged.uid(), staged.gid()) != (existing.uid(), existing.gid())
    {
        // fchown on the open file, never the path: the name could be swapped for a link meanwhile.
        // Owner and group at once needs root; failing that, the group alone, which a user may give a
        // file where they belong to it.
        if std::os::unix::fs::fchown(file, Some(existing.uid()), Some(existing.gid())).is_err() {
            let _ = std::os::unix::fs::fchown(file, None, Some(existing.gid()));
        }
    }
    let _ = file.set_permissions(std::fs::Permissions::from_mode(existing.mode() & 0o777));
}

/// The part of a target's file name its temporary carries: the whole name, cut (at a character
/// boundary) so that `.{stem}.{16 hex}.tmp` stays within [`NAME_MAX`]. A legal name of up to 255
/// bytes would otherwise give a temporary name the file system refuses.
fn temporary_stem(name: &str) -> &str {
    const ADDED: usize = ".".len() + ".".len() + 16 + ".tmp".len();
    &name[..name.floor_char_boundary(NAME_MAX - ADDED)]
}

impl Drop for StagedOutput {
    fn drop(&mut self) {
        if !self.committed {
            self.file.take();
            discard_partial(&self.temp);
        }
    }
}

/// Whether `target` may be written: its folder exists, and the target is absent or a regular file
/// that is not read-only. Directories, symbolic links (even to regular files), device nodes, FIFOs
/// and sockets are refused, so writing an output never replaces one of them.
pub fn check_target(target: &Path) -> Result<()> {
    let fail = |reason: String| Err(Error::Output { path: target.to_path_buf(), reason });
    if target.file_name().is_none() {
        return fail("the path names no file".into());
    }
    // `tok/` and `tok/.` have the file name `tok`, so the checks below would pass and only the final
    // rename fail: after the run's work, and after earlier outputs were committed. A path names a
    // file only if it ends with its file name.
    let name = target.file_name().map_or(&[][..], |n| n.as_encoded_bytes());
    if !target.as_os_str().as_encoded_bytes().ends_with(name) {
        return fail("the path ends in a folder separator or `.`; name a file".into());
    }
    let dir = folder_of(target);
    let folder = match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return fail(format!("{} is not a folder", shown_path(&dir))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(format!("the folder {} does not exist", shown_path(&dir)));
        }
        Err(e) => return fail(format!("cannot read the folder {}: {e}", shown_path(&dir))),
    };
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => fail(format!("cannot inspect it: {e}")),
        Ok(m) => {
            let kind = m.file_type();
            if kind.is_symlink() {
                fail("it is a symbolic link; scalewise only replaces regular files (name the file it points to)".into())
            } else if kind.is_dir() {
                fail("it is a directory, not a file".into())
            } else if !kind.is_file() {
                fail(
                    "it is not a regular file (a device, FIFO or socket); scalewise only replaces regular files".into(),
                )
            } else if m.permissions().readonly() {
                fail("it is read-only; scalewise does not replace read-only files".into())
            } else if sticky_and_not_ours(&folder, &m) {
                fail(format!(
                    "it belongs to another user, and its folder {} is sticky (like /tmp): only its owner may \
                     replace it",
                    shown_path(&dir)
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Whether the file `file` in `folder` may not be replaced by this process for the sticky bit
/// alone: in a sticky folder (mode 1777, like /tmp) only the file's owner, the folder's owner and
/// root may rename over a file, whatever the file's own mode says. The rename would fail only at
/// the very end, after the run and after the run's other outputs were replaced.
#[cfg(unix)]
fn sticky_and_not_ours(folder: &std::fs::Metadata, file: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    folder.mode() & 0o1000 != 0 && me != 0 && file.uid() != me && folder.uid() != me
}

#[cfg(not(unix))]
fn sticky_and_not_ours(_folder: &std::fs::Metadata, _file: &std::fs::Metadata) -> bool {
    false
}

/// The folder `path` lies in (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 64 unpredictable bits: std's per-process random hasher keys (seeded from the OS), mixed with a
/// counter, the process id and the time.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    hasher.finish()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scalewise-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn staged_files_have_fresh_names_and_vanish_unless_committed() {
        let dir = scratch("staged");
        let target = dir.join("out.png");
        std::fs::write(&target, b"old").unwrap();
        let mut a = StagedOutput::create(&target).unwrap();
        let b = StagedOutput::create(&target).unwrap();
        assert_ne!(a.temp, b.temp, "two stagings of one target share a temporary name");
        assert_eq!(entries(&dir).len(), 3);
        a.write_all(b"new").unwrap();
        drop(b);
        drop(a);
        assert_eq!(entries(&dir), ["out.png"], "dropped stagings leave nothing behind");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        let mut c = StagedOutput::create(&target).unwrap();
        c.write_all(b"new").unwrap();
        c.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(entries(&dir), ["out.png"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_ending_in_a_separator_is_refused_before_anything_is_written() {
        let dir = scratch("separator");
        for name in ["tokens/", "tokens//", "tokens/.", "tokens/./"] {
            let target = PathBuf::from(format!("{}/{name}", dir.display()));
            let err = StagedOutput::create(&target).unwrap_err().to_string();
            assert!(err.contains("name a file"), "{name}: {err}");
            assert!(check_target(&target).is_err());
        }
        assert!(entries(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replaced_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let (private, fresh) = (dir.join("private.png"), dir.join("fresh.png"));
        std::fs::write(&private, b"old").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut staged = StagedOutput::create(&private).unwrap();
        let staged_mode = std::fs::metadata(&staged.temp).unwrap().permissions().mode() & 0o777;
        assert_eq!(staged_mode & 0o077, 0, "the staged copy of a private file is readable by others: {staged_mode:o}");
        staged.write_all(b"new").unwrap();
        staged.commit().unwrap();
        write_atomic(&fresh, b"new").unwrap();
        assert_eq!(std::fs::read(&private).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        // A new file gets the defaults (the umask's), not some other file's mode.
        let default = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(default & 0o600, 0o600, "{default:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_longest_legal_names_can_be_written() {
        let dir = scratch("long");
        // Up to 255 bytes: ASCII, and two-byte characters (the cut of the last falls inside one).
        for name in ["a".repeat(255), format!("{}.png", "é".repeat(125)), "é".repeat(127)] {
            assert!(name.len() <= 255, "{}", name.len());
            write_atomic(&dir.join(&name), b"new").unwrap_or_else(|e| panic!("{} bytes: {e}", name.len()));
            write_atomic(&dir.join(&name), b"newer").unwrap();
            assert_eq!(std::fs::read(dir.join(&name)).unwrap(), b"newer");
        }
        assert_eq!(entries(&dir).len(), 3, "{:?}", entries(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replaced_file_keeps_its_owner_where_the_process_may_give_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch("owner");
        let theirs = dir.join("theirs.png");
        std::fs::write(&theirs, b"old").unwrap();
        // Only root may give a file to another user.
        if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_err() {
            let _ = writeln!(std::io::stderr(), "SKIP a_replaced_file_keeps_its_owner: not root");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        write_atomic(&theirs, b"new").unwrap();
        let m = std::fs::metadata(&theirs).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "the replaced file changed owner");
        assert_eq!(std::fs::read(&theirs).unwrap(), b"new");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_link_planted_after_staging_is_not_followed() {
        let dir = scratch("planted");
        let target = dir.join("out.png");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let mut staged = StagedOutput::create(&target).unwrap();
        staged.write_all(b"new").unwrap();
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let err = staged.commit().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(entries(&dir), ["out.png", "victim"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
