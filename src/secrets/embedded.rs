//! The default store: a local redb database (ACID, crash-safe), every value Fernet-encrypted
//! at rest, the file created with mode 0600. Without a configured key, a key is generated
//! on first start and kept beside the data (`<path>.key`, mode 0600).
//!
//! Writes go through one committer thread (group commit): requests encrypt their values,
//! queue them and wait; the committer drains everything queued into one write transaction,
//! commits it durably (one fsync for the lot) and only then acknowledges each request. A
//! failed commit writes nothing of the batch and fails every request in it with the error.
//! Each request's writes are all in one transaction with the others, so a request's
//! writes are still all-or-nothing, and they are applied in the order they were queued.
//!
//! Owner markers (read on every write of an entity with secrets) are kept decrypted in memory
//! once read: the file is this process's alone (redb locks it), and the committer drops a
//! marker from memory once a batch that writes it has committed, before any of the batch's
//! requests is acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};

use super::fernet::FernetKeys;
use super::{SecretStore, StoreError, StoreFuture};

const SECRETS: TableDefinition<&str, &str> = TableDefinition::new("secrets");

pub struct EmbeddedStore {
    db: Arc<Database>,
    keys: FernetKeys,
    committer: Option<Committer>,
    markers: Arc<Mutex<Markers>>,
}

/// Owner markers as committed, by id (`None`: absent).
#[derive(Default)]
struct Markers {
    /// Bumped whenever the committer drops markers: a read that started before keeps its
    /// value to itself.
    generation: u64,
    values: HashMap<String, Option<String>>,
}

/// Markers kept in memory at most (then forgotten all at once).
const MAX_MARKERS: usize = 10_000;

fn is_marker(id: &str) -> bool {
    id.ends_with(super::ownership::MARKER)
}

impl Markers {
    /// Forgets every marker `batch` writes, whether or not its commit succeeded.
    fn forget(markers: &Mutex<Markers>, batch: &[Job]) {
        let mut m = lock(markers);
        m.generation += 1;
        for job in batch {
            match &job.write {
                Write::Put(items) => {
                    for (id, _) in items {
                        m.values.remove(id);
                    }
                }
                Write::Delete(id) | Write::Create(id, _) => {
                    m.values.remove(id);
                }
                #[cfg(test)]
                Write::Fail => {}
            }
        }
    }
}

fn lock(m: &Mutex<Markers>) -> std::sync::MutexGuard<'_, Markers> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Transactions queued per commit at most (bounds one commit's latency).
const MAX_BATCH: usize = 512;

/// One request's writes: all of them or none.
enum Write {
    /// (id, encrypted value) pairs.
    Put(Vec<(String, String)>),
    Delete(String),
    /// (id, encrypted value), written only if the id is absent when the batch applies it.
    Create(String, String),
    /// Makes its whole batch fail (tests of the failure path).
    #[cfg(test)]
    Fail,
}

struct Job {
    write: Write,
    /// `Ok(false)`: a create that found its id (nothing written).
    done: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

struct Committer {
    queue: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
    /// Commits made (successful or not), to see requests share them.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Committer {
    fn start(db: Arc<Database>, markers: Arc<Mutex<Markers>>) -> std::io::Result<Committer> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new()
            .name("omsp-embedded-commit".into())
            .spawn(move || {
                while let Ok(first) = jobs.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    let result = commit(&db, &batch);
                    Markers::forget(&markers, &batch);
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match result {
                        Ok(written) => {
                            for (job, w) in batch.into_iter().zip(written) {
                                let _ = job.done.send(Ok(w));
                            }
                        }
                        Err(e) => {
                            for job in batch {
                                let _ = job.done.send(Err(e.clone()));
                            }
                        }
                    }
                }
            })?;
        Ok(Committer {
            queue,
            thread,
            commits,
        })
    }
}

/// Applies a batch in one write transaction and commits it durably. Per job: whether it
/// wrote (a create finds its id written by an earlier job of the batch too).
fn commit(db: &Database, batch: &[Job]) -> Result<Vec<bool>, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut written = Vec::with_capacity(batch.len());
    {
        let mut table = txn.open_table(SECRETS).map_err(unavailable)?;
        for job in batch {
            match &job.write {
                Write::Put(items) => {
                    for (id, enc) in items {
                        table
                            .insert(id.as_str(), enc.as_str())
                            .map_err(unavailable)?;
                    }
                }
                Write::Delete(id) => {
                    table.remove(id.as_str()).map_err(unavailable)?;
                }
                Write::Create(id, enc) => {
                    if table.get(id.as_str()).map_err(unavailable)?.is_some() {
                        written.push(false);
                        continue;
                    }
                    table
                        .insert(id.as_str(), enc.as_str())
                        .map_err(unavailable)?;
                }
                #[cfg(test)]
                Write::Fail => return Err(unavailable("injected failure")),
            }
            written.push(true);
        }
    }
    // Dropping an uncommitted transaction (on any error above) aborts it: nothing written.
    txn.commit().map_err(unavailable)?;
    Ok(written)
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Close the queue and wait for the committer, so the file is closed when this returns.
        if let Some(c) = self.committer.take() {
            drop(c.queue);
            let _ = c.thread.join();
        }
    }
}

