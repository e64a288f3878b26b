//! O_DIRECT random reads at a given queue depth, on one thread: prints IOPS and latency
//! percentiles (p50/p99/p99.9), with a progress line on stderr once a second.
//!
//! ```text
//! cargo run --release --example dio_randread -- PATH [--depth N] [--seconds S | --count N] [--bs BYTES] [--fixed]
//! ```
//!
//! `PATH` is a file or block device, opened read-only with `O_DIRECT`; the buffers are
//! `AlignedBuf`s at the file's O_DIRECT alignment, each reused from one read to the next
//! (no per-read allocation or fill). With `--fixed` they are the buffers of a
//! `FixedBufPool` registered as the ring's buffer table instead (`READ_FIXED`: the
//! kernel skips pinning and mapping the pages per read; plain reads on epoll).
//! `depth` tasks each keep one read in flight.
//! Output (stdout), one `key=value` per line: `iops`, `ops`, `seconds`, `lat_p50_us`,
//! `lat_p99_us`, `lat_p999_us`, plus the settings.

use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aioctx::aio::{AioContext, AlignedBuf, FixedBuf, FixedBufPool, IoBuf};

struct Args {
    path: String,
    depth: usize,
    seconds: Option<f64>,
    count: Option<u64>,
    bs: usize,
    fixed: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: dio_randread PATH [--depth N] [--seconds S | --count N] [--bs BYTES] [--fixed]\n\
         defaults: depth 1, 5 seconds, bs 4096"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        path: String::new(),
        depth: 1,
        seconds: None,
        count: None,
        bs: 4096,
        fixed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                usage()
            })
        };
        let bad = |v: &str| -> ! {
            eprintln!("bad value `{v}` for {a}");
            usage()
        };
        match a.as_str() {
            "--depth" => {
                let v = val("--depth");
                args.depth = v.parse().ok().filter(|&d| d > 0).unwrap_or_else(|| bad(&v));
            }
            "--seconds" => {
                let v = val("--seconds");
                args.seconds = Some(
                    v.parse()
                        .ok()
                        .filter(|&s: &f64| s > 0.0)
                        .unwrap_or_else(|| bad(&v)),
                );
            }
            "--count" => {
                let v = val("--count");
                args.count = Some(v.parse().ok().filter(|&c| c > 0).unwrap_or_else(|| bad(&v)));
            }
            "--bs" => {
                let v = val("--bs");
                args.bs = v.parse().ok().filter(|&b| b > 0).unwrap_or_else(|| bad(&v));
            }
            "--fixed" => args.fixed = true,
            "-h" | "--help" => usage(),
            p if args.path.is_empty() && !p.starts_with('-') => args.path = p.to_owned(),
            other => {
                eprintln!("unknown argument `{other}`");
                usage()
            }
        }
    }
    if args.path.is_empty() {
        usage();
    }
    if args.seconds.is_some() && args.count.is_some() {
        eprintln!("give --seconds or --count, not both");
        usage();
    }
    if args.seconds.is_none() && args.count.is_none() {
        args.seconds = Some(5.0);
    }
    args
}

/// A read's buffer: an `AlignedBuf`, or a registered one (`--fixed`).
enum Buf {
    Aligned(AlignedBuf),
    Fixed(FixedBuf),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::Aligned(b) => b.len(),
            Buf::Fixed(b) => b.bytes_init(),
        }
    }
}

/// xorshift64*: a random block index per read, cheap and reproducible.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() -> io::Result<()> {
    let args = parse();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args.path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {} with O_DIRECT: {e}", args.path)))?;
    let size = file.seek(SeekFrom::End(0))?;
    let blocks = size / args.bs as u64;
    if blocks == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is smaller than one block of {} bytes",
                args.path, args.bs
            ),
        ));
    }
    let ctx = AioContext::new()?;
    let fd = file.as_raw_fd();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = args.seconds.map(|s| start + Duration::from_secs_f64(s));
    let count = args.count;

    // Progress once a second, from a task on the same loop.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        ctx.spawn(async move {
            let mut last = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                aioctx::aio::sleep(Duration::from_secs(1)).await;
                let (now, n) = (Instant::now(), done.load(Ordering::Relaxed));
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, n);
                eprint!(
                    "\r{n} reads, {rate:.0} IOPS, {:.1} s   ",
                    start.elapsed().as_secs_f64()
                );
                let _ = io::stderr().flush();
            }
        })
        .detach();
    }
    let issued = Arc::new(AtomicU64::new(0));
    let pool = if args.fixed {
        Some(FixedBufPool::new(&ctx, args.depth, args.bs)?)
    } else {
        None
    };

    let mut handles = Vec::new();
    for worker in 0..args.depth {
        let c = Arc::clone(&ctx);
        let (done, issued) = (Arc::clone(&done), Arc::clone(&issued));
        let mut buf = match &pool {
            Some(pool) => {
                let mut b = pool.try_get().expect("one buffer per task");
                b.set_len(args.bs);
                Buf::Fixed(b)
            }
            None => Buf::Aligned(AlignedBuf::for_file(&file, args.bs)?),
        };
        handles.push(ctx.spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (worker as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || count.is_some_and(|c| issued.fetch_add(1, Ordering::Relaxed) >= c)
                {
                    break;
                }
                let len = buf.len();
                let offset = (next(&mut rng) % blocks) * len as u64;
                let t = Instant::now();
                let res;
                (res, buf) = match buf {
                    Buf::Aligned(b) => {
                        let (res, b) = c.read_at(fd, b, offset).await;
                        (res, Buf::Aligned(b))
                    }
                    Buf::Fixed(b) => {
                        let (res, b) = c.read_fixed_at(fd, b, offset).await;
                        (res, Buf::Fixed(b))
                    }
                };
                lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                let got = res?;
                if got != len {
                    return Err(io::Error::other(format!(
                        "short read: {got} bytes at {offset}"
                    )));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(ctx.block_on(h)??);
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    println!("path={}", args.path);
    println!("bs={}", args.bs);
    println!("depth={}", args.depth);
    println!(
        "fixed={}",
        pool.as_ref().is_some_and(FixedBufPool::is_registered)
    );
    println!("ops={ops}");
    println!("seconds={secs:.3}");
    println!("iops={:.0}", ops as f64 / secs);
    println!("lat_p50_us={:.1}", percentile(&lat, 0.50));
    println!("lat_p99_us={:.1}", percentile(&lat, 0.99));
    println!("lat_p999_us={:.1}", percentile(&lat, 0.999));
    Ok(())
}
