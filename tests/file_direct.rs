//! O_DIRECT `File`s on a disk-backed directory (`/var/tmp`; skipped with a message where
//! the file system refuses O_DIRECT): aligned reads and writes go through, and a
//! misaligned buffer address, length or offset is `InvalidInput` naming which one,
//! before anything reaches the kernel. On the back end this run selects.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::io;

use aioctx::aio::{AioContext, File};
use file_common::{Aligned, direct_file};

/// The alignment the test uses: 4096 is a multiple of every O_DIRECT alignment in
/// practice (the test checks what the kernel reports against it).
const ALIGN: usize = 4096;

#[test]
fn aligned_direct_io_round_trips() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("aligned_direct_io_round_trips", &ctx);
    let Some((_scratch, file)) = direct_file("aligned_direct_io_round_trips", &ctx) else {
        return;
    };
    assert!(file.is_direct());
    ctx.block_on(async {
        let meta = file.metadata().await.unwrap();
        if let (Some(mem), Some(off)) = (meta.dio_mem_align(), meta.dio_offset_align()) {
            assert!(
                mem > 0 && ALIGN.is_multiple_of(mem as usize),
                "mem align {mem}"
            );
            assert!(
                off > 0 && ALIGN.is_multiple_of(off as usize),
                "offset align {off}"
            );
        }
        let mut data = Aligned::zeroed(2 * ALIGN, ALIGN);
        data.fill(0x5a);
        let (res, _) = file.write_all_at(data, ALIGN as u64).await;
        res.unwrap();
        file.fdatasync().await.unwrap();
        let (res, back) = file
            .read_exact_at(Aligned::zeroed(2 * ALIGN, ALIGN), ALIGN as u64)
            .await;
        res.unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0x5a));
        let (res, bufs) = file
            .readv_at(
                vec![Aligned::zeroed(ALIGN, ALIGN), Aligned::zeroed(ALIGN, ALIGN)],
                ALIGN as u64,
            )
            .await;
        assert_eq!(res.unwrap(), 2 * ALIGN);
        assert!(bufs.iter().all(|b| b.as_slice().iter().all(|&x| x == 0x5a)));
        file.close().await.unwrap();
    });
}

fn assert_misaligned(res: io::Result<usize>, what: &str) {
    let e = res.expect_err("a misaligned O_DIRECT request");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains(what),
        "`{e}` does not name the {what}"
    );
}

/// Each misalignment is refused, and before the kernel: the same requests on a `File`
/// whose context is gone (so nothing could reach a kernel) give the same `InvalidInput`
/// rather than the `BrokenPipe` of an operation that tried.
#[test]
fn misaligned_direct_io_is_refused_before_the_kernel() {
    let test = "misaligned_direct_io_is_refused_before_the_kernel";
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx(test, &ctx);
    let Some((_scratch, file)) = direct_file(test, &ctx) else {
        return;
    };
    // What the File checks against: statx's DIOALIGN, or 512.
    let meta = ctx.block_on(file.metadata()).unwrap();
    let mem = meta.dio_mem_align().filter(|&a| a > 0).unwrap_or(512) as usize;
    let off = meta.dio_offset_align().filter(|&a| a > 0).unwrap_or(512) as usize;
    let check = |file: &File, ctx: Option<&AioContext>| {
        let run =
            |f: std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<usize>> + '_>>| {
                match ctx {
                    Some(ctx) => ctx.block_on(f),
                    None => {
                        let mut f = f;
                        match common::poll_once(&mut f) {
                            std::task::Poll::Ready(v) => v,
                            std::task::Poll::Pending => panic!("a checked request pended"),
                        }
                    }
                }
            };
        if mem > 1 {
            let addr = Aligned::zeroed(2 * ALIGN, ALIGN).shifted(1);
            assert_misaligned(
                run(Box::pin(async { file.read_at(addr, 0).await.0 })),
                "address",
            );
            let v = Aligned::zeroed(ALIGN + mem, ALIGN).shifted(mem - 1);
            assert_misaligned(
                run(Box::pin(async { file.write_at(v, 0).await.0 })),
                "address",
            );
        }
        if off > 1 {
            let len = Aligned::zeroed(ALIGN + off / 2, ALIGN);
            assert_misaligned(
                run(Box::pin(async { file.write_at(len, 0).await.0 })),
                "length",
            );
            let good = Aligned::zeroed(ALIGN, ALIGN);
            let at = (off / 2) as u64;
            assert_misaligned(
                run(Box::pin(async { file.read_at(good, at).await.0 })),
                "offset",
            );
            let bufs = vec![
                Aligned::zeroed(ALIGN, ALIGN),
                Aligned::zeroed(off / 2, ALIGN),
            ];
            assert_misaligned(
                run(Box::pin(async { file.writev_at(bufs, 0).await.0 })),
                "length",
            );
        }
    };
    check(&file, Some(&ctx));
    // A second O_DIRECT file whose context is dropped before the requests.
    let tmp = common::new_ctx();
    let orphan = direct_file(test, &tmp);
    drop(tmp);
    if let Some((_s, orphan)) = orphan {
        check(&orphan, None);
        let (res, _) = {
            let mut f = Box::pin(orphan.read_at(Aligned::zeroed(ALIGN, ALIGN), 0));
            match common::poll_once(&mut f) {
                std::task::Poll::Ready(v) => v,
                std::task::Poll::Pending => panic!("pended without a context"),
            }
        };
        let e = res.unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::BrokenPipe,
            "an aligned request tries: {e}"
        );
    }
}
