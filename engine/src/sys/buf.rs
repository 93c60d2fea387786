//! What a write hands to a driver: a [`WriteBuf`], an owned list of shared byte buffers, taken
//! from the worker's [`WriteBufs`].
//!
//! A `WriteBuf` holds a reference-counted handle to every part it sends (an `Rc` clone per part:
//! a non-atomic increment, no copy of the bytes), so a driver that keeps it until the kernel has
//! finished with the write keeps every byte the kernel reads alive and unchanged — whatever the
//! caller does with its own queue meanwhile. It also carries the driver's per-write scratch (the
//! `iovec` array and, for `sendmsg`, the `msghdr`), which must not move while the kernel reads it.
//!
//! Buffers live in slots of an arena: chunks of memory mapped from the OS, each holding a few
//! hundred slots. Taking a buffer takes a free slot (mapping a new chunk only when none is free),
//! dropping it frees the slot; nothing is allocated per write. The arena is bounded by the most
//! writes ever in flight at once (at most one per connection), and [`WriteBufs::trim`] unmaps
//! the chunks that the last two periods did not need, so that after a fan-out to every connection
//! (on io_uring, one write per member in flight at once) the memory goes back to the OS instead
//! of staying in the process as freed heap.

use std::cell::RefCell;
use std::fmt;
use std::mem;
use std::ptr::NonNull;
use std::rc::Rc;

use bytes::Bytes;
use smallvec::SmallVec;

use super::mem::Mmap;
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

/// Parts (and iovecs) a slot holds without allocating; a write with more spills onto the heap.
const INLINE_PARTS: usize = 8;
/// Bytes mapped per chunk of slots.
const CHUNK_BYTES: usize = 256 * 1024;
const SLOTS_PER_CHUNK: usize = CHUNK_BYTES / mem::size_of::<Slot>();

/// One write's storage, at a fixed address in the arena.
struct Slot {
    parts: SmallVec<[Rc<dyn Payload>; INLINE_PARTS]>,
    /// Bytes of the first part not to send (it was partly written before).
    offset: usize,
    /// Bytes to send: every part's length, less `offset`.
    len: usize,
    /// The driver's scratch: one iovec per part, filled when the write is started.
    iov: SmallVec<[libc::iovec; INLINE_PARTS]>,
    /// The driver's scratch for `sendmsg` (io_uring reads it after `write` has returned).
    msg: libc::msghdr,
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
    unsafe { mem::zeroed() }
}

/// The slots: chunks mapped from the OS, and which slots are free.
struct Arena {
    /// `None`: unmapped (after a trim), mapped again when needed.
    chunks: Vec<Option<Mmap>>,
    /// Slots taken, per chunk.
    taken: Vec<u32>,
    /// Free slots of mapped chunks (`chunk * SLOTS_PER_CHUNK + index`).
    free: Vec<u32>,
    in_use: usize,
    /// The most slots taken at once in this trim period and the last.
    peaks: [usize; 2],
}

impl Arena {
    fn slot_ptr(&self, slot: u32) -> NonNull<Slot> {
        let (chunk, index) = (
            slot as usize / SLOTS_PER_CHUNK,
            slot as usize % SLOTS_PER_CHUNK,
        );
        let base = self.chunks[chunk]
            .as_ref()
            .expect("a free or taken slot lies in a mapped chunk")
            .as_ptr()
            .cast::<Slot>();
        // SAFETY: `index < SLOTS_PER_CHUNK`, so the slot lies inside the chunk's mapping.
        NonNull::new(unsafe { base.add(index) }).expect("a mapping is not at address 0")
    }