fn restrict(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

/// The embedded store is one process's: redb takes an exclusive lock on the file, and a
/// second process (another replica, or `migrate` beside a running gateway) is told so plainly.
fn open_error(path: &Path, e: redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{}: the embedded store is already open in another process; it serves one gateway \
             process only (stop the other one, or, to run several replicas, use a shared store: \
             managed-aws, managed-aws-ssm or managed-openbao)",
            path.display()
        ),
        e => format!("{}: cannot open the embedded store: {e}", path.display()),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store. `keys` empty: use or create `<path>.key`.
    pub fn open(path: &Path, keys: &FernetKeys) -> Result<EmbeddedStore, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
        }
        let keys = if keys.is_empty() {
            let key_path = PathBuf::from(format!("{}.key", path.display()));
            let key = match std::fs::read_to_string(&key_path) {
                Ok(k) => k.trim().to_string(),
                Err(_) => {
                    let k = FernetKeys::generate_key();
                    std::fs::write(&key_path, format!("{k}\n")).map_err(|e| {
                        format!(
                            "{}: cannot write the generated key: {e}",
                            key_path.display()
                        )
                    })?;
                    restrict(&key_path);
                    tracing::warn!(key_file = %key_path.display(), "no FERNET_KEY configured: generated one for the embedded store");
                    k
                }
            };
            FernetKeys::new(&[key]).map_err(|e| format!("{}: {e}", key_path.display()))?
        } else {
            keys.clone()
        };
        let existed = path.exists();
        let db = Database::create(path).map_err(|e| open_error(path, e))?;
        if !existed {
            restrict(path);
        }
        let txn = db
            .begin_write()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        txn.open_table(SECRETS)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        txn.commit()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let db = Arc::new(db);
        let markers = Arc::new(Mutex::new(Markers::default()));
        let committer = Committer::start(db.clone(), markers.clone())
            .map_err(|e| format!("{}: cannot start the commit thread: {e}", path.display()))?;
        Ok(EmbeddedStore {
            db,
            keys,
            committer: Some(committer),
            markers,
        })
    }

    fn get_sync(&self, id: &str) -> Result<Option<String>, StoreError> {
        if !is_marker(id) {
            return self.read(id);
        }
        let generation = {
            let m = lock(&self.markers);
            if let Some(v) = m.values.get(id) {
                return Ok(v.clone());
            }
            m.generation
        };
        let v = self.read(id)?;
        let mut m = lock(&self.markers);
        if m.generation == generation {
            if m.values.len() >= MAX_MARKERS {
                m.values.clear();
            }
            m.values.insert(id.to_string(), v.clone());
        }
        Ok(v)
    }

    /// The value of `id` in the file.
    fn read(&self, id: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SECRETS).map_err(unavailable)?;
        let Some(v) = table.get(id).map_err(unavailable)? else {
            return Ok(None);
        };
        self.keys.decrypt(v.value()).map(Some).map_err(|_| {
            StoreError::Invalid(
                "embedded store: a value cannot be decrypted with the configured key".into(),
            )
        })
    }

    /// Queues one request's writes and waits until they are durably committed.
    async fn write(&self, write: Write) -> Result<bool, StoreError> {
        let committer = self
            .committer
            .as_ref()
            .ok_or_else(|| unavailable("closed"))?;
        let (done, acked) = tokio::sync::oneshot::channel();
        committer
            .queue
            .send(Job { write, done })
            .map_err(|_| unavailable("the commit thread has stopped"))?;
        acked
            .await
            .map_err(|_| unavailable("the commit thread has stopped"))?
    }

    /// Encrypts every item (on the caller's thread), then writes them in one transaction.
    async fn put_all(&self, items: &[(&str, &str)]) -> Result<(), StoreError> {
        let mut enc = Vec::with_capacity(items.len());
        for (id, value) in items {
            enc.push((
                id.to_string(),
                self.keys.encrypt(value).map_err(unavailable)?,
            ));
        }
        self.write(Write::Put(enc)).await.map(drop)
    }

    /// Whether `id` is held, by a read transaction (never waits for the writer).
    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SECRETS).map_err(unavailable)?;
        Ok(table.get(id).map_err(unavailable)?.is_some())
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SECRETS).map_err(unavailable)?;
        let mut out = Vec::new();
        for item in table.range(prefix..).map_err(unavailable)? {
            let (k, _) = item.map_err(unavailable)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(k.value().to_string());
        }
        Ok(out)
    }
}

