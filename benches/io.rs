//! 4 KiB random reads from a page-cached 256 MiB file on one thread, at queue depth 1
//! and 32: through the context (tasks on owned buffers) against a bare io-uring crate
//! loop and `pread`. One iteration is one read. `benches/fio.sh` measures fio's io_uring
//! engine on the same file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group, criterion_main};
use io_uring::{IoUring, opcode, types};

const FILE_SIZE: u64 = 256 << 20;
const BLOCK: usize = 4096;
const BLOCKS: u64 = FILE_SIZE / BLOCK as u64;
const QD: usize = 32;

/// `$AIOCTX_BENCH_FILE`, else `<target dir>/aioctx-bench-256m.dat` (fio.sh uses the same).
fn bench_file_path() -> PathBuf {
    if let Some(p) = std::env::var_os("AIOCTX_BENCH_FILE") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    PathBuf::from(target).join("aioctx-bench-256m.dat")
}

/// Opens the bench file, creating it (non-zero, not sparse) when missing or of the wrong
/// size, and reads it through once so that it is in the page cache.
fn open_bench_file() -> File {
    let path = bench_file_path();
    let fits = std::fs::metadata(&path).is_ok_and(|m| m.len() == FILE_SIZE);
    if !fits {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(FILE_SIZE >> 20) {
            for word in chunk.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&chunk).unwrap();
        }
    }
    let mut f = File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
    File::open(&path).unwrap()
}

/// A seeded stream of 4 KiB-aligned offsets inside the file (the test kit's generator).
struct Offsets(aioctx_testkit::Rng);

impl Offsets {
    fn new(seed: u64) -> Self {
        Self(aioctx_testkit::Rng::new(seed))
    }

    fn next_offset(&mut self) -> u64 {
        (self.0.next_u64() % BLOCKS) * BLOCK as u64
    }
}

fn aioctx_qd1(ctx: &AioContext, fd: i32, iters: u64) {
    ctx.block_on(async {
        let mut offs = Offsets::new(1);
        let mut buf = vec![0u8; BLOCK];
        for _ in 0..iters {
            let (res, b) = ctx.read_at(fd, buf, offs.next_offset()).await;
            assert_eq!(res.unwrap(), BLOCK);
            buf = b;
        }
    });
}

fn aioctx_qd32(ctx: &std::sync::Arc<AioContext>, fd: i32, iters: u64) {
    let handles: Vec<_> = (0..QD as u64)
        .map(|t| {
            let share = iters / QD as u64 + u64::from(t < iters % QD as u64);
            let c = std::sync::Arc::clone(ctx);
            ctx.spawn(async move {
                let mut offs = Offsets::new(t + 1);
                let mut buf = vec![0u8; BLOCK];
                for _ in 0..share {
                    let (res, b) = c.read_at(fd, buf, offs.next_offset()).await;
                    assert_eq!(res.unwrap(), BLOCK);
                    buf = b;
                }
            })
        })
        .collect();
    ctx.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
}

fn bare(ring: &mut IoUring, bufs: &mut [Vec<u8>], fd: i32, iters: u64, qd: usize) {
    let mut offs = Offsets::new(1);
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut free: Vec<usize> = (0..qd).collect();
    while completed < iters {
        while submitted < iters
            && let Some(i) = free.pop()
        {
            let e = opcode::Read::new(types::Fd(fd), bufs[i].as_mut_ptr(), BLOCK as u32)
                .offset(offs.next_offset())
                .build()
                .user_data(i as u64);
            // SAFETY: buffer `i` is not in flight (it is on the free list) and outlives
            // the operation: every submitted read is reaped before this function returns.
            unsafe { ring.submission().push(&e).unwrap() };
            submitted += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), BLOCK as i32);
            free.push(cqe.user_data() as usize);
            completed += 1;
        }
    }
}

fn pread(fd: i32, buf: &mut [u8], iters: u64) {
    let mut offs = Offsets::new(1);
    for _ in 0..iters {
        // SAFETY: `buf` is a live, writable buffer of BLOCK bytes.
        let r = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                BLOCK,
                offs.next_offset() as i64,
            )
        };
        assert_eq!(r, BLOCK as isize);
    }
}

fn bench(c: &mut Criterion) {
    let file = open_bench_file();
    let fd = file.as_raw_fd();
    let mut g = c.benchmark_group("io");
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let mut ring = IoUring::new(128).unwrap();
    let mut bufs = vec![vec![0u8; BLOCK]; QD];

    g.bench_function("pread_qd1", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            pread(fd, &mut bufs[0], iters);
            t.elapsed()
        })
    });
    for qd in [1, QD] {
        g.bench_function(format!("bare_qd{qd}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                bare(&mut ring, &mut bufs, fd, iters, qd);
                t.elapsed()
            })
        });
    }
    g.bench_function("aioctx_qd1", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            aioctx_qd1(&ctx, fd, iters);
            t.elapsed()
        })
    });
    g.bench_function(format!("aioctx_qd{QD}"), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            aioctx_qd32(&ctx, fd, iters);
            t.elapsed()
        })
    });
    g.finish();
    drop(file);
}

criterion_group!(benches, bench);
criterion_main!(benches);