    /// Maps a chunk (reusing an unmapped index first) and makes its slots free.
    fn grow(&mut self) {
        let chunk = self
            .chunks
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.chunks.len());
        // Like a failed heap allocation: the process is out of memory.
        let map = Mmap::new(CHUNK_BYTES, false).expect("map memory for write buffers");
        if chunk == self.chunks.len() {
            self.chunks.push(Some(map));
            self.taken.push(0);
        } else {
            self.chunks[chunk] = Some(map);
        }
        let first = (chunk * SLOTS_PER_CHUNK) as u32;
        // Lowest slot on top of the stack.
        self.free
            .extend((first..first + SLOTS_PER_CHUNK as u32).rev());
    }

    fn mapped_slots(&self) -> usize {
        self.chunks.iter().flatten().count() * SLOTS_PER_CHUNK
    }
}

/// A worker's pool of write buffers. See the module documentation.
pub struct WriteBufs {
    arena: Rc<RefCell<Arena>>,
}

impl Default for WriteBufs {
    fn default() -> Self {
        WriteBufs::new()
    }
}

impl WriteBufs {
    pub fn new() -> WriteBufs {
        WriteBufs {
            arena: Rc::new(RefCell::new(Arena {
                chunks: Vec::new(),
                taken: Vec::new(),
                free: Vec::new(),
                in_use: 0,
                peaks: [0; 2],
            })),
        }
    }

    /// An empty buffer.
    pub fn take(&self) -> WriteBuf {
        let mut arena = self.arena.borrow_mut();
        if arena.free.is_empty() {
            arena.grow();
        }
        let slot = arena.free.pop().expect("a chunk was just mapped");
        arena.taken[slot as usize / SLOTS_PER_CHUNK] += 1;
        arena.in_use += 1;
        arena.peaks[0] = arena.peaks[0].max(arena.in_use);
        let ptr = arena.slot_ptr(slot);
        // SAFETY: the slot is free — in a mapped chunk, not referred to by any buffer — and
        // `Slot`-sized and -aligned (chunks are page-aligned, slots `size_of::<Slot>()` apart).
        // Writing initialises it without reading what was there.
        unsafe {
            ptr.as_ptr().write(Slot {
                parts: SmallVec::new(),
                offset: 0,
                len: 0,
                iov: SmallVec::new(),
                msg: empty_msghdr(),
            })
        };
        WriteBuf {
            slot: ptr,
            index: slot,
            arena: Rc::clone(&self.arena),
        }
    }

    /// Unmaps chunks with no buffer taken beyond what the last two periods needed at once
    /// (call it every few seconds): nothing stays mapped after a quiet spell, while a steady
    /// stream of fan-outs keeps its slots.
    pub fn trim(&self) {
        let mut arena = self.arena.borrow_mut();
        let needed = arena.peaks[0].max(arena.peaks[1]);
        let mut mapped = arena.mapped_slots();
        let mut unmapped = Vec::new();
        for chunk in (0..arena.chunks.len()).rev() {
            if mapped < needed + SLOTS_PER_CHUNK {
                break;
            }
            if arena.chunks[chunk].is_some() && arena.taken[chunk] == 0 {
                unmapped.push(chunk);
                mapped -= SLOTS_PER_CHUNK;
            }
        }
        if !unmapped.is_empty() {
            let mut gone = vec![false; arena.chunks.len()];
            for &chunk in &unmapped {
                gone[chunk] = true;
            }
            arena
                .free
                .retain(|&slot| !gone[slot as usize / SLOTS_PER_CHUNK]);
            for chunk in unmapped {
                // Its slots are all free (none taken) and out of the free list: nothing refers
                // into it.
                arena.chunks[chunk] = None;
            }
            while arena.chunks.last().is_some_and(Option::is_none) {
                arena.chunks.pop();
                arena.taken.pop();
            }
            arena.chunks.shrink_to_fit();
            arena.taken.shrink_to_fit();
            arena.free.shrink_to_fit();
        }
        let in_use = arena.in_use;
        arena.peaks = [in_use, arena.peaks[0]];
    }

    /// Slots mapped, and buffers taken (and not dropped yet).
    #[cfg(test)]
    pub fn slots(&self) -> (usize, usize) {
        let arena = self.arena.borrow();
        (arena.mapped_slots(), arena.in_use)
    }
}

