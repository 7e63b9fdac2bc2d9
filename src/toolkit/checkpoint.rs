//! The resume file of a run that changes things: a header naming the run, then one JSON line
//! per entity handled, appended as soon as the entity is done. A run that stops for any reason
//! (Ctrl-C, SIGKILL, a lost connection) leaves it behind; the next run of the same command
//! skips every entity it lists and carries their outcomes into its summary and report, so
//! together the two runs did each entity exactly once. A run that reaches the end deletes it.
//!
//! A line is appended with one `write` and no `fsync`: it survives the process being killed,
//! not the machine losing power (then the last entities are done again, which is harmless:
//! every command finds nothing to do on an entity it already did). A torn last line is cut
//! off when the file is opened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::report::EntityReport;

/// What a checkpoint belongs to; a run with another header refuses to use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) checkpoint: u32,
    pub(crate) command: String,
    pub(crate) kinds: Vec<String>,
    pub(crate) upstream: String,
}

pub(crate) struct Checkpoint {
    path: PathBuf,
    file: File,
    /// Entities already handled, in the order they were.
    pub(crate) done: Vec<EntityReport>,
}

impl Checkpoint {
    /// Opens the checkpoint at `path`, resuming it when it exists, else starting one.
    pub(crate) fn open(path: &Path, header: &Header) -> Result<Checkpoint, String> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
        }
        let done = match std::fs::read(path) {
            Ok(bytes) => Self::resume(path, &bytes, header)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut line = serde_json::to_vec(header).map_err(|e| e.to_string())?;
                line.push(b'\n');
                std::fs::write(path, line)
                    .map_err(|e| format!("{shown}: cannot write the checkpoint: {e}"))?;
                Vec::new()
            }
            Err(e) => return Err(format!("{shown}: cannot read the checkpoint: {e}")),
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("{shown}: cannot open the checkpoint: {e}"))?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// Reads an existing checkpoint: its header must be `header`; a torn last line is cut off.
    fn resume(path: &Path, bytes: &[u8], header: &Header) -> Result<Vec<EntityReport>, String> {
        let shown = path.display();
        let whole = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => &bytes[..=i],
            None => &bytes[..0],
        };
        if whole.len() < bytes.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| format!("{shown}: cannot repair the checkpoint: {e}"))?;
            f.set_len(whole.len() as u64)
                .map_err(|e| format!("{shown}: cannot repair the checkpoint: {e}"))?;
        }
        let mut lines = whole.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let found: Option<Header> = lines.next().and_then(|l| serde_json::from_slice(l).ok());
        if found.as_ref() != Some(header) {
            let what = found
                .map(|h| {
                    format!(
                        "`{}` over kinds [{}] of {}",
                        h.command,
                        h.kinds.join(", "),
                        h.upstream
                    )
                })
                .unwrap_or_else(|| "an unreadable run".into());
            return Err(format!(
                "{shown}: a checkpoint of another run is here ({what}); run that command again to finish it, or delete the file to start over"
            ));
        }
        let mut done = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (n, l) in lines.enumerate() {
            let r: EntityReport = serde_json::from_slice(l)
                .map_err(|e| format!("{shown}: line {} is not an entity outcome: {e}", n + 2))?;
            match seen.get(&r.key()) {
                Some(&i) => done[i] = r,
                None => {
                    seen.insert(r.key(), done.len());
                    done.push(r);
                }
            }
        }
        Ok(done)
    }

    /// Appends one entity's outcome.
    pub(crate) fn record(&mut self, r: &EntityReport) -> Result<(), String> {
        let mut line = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| format!("{}: cannot write the checkpoint: {e}", self.path.display()))
    }

    /// The run reached the end: nothing is left to resume.
    pub(crate) fn finish(self) -> Result<(), String> {
        drop(self.file);
        std::fs::remove_file(&self.path)
            .map_err(|e| format!("{}: cannot remove the checkpoint: {e}", self.path.display()))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolkit::report::Outcome;

    fn header(command: &str) -> Header {
        Header {
            checkpoint: 1,
            command: command.into(),
            kinds: vec!["databaseService".into()],
            upstream: "http://om".into(),
        }
    }

    fn entity(id: &str) -> EntityReport {
        EntityReport {
            kind: "databaseService".into(),
            id: id.into(),
            name: format!("svc-{id}"),
            outcome: Outcome::Changed,
            fields: vec![],
            error: None,
        }
    }

    #[test]
    fn a_reopened_checkpoint_lists_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/migrate.checkpoint");
        let mut c = Checkpoint::open(&path, &header("migrate")).unwrap();
        assert!(c.done.is_empty());
        c.record(&entity("1")).unwrap();
        c.record(&entity("2")).unwrap();
        drop(c);
        let c = Checkpoint::open(&path, &header("migrate")).unwrap();
        assert_eq!(c.done, vec![entity("1"), entity("2")]);
        c.finish().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_later_lines_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = Checkpoint::open(&path, &header("migrate")).unwrap();
        c.record(&entity("1")).unwrap();
        drop(c);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"databaseSer").unwrap();
        drop(f);
        let mut c = Checkpoint::open(&path, &header("migrate")).unwrap();
        assert_eq!(c.done, vec![entity("1")]);
        c.record(&entity("2")).unwrap();
        drop(c);
        let c = Checkpoint::open(&path, &header("migrate")).unwrap();
        assert_eq!(c.done, vec![entity("1"), entity("2")]);
    }

    #[test]
    fn a_checkpoint_of_another_run_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = Checkpoint::open(&path, &header("migrate")).unwrap();
        c.record(&entity("1")).unwrap();
        drop(c);
        let err = Checkpoint::open(&path, &header("rotate-fernet"))
            .err()
            .expect("refused");
        assert!(
            err.contains("`migrate`") && err.contains("delete the file"),
            "{err}"
        );
        assert!(path.exists());
    }
}
