//! A ring whose kernel lacks the opcodes ([UR11] (`backend/uring.rs`)): every typed operation
//! runs its blocking lowering on the worker pool and completes on the home thread (the
//! driver, told that nothing is supported, also panics if a typed entry reaches it).

use crate::backend::{Backend, Driver};
use crate::context::AioContext;
use crate::fs::{FallocateMode, File, OpenOptions};

#[test]
fn operations_the_ring_lacks_run_on_the_pool() {
    let ctx = match AioContext::builder().backend(Backend::IoUring).build() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("skipped operations_the_ring_lacks_run_on_the_pool: no io_uring: {e}");
            return;
        }
    };
    ctx.block_on(async {}); // binds the home thread
    match &mut ctx.home().driver {
        Driver::Uring(d) => d.pretend_no_opcodes(),
        Driver::Epoll(_) => unreachable!("built with Backend::IoUring"),
    }
    let dir = std::env::temp_dir().join(format!("aioctx-fallback-{}", std::process::id()));
    let path = dir.join("f");
    let c = ctx.clone();
    ctx.block_on(async move {
        c.mkdir(&dir, 0o700).await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(&c, &path)
            .await?;
        let (res, _) = file.write_all_at(b"pool".to_vec(), 0).await;
        res?;
        file.set_len(4096).await?;
        file.fallocate(FallocateMode::Allocate { keep_size: true }, 0, 8192)
            .await?;
        assert_eq!(file.metadata().await?.len(), 4096);
        let (res, buf) = file.read_at(Vec::with_capacity(4), 0).await;
        assert_eq!((res?, buf), (4, b"pool".to_vec()));
        file.fsync().await?;
        file.close().await?;
        let again = File::open(&c, &path).await?;
        drop(again); // its CLOSE falls back to the pool too
        c.unlink(&path).await?;
        c.remove_dir(&dir).await?;
        Ok::<_, std::io::Error>(())
    })
    .unwrap();
}
