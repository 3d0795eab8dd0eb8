//! The writer's own thread, which runs every statement of the writer's connection.
//!
//! SQLite's calls block, so they stay off the runtime's threads. The writer's statements run
//! one at a time, so one long-lived thread, named `request-log`, serves them all. tokio's
//! blocking pool would also do, but it may start a second thread when its last one has not
//! yet gone back to waiting.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the writer's thread. The thread ends once the handle is dropped and the jobs
/// sent before have run.
#[derive(Debug)]
pub(crate) struct WriterThread {
    jobs: mpsc::Sender<Job>,
}

/// A job that never returned: it panicked, or the thread had ended.
#[derive(Debug, thiserror::Error)]
#[error(
    "request log writer thread lost a statement (it panicked or the thread ended): the next \
     batch opens a new connection"
)]
pub(crate) struct JobLost;

impl WriterThread {
    /// Starts the thread.
    pub(crate) fn spawn() -> std::io::Result<WriterThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("request-log".to_owned())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A panic loses its own job only: its caller finds the reply dropped. The
                    // panic hook has already reported it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(WriterThread { jobs })
    }

    /// Runs `work` on the thread and returns its output.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, JobLost>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, output) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have stopped waiting; the work is done either way.
            let _ = reply.send(work());
        });
        self.jobs.send(job).map_err(|_| JobLost)?;
        output.await.map_err(|_| JobLost)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_thread() {
        let thread = WriterThread::spawn().unwrap();
        let first = thread.run(|| std::thread::current().id()).await.unwrap();
        let second = thread.run(|| std::thread::current().id()).await.unwrap();

        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }

    #[tokio::test]
    async fn panic_loses_only_its_job() {
        let thread = WriterThread::spawn().unwrap();
        let lost = thread.run(|| -> u32 { panic!("statement failed") }).await;
        let next = thread.run(|| 7).await;

        assert!(lost.is_err());
        assert_eq!(next.unwrap(), 7);
    }
}
