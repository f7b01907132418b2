//! Keeping the pages of the frame loop's buffers mapped from one frame to the next.
//!
//! Every run of a graph allocates and frees the same tensors in the same order. musl's malloc
//! (the static build for the boards) hands freed blocks of more than a few KiB back to the kernel,
//! and glibc's does so whenever the free top of a heap grows past its trim threshold, so the next
//! frame writes to fresh pages: one page fault per 4 KiB. Counted with the process's minor faults
//! over `edgeseg bench` runs of 20 and 120 frames (docs/performance.md): 9 300 faults per frame
//! for the SAM phantom and 3 800 for the f32 U-Net on the static x86-64 musl build, about 1 000
//! per frame for the int8 U-Net on the glibc build. The static build ran those graphs at half
//! the speed of the glibc build.
//!
//! - glibc builds: [`configure`] sets two of malloc's parameters at start-up, and glibc then keeps
//!   and reuses freed memory for requests of any size, most recently freed first.
//! - musl builds (`main.rs` installs it as the global allocator there): [`Retaining`] keeps
//!   blocks of [`MIN_BLOCK`] to [`MAX_BLOCK`] bytes when they are freed and gives one back for
//!   the next request of exactly the same size and alignment, so a graph's steady state runs on
//!   pages it has already touched. It holds at most [`SLOTS`] blocks and [`MAX_BYTES`] bytes,
//!   evicting the oldest first, and frees any block no request took within the next [`MAX_AGE`]
//!   frees it kept, so sizes that stop recurring (a closed stream's frames, a model no longer
//!   run) go back to the system. Smaller blocks go straight to the system allocator. Blocks are
//!   kept only from the first graph run on ([`keep_from_now`], called by the engine): loading a
//!   model frees many large blocks of sizes that never come back, and keeping those more than
//!   doubled the peak memory of loading the SAM phantom (52 → 120 MB).
//!
//! The cache is not used on glibc: there, a block freed by one operator is reused, still in the
//! CPU's caches, for the next operator's output whatever its size, where the cache hands out
//! the block of the same tensor a frame ago. With the cache on glibc, the f32 SAM encoder was
//! slower in each of three interleaved pairs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The smallest block kept for reuse, bytes: musl's malloc also unmaps the groups it carves
/// blocks of 8–128 KiB from (with 64 KiB, the SAM phantom still faulted 1 600 times a frame).
pub const MIN_BLOCK: usize = 8 << 10;
/// The largest block kept for reuse, bytes.
pub const MAX_BLOCK: usize = 64 << 20;
/// The most blocks kept at once.
pub const SLOTS: usize = 256;
/// The most bytes kept at once.
pub const MAX_BYTES: usize = 256 << 20;
/// Kept frees after which a kept block no request took is freed: several frames of the SAM
/// phantom, which frees about 270 blocks of 64 KiB or more a frame.
pub const MAX_AGE: u64 = 8192;

/// Tells glibc's malloc to keep freed memory for reuse instead of returning it to the kernel:
/// blocks up to 32 MiB (its largest setting) come from its heaps rather than from mappings of
/// their own, and up to [`MAX_BYTES`] free at the top of a heap stay mapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn configure() {
    // SAFETY: mallopt only sets malloc's parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MAX_BYTES as libc::c_int);
    }
}

/// Whether freed large blocks are kept (set by the first graph run).
static KEEPING: AtomicBool = AtomicBool::new(false);

/// Keeps freed large blocks from now on (the engine calls this when it runs a graph).
pub fn keep_from_now() {
    KEEPING.store(true, Ordering::Relaxed);
}

/// A freed block kept for reuse.
#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    size: usize,
    align: usize,
    /// The value of [`Kept::frees`] when it was kept.
    freed_at: u64,
}

/// The blocks kept, in no particular order.
struct Kept {
    blocks: [Block; SLOTS],
    len: usize,
    bytes: usize,
    /// Large frees so far: the clock that ages kept blocks.
    frees: u64,
}

