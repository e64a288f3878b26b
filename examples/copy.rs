//! Copies a file with O_DIRECT at a given queue depth, the last write linked to the
//! final `fsync` in the kernel (`write → fsync`, one submission), with a progress line
//! on stderr once a second.
//!
//! ```text
//! cargo run --release --example copy -- SRC DST [--depth N] [--bs BYTES]
//! ```
//!
//! `depth` tasks each keep one read-then-write of `bs` bytes (default 128 KiB) in
//! flight, each on its own `AlignedBuf` (no allocation per chunk). Where a file system
//! refuses O_DIRECT (ramfs; tmpfs before Linux 6.6), the file is opened without it and a line on stderr says
//! so — never silently. O_DIRECT writes a whole number of blocks: a tail shorter than
//! the destination's alignment goes through a second, buffered handle of the same file,
//! linked to the final `fsync` (which flushes the file whichever handle wrote it).
//! Output (stdout), one `key=value` per line: `bytes`, `seconds`, `mib_per_s`,
//! `src_direct`, `dst_direct`, `depth`, `bs`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aioctx::aio::{AioContext, AlignedBuf, File, OpenOptions};

struct Args {
    src: PathBuf,
    dst: PathBuf,
    depth: usize,
    bs: usize,
}

fn usage() -> ! {
    eprintln!("usage: copy SRC DST [--depth N] [--bs BYTES]\ndefaults: depth 8, bs 131072");
    std::process::exit(2);
}

fn parse() -> Args {
    let (mut paths, mut depth, mut bs) = (Vec::new(), 8, 128 << 10);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            let v = it.next().unwrap_or_else(|| usage());
            v.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                eprintln!("bad value `{v}` for {name}");
                usage()
            })
        };
        match a.as_str() {
            "--depth" => depth = num("--depth"),
            "--bs" => bs = num("--bs"),
            "-h" | "--help" => usage(),
            p if !p.starts_with('-') => paths.push(PathBuf::from(p)),
            other => {
                eprintln!("unknown argument `{other}`");
                usage()
            }
        }
    }
    let [src, dst] = <[PathBuf; 2]>::try_from(paths).unwrap_or_else(|_| usage());
    if bs % 4096 != 0 {
        eprintln!("--bs must be a multiple of 4096 (O_DIRECT)");
        usage();
    }
    Args {
        src,
        dst,
        depth,
        bs,
    }
}

/// `e` with what was being done.
fn ctx_err(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens `path` with O_DIRECT, or — where its file system refuses it (`EINVAL`) —
/// without, saying so on stderr.
async fn open(ctx: &AioContext, path: &Path, write: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(!write).write(write).create(write).truncate(write);
    match opts.clone().direct(true).open(ctx, path).await {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!(
                "copy: {} refuses O_DIRECT ({e}); falling back to buffered I/O for it",
                path.display()
            );
            opts.open(ctx, path).await
        }
        res => res,
    }
    .map_err(ctx_err(format!("open {}", path.display())))
}

