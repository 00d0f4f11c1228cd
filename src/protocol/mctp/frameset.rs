//! A fixed-size set of frame numbers, one bit per frame.
//!
//! The receiver keeps one per session (bit set: frame received), the sender
//! one per pass (bit set: some target misses the frame). One bit per frame
//! is what keeps memory flat: a 1 GiB assignment of 1403-byte frames needs
//! 96 KiB, against the gigabyte a buffered copy would take.

/// A set of frame numbers in `0..len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSet {
    words: Vec<u64>,
    len: u32,
    count: u32,
}

impl FrameSet {
    /// An empty set over `0..len`.
    pub fn empty(len: u32) -> Self {
        FrameSet { words: vec![0; (len as usize).div_ceil(64)], len, count: 0 }
    }

    /// The set holding every frame in `0..len`.
    pub fn full(len: u32) -> Self {
        let mut s = FrameSet::empty(len);
        s.insert_range(0, len);
        s
    }

    /// The size of the universe, `len`.
    pub fn universe(&self) -> u32 {
        self.len
    }

    /// How many frames are in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when no frame is in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when every frame of the universe is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// True when `i` is in the set (false outside the universe).
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds `i`; true if it was not there. Ignores numbers outside the universe.
    pub fn insert(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.count += 1;
        true
    }

    /// Adds every frame in `start..end` (clipped to the universe).
    pub fn insert_range(&mut self, start: u32, end: u32) {
        let end = end.min(self.len);
        let mut i = start;
        while i < end {
            if i % 64 == 0 && end - i >= 64 {
                let w = &mut self.words[(i / 64) as usize];
                self.count += 64 - w.count_ones();
                *w = u64::MAX;
                i += 64;
            } else {
                self.insert(i);
                i += 1;
            }
        }
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }

    fn next_with(&self, from: u32, want_set: bool) -> Option<u32> {
        if from >= self.len {
            return None;
        }
        let mut wi = (from / 64) as usize;
        let flip = if want_set { 0 } else { u64::MAX };
        let mut w = (self.words[wi] ^ flip) & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                let i = wi as u32 * 64 + w.trailing_zeros();
                return (i < self.len).then_some(i);
            }
            wi += 1;
            if wi >= self.words.len() {
                return None;
            }
            w = self.words[wi] ^ flip;
        }
    }

    /// The smallest member `>= from`.
    pub fn next_member(&self, from: u32) -> Option<u32> {
        self.next_with(from, true)
    }

    /// The smallest non-member `>= from` within the universe.
    pub fn next_absent(&self, from: u32) -> Option<u32> {
        self.next_with(from, false)
    }

    /// The maximal runs of members within `lo..hi`, as `start..end` pairs.
    pub fn member_runs(&self, lo: u32, hi: u32) -> Runs<'_> {
        Runs { set: self, at: lo, hi: hi.min(self.len), members: true }
    }

    /// The maximal runs of non-members within `lo..hi`.
    pub fn absent_runs(&self, lo: u32, hi: u32) -> Runs<'_> {
        Runs { set: self, at: lo, hi: hi.min(self.len), members: false }
    }
}

/// Iterator over runs of a [`FrameSet`], from [`FrameSet::member_runs`] or
/// [`FrameSet::absent_runs`].
#[derive(Debug)]
pub struct Runs<'a> {
    set: &'a FrameSet,
    at: u32,
    hi: u32,
    members: bool,
}

impl Iterator for Runs<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        let start = self.set.next_with(self.at, self.members)?;
        if start >= self.hi {
            self.at = self.hi;
            return None;
        }
        let end = self.set.next_with(start, !self.members).unwrap_or(self.set.len).min(self.hi);
        self.at = end;
        Some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_and_counts() {
        let mut s = FrameSet::empty(200);
        s.insert_range(3, 7);
        s.insert_range(64, 190);
        assert!(s.insert(199));
        assert!(!s.insert(199));
        assert!(!s.insert(200));
        assert_eq!(s.count(), 4 + 126 + 1);
        let runs: Vec<_> = s.member_runs(0, 200).collect();
        assert_eq!(runs, [(3, 7), (64, 190), (199, 200)]);
        let gaps: Vec<_> = s.absent_runs(5, 70).collect();
        assert_eq!(gaps, [(7, 64)]);
        assert_eq!(s.next_absent(64), Some(190));
        assert!(FrameSet::full(130).is_full());
        assert_eq!(FrameSet::full(130).absent_runs(0, 130).count(), 0);
    }

    proptest! {
        #[test]
        fn matches_a_model(len in 0u32..300, ops in proptest::collection::vec((0u32..320, 0u32..40), 0..40)) {
            let mut s = FrameSet::empty(len);
            let mut model = std::collections::BTreeSet::new();
            for (a, n) in ops {
                s.insert_range(a, a + n);
                model.extend((a..a + n).filter(|&i| i < len));
            }
            prop_assert_eq!(s.count() as usize, model.len());
            let members: Vec<u32> = s.member_runs(0, len).flat_map(|(a, b)| a..b).collect();
            prop_assert_eq!(members, model.iter().copied().collect::<Vec<_>>());
            let absent: Vec<u32> = s.absent_runs(0, len).flat_map(|(a, b)| a..b).collect();
            prop_assert_eq!(absent, (0..len).filter(|i| !model.contains(i)).collect::<Vec<_>>());
        }
    }
}
