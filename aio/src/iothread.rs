//! `IoThread`: a named thread that owns a context and polls it until stopped
//! (QEMU: `IOThread`, iothread.c).

use std::io;
use std::thread::JoinHandle;

use crate::context::{AioContext, AioContextBuilder};
use crate::sync::Arc;
use crate::sync::atomic::{AtomicBool, Ordering};

/// QEMU's default `poll-max-ns` for iothreads.
pub const IOTHREAD_POLL_MAX_NS: u64 = 32768;

/// A thread running an [`AioContext`]. Dropping it stops the loop — by scheduling a
/// bottom half, not by polling a flag — and joins the thread (unless it is dropped on
/// that thread, by one of its own callbacks: then the thread stops once that callback
/// returns, and exits on its own).
///
/// Nobody can poll the context once its thread is gone, so the thread closes it before
/// it exits (also when a callback panicked out of `poll`): its unfinished tasks are
/// cancelled (as [`AioContext::shutdown_tasks`] does; a task that holds the context,
/// `let ctx = current();` across an `.await`, cannot keep it and the I/O it has in
/// flight alive after the `IoThread` is gone), the callbacks of its bottom
/// halves, timers and fd handlers are freed unrun, and from then on
/// [`Bh::try_schedule`](crate::Bh::try_schedule) and
/// [`Timer::try_modify`](crate::Timer::try_modify) report
/// [`ContextGone`](crate::ContextGone) and `set_fd_handler` refuses new handlers. A
/// callback that owns an `Arc` of the context no longer keeps it alive: the context is
/// freed when the last `Arc` outside its callbacks goes.
///
/// ```
/// use std::sync::mpsc;
/// let iothread = aioctx_aio::IoThread::new("io0")?;
/// let (tx, rx) = mpsc::channel();
/// iothread.ctx().schedule_oneshot(move || {
///     tx.send(std::thread::current().name().map(str::to_owned)).unwrap();
/// });
/// assert_eq!(rx.recv().unwrap().as_deref(), Some("io0"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct IoThread {
    ctx: Arc<AioContext>,
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    cpu: Option<usize>,
}

/// Checks that `cpu` exists and the calling thread may run on it.
fn check_cpu(cpu: usize) -> io::Result<()> {
    let allowed = crate::sys::allowed_cpus()?;
    if allowed.contains(&cpu) {
        return Ok(());
    }
    let list = allowed
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "IoThread: CPU {cpu} does not exist or is not in this process's allowed set \
             (allowed: {list})"
        ),
    ))
}

impl IoThread {
    /// Starts a thread named `name` with a new context that busy-polls like QEMU's
    /// iothreads (up to 32 µs before sleeping). Returns once the thread is the
    /// context's home thread, so nothing the caller does next can take that role.
    ///
    /// # Errors
    /// Creating the context or spawning the thread failed.
    pub fn new(name: &str) -> io::Result<Self> {
        Self::with_builder(
            name,
            AioContext::builder().poll_params(crate::PollParams::from_qemu(
                IOTHREAD_POLL_MAX_NS,
                0,
                0,
            )),
        )
    }

    /// Starts a thread named `name` with a context made by `builder` (whose name is
    /// replaced by `name`). Returns once the thread is the context's home thread.
    ///
    /// With [`AioContextBuilder::iothread_cpu`], the thread pins itself to that CPU
    /// (`sched_setaffinity`) before it takes its context.
    ///
    /// ```
    /// use aioctx_aio::{AioContext, IoThread};
    /// match IoThread::with_builder("io-pinned", AioContext::builder().iothread_cpu(0)) {
    ///     Ok(it) => assert_eq!(it.cpu(), Some(0)),
    ///     // CPU 0 is outside this process's cpuset.
    ///     Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
    /// }
    /// ```
    ///
    /// # Errors
    /// Creating the context or spawning the thread failed, or the thread died before it
    /// took its context. `InvalidInput` for a CPU that does not exist or is not in the
    /// calling thread's allowed set (the message names the CPU and the allowed set), or
    /// the error of `sched_setaffinity` on the new thread.
    pub fn with_builder(name: &str, builder: AioContextBuilder) -> io::Result<Self> {
        let cpu = builder.iothread_cpu;
        if let Some(cpu) = cpu {
            check_cpu(cpu)?;
        }
        let ctx = builder.name(name).build()?;
        let running = Arc::new(AtomicBool::new(true));
        let (thread_ctx, thread_running) = (Arc::clone(&ctx), Arc::clone(&running));
        let (home_tx, home_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                /// Closes the context when the loop ends, by return or unwind.
                struct CloseOnExit<'a>(&'a AioContext);
                impl Drop for CloseOnExit<'_> {
                    fn drop(&mut self) {
                        self.0.close_for_good();
                    }
                }
                let _close = CloseOnExit(&thread_ctx);
                if let Some(cpu) = cpu
                    && let Err(e) = crate::sys::pin_to_cpu(cpu)
                {
                    let _ = home_tx.send(Err(io::Error::new(
                        e.kind(),
                        format!("IoThread: pinning to CPU {cpu} failed: {e}"),
                    )));
                    return;
                }
                thread_ctx.make_current();
                // The caller waits for this: from now on this thread is home.
                let _ = home_tx.send(Ok(()));
                // Relaxed: `running` is written by the stop BH, which runs on this thread.
                while thread_running.load(Ordering::Relaxed) {
                    thread_ctx.poll(true);
                }
            })?;
        let started = home_rx.recv();
        if let Ok(Err(e)) = started {
            let _ = thread.join();
            return Err(e);
        }
        if started.is_err() {
            let why = match thread.join() {
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".to_owned()),
                Ok(()) => "it exited".to_owned(),
            };
            return Err(io::Error::other(format!(
                "IoThread `{name}` died before it took its context: {why}"
            )));
        }
        Ok(Self {
            ctx,
            running,
            thread: Some(thread),
            cpu,
        })
    }

    /// The CPU the thread is pinned to, if any.
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// The thread's context.
    pub fn ctx(&self) -> &Arc<AioContext> {
        &self.ctx
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        self.ctx.name()
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let running = Arc::clone(&self.running);
        // QEMU: iothread_stop_bh. Relaxed: read back by the same thread that runs the BH.
        self.ctx
            .schedule_oneshot(move || running.store(false, Ordering::Relaxed));
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.thread().id() == std::thread::current().id() {
            // Dropped by one of its own callbacks: the thread cannot join itself. It
            // stops at its next `poll`, closes its context and exits on its own.
            return;
        }
        if thread.join().is_err() && !std::thread::panicking() {
            panic!("IoThread `{}` panicked", self.ctx.name());
        }
    }
}
