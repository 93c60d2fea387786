//! Memory mapped from the OS: for what the kernel reads or writes outside a syscall (the io_uring
//! provided-buffer ring) and for the write-buffer arena, whose pages must go back to the OS when
//! it shrinks (memory freed to the allocator would stay in the process's RSS).

use std::io;
use std::ptr::{self, NonNull};

use super::syscall;

/// An anonymous private mapping: page-aligned, zero-filled, unmapped on drop.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// Maps `len` bytes; `populate` commits them at once (MAP_POPULATE), else on first touch.
    /// The pages are not inherited by a forked child (MADV_DONTFORK): the kernel may write into
    /// them.
    pub(crate) fn new(len: usize, populate: bool) -> io::Result<Mmap> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if populate {
            flags |= libc::MAP_POPULATE;
        }
        // SAFETY: an anonymous mapping with no address hint touches no existing memory; the
        // result is checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `p..p+len` is the mapping just created.
        let _ = syscall(unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) });
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mmap { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; its owner guarantees nothing uses
        // it any more (see the users' `Drop` and leak paths).
        let _ = syscall(unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) });
    }
}
