//! Group commit for SQLite: concurrent writes of one kind share one transaction, so they share its fsync.
//!
//! With `synchronous=FULL`, every commit waits for the disk, and SQLite has one writer: one insert per
//! transaction caps the service at one fsync per insert, and each transaction also rewrites the same few
//! pages. Here a task owns the queue of one kind of write; whenever the writer is free it takes every write
//! waiting (up to a limit) and runs them in one `BEGIN IMMEDIATE` transaction, each inside its own savepoint.
//! Nobody is answered before that transaction has committed, so durability is what it was: only the number
//! of fsyncs changes. An idle service commits a lone write at once; batches form only while a commit is
//! under way, which is exactly when writes would otherwise have queued.

use std::sync::Arc;

use rusqlite::Transaction;
use tokio::sync::{mpsc, oneshot};

use crate::{DbError, Sqlite};

/// Writes waiting beyond this make `submit` wait for room (backpressure, not unbounded memory).
const QUEUE: usize = 4096;

type Reply<O> = oneshot::Sender<Result<O, DbError>>;

/// Submits writes of one kind (`apply` applied to an `I`) to be committed in groups.
pub struct GroupCommit<I, O> {
    queue: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the task that commits for `db`. It ends once every handle is dropped.
    ///
    /// `apply` runs on the writer connection inside the batch's transaction. When it fails, only its own
    /// savepoint is rolled back: the other writes of the batch still commit.
    pub fn spawn(db: Sqlite, max_batch: usize, apply: fn(&Transaction<'_>, I) -> Result<O, DbError>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, waiting, max_batch.max(1), apply));
        Self { queue }
    }

    /// Applies `item` and returns its outcome once the transaction holding it has committed.
    pub async fn submit(&self, item: I) -> Result<O, DbError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| DbError::Worker)?;
        outcome.await.map_err(|_| DbError::Worker)?
    }
}

async fn run<I: Send + 'static, O: Send + 'static>(
    db: Sqlite,
    mut waiting: mpsc::Receiver<(I, Reply<O>)>,
    max_batch: usize,
    apply: fn(&Transaction<'_>, I) -> Result<O, DbError>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while waiting.recv_many(&mut batch, max_batch).await > 0 {
        let (items, replies): (Vec<I>, Vec<Reply<O>>) = batch.drain(..).unzip();
        let outcome = db
            .write(move |tx| {
                items
                    .into_iter()
                    .map(|item| in_savepoint(tx, item, apply))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await;
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up (cancelled call) just misses its answer; the write stands.
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                // The transaction did not commit, so none of the writes happened: all of them get the error.
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(DbError::Batch(Arc::clone(&error))));
                }
            }
        }
    }
}

/// Runs `apply` in a savepoint: its own failure is its own (`Ok(Err(..))`); a failure to manage the
/// savepoint itself fails the whole transaction (`Err`).
fn in_savepoint<I, O>(
    tx: &Transaction<'_>,
    item: I,
    apply: fn(&Transaction<'_>, I) -> Result<O, DbError>,
) -> rusqlite::Result<Result<O, DbError>> {
    tx.prepare_cached("SAVEPOINT batch_item")?.execute([])?;
    match apply(tx, item) {
        Ok(output) => {
            tx.prepare_cached("RELEASE batch_item")?.execute([])?;
            Ok(Ok(output))
        }
        Err(error) => {
            tx.prepare_cached("ROLLBACK TO batch_item")?.execute([])?;
            tx.prepare_cached("RELEASE batch_item")?.execute([])?;
            Ok(Err(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &["CREATE TABLE t (k TEXT NOT NULL UNIQUE, v INTEGER NOT NULL) STRICT;"];

    fn insert(tx: &Transaction<'_>, (k, v): (String, i64)) -> Result<i64, DbError> {
        tx.prepare_cached("INSERT INTO t (k, v) VALUES (?1, ?2)")?
            .execute(rusqlite::params![k, v])?;
        Ok(v)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_commit_and_a_failing_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("t.db"), SCHEMA).await.unwrap();
        let group = GroupCommit::spawn(db.clone(), 64, insert);
        let writes: Vec<_> = (0..500)
            .map(|i| {
                let group = group.clone();
                // Key "dup" twice: exactly one of the two must fail, with a unique violation.
                let key = if i == 7 || i == 8 {
                    "dup".to_owned()
                } else {
                    format!("k{i}")
                };
                tokio::spawn(async move { group.submit((key, i)).await })
            })
            .collect();
        let mut failed = Vec::new();
        for write in writes {
            if let Err(e) = write.await.unwrap() {
                failed.push(e);
            }
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].is_unique_violation(), "{:?}", failed[0]);
        let (rows, sum): (i64, i64) = db
            .read(|c| {
                c.query_row("SELECT count(*), sum(v) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .await
            .unwrap();
        assert_eq!(rows, 499);
        let all: i64 = (0..500).sum();
        assert!(sum == all - 7 || sum == all - 8, "{sum}");
    }

    #[tokio::test]
    async fn a_broken_transaction_fails_every_write_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("t.db"), SCHEMA).await.unwrap();
        // `apply` errors outside its savepoint handling by breaking the transaction: a savepoint
        // release after the transaction is gone fails, which fails the batch.
        fn breaks(tx: &Transaction<'_>, (): ()) -> Result<(), DbError> {
            Ok(tx.execute_batch("COMMIT")?)
        }
        let group = GroupCommit::spawn(db.clone(), 8, breaks);
        let error = group.submit(()).await.unwrap_err();
        assert!(matches!(error, DbError::Batch(_)), "{error:?}");
    }
}
