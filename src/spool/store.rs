//! The spool's folders and the file operations on them, shared by the running
//! gateway and the `hookgate spool` commands.
//!
//! ```text
//! <dir>/queue/<id>.msg    waiting for delivery (complete records only)
//! <dir>/queue/<id>.state  attempts and last error (advisory, rewritten on failure)
//! <dir>/dead/<id>.msg     dead letters, with their .state
//! <dir>/tmp/              records being written; emptied at start
//! <dir>/corrupt/          damaged records set aside at start or delivery
//! <dir>/lock              held by the running gateway
//! ```
//!
//! A record reaches `queue/` only by an atomic link after it was written and
//! fsync'd, and the folder is fsync'd after the link: once `accept` returns, a crash or
//! power loss cannot lose it.

use super::record::Id;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The spool's folders.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The spool folder.
    pub root: PathBuf,
    /// Waiting messages.
    pub queue: PathBuf,
    /// Dead letters.
    pub dead: PathBuf,
    /// Writes in progress.
    pub tmp: PathBuf,
    /// Damaged records.
    pub corrupt: PathBuf,
}

/// Attempts and last error of a message, kept beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The route (so dead letters can be counted without reading them).
    pub route: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last failure: a status or an error kind, never a body.
    pub last_error: Option<String>,
    /// When it was last tried (Unix ms).
    pub last_attempt_ms: Option<u64>,
    /// Failures of this message alone (counted against `max_attempts`).
    #[serde(default)]
    pub strikes: u32,
    /// Queued again by an operator at this time (Unix ms): its age for
    /// `max_age_s` counts from here.
    #[serde(default)]
    pub since_ms: Option<u64>,
}

