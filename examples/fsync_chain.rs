//! Durable appends, two ways, one thread: a `write → fsync` chain linked in the kernel
//! (`File::write_at_then_fsync`: one submission, the flush starts as soon as the write
//! completed) against the same two operations awaited one after the other (`write_at`,
//! then `fsync`: two round trips through the loop). Prints the rate and latency
//! percentiles of each (one op = one write and its flush).
//!
//! ```text
//! cargo run --release --example fsync_chain -- PATH [--mode linked|awaited|both] [--seconds S | --count N] [--bs BYTES] [--overwrite]
//! ```
//!
//! `PATH` is created (or truncated) and written with O_DIRECT where its file system
//! allows (a line on stderr says when it does not), `bs` bytes (default 4096) per write
//! at increasing offsets, wrapping at 64 MiB: each first pass extends the file (the file
//! system allocates blocks), unless `--overwrite` writes the 64 MiB once first, so every
//! timed write overwrites allocated blocks. Output (stdout), one `key=value` per line
//! per mode: `<mode>_ops`, `<mode>_ops_per_s`, `<mode>_p50_us`, `<mode>_p99_us`.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aioctx::aio::{AioContext, AlignedBuf, File, OpenOptions};

const WRAP: u64 = 64 << 20;

struct Args {
    path: PathBuf,
    modes: Vec<&'static str>,
    seconds: Option<f64>,
    count: Option<u64>,
    bs: usize,
    overwrite: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: fsync_chain PATH [--mode linked|awaited|both] [--seconds S | --count N] \
         [--bs BYTES] [--overwrite]\ndefaults: both, 3 seconds, bs 4096"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        path: PathBuf::new(),
        modes: vec!["linked", "awaited"],
        seconds: None,
        count: None,
        bs: 4096,
        overwrite: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = |it: &mut dyn Iterator<Item = String>| it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--mode" => {
                args.modes = match v(&mut it).as_str() {
                    "linked" => vec!["linked"],
                    "awaited" => vec!["awaited"],
                    "both" => vec!["linked", "awaited"],
                    _ => usage(),
                }
            }
            "--seconds" => {
                args.seconds = Some(
                    v(&mut it)
                        .parse()
                        .ok()
                        .filter(|&s: &f64| s > 0.0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--count" => {
                args.count = Some(
                    v(&mut it)
                        .parse()
                        .ok()
                        .filter(|&c| c > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--bs" => {
                args.bs = v(&mut it)
                    .parse()
                    .ok()
                    .filter(|&b: &usize| b > 0 && b % 4096 == 0)
                    .unwrap_or_else(|| usage())
            }
            "--overwrite" => args.overwrite = true,
            "-h" | "--help" => usage(),
            p if args.path.as_os_str().is_empty() && !p.starts_with('-') => args.path = p.into(),
            _ => usage(),
        }
    }
    if args.path.as_os_str().is_empty() || (args.seconds.is_some() && args.count.is_some()) {
        usage();
    }
    if args.count.is_none() {
        args.seconds.get_or_insert(3.0);
    }
    args
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(0.0, |&ns| f64::from(ns) / 1000.0)
}

async fn run_mode(file: &File, mode: &str, args: &Args) -> io::Result<Vec<u32>> {
    let mut buf = AlignedBuf::new(args.bs, 4096)?;
    buf.fill(0x5A);
    let (mut lat, mut off) = (Vec::new(), 0u64);
    let start = Instant::now();
    let until = args.seconds.map(|s| start + Duration::from_secs_f64(s));
    while until.is_none_or(|u| Instant::now() < u)
        && args.count.is_none_or(|c| (lat.len() as u64) < c)
    {
        let t = Instant::now();
        if mode == "linked" {
            let (w, f, b) = file.write_at_then_fsync(buf, off, false).await;
            buf = b;
            w?;
            f?;
        } else {
            let (w, b) = file.write_at(buf, off).await;
            buf = b;
            w?;
            file.fsync().await?;
        }
        lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        off = (off + args.bs as u64) % WRAP;
    }
    Ok(lat)
}

fn main() {
    let args = parse();
    if let Err(e) = run(&args) {
        eprintln!("fsync_chain: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> io::Result<()> {
    let ctx = AioContext::new()?;
    ctx.block_on(async {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let file = match opts.clone().direct(true).open(&ctx, &args.path).await {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "fsync_chain: {} refuses O_DIRECT ({e}); buffered writes",
                    args.path.display()
                );
                opts.open(&ctx, &args.path).await?
            }
            res => res.map_err(|e| {
                io::Error::new(e.kind(), format!("open {}: {e}", args.path.display()))
            })?,
        };
        println!("direct={}", file.is_direct());
        if args.overwrite {
            // Every block allocated and written once, so the timed writes overwrite.
            let mut fill = AlignedBuf::new(1 << 20, 4096)?;
            fill.fill(0xA5);
            for off in (0..WRAP).step_by(1 << 20) {
                let (res, b) = file.write_all_at(fill, off).await;
                fill = b;
                res?;
            }
            file.fsync().await?;
        }
        for mode in &args.modes {
            if !args.overwrite {
                // Each mode extends the file from empty, as the first one did.
                file.set_len(0).await?;
                file.fsync().await?;
            }
            let secs = Instant::now();
            let mut lat = run_mode(&file, mode, args).await?;
            let secs = secs.elapsed().as_secs_f64();
            lat.sort_unstable();
            println!("{mode}_ops={}", lat.len());
            println!("{mode}_ops_per_s={:.0}", lat.len() as f64 / secs);
            println!("{mode}_p50_us={:.1}", percentile(&lat, 0.50));
            println!("{mode}_p99_us={:.1}", percentile(&lat, 0.99));
        }
        file.close().await
    })
}
