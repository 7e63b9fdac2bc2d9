//! One driver for the commands that change things (`migrate`, `migrate --reverse`,
//! `rotate-fernet`): walk the chosen kinds, skip what the checkpoint says is done, pace, hand
//! each entity to the job, print its lines, record its outcome, and write the report.
//!
//! A run ends in one of three ways: complete (the checkpoint is deleted), stopped because
//! OpenMetadata or the store cannot be reached (the entity in hand is not recorded, so the next
//! run starts with it), or interrupted by Ctrl-C (the entity in hand is finished first; a second
//! Ctrl-C exits at once, like SIGKILL, which the checkpoint also survives).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::checkpoint::{Checkpoint, Header};
use super::cursor::Cursor;
use super::progress::{Pacer, Progress};
use super::report::{write_report, EntityReport, Outcome, ReportFile, Tally};
use super::{label, EntityError, Toolkit};
use crate::rules::Rule;

/// One entity's work in a command that changes things.
pub(crate) trait Job {
    /// Names the checkpoint, the report and the progress display.
    fn command(&self) -> &'static str;
    /// Handles one entity (as listed); in a dry run, writes nothing anywhere.
    async fn entity(
        &self,
        rule: &Rule,
        entity: Value,
        dry_run: bool,
    ) -> Result<EntityReport, EntityError>;
    /// The output lines for one handled entity (never a value); failures are added by the
    /// runner.
    fn lines(&self, r: &EntityReport, dry_run: bool) -> Vec<String>;
}

/// The flags every such command takes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// `--kind`: rule kinds to cover (empty: the command's default).
    pub kinds: Vec<String>,
    /// `--report FILE`.
    pub report: Option<PathBuf>,
    /// The resume file (`None`, or a dry run: none is kept).
    pub checkpoint: Option<PathBuf>,
    /// `--rate N`: at most N entities a second.
    pub rate: Option<f64>,
}

/// How a run went.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) reports: Vec<EntityReport>,
    pub(crate) tally: Tally,
    /// Why the run stopped before the end (OpenMetadata or the store unreachable).
    pub(crate) stopped: Option<String>,
    /// Ctrl-C ended the run between two entities.
    pub(crate) interrupted: bool,
}

impl RunResult {
    pub(crate) fn complete(&self) -> bool {
        self.stopped.is_none() && !self.interrupted
    }
}

/// Sets a flag on the first Ctrl-C; exits at once on the second.
fn watch_ctrl_c() -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let task = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            set.store(true, Ordering::SeqCst);
            eprintln!("interrupted: finishing the entity in hand (Ctrl-C again to stop at once)");
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    (flag, task)
}

fn id_of(entity: &Value) -> String {
    super::text(entity, "id").to_string()
}

/// Runs `job` over every entity of `rules`.
pub(crate) async fn run<J: Job>(
    tk: &Toolkit<'_>,
    job: &J,
    rules: Vec<&Rule>,
    opts: &RunOptions,
    out: &mut dyn FnMut(String),
) -> Result<RunResult, String> {
    if let Some(dir) = opts.report.as_deref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(format!("--report: {} is not a directory", dir.display()));
        }
    }
    let mut checkpoint = open_checkpoint(tk, job.command(), &rules, opts)?;
    let reports: Vec<EntityReport> = checkpoint
        .as_mut()
        .map(|c| std::mem::take(&mut c.done))
        .unwrap_or_default();
    if let Some(c) = checkpoint.as_ref().filter(|_| !reports.is_empty()) {
        out(format!(
            "resuming from {}: {} entities already done",
            c.path().display(),
            reports.len()
        ));
    }
    let (interrupt, watcher) = watch_ctrl_c();
    let mut cursor = Cursor::new(tk, rules);
    let mut progress = Progress::new(job.command(), cursor.total().await, reports.len() as u64);
    let mut walk = Walk {
        job,
        opts,
        checkpoint,
        done: reports.iter().map(EntityReport::key).collect(),
        reports,
        stopped: None,
    };
    let interrupted = walk.walk(&mut cursor, &mut progress, &interrupt, out).await;
    watcher.abort();
    progress.finish();
    walk.finish(interrupted)
}