// SAFETY: the blocks are owned by the cache alone (freed by their owners before being kept), so
// moving the cache between threads moves nothing shared.
unsafe impl Send for Kept {}

impl Kept {
    /// Takes out a kept block of exactly this size and alignment.
    fn take(&mut self, layout: Layout) -> Option<*mut u8> {
        let i = self.blocks[..self.len]
            .iter()
            .position(|b| b.size == layout.size() && b.align == layout.align())?;
        Some(self.remove(i).ptr)
    }

    /// Gives block `i` back to the system.
    fn free(&mut self, i: usize) {
        let b = self.remove(i);
        // SAFETY: kept blocks came from `System` with exactly this size and alignment.
        unsafe { System.dealloc(b.ptr, Layout::from_size_align_unchecked(b.size, b.align)) };
    }

    fn remove(&mut self, i: usize) -> Block {
        let block = self.blocks[i];
        self.len -= 1;
        self.blocks[i] = self.blocks[self.len];
        self.bytes -= block.size;
        block
    }

    /// Keeps a freed block, first freeing the blocks too old to keep and, oldest first, those it
    /// needs room from.
    fn keep(&mut self, block: Block) {
        self.frees += 1;
        let mut i = 0;
        while i < self.len {
            if self.frees - self.blocks[i].freed_at > MAX_AGE {
                self.free(i);
            } else {
                i += 1;
            }
        }
        while self.len == SLOTS || self.bytes + block.size > MAX_BYTES {
            let Some(oldest) = (0..self.len).min_by_key(|&i| self.blocks[i].freed_at) else {
                break;
            };
            self.free(oldest);
        }
        self.blocks[self.len] = Block {
            freed_at: self.frees,
            ..block
        };
        self.len += 1;
        self.bytes += block.size;
    }
}

/// The system allocator with a cache of large freed blocks (the module doc says why and where).
pub struct Retaining {
    kept: Mutex<Kept>,
}

