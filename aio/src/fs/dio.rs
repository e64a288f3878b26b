//! O_DIRECT alignment: where it comes from, and the check every read and write of an
//! O_DIRECT [`File`](super::File) makes before anything reaches the kernel.

use std::io;
use std::os::fd::RawFd;

use super::meta::Metadata;

/// The alignment O_DIRECT needs of a buffer's address (`mem`) and of offsets and
/// lengths (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DioAlign {
    pub(crate) mem: u64,
    pub(crate) off: u64,
}

/// When the kernel reports nothing: the smallest logical block size there is.
const FALLBACK: u64 = 512;

impl DioAlign {
    /// From `statx`'s `STATX_DIOALIGN` where reported (non-zero); else a block
    /// device's logical block size (`BLKSSZGET`); else 512.
    pub(crate) fn of(meta: &Metadata, fd: RawFd) -> Self {
        if let (Some(mem), Some(off)) = (meta.dio_mem_align(), meta.dio_offset_align())
            && mem > 0
            && off > 0
        {
            return Self {
                mem: mem.into(),
                off: off.into(),
            };
        }
        let mut block: libc::c_int = 0;
        let block = if meta.file_type() == super::FileType::BlockDevice
            // SAFETY: BLKSSZGET writes one int into `block`, which outlives the call.
            && unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut block) } == 0
            && block > 0
        {
            block as u64
        } else {
            FALLBACK
        };
        Self {
            mem: block,
            off: block,
        }
    }

    /// Checks one transfer (rule of `file.rs`): `InvalidInput` naming what is
    /// misaligned.
    pub(crate) fn check(&self, what: &str, ptr: usize, len: usize, off: u64) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if !(ptr as u64).is_multiple_of(self.mem) {
            return bad(format!(
                "{what}: O_DIRECT buffer address {ptr:#x} is not a multiple of the file's \
                 memory alignment {}",
                self.mem
            ));
        }
        if !(len as u64).is_multiple_of(self.off) {
            return bad(format!(
                "{what}: O_DIRECT length {len} is not a multiple of the file's offset \
                 alignment {}",
                self.off
            ));
        }
        if !off.is_multiple_of(self.off) {
            return bad(format!(
                "{what}: O_DIRECT offset {off} is not a multiple of the file's offset \
                 alignment {}",
                self.off
            ));
        }
        Ok(())
    }
}