/// The checkpoint of a run that changes things (none for a dry run).
fn open_checkpoint(
    tk: &Toolkit<'_>,
    command: &str,
    rules: &[&Rule],
    opts: &RunOptions,
) -> Result<Option<Checkpoint>, String> {
    let Some(path) = opts.checkpoint.as_deref().filter(|_| !opts.dry_run) else {
        return Ok(None);
    };
    let header = Header {
        checkpoint: 1,
        command: command.to_string(),
        kinds: rules.iter().map(|r| r.kind.clone()).collect(),
        upstream: tk
            .upstream
            .uri_for("/")
            .map(|u| u.to_string())
            .unwrap_or_default(),
    };
    Checkpoint::open(path, &header).map(Some)
}

/// A run in progress.
struct Walk<'j, J> {
    job: &'j J,
    opts: &'j RunOptions,
    checkpoint: Option<Checkpoint>,
    /// Outcomes so far, a resumed run's first.
    reports: Vec<EntityReport>,
    done: HashSet<(String, String)>,
    stopped: Option<String>,
}

impl<J: Job> Walk<'_, J> {
    /// Handles entities until the walk ends or stops; true when Ctrl-C ended it.
    async fn walk(
        &mut self,
        cursor: &mut Cursor<'_, '_>,
        progress: &mut Progress,
        interrupt: &AtomicBool,
        out: &mut dyn FnMut(String),
    ) -> bool {
        let mut pacer = Pacer::new(self.opts.rate);
        loop {
            if interrupt.load(Ordering::SeqCst) {
                return true;
            }
            let (rule, entity) = match cursor.next().await {
                Ok(Some(next)) => next,
                Ok(None) => return false,
                Err(e) => {
                    self.stopped = Some(e.message().to_string());
                    return false;
                }
            };
            let key = (rule.kind.clone(), id_of(&entity));
            if self.done.contains(&key) {
                continue;
            }
            pacer.wait().await;
            if !self.one(rule, entity, key, progress, out).await {
                return false;
            }
        }
    }

    /// One entity: handled, printed, recorded. False when the run must stop.
    async fn one(
        &mut self,
        rule: &Rule,
        entity: Value,
        key: (String, String),
        progress: &mut Progress,
        out: &mut dyn FnMut(String),
    ) -> bool {
        let report = match self
            .job
            .entity(rule, entity.clone(), self.opts.dry_run)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let mut r = EntityReport::of(rule, &entity);
                r.outcome = Outcome::Failed;
                r.error = Some(e.message().to_string());
                if let EntityError::Stop(why) = e {
                    progress.println(out, failed_line(&r));
                    self.stopped = Some(why);
                    return false;
                }
                r
            }
        };
        for line in self.job.lines(&report, self.opts.dry_run) {
            progress.println(out, line);
        }
        if report.error.is_some() {
            progress.println(out, failed_line(&report));
        }
        if let Some(c) = self.checkpoint.as_mut() {
            if let Err(e) = c.record(&report) {
                self.stopped = Some(e);
                return false;
            }
        }
        self.done.insert(key);
        self.reports.push(report);
        progress.inc();
        true
    }

    /// Deletes the checkpoint of a complete run and writes the report.
    fn finish(self, interrupted: bool) -> Result<RunResult, String> {
        let result = RunResult {
            tally: Tally::of(&self.reports),
            reports: self.reports,
            stopped: self.stopped,
            interrupted,
        };
        if result.complete() {
            if let Some(c) = self.checkpoint {
                c.finish()?;
            }
        }
        if let Some(path) = &self.opts.report {
            write_report(
                path,
                &ReportFile {
                    command: self.job.command(),
                    dry_run: self.opts.dry_run,
                    complete: result.complete(),
                    stopped: result.stopped.as_deref(),
                    summary: &result.tally,
                    entities: &result.reports,
                },
            )?;
        }
        Ok(result)
    }
}

fn failed_line(r: &EntityReport) -> String {
    format!(
        "failed {}: {}",
        label(&r.kind, &r.name),
        r.error.as_deref().unwrap_or("unknown")
    )
}
