//! CPU-heavy work off the async workers: a fixed pool of threads with stacks sized for the
//! deepest input the gateway accepts, fed through a bounded queue.
//!
//! A statement of a few hundred kilobytes takes PostgreSQL's parser tens of milliseconds and
//! a tree deep enough to need a big stack; on a tokio worker that would stall every session
//! sharing it. Here it stalls only the pool thread, a session has at most one job in flight
//! (it awaits its own), and when the queue is full a caller waits for room instead of growing
//! it. A job that panics is reported as an error, never taken down with the daemon.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex, OnceLock, mpsc},
};

use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
    room: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("the work panicked: {0}")]
    Panicked(String),
    #[error("the worker pool is gone")]
    Gone,
}

impl Pool {
    /// `threads` workers named `name`, each with a `stack` byte stack (reserved, touched
    /// only as deep as the work goes), and at most `queue` jobs waiting.
    pub fn new(name: &str, threads: usize, stack: usize, queue: usize) -> std::io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(stack)
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                            rx.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Pool {
            tx: Mutex::new(tx),
            room: Arc::new(Semaphore::new(queue.max(1))),
        })
    }

    /// Runs `f` on the pool and waits for its result without blocking the caller's thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, OffloadError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OffloadError::Gone)?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| OffloadError::Panicked(panic_message(p.as_ref())));
            drop(permit);
            let _ = done.send(out);
        });
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| OffloadError::Gone)?;
        result.await.map_err(|_| OffloadError::Gone)?
    }
}

/// The pool for CPU-heavy work (parsing and judging large statements, upstream SCRAM): one
/// thread per core but one (the sessions' workers keep a core however much is queued here),
/// 256 MiB stacks (reserved, not committed), 1024 jobs waiting at most.
pub fn cpu() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1);
        Pool::new("cpu", threads, 256 << 20, 1024).expect("spawn the CPU pool threads")
    })
}

/// What a panic said, from its payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_and_survives_a_panic() {
        let pool = Pool::new("t", 1, 1 << 20, 2).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
        let err = pool.run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(pool.run(|| "still here").await.unwrap(), "still here");
    }
}