/// Copies chunks `next..last` (shared counter) of `bs` bytes until none is left.
async fn worker(
    src: Arc<File>,
    dst: Arc<File>,
    next: Arc<AtomicU64>,
    last: u64,
    mut buf: AlignedBuf,
    copied: Arc<AtomicU64>,
) -> io::Result<()> {
    loop {
        let chunk = next.fetch_add(1, Ordering::Relaxed);
        if chunk >= last {
            return Ok(());
        }
        let off = chunk * buf.len() as u64;
        let (res, b) = src.read_exact_at(buf, off).await;
        res.map_err(ctx_err(format!("read at offset {off}")))?;
        let (res, b) = dst.write_all_at(b, off).await;
        res.map_err(ctx_err(format!("write at offset {off}")))?;
        buf = b;
        copied.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
}

async fn copy(ctx: Arc<AioContext>, args: Args, copied: Arc<AtomicU64>) -> io::Result<u64> {
    let src = Arc::new(open(&ctx, &args.src, false).await?);
    let dst = Arc::new(open(&ctx, &args.dst, true).await?);
    let size = src.metadata().await?.len();
    let bs = args.bs as u64;
    // Every chunk but the last goes through the workers; the last one is linked to the
    // final fsync.
    let last = size.div_ceil(bs).saturating_sub(1);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.depth.min(last as usize) {
        let buf = AlignedBuf::new(args.bs, 4096)?;
        let w = worker(
            Arc::clone(&src),
            Arc::clone(&dst),
            Arc::clone(&next),
            last,
            buf,
            Arc::clone(&copied),
        );
        workers.push(ctx.spawn(w));
    }
    for w in workers {
        w.await??;
    }
    // The last chunk (possibly short), written linked to the fsync.
    let off = last * bs;
    let len = (size - off) as usize;
    // One read of a whole buffer: O_DIRECT reads whole blocks, and the file ends
    // inside this one.
    let (res, buf) = src.read_at(AlignedBuf::new(args.bs, 4096)?, off).await;
    let got = res.map_err(ctx_err(format!("read at offset {off}")))?;
    if got != len {
        let msg = format!("read at offset {off}: {got} bytes of {len} (did the file change?)");
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
    }
    let (written, synced) = if len == args.bs || !dst.is_direct() {
        let tail = if len == args.bs {
            Tail::Aligned(buf)
        } else {
            Tail::Bytes(buf[..len].to_vec())
        };
        write_then_fsync(&dst, tail, off).await
    } else {
        // A tail O_DIRECT cannot write: a buffered handle of the same file.
        let mut opts = OpenOptions::new();
        let buffered = opts.write(true).open(&ctx, &args.dst).await?;
        let res = write_then_fsync(&buffered, Tail::Bytes(buf[..len].to_vec()), off).await;
        buffered.close().await?;
        res
    };
    written.map_err(ctx_err(format!(
        "write the last {len} bytes at offset {off}"
    )))?;
    synced.map_err(ctx_err(format!("fsync {}", args.dst.display())))?;
    copied.fetch_add(len as u64, Ordering::Relaxed);
    println!("src_direct={}", src.is_direct());
    println!("dst_direct={}", dst.is_direct());
    Ok(size)
}

enum Tail {
    Aligned(AlignedBuf),
    Bytes(Vec<u8>),
}

/// `write → fsync`, linked: the fsync runs only once the write completed in full.
async fn write_then_fsync(file: &File, tail: Tail, off: u64) -> (io::Result<()>, io::Result<()>) {
    let (w, f) = match tail {
        Tail::Aligned(b) => {
            let (w, f, _) = file.write_at_then_fsync(b, off, false).await;
            (w, f)
        }
        Tail::Bytes(b) => {
            let (w, f, _) = file.write_at_then_fsync(b, off, false).await;
            (w, f)
        }
    };
    (w.map(drop), f)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("copy: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let args = parse();
    let (depth, bs) = (args.depth, args.bs);
    let ctx = AioContext::new()?;
    let copied = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    {
        let (copied, stop) = (Arc::clone(&copied), Arc::clone(&stop));
        ctx.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                aioctx::aio::sleep(Duration::from_secs(1)).await;
                let mib = copied.load(Ordering::Relaxed) as f64 / f64::from(1 << 20);
                let secs = start.elapsed().as_secs_f64();
                eprint!("\rcopied {mib:.1} MiB, {:.1} MiB/s   ", mib / secs);
                let _ = io::stderr().flush();
            }
        })
        .detach();
    }
    let size = ctx.block_on(copy(Arc::clone(&ctx), args, copied))?;
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    eprintln!();
    println!("bytes={size}");
    println!("seconds={secs:.3}");
    println!("mib_per_s={:.1}", size as f64 / f64::from(1 << 20) / secs);
    println!("depth={depth}");
    println!("bs={bs}");
    Ok(())
}