/// An owned vectored write: the parts to send, in order, and how much of the first one was
/// already sent. See the module documentation.
pub struct WriteBuf {
    slot: NonNull<Slot>,
    index: u32,
    arena: Rc<RefCell<Arena>>,
}

impl fmt::Debug for WriteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot();
        f.debug_struct("WriteBuf")
            .field("parts", &slot.parts.len())
            .field("offset", &slot.offset)
            .field("len", &slot.len)
            .finish()
    }
}

impl Drop for WriteBuf {
    fn drop(&mut self) {
        // SAFETY: the slot was initialised by `take`, only this buffer refers to it, and it is
        // dropped exactly once, here; its chunk stays mapped while the slot is taken.
        unsafe { self.slot.as_ptr().drop_in_place() };
        let mut arena = self.arena.borrow_mut();
        arena.taken[self.index as usize / SLOTS_PER_CHUNK] -= 1;
        arena.in_use -= 1;
        arena.free.push(self.index);
    }
}

impl WriteBuf {
    fn slot(&self) -> &Slot {
        // SAFETY: the slot is initialised and stays mapped while this buffer exists (a chunk is
        // unmapped only with no slot taken), and only this buffer refers to it.
        unsafe { self.slot.as_ref() }
    }

    fn slot_mut(&mut self) -> &mut Slot {
        // SAFETY: as in `slot`; `&mut self` makes the access unique.
        unsafe { self.slot.as_mut() }
    }

    /// Appends a part. `skip` bytes of its start are not sent; only the first part may skip
    /// (what a short write already sent of it).
    pub fn push(&mut self, part: Rc<dyn Payload>, skip: usize) {
        let slot = self.slot_mut();
        let len = part.bytes().len();
        debug_assert!(
            skip == 0 || slot.parts.is_empty(),
            "only the first part skips"
        );
        let skip = skip.min(len);
        if slot.parts.is_empty() {
            slot.offset = skip;
        }
        slot.len += len - skip;
        slot.parts.push(part);
    }

    /// Bytes this write offers.
    pub fn len(&self) -> usize {
        self.slot().len
    }

    pub fn is_empty(&self) -> bool {
        self.slot().len == 0
    }

    /// Number of parts (iovecs).
    pub fn parts(&self) -> usize {
        self.slot().parts.len()
    }

