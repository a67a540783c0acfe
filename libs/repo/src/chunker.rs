//! Content-defined chunking over a reader with FastCDC (the `fastcdc` crate's 2020
//! algorithm with a per-repository gear seed), reading each byte once into one buffer.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};

use crate::format::ChunkerParams;

/// Finds chunk boundaries.
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    gear: (Cow<'static, [u64]>, Cow<'static, [u64]>),
}

impl Chunker {
    pub fn new(params: &ChunkerParams) -> Chunker {
        Chunker {
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            masks: v2020::select_masks(params.avg as usize, Normalization::Level1),
            gear: v2020::get_gear_with_seed(params.seed),
        }
    }

    /// Length of the next chunk at the start of `data` (all of it if it is short).
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.len() <= self.min {
            return data.len();
        }
        let (mask_s, mask_l) = self.masks;
        let (_, count) = v2020::cut_gear(
            data,
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &self.gear.0,
            &self.gear.1,
        );
        count
    }

    /// Reads `reader` to its end and calls `on_chunk` with each chunk in order.
    /// Returns the number of bytes read. `buf` is scratch space, reused across calls so
    /// that many small files do not each pay for a fresh buffer.
    pub fn chunk_reader<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        buf: &mut Vec<u8>,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        if buf.len() < self.max * 2 {
            buf.resize(self.max * 2, 0);
        }
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            // Fill until a whole maximum-size chunk is buffered or the input ends.
            while !eof && end - start < self.max {
                if buf.len() - end < self.max {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                match reader.read(&mut buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if start == end {
                return Ok(total);
            }
            let n = self.cut(&buf[start..end]);
            on_chunk(&buf[start..start + n])?;
            start += n;
        }
    }
}

/// Reads fixed-size blocks (the last may be shorter), for disk images.
pub fn fixed_blocks<R: Read, E: From<io::Error>>(
    mut reader: R,
    block: usize,
    mut on_block: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut buf = vec![0u8; block];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < block {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        total += filled as u64;
        on_block(&buf[..filled])?;
        if filled < block {
            return Ok(total);
        }
    }
}

/// Whether every byte is zero (such chunks are stored as holes).
pub fn is_zero(data: &[u8]) -> bool {
    if data.first().is_some_and(|&b| b != 0) || data.last().is_some_and(|&b| b != 0) {
        return false;
    }
    let mut words = data.chunks_exact(8);
    words.by_ref().all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChunkerParams {
        ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10, seed: 7 }
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks_of(data: &[u8], read_size: usize) -> Vec<Vec<u8>> {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        Chunker::new(&params())
            .chunk_reader::<_, io::Error>(Trickle(data, read_size), &mut Vec::new(), |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn chunks_cover_the_input_whatever_the_read_size() {
        let data = pseudo_random(3 << 20, 1);
        let big_reads = chunks_of(&data, 1 << 20);
        assert_eq!(big_reads.concat(), data);
        assert!(big_reads.len() > 10, "expected many chunks, got {}", big_reads.len());
        assert!(big_reads.iter().all(|c| c.len() <= 256 << 10));
        assert_eq!(chunks_of(&data, 4096), big_reads, "boundaries must not depend on read sizes");
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let data = pseudo_random(4 << 20, 2);
        let mut shifted = data.clone();
        shifted.splice(1 << 20..1 << 20, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<_> = chunks_of(&data, 1 << 20).into_iter().collect();
        let b = chunks_of(&shifted, 1 << 20);
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 3, "an insertion re-chunked {new} of {} chunks", b.len());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[2000] = 1;
        assert!(!is_zero(&v));
    }
}
