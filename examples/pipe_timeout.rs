//! Cancels a read on a pipe nobody writes to, by `timeout`; then shows the cancelled
//! read took nothing: data written afterwards goes to the next read.
//!
//! ```text
//! cargo run --release --example pipe_timeout -- [MILLISECONDS]   # default 100
//! ```

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aioctx::aio::{AioContext, timeout};

fn main() -> io::Result<()> {
    let ms: u64 = match std::env::args().nth(1) {
        None => 100,
        Some(v) => v.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{v}` is not a number of milliseconds"),
            )
        })?,
    };
    let (rd, wr) = io::pipe()?;
    let ctx = AioContext::new()?;
    println!("backend: {}", ctx.backend());
    let start = Instant::now();
    match ctx.block_on(timeout(
        Duration::from_millis(ms),
        ctx.read_at(rd.as_raw_fd(), vec![0u8; 64], 0),
    )) {
        Err(elapsed) => println!(
            "read cancelled: {elapsed} (after {:.1} ms)",
            start.elapsed().as_secs_f64() * 1e3
        ),
        Ok((res, _)) => {
            return Err(io::Error::other(format!(
                "the read completed, but nobody wrote: {res:?}"
            )));
        }
    }
    (&wr).write_all(b"hello")?;
    let (res, buf) = ctx.block_on(ctx.read_at(rd.as_raw_fd(), vec![0u8; 64], 0));
    let n = res?;
    println!("next read got {:?}", String::from_utf8_lossy(&buf[..n]));
    if &buf[..n] != b"hello" {
        return Err(io::Error::other(
            "the cancelled read took data it should not have",
        ));
    }
    Ok(())
}