    /// The bytes this write offers, copied (for tests and fakes of a driver).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let slot = self.slot();
        let mut out = Vec::with_capacity(slot.len);
        for (index, part) in slot.parts.iter().enumerate() {
            let skip = if index == 0 { slot.offset } else { 0 };
            out.extend_from_slice(&part.bytes()[skip..]);
        }
        out
    }

    /// Fills the iovec scratch from the parts (at most [`MAX_IOVECS`]) and returns it.
    pub(super) fn iovecs(&mut self) -> &[libc::iovec] {
        let slot = self.slot_mut();
        slot.iov.clear();
        for (index, part) in slot.parts.iter().take(MAX_IOVECS).enumerate() {
            let bytes = part.bytes();
            let bytes = if index == 0 {
                &bytes[slot.offset..]
            } else {
                bytes
            };
            slot.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        &slot.iov
    }

    /// Fills the iovecs and the `msghdr` pointing at them, and returns the header's address. It
    /// stays valid, as do the iovecs and the bytes they point at, until the buffer is dropped:
    /// the header and the iovecs (inline, or spilled onto the heap) stay where they are in the
    /// buffer's slot however the `WriteBuf` moves, and each part is held by an `Rc` (see
    /// [`Payload`]).
    pub(super) fn msghdr(&mut self) -> *const libc::msghdr {
        self.iovecs();
        let slot = self.slot_mut();
        slot.msg = empty_msghdr();
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = slot.iov.len() as _;
        &slot.msg
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
        let bufs = WriteBufs::new();
        let mut buf = bufs.take();
        buf.push(part(b"hello"), 3);
        buf.push(part(b"world"), 0);
        assert_eq!(buf.len(), 7);
        assert_eq!(buf.parts(), 2);
        assert_eq!(buf.to_vec(), b"loworld");
        let iov = buf.iovecs();
        assert_eq!(iov[0].iov_len, 2);
        assert_eq!(iov[1].iov_len, 5);
    }

    #[test]
    fn the_buffer_holds_its_parts_until_dropped() {
        let bytes: Rc<dyn Payload> = Rc::new(vec![1u8; 10]);
        let bufs = WriteBufs::new();
        let mut buf = bufs.take();
        buf.push(Rc::clone(&bytes), 0);
        assert_eq!(Rc::strong_count(&bytes), 2);
        let moved = buf;
        assert_eq!(Rc::strong_count(&bytes), 2);
        drop(moved);
        assert_eq!(Rc::strong_count(&bytes), 1);
        assert_eq!(bufs.slots().1, 0);
    }

    #[test]
    fn many_parts_spill_and_stay_contiguous() {
        let bufs = WriteBufs::new();
        let mut buf = bufs.take();
        for _ in 0..100 {
            buf.push(part(b"ab"), 0);
        }
        let msg = buf.msghdr();
        // SAFETY: `msg` points into `buf`, alive and unchanged here.
        let msg = unsafe { &*msg };
        assert_eq!(msg.msg_iovlen, 100);
        // SAFETY: the header points at its 100 iovecs, kept in `buf`.
        let iov = unsafe { std::slice::from_raw_parts(msg.msg_iov, 100) };
        assert!(iov.iter().all(|v| v.iov_len == 2));
    }

    #[test]
    fn the_arena_grows_with_the_writes_in_flight_and_gives_chunks_back_when_idle() {
        let bufs = WriteBufs::new();
        let payload: Rc<dyn Payload> = Rc::new(vec![7u8; 100]);
        // A fan-out: 2,000 writes in flight at once.
        let mut in_flight: Vec<WriteBuf> = (0..2_000)
            .map(|_| {
                let mut buf = bufs.take();
                buf.push(Rc::clone(&payload), 0);
                buf
            })
            .collect();
        let (mapped, taken) = bufs.slots();
        assert_eq!(taken, 2_000);
        assert!((2_000..2_000 + SLOTS_PER_CHUNK).contains(&mapped));
        // Busy: completions and the next fan-out reuse the slots, nothing new is mapped.
        in_flight.clear();
        bufs.trim();
        in_flight.extend((0..2_000).map(|_| bufs.take()));
        assert_eq!(bufs.slots().0, mapped);
        in_flight.clear();
        assert_eq!(Rc::strong_count(&payload), 1);
        // Quiet: two periods later every chunk is unmapped.
        bufs.trim();
        bufs.trim();
        bufs.trim();
        assert_eq!(bufs.slots(), (0, 0));
        // And it grows again on demand.
        let buf = bufs.take();
        assert_eq!(bufs.slots(), (SLOTS_PER_CHUNK, 1));
        drop(buf);
    }

    #[test]
    fn a_chunk_with_a_buffer_taken_stays_mapped() {
        let bufs = WriteBufs::new();
        let all: Vec<WriteBuf> = (0..SLOTS_PER_CHUNK * 3).map(|_| bufs.take()).collect();
        let kept: Vec<WriteBuf> = all.into_iter().step_by(SLOTS_PER_CHUNK).collect();
        for _ in 0..3 {
            bufs.trim();
        }
        // One buffer still taken in each of the three chunks.
        assert_eq!(bufs.slots(), (3 * SLOTS_PER_CHUNK, 3));
        drop(kept);
        for _ in 0..3 {
            bufs.trim();
        }
        assert_eq!(bufs.slots(), (0, 0));
    }

    #[test]
    fn buffers_outliving_their_pool_stay_valid() {
        let bufs = WriteBufs::new();
        let mut buf = bufs.take();
        drop(bufs);
        buf.push(part(b"still here"), 0);
        assert_eq!(buf.to_vec(), b"still here");
    }
}