impl Layout {
    /// The folders of the spool at `root` (nothing is created).
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            queue: root.join("queue"),
            dead: root.join("dead"),
            tmp: root.join("tmp"),
            corrupt: root.join("corrupt"),
        }
    }

    /// Create the folders (owner-only) if missing.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [
            &self.root,
            &self.queue,
            &self.dead,
            &self.tmp,
            &self.corrupt,
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        Ok(())
    }

    /// The record file of `id` in `folder`.
    pub fn msg(folder: &Path, id: &Id) -> PathBuf {
        folder.join(format!("{id}.msg"))
    }

    /// The state file of `id` in `folder`.
    pub fn state(folder: &Path, id: &Id) -> PathBuf {
        folder.join(format!("{id}.state"))
    }

    /// Write a record durably into `queue/`: temp file, fsync, link into the
    /// queue, fsync of the folder. On error nothing is left in `queue/`.
    pub fn write_durable(&self, id: &Id, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = Layout::msg(&self.tmp, id);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            // A link, not a rename: it never replaces an existing record.
            let dest = Layout::msg(&self.queue, id);
            std::fs::hard_link(&tmp, &dest)?;
            sync_dir(&self.queue).inspect_err(|_| {
                // Not durable, so not accepted: take it back.
                let _ = std::fs::remove_file(&dest);
            })
        })();
        // Left behind after a crash, the temp file is cleared at the next start.
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Remove every leftover of an interrupted write.
    pub fn clear_tmp(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.tmp)? {
            let e = e?;
            if std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The ids of the records in `folder`, sorted, with their sizes.
    pub fn list(folder: &Path) -> std::io::Result<Vec<(Id, u64)>> {
        let mut out = Vec::new();
        for id in Layout::ids(folder)?.0 {
            // A file removed meanwhile is simply not listed.
            if let Ok(m) = std::fs::metadata(Layout::msg(folder, &id)) {
                out.push((id, m.len()));
            }
        }
        Ok(out)
    }

    /// The ids of the records and of the state files in `folder`, sorted; names
    /// only (no `stat` per file, so a large backlog stays cheap to list).
    pub fn ids(folder: &Path) -> std::io::Result<(Vec<Id>, Vec<Id>)> {
        let (mut msgs, mut states) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir(folder)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".msg").and_then(Id::parse) {
                msgs.push(id);
            } else if let Some(id) = name.strip_suffix(".state").and_then(Id::parse) {
                states.push(id);
            }
        }
        msgs.sort();
        states.sort();
        Ok((msgs, states))
    }

    /// Remove state files whose record is gone (dropped by an operator while
    /// it was being tried), once they are older than `min_age`.
    pub fn remove_orphan_states(
        folder: &Path,
        states: &[Id],
        msgs: &std::collections::HashSet<&Id>,
        min_age: std::time::Duration,
    ) {
        for id in states.iter().filter(|id| !msgs.contains(id)) {
            let p = Layout::state(folder, id);
            let old = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Read a state file; a missing or unreadable one is `None`.
    pub fn read_state(folder: &Path, id: &Id) -> Option<State> {
        let b = std::fs::read(Layout::state(folder, id)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Replace a state file (write then rename; not fsync'd: losing it in a
    /// crash only resets the attempt count).
    pub fn write_state(&self, folder: &Path, id: &Id, st: &State) -> std::io::Result<()> {
        let tmp = self.tmp.join(format!("{id}.state"));
        std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default())?;
        std::fs::rename(&tmp, Layout::state(folder, id))
    }

    /// Move a message (and its state) from `queue/` to `dead/`, recording `st`.
    pub fn bury(&self, id: &Id, st: &State) -> std::io::Result<()> {
        // The move first: it needs no space, so a full disk cannot leave the
        // message in `queue/` (where a rescan would deliver it again) while
        // the index counts it dead. Its state is only information.
        std::fs::rename(Layout::msg(&self.queue, id), Layout::msg(&self.dead, id))?;
        let _ = std::fs::remove_file(Layout::state(&self.queue, id));
        let state = self.write_state(&self.dead, id, st);
        sync_dir(&self.dead)?;
        state
    }

    /// Set a damaged record aside in `corrupt/`.
    pub fn set_aside(&self, folder: &Path, id: &Id) -> std::io::Result<()> {
        std::fs::rename(Layout::msg(folder, id), Layout::msg(&self.corrupt, id))?;
        let _ = std::fs::remove_file(Layout::state(folder, id));
        Ok(())
    }

    /// Delete a message and its state from `folder`. Missing files are fine.
    pub fn remove(folder: &Path, id: &Id) -> std::io::Result<()> {
        Layout::remove_msg(folder, id, true)
    }

    /// Delete a message, and its state file when it may have one.
    pub fn remove_msg(folder: &Path, id: &Id, with_state: bool) -> std::io::Result<()> {
        if with_state {
            let _ = std::fs::remove_file(Layout::state(folder, id));
        }
        match std::fs::remove_file(Layout::msg(folder, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// fsync a folder, making renames and new names in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether an I/O error means the disk (or a quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::IdGen;

    #[test]
    fn durable_write_lands_in_queue_only() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path());
        l.create().unwrap();
        let id = IdGen::default().next(1);
        l.write_durable(&id, b"abc").unwrap();
        assert_eq!(Layout::list(&l.queue).unwrap(), vec![(id.clone(), 3)]);
        assert!(std::fs::read_dir(&l.tmp).unwrap().next().is_none());
        // The same id twice is refused (create_new) and leaves nothing behind.
        assert!(l.write_durable(&id, b"xyz").is_err());
        assert!(std::fs::read_dir(&l.tmp).unwrap().next().is_none());
        let st = State {
            route: "r".into(),
            attempts: 3,
            last_error: Some("HTTP 500".into()),
            last_attempt_ms: Some(9),
            ..State::default()
        };
        l.bury(&id, &st).unwrap();
        assert!(Layout::list(&l.queue).unwrap().is_empty());
        assert_eq!(Layout::read_state(&l.dead, &id), Some(st));
        Layout::remove(&l.dead, &id).unwrap();
        Layout::remove(&l.dead, &id).unwrap();
        assert!(Layout::list(&l.dead).unwrap().is_empty());
    }
}
