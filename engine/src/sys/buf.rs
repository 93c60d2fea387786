//! What a write hands to a driver: [`WriteBuf`], an owned list of shared byte buffers.
//!
//! A `WriteBuf` holds a reference-counted handle to every part it sends (an `Rc` clone per part:
//! a non-atomic increment, no copy of the bytes), so a driver that keeps it until the kernel has
//! finished with the write keeps every byte the kernel reads alive and unchanged — whatever the
//! caller does with its own queue meanwhile. It also carries the driver's per-write scratch (the
//! `iovec` array and, for `sendmsg`, the `msghdr`), boxed so that their address does not change
//! while the buffer moves between the worker and the driver. Buffers are pooled by the worker, so
//! a steady stream of writes allocates nothing.

use std::fmt;
use std::mem;
use std::rc::Rc;

use bytes::Bytes;

use super::MAX_IOVECS;

/// Bytes a [`WriteBuf`] can send.
///
/// The slice `bytes` returns must stay where it is and unchanged for as long as the value is
/// alive and shared: it is read by the kernel after `bytes` has returned, through an `Rc` that
/// the driver holds. Safe code cannot break this — a value behind an `Rc` clone cannot be mutated
/// or dropped, and interior mutability cannot hand out a plain `&[u8]` with the lifetime of
/// `&self` — so the trait is safe to implement.
pub trait Payload {
    fn bytes(&self) -> &[u8];
}

impl Payload for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Payload for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Parts kept allocated in a buffer that goes back to a pool (a large write's list is dropped).
const POOLED_PARTS: usize = 64;

/// An owned vectored write: the parts to send, in order, and how much of the first one was
/// already sent. See the module documentation.
pub struct WriteBuf(Box<Inner>);

struct Inner {
    parts: Vec<Rc<dyn Payload>>,
    /// Bytes of the first part not to send (it was partly written before).
    offset: usize,
    /// Bytes to send: every part's length, less `offset`.
    len: usize,
    /// The driver's scratch: one iovec per part, filled when the write is started.
    iov: Vec<libc::iovec>,
    /// The driver's scratch for `sendmsg` (io_uring reads it after `write` has returned).
    msg: libc::msghdr,
}

impl Default for WriteBuf {
    fn default() -> Self {
        WriteBuf::new()
    }
}

impl fmt::Debug for WriteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuf")
            .field("parts", &self.0.parts.len())
            .field("offset", &self.0.offset)
            .field("len", &self.0.len)
            .finish()
    }
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
    unsafe { mem::zeroed() }
}

impl WriteBuf {
    pub fn new() -> WriteBuf {
        WriteBuf(Box::new(Inner {
            parts: Vec::new(),
            offset: 0,
            len: 0,
            iov: Vec::new(),
            msg: empty_msghdr(),
        }))
    }

    /// Appends a part. `skip` bytes of its start are not sent; only the first part may skip
    /// (what a short write already sent of it).
    pub fn push(&mut self, part: Rc<dyn Payload>, skip: usize) {
        let len = part.bytes().len();
        debug_assert!(
            skip == 0 || self.0.parts.is_empty(),
            "only the first part skips"
        );
        let skip = skip.min(len);
        if self.0.parts.is_empty() {
            self.0.offset = skip;
        }
        self.0.len += len - skip;
        self.0.parts.push(part);
    }

    /// Bytes this write offers.
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Number of parts (iovecs).
    pub fn parts(&self) -> usize {
        self.0.parts.len()
    }

    /// Drops every part (so the bytes can be freed) and keeps the allocations for the next write,
    /// unless a large write grew them.
    pub fn clear(&mut self) {
        let inner = &mut *self.0;
        inner.parts.clear();
        inner.iov.clear();
        inner.offset = 0;
        inner.len = 0;
        inner.msg = empty_msghdr();
        if inner.parts.capacity() > POOLED_PARTS {
            inner.parts.shrink_to(POOLED_PARTS);
            inner.iov.shrink_to(POOLED_PARTS);
        }
    }

    /// The bytes this write offers, copied (for tests and fakes of a driver).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len);
        for (index, part) in self.0.parts.iter().enumerate() {
            let skip = if index == 0 { self.0.offset } else { 0 };
            out.extend_from_slice(&part.bytes()[skip..]);
        }
        out
    }

    /// Fills the iovec scratch from the parts (at most [`MAX_IOVECS`]) and returns it.
    pub(super) fn iovecs(&mut self) -> &[libc::iovec] {
        let inner = &mut *self.0;
        inner.iov.clear();
        for (index, part) in inner.parts.iter().take(MAX_IOVECS).enumerate() {
            let bytes = part.bytes();
            let bytes = if index == 0 {
                &bytes[inner.offset..]
            } else {
                bytes
            };
            inner.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        &inner.iov
    }

    /// Fills the iovecs and the `msghdr` pointing at them, and returns the header's address. It
    /// stays valid, as do the iovecs and the bytes they point at, until the buffer is cleared or
    /// dropped: the header and iovecs live in this buffer's box (moving the `WriteBuf` does not
    /// move them) and each part is held by an `Rc` (see [`Payload`]).
    pub(super) fn msghdr(&mut self) -> *const libc::msghdr {
        self.iovecs();
        let inner = &mut *self.0;
        inner.msg = empty_msghdr();
        inner.msg.msg_iov = inner.iov.as_mut_ptr();
        inner.msg.msg_iovlen = inner.iov.len() as _;
        &inner.msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: &'static [u8]) -> Rc<dyn Payload> {
        Rc::new(Bytes::from_static(bytes))
    }

    #[test]
    fn offset_applies_to_the_first_part_only() {
        let mut buf = WriteBuf::new();
        buf.push(part(b"hello"), 3);
        buf.push(part(b"world"), 0);
        assert_eq!(buf.len(), 7);
        assert_eq!(buf.parts(), 2);
        let iov = buf.iovecs();
        assert_eq!(iov[0].iov_len, 2);
        assert_eq!(iov[1].iov_len, 5);
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.parts(), 0);
    }

    #[test]
    fn the_buffer_holds_its_parts_until_cleared() {
        let bytes: Rc<dyn Payload> = Rc::new(vec![1u8; 10]);
        let mut buf = WriteBuf::new();
        buf.push(Rc::clone(&bytes), 0);
        assert_eq!(Rc::strong_count(&bytes), 2);
        let moved = buf;
        assert_eq!(Rc::strong_count(&bytes), 2);
        let mut buf = moved;
        buf.clear();
        assert_eq!(Rc::strong_count(&bytes), 1);
    }
}
