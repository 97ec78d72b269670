//! The memory one argon2id hash runs in, mapped the way flux-auth maps its own hashing memory, so
//! that the login ceiling is timed on the same kind of pages as the service's hashes.

use argon2::Block;

/// argon2 memory in an anonymous mapping of its own, advised for transparent huge pages before it
/// is first written. argon2 reads its memory at random, so on 4 KiB pages most reads miss the TLB;
/// on huge pages the same hash takes 3–10% less time (BENCHMARKS.md, "huge pages"). flux-auth
/// hashes on such a mapping, so a ceiling timed on ordinary heap memory would understate it.
pub struct HashMemory {
    map: memmap2::MmapMut,
}

// Block is 128 u64 words (argon2's 1 KiB block): any bytes are a valid Block, and a page-aligned
// mapping is aligned for it.
const _: () = assert!(std::mem::size_of::<Block>() == 1024);
const _: () = assert!(std::mem::align_of::<Block>() <= 4096);

impl HashMemory {
    /// `blocks` zeroed blocks (the kernel maps anonymous memory zeroed).
    pub fn new(blocks: usize) -> std::io::Result<Self> {
        let map = memmap2::MmapOptions::new()
            .len(blocks.max(1) * std::mem::size_of::<Block>())
            .map_anon()?;
        // Advised before it is first written, so its pages fault in huge instead of waiting for
        // khugepaged to collapse them. THP compiled out or switched off: hashing works the same,
        // only slower, as in the service.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Self { map })
    }

    /// All of its blocks.
    #[allow(unsafe_code)] // the only unsafe code in the tool: bytes of a mapping as blocks
    pub fn blocks(&mut self) -> &mut [Block] {
        let len = self.map.len() / std::mem::size_of::<Block>();
        // SAFETY: the mapping is page-aligned, so aligned for Block (asserted above); `len`
        // blocks fit in its length; any bytes are a valid Block; and the slice borrows `self`
        // mutably, so the mapping stays mapped and nothing else touches it while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<Block>(), len) }
    }
}