/// What re-encrypting the store at rest found (`rotate-fernet`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Values held, owner markers included.
    pub values: usize,
    /// Values that were (in a dry run: would be) re-encrypted with the first key.
    pub reencrypted: usize,
    /// Values no configured key opens, left as they were.
    pub unreadable: usize,
}

impl EmbeddedStore {
    /// Re-encrypts with the first key every value another configured key encrypted, in one
    /// transaction: all or nothing. Values already under the first key are not touched, so a
    /// second run finds nothing to do.
    pub(crate) fn reencrypt(&self, dry_run: bool) -> Result<Rotation, StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let mut r = Rotation::default();
        {
            let mut table = txn.open_table(SECRETS).map_err(unavailable)?;
            let mut redo: Vec<(String, String)> = Vec::new();
            for item in table.iter().map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                r.values += 1;
                if self.keys.opens_with_first(v.value()) {
                    continue;
                }
                match self.keys.decrypt(v.value()) {
                    Ok(plain) => redo.push((k.value().to_string(), plain)),
                    Err(_) => r.unreadable += 1,
                }
            }
            r.reencrypted = redo.len();
            if !dry_run {
                for (id, plain) in &redo {
                    let enc = self.keys.encrypt(plain).map_err(unavailable)?;
                    table
                        .insert(id.as_str(), enc.as_str())
                        .map_err(unavailable)?;
                }
            }
        }
        if dry_run {
            txn.abort().map_err(unavailable)?;
        } else {
            txn.commit().map_err(unavailable)?;
        }
        Ok(r)
    }
}

