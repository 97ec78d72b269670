//! argon2 memory: the mappings the hashing threads hash into, and the pool that keeps them
//! between hashes and gives them back when idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Block;

use super::HashError;

/// The workers' argon2 buffers not in use right now. A worker takes one for each job and puts it
/// back, and maps one only when none is free, so there are never more buffers than workers.
#[derive(Default)]
pub(super) struct MemoryPool {
    free: Mutex<Vec<HashMemory>>,
    /// Bytes of every buffer, free or in use.
    pub(super) bytes: AtomicUsize,
}

impl MemoryPool {
    pub(super) fn take(&self) -> Option<HashMemory> {
        self.free.lock().ok().and_then(|mut free| free.pop())
    }

    /// Puts a worker's buffer back, unless a stored hash of a larger cost than `keep` blocks
    /// grew it: that one is unmapped now.
    pub(super) fn put(&self, memory: Option<HashMemory>, keep: usize) {
        let Some(memory) = memory else { return };
        if memory.len() > keep {
            self.unmap(memory);
        } else if let Ok(mut free) = self.free.lock() {
            free.push(memory);
        }
    }

    /// The first `blocks` blocks of `memory`, mapped anew when it has fewer; the old mapping
    /// goes first, so a worker never holds two.
    pub(super) fn fit<'m>(
        &self,
        memory: &'m mut Option<HashMemory>,
        blocks: usize,
    ) -> Result<&'m mut [Block], HashError> {
        let fitting = match memory.take() {
            Some(m) if m.len() >= blocks => m,
            old => {
                if let Some(old) = old {
                    self.unmap(old);
                }
                let fresh = HashMemory::new(blocks).map_err(HashError::Memory)?;
                self.bytes.fetch_add(fresh.bytes(), Ordering::Relaxed);
                fresh
            }
        };
        Ok(&mut memory.insert(fitting).blocks()[..blocks])
    }

    /// Unmaps every buffer no worker is using.
    pub(super) fn release_idle(&self) {
        let idle = match self.free.lock() {
            Ok(mut free) => std::mem::take(&mut *free),
            Err(_) => return,
        };
        for memory in idle {
            self.unmap(memory);
        }
    }

    fn unmap(&self, memory: HashMemory) {
        self.bytes.fetch_sub(memory.bytes(), Ordering::Relaxed);
        drop(memory);
    }
}

/// argon2 memory in a mapping of its own, outside the allocator, so that it goes back to the
/// kernel the moment it is dropped: a freed 19 MiB block stays resident inside mimalloc until a
/// later allocation on that thread triggers a purge, which an idle hashing thread never makes.
///
/// The mapping is advised for transparent huge pages. argon2 reads its memory at random, so on
/// 4 KiB pages most reads miss the TLB; on huge pages the same hash takes 3–10% less time
/// (BENCHMARKS.md, "huge pages"). The allocator is built without huge pages (mimalloc's `no_thp`),
/// so the rest of the heap stays small: there every 2 MiB page touched once would stay resident
/// whole. Here all of it is written by every hash anyway.
pub(super) struct HashMemory {
    map: memmap2::MmapMut,
}

// Block is 128 u64 words (argon2's 1 KiB block): any bytes are a valid Block, and a page-aligned
// mapping is aligned for it.
const _: () = assert!(std::mem::size_of::<Block>() == 1024);
const _: () = assert!(std::mem::align_of::<Block>() <= 4096);

impl HashMemory {
    /// `blocks` zeroed blocks (the kernel maps anonymous memory zeroed).
    pub(super) fn new(blocks: usize) -> std::io::Result<Self> {
        let map = memmap2::MmapOptions::new()
            .len(blocks.max(1) * std::mem::size_of::<Block>())
            .map_anon()?;
        // Advised before it is first written, so its pages fault in huge instead of waiting for
        // khugepaged to collapse them.
        #[cfg(target_os = "linux")]
        if let Err(e) = map.advise(memmap2::Advice::HugePage) {
            // THP compiled out or switched off: hashing works the same, only slower.
            tracing::debug!(error = %e, "argon2 memory stays on normal pages");
        }
        Ok(Self { map })
    }

    /// All of its blocks.
    #[allow(unsafe_code)] // the only unsafe code in the crate: bytes of a mapping as blocks
    pub(super) fn blocks(&mut self) -> &mut [Block] {
        let len = self.len();
        // SAFETY: the mapping is page-aligned, so aligned for Block (asserted above); `len`
        // blocks fit in its length; any bytes are a valid Block; and the slice borrows `self`
        // mutably, so the mapping stays mapped and nothing else touches it while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<Block>(), len) }
    }

    /// Its size in blocks.
    fn len(&self) -> usize {
        self.map.len() / std::mem::size_of::<Block>()
    }

    fn bytes(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AnonHugePages (KiB) of the mapping holding `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn anon_huge_kib_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&addr);
            } else if inside && let Some(kib) = line.strip_prefix("AnonHugePages:") {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn argon2_memory_is_on_huge_pages_where_the_kernel_offers_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let mut memory = HashMemory::new(19 * 1024).unwrap();
        let blocks = memory.blocks();
        assert_eq!(blocks.len(), 19 * 1024);
        blocks.fill(Block::new()); // fault it in, as a hash does
        let huge = anon_huge_kib_at(blocks.as_ptr() as usize + (8 << 20));
        if thp.contains("[never]") || thp.is_empty() {
            assert_eq!(huge, 0, "THP is off, yet {huge} KiB are huge");
        } else {
            // The allocator itself is built without huge pages: these come from our advice.
            assert!(
                huge >= 2048,
                "THP is {thp:?}, but the argon2 memory has {huge} KiB huge"
            );
        }
    }
}
