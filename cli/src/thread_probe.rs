//! A thread's scheduler state and its voluntary context switches, read from
//! `/proc/self/task/TID/stat` and `/proc/self/task/TID/status`: how the wake-up reports
//! know that a loop is blocked in the kernel *before* they wake it, and how they prove
//! afterwards that it slept once per cycle.
//!
//! Shared by `aioctx kickstat` and `benches/kick.rs` (which includes this file with
//! `#[path]`), so both decide "asleep" the same way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One thread of this process, observed through procfs.
#[derive(Debug)]
pub struct ThreadProbe {
    tid: libc::pid_t,
    /// `/proc/self/task/TID/stat`, opened once: each look is one `pread(2)`.
    stat: File,
    /// `pread(2)` calls made on `stat`, so a window that counts every syscall of the
    /// process can take them out exactly.
    reads: AtomicU64,
}

impl ThreadProbe {
    /// A probe of the calling thread.
    ///
    /// # Errors
    /// When procfs is not there to read (`/proc` not mounted).
    pub fn current() -> io::Result<Self> {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let path = format!("/proc/self/task/{tid}/stat");
        let stat = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {path} (needed to see whether a thread sleeps): {e}"),
            )
        })?;
        Ok(Self {
            tid,
            stat,
            reads: AtomicU64::new(0),
        })
    }

    /// The thread's scheduler state letter (`R` running, `S` sleeping in the kernel,
    /// `D` uninterruptible, ...). One `pread(2)`.
    ///
    /// # Errors
    /// The read error, or a line that does not parse.
    pub fn state(&self) -> io::Result<u8> {
        let mut buf = [0u8; 1024];
        // Relaxed: a count read only after the probing thread was joined.
        self.reads.fetch_add(1, Ordering::Relaxed);
        let len = self.stat.read_at(&mut buf, 0)?;
        // "TID (comm) S ...": the comm may hold spaces and parentheses, so look after
        // the last ')'.
        let line = &buf[..len];
        line.iter()
            .rposition(|&b| b == b')')
            .and_then(|i| line.get(i + 2).copied())
            .ok_or_else(|| {
                io::Error::other(format!("unparsable /proc/self/task/{}/stat", self.tid))
            })
    }

    /// Returns once the thread is blocked in an interruptible sleep in the kernel
    /// (state `S`), looking with `pread(2)` in a loop. Gives up with a message naming
    /// `what` after `patience` (a thread that never sleeps would otherwise hang the
    /// caller).
    ///
    /// # Errors
    /// The read error, or `TimedOut`.
    pub fn wait_asleep(&self, what: &str, patience: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if self.state()? == b'S' {
                return Ok(());
            }
            if start.elapsed() > patience {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{what} (thread {}) was not asleep within {patience:?}",
                        self.tid
                    ),
                ));
            }
            std::hint::spin_loop();
        }
    }

    /// `pread(2)` calls made so far on the stat file.
    pub fn reads(&self) -> u64 {
        // Relaxed: read after the probing thread was joined (join orders it).
        self.reads.load(Ordering::Relaxed)
    }

    /// The thread's `voluntary_ctxt_switches` from its status file: how many times it
    /// gave up the CPU because it blocked. Opens, reads and closes the file: call it
    /// outside any window that counts syscalls.
    ///
    /// # Errors
    /// The read error, or a status file without the line.
    pub fn voluntary_switches(&self) -> io::Result<u64> {
        let path = format!("/proc/self/task/{}/status", self.tid);
        let text = std::fs::read_to_string(&path)?;
        text.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no voluntary_ctxt_switches in {path}")))
    }
}

#[cfg(test)]
mod tests {
    // Paths instead of `use super::*`: benches/kick.rs includes this file in a harness
    // without tests, where the import would be unused.
    #[test]
    fn a_running_thread_is_not_asleep_and_a_blocked_one_is() {
        let me = super::ThreadProbe::current().expect("procfs");
        // Reading its own state, the thread is running.
        assert_eq!(me.state().unwrap(), b'R');
        let (probe_tx, probe_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            // Spaces and a parenthesis in the name: the state is found after the last ')'.
            .name("probe (x) y".into())
            .spawn(move || {
                probe_tx
                    .send(super::ThreadProbe::current().unwrap())
                    .unwrap();
                // Blocks in the kernel (a futex wait) until the test lets it go.
                go_rx.recv().unwrap();
            })
            .unwrap();
        let other = probe_rx.recv().unwrap();
        other
            .wait_asleep("the blocked thread", std::time::Duration::from_secs(60))
            .expect("a thread blocked in recv() is in state S");
        let before = other.voluntary_switches().unwrap();
        assert!(before >= 1, "it blocked at least once");
        assert!(other.reads() >= 1);
        go_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
