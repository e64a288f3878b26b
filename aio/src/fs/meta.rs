//! [`Metadata`]: what `statx` says about an open file.

/// The kind of a file (`S_IFMT` of its mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A FIFO (named or anonymous pipe).
    Fifo,
    /// A socket.
    Socket,
    /// A kind this crate does not know.
    Unknown,
}

/// An open file's metadata, from `statx` (QEMU reads the same through `fstat` and
/// `raw_probe_alignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    size: u64,
    kind: FileType,
    mode: u32,
    blksize: u32,
    dio: Option<(u32, u32)>,
}

impl Metadata {
    pub(crate) fn from_statx(st: &libc::statx) -> Self {
        let fmt = u32::from(st.stx_mode) & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            _ => FileType::Unknown,
        };
        let dio = (st.stx_mask & libc::STATX_DIOALIGN != 0)
            .then_some((st.stx_dio_mem_align, st.stx_dio_offset_align));
        Self {
            size: st.stx_size,
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            blksize: st.stx_blksize,
            dio,
        }
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The kind of file.
    pub fn file_type(&self) -> FileType {
        self.kind
    }

    /// The permission bits (`mode & 0o7777`: permissions, set-id and sticky bits).
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// The preferred I/O block size (`st_blksize`).
    pub fn blksize(&self) -> u32 {
        self.blksize
    }

    /// The alignment O_DIRECT needs of a buffer's address, when the kernel reports it
    /// (`STATX_DIOALIGN`, Linux 6.1 and later, on file systems that fill it in);
    /// `Some(0)` means the file does not support O_DIRECT.
    pub fn dio_mem_align(&self) -> Option<u32> {
        self.dio.map(|d| d.0)
    }

    /// The alignment O_DIRECT needs of offsets and lengths, when reported (as
    /// [`dio_mem_align`](Self::dio_mem_align)).
    pub fn dio_offset_align(&self) -> Option<u32> {
        self.dio.map(|d| d.1)
    }
}