impl Retaining {
    pub const fn new() -> Self {
        const EMPTY: Block = Block {
            ptr: std::ptr::null_mut(),
            size: 0,
            align: 0,
            freed_at: 0,
        };
        Self {
            kept: Mutex::new(Kept {
                blocks: [EMPTY; SLOTS],
                len: 0,
                bytes: 0,
                frees: 0,
            }),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        // Nothing panics while the lock is held; a poisoned lock still holds a consistent cache.
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn retained(layout: Layout) -> bool {
        (MIN_BLOCK..=MAX_BLOCK).contains(&layout.size())
    }

    /// The number of blocks and bytes kept now.
    pub fn kept_now(&self) -> (usize, usize) {
        let kept = self.kept();
        (kept.len, kept.bytes)
    }
}

impl Default for Retaining {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block handed out is either fresh from `System` with the requested layout or was
// allocated by `System` with exactly that size and alignment and freed by its owner; every block
// freed goes back to `System` with the layout it was allocated with, or is kept for reuse.
unsafe impl GlobalAlloc for Retaining {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::retained(layout) {
            if let Some(ptr) = self.kept().take(layout) {
                return ptr;
            }
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::retained(layout) {
            if let Some(ptr) = self.kept().take(layout) {
                unsafe { ptr.write_bytes(0, layout.size()) };
                return ptr;
            }
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::retained(layout) || !KEEPING.load(Ordering::Relaxed) {
            return unsafe { System.dealloc(ptr, layout) };
        }
        let block = Block {
            ptr,
            size: layout.size(),
            align: layout.align(),
            freed_at: 0,
        };
        self.kept().keep(block);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !Self::retained(layout) && !Self::retained(new) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let moved = unsafe { self.alloc(new) };
        if !moved.is_null() {
            unsafe {
                moved.copy_from_nonoverlapping(ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A cache of its own, keeping from now on (the flag is process-wide and only ever set).
    fn retaining() -> Retaining {
        keep_from_now();
        Retaining::new()
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_layout_zeroed_if_asked() {
        let a = retaining();
        let l = layout(MIB, 64);
        unsafe {
            let p = a.alloc(l);
            p.write_bytes(7, l.size());
            a.dealloc(p, l);
            assert_eq!(a.kept_now(), (1, MIB));
            let q = a.alloc_zeroed(l);
            assert_eq!(q, p);
            assert_eq!(a.kept_now(), (0, 0));
            assert!(std::slice::from_raw_parts(q, l.size())
                .iter()
                .all(|&b| b == 0));
            a.dealloc(q, l);
        }
    }

    #[test]
    fn other_sizes_and_alignments_and_small_blocks_are_not_served_from_the_cache() {
        let a = retaining();
        unsafe {
            let l = layout(MIB, 64);
            let p = a.alloc(l);
            a.dealloc(p, l);
            for other in [layout(MIB + 4, 64), layout(MIB, 128)] {
                let before = a.kept_now();
                let q = a.alloc(other);
                assert_eq!(a.kept_now(), before, "{other:?} took a kept block");
                a.dealloc(q, other);
            }
            assert_eq!(a.kept_now(), (3, 3 * MIB + 4));
            let small = layout(MIN_BLOCK - 1, 8);
            let s = a.alloc(small);
            a.dealloc(s, small);
            assert_eq!(a.kept_now().0, 3);
        }
    }

    #[test]
    fn blocks_no_request_takes_are_freed_after_max_age_large_frees() {
        let a = retaining();
        let (stale, busy) = (layout(2 * MIB, 64), layout(MIB, 64));
        unsafe {
            let s = a.alloc(stale);
            a.dealloc(s, stale);
            for _ in 0..MAX_AGE {
                let b = a.alloc(busy);
                a.dealloc(b, busy);
            }
            assert_eq!(a.kept_now(), (2, 3 * MIB), "not yet older than MAX_AGE");
            let b = a.alloc(busy);
            a.dealloc(b, busy);
            assert_eq!(a.kept_now(), (1, MIB));
        }
    }

    #[test]
    fn the_cache_holds_at_most_slots_blocks_and_max_bytes_evicting_the_oldest() {
        let a = retaining();
        unsafe {
            let sizes: Vec<Layout> = (0..=SLOTS)
                .map(|i| layout(MIN_BLOCK + 64 * i, 64))
                .collect();
            let blocks: Vec<*mut u8> = sizes.iter().map(|&l| a.alloc(l)).collect();
            for (&p, &l) in blocks.iter().zip(&sizes) {
                a.dealloc(p, l);
            }
            assert_eq!(a.kept_now().0, SLOTS);
            // The first freed is the one evicted: its layout is no longer served from the cache.
            let first = a.alloc(sizes[0]);
            assert_eq!(a.kept_now().0, SLOTS);
            a.dealloc(first, sizes[0]);

            let big = layout(MAX_BLOCK, 64);
            let blocks: Vec<*mut u8> = (0..MAX_BYTES / MAX_BLOCK + 1)
                .map(|_| a.alloc(big))
                .collect();
            for p in blocks {
                a.dealloc(p, big);
            }
            assert!(a.kept_now().1 <= MAX_BYTES);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_cache_threshold() {
        let a = retaining();
        unsafe {
            let l = layout(MIN_BLOCK / 2, 16);
            let p = a.alloc(l);
            for i in 0..l.size() {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, l, 2 * MIN_BLOCK);
            let r = a.realloc(q, layout(2 * MIN_BLOCK, 16), MIN_BLOCK / 4);
            assert!((0..MIN_BLOCK / 4).all(|i| *r.add(i) == i as u8));
            a.dealloc(r, layout(MIN_BLOCK / 4, 16));
            assert_eq!(a.kept_now(), (1, 2 * MIN_BLOCK));
        }
    }
}