impl SecretStore for EmbeddedStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move { self.get_sync(id) })
    }
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_all(&[(id, value)]).await })
    }
    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let refs: Vec<(&str, &str)> = items
                .iter()
                .map(|(i, v)| (i.as_str(), v.as_str()))
                .collect();
            self.put_all(&refs).await
        })
    }
    /// An id already held is found by a read transaction (which never waits for the
    /// committer); otherwise the check and the insert are one job of the committer, in the
    /// write transaction of its batch: redb admits one writer at a time, so they cannot
    /// interleave with another write.
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let known =
                is_marker(id) && matches!(lock(&self.markers).values.get(id), Some(Some(_)));
            if known || self.exists(id)? {
                return Ok(false);
            }
            let enc = self.keys.encrypt(value).map_err(unavailable)?;
            self.write(Write::Create(id.to_string(), enc)).await
        })
    }
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.write(Write::Delete(id.to_string())).await.map(drop) })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.list_sync(prefix) })
    }
    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.db.begin_read().map(|_| ()).map_err(unavailable) })
    }
    fn name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_one_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let keys = FernetKeys::new(&[FernetKeys::generate_key()]).unwrap();
        let _first = EmbeddedStore::open(&path, &keys).unwrap();
        let Err(e) = EmbeddedStore::open(&path, &keys) else {
            panic!("opened twice");
        };
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(e.contains("already open in another process"), "{e}");
    }

    fn open_temp() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s =
            EmbeddedStore::open(&dir.path().join("g.db"), &FernetKeys::new(&[]).unwrap()).unwrap();
        (dir, Arc::new(s))
    }

    /// Holds redb's single writer so that everything queued meanwhile forms one batch.
    async fn with_committer_held<F: std::future::Future>(s: &EmbeddedStore, queue: F) -> F::Output {
        let held = s.db.begin_write().unwrap();
        let out = queue.await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        held.abort().unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_every_acknowledged_one_is_readable() {
        let (_dir, s) = open_temp();
        let tasks = with_committer_held(&s, async {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move { s.put(&format!("/g/k{i}"), &format!("v{i}")).await })
                })
                .collect();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tasks
        })
        .await;
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let commits = s
            .committer
            .as_ref()
            .unwrap()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(commits <= 3, "50 queued writes took {commits} commits");
        for i in 0..50 {
            assert_eq!(
                s.get(&format!("/g/k{i}")).await.unwrap(),
                Some(format!("v{i}"))
            );
        }
        s.delete("/g/k0").await.unwrap();
        assert_eq!(s.get("/g/k0").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_each_of_its_requests_and_writes_none_of_them() {
        let (_dir, s) = open_temp();
        let (a, fail, b) = with_committer_held(&s, async {
            let a = tokio::spawn({
                let s = s.clone();
                async move { s.put("/f/a", "1").await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let fail = tokio::spawn({
                let s = s.clone();
                async move { s.write(Write::Fail).await }
            });
            let b = tokio::spawn({
                let s = s.clone();
                async move {
                    s.put_many(&[("/f/b".into(), "2".into()), ("/f/c".into(), "3".into())])
                        .await
                }
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            (a, fail, b)
        })
        .await;
        // `a` was taken alone while the writer was held; `fail` and `b` shared a batch.
        assert!(a.await.unwrap().is_ok());
        assert!(matches!(
            fail.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(b.await.unwrap(), Err(StoreError::Unavailable(_))));
        assert_eq!(s.get("/f/a").await.unwrap().as_deref(), Some("1"));
        assert_eq!(s.get("/f/b").await.unwrap(), None);
        assert_eq!(s.get("/f/c").await.unwrap(), None);
        // The committer goes on after a failed batch.
        s.put("/f/d", "4").await.unwrap();
        assert_eq!(s.get("/f/d").await.unwrap().as_deref(), Some("4"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_of_one_id_write_one_value_only() {
        let (_dir, s) = open_temp();
        let (a, b) = with_committer_held(&s, async {
            let a = tokio::spawn({
                let s = s.clone();
                async move { s.create("/c/x/.owner", "first").await }
            });
            let b = tokio::spawn({
                let s = s.clone();
                async move { s.create("/c/x/.owner", "second").await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            (a, b)
        })
        .await;
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert!(a ^ b, "exactly one create wins: {a} {b}");
        let won = if a { "first" } else { "second" };
        assert_eq!(s.get("/c/x/.owner").await.unwrap().as_deref(), Some(won));
        // Held already: found without a write.
        assert!(!s.create("/c/x/.owner", "third").await.unwrap());
        assert_eq!(s.get("/c/x/.owner").await.unwrap().as_deref(), Some(won));
    }

    #[tokio::test]
    async fn owner_markers_kept_in_memory_follow_every_write() {
        let (_dir, s) = open_temp();
        let m = "/om/database/a/.owner";
        assert_eq!(s.get(m).await.unwrap(), None);
        assert!(s.create(m, "databaseService:a").await.unwrap());
        assert_eq!(
            s.get(m).await.unwrap().as_deref(),
            Some("databaseService:a")
        );
        assert!(!s.create(m, "databaseService:b").await.unwrap());
        s.put(m, "databaseService:c").await.unwrap();
        assert_eq!(
            s.get(m).await.unwrap().as_deref(),
            Some("databaseService:c")
        );
        s.delete(m).await.unwrap();
        assert_eq!(s.get(m).await.unwrap(), None);
        assert!(s.create(m, "databaseService:d").await.unwrap());
        assert_eq!(
            s.get(m).await.unwrap().as_deref(),
            Some("databaseService:d")
        );
        // What memory holds is what the file holds.
        assert_eq!(s.read(m).unwrap().as_deref(), Some("databaseService:d"));
    }

    #[tokio::test]
    async fn values_round_trip_and_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = EmbeddedStore::open(&path, &FernetKeys::new(&[]).unwrap()).unwrap();
        s.put("/om/database/x/password", "hunter2-ünïcode")
            .await
            .unwrap();
        assert_eq!(
            s.get("/om/database/x/password").await.unwrap().as_deref(),
            Some("hunter2-ünïcode")
        );
        assert_eq!(s.get("/om/database/y").await.unwrap(), None);
        s.put("/om/database/x/other", "v").await.unwrap();
        assert_eq!(s.list("/om/database/x/").await.unwrap().len(), 2);
        s.delete("/om/database/x/other").await.unwrap();
        assert_eq!(
            s.list("/om/database/x/").await.unwrap(),
            vec!["/om/database/x/password"]
        );
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[tokio::test]
    async fn reencrypting_moves_every_value_to_the_first_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (old, new) = (FernetKeys::generate_key(), FernetKeys::generate_key());
        let s = EmbeddedStore::open(&path, &FernetKeys::new(std::slice::from_ref(&old)).unwrap())
            .unwrap();
        s.put("/om/a", "va").await.unwrap();
        s.put("/om/b", "vb").await.unwrap();
        drop(s);
        let both = FernetKeys::new(&[new.clone(), old]).unwrap();
        let s = EmbeddedStore::open(&path, &both).unwrap();
        let dry = s.reencrypt(true).unwrap();
        assert_eq!((dry.values, dry.reencrypted, dry.unreadable), (2, 2, 0));
        assert_eq!(s.reencrypt(false).unwrap().reencrypted, 2);
        assert_eq!(s.reencrypt(false).unwrap().reencrypted, 0);
        drop(s);
        let s = EmbeddedStore::open(&path, &FernetKeys::new(&[new]).unwrap()).unwrap();
        assert_eq!(s.get("/om/a").await.unwrap().as_deref(), Some("va"));
        assert_eq!(s.get("/om/b").await.unwrap().as_deref(), Some("vb"));
    }
}
