//! A [`File`]'s reads and writes on a registered buffer ([`FixedBuf`] of a
//! [`FixedBufPool`](crate::FixedBufPool)): `READ_FIXED`/`WRITE_FIXED` where the pool is its
//! context's ring's buffer table, a plain read or write otherwise ([FX3]
//! (`io/fixed.rs`)); O_DIRECT files check the buffer as for any other ([FL4]
//! (`fs/file.rs`)).

use crate::io::FixedBuf;
use crate::io_buf::{IoBuf, IoBufMut};

use super::File;
use super::file_op::FileOp;

impl File {
    /// Reads at `offset` into `buf`, up to its capacity, as
    /// [`AioContext::read_fixed_at`](crate::AioContext::read_fixed_at): `READ_FIXED` when
    /// its pool is the buffer table of this file's context's ring, a plain read
    /// otherwise (epoll: `pread`). The buffer's length becomes what was read. A pool's
    /// buffers are page-aligned, so they serve O_DIRECT files.
    ///
    /// ```
    /// use aioctx_aio::{AioContext, FixedBufPool, OpenOptions};
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-filefixed-{}", std::process::id()));
    /// let ctx = AioContext::new()?;
    /// let pool = FixedBufPool::new(&ctx, 1, 4096)?;
    /// let c = ctx.clone();
    /// let p = path.clone();
    /// let got = ctx.block_on(async move {
    ///     let file = OpenOptions::new().read(true).write(true).create(true).open(&c, &p).await?;
    ///     let mut buf = pool.try_get().expect("a free buffer");
    ///     buf.set_len(5);
    ///     buf.copy_from_slice(b"fixed");
    ///     let (res, buf) = file.write_fixed_at(buf, 0).await;
    ///     res?;
    ///     let (res, buf) = file.read_fixed_at(buf, 0).await;
    ///     res?;
    ///     Ok::<_, std::io::Error>(buf.to_vec())
    /// })?;
    /// assert_eq!(got, b"fixed");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`read_at`](Self::read_at).
    pub fn read_fixed_at(&self, mut buf: FixedBuf, offset: u64) -> FileOp<FixedBuf> {
        if let Some(dio) = &self.dio {
            let (ptr, len) = (buf.stable_mut_ptr() as usize, buf.bytes_total());
            if let Err(e) = dio.check("read_fixed_at", ptr, len, offset) {
                return FileOp::refused(e, buf);
            }
        }
        match self.context() {
            Ok(ctx) => FileOp::op(ctx.read_fixed_on(self.share(), buf, offset)),
            Err(e) => FileOp::refused(e, buf),
        }
    }

    /// Writes `buf`'s contents (its first `len()` bytes) at `offset`, as
    /// [`AioContext::write_fixed_at`](crate::AioContext::write_fixed_at): `WRITE_FIXED`
    /// when its pool is the buffer table of this file's context's ring, a plain write
    /// otherwise (epoll: `pwrite`). May be short.
    ///
    /// # Errors
    /// As for [`write_at`](Self::write_at).
    pub fn write_fixed_at(&self, buf: FixedBuf, offset: u64) -> FileOp<FixedBuf> {
        if let Some(dio) = &self.dio {
            let (ptr, len) = (buf.stable_ptr() as usize, buf.bytes_init());
            if let Err(e) = dio.check("write_fixed_at", ptr, len, offset) {
                return FileOp::refused(e, buf);
            }
        }
        match self.context() {
            Ok(ctx) => FileOp::op(ctx.write_fixed_on(self.share(), buf, offset)),
            Err(e) => FileOp::refused(e, buf),
        }
    }
}
