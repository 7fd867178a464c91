//! The scheduler's side of prefix reuse: a sequence's blocks going back to the pool (its full
//! blocks stay in the radix tree, its unfinished last block as a partial tail), and
//! token-granular reuse at admission (the matching start of a cached block copied, not
//! computed).

use super::{Scheduler, Seq};

impl Scheduler {
    pub(super) fn release(&mut self, s: &mut Seq) {
        // The computed tokens of an unfinished last block stay cached as a partial tail, for a
        // prompt that repeats or extends this one (token-granular prefix reuse).
        let page = self.pool.page();
        let k = s.nodes.len();
        let mut kept = None;
        if s.cacheable && s.computed > k * page && s.computed < (k + 1) * page && k < s.pages.len()
        {
            let parent = s.nodes.last().copied().unwrap_or(crate::kv::ROOT);
            let tail = &s.tokens[k * page..s.computed];
            if self.pool.insert_partial(parent, tail, s.pages[k]) {
                kept = Some(k);
            }
        }
        self.pool.release(&s.nodes);
        for (i, &p) in s.pages.iter().enumerate().skip(k) {
            if kept != Some(i) {
                self.pool.free_block(p);
            }
        }
        s.pages.clear();
        s.nodes.clear();
        s.computed = 0;
    }

    /// Token-granular prefix reuse: past its cached full blocks, a prompt that matches the
    /// start of another cached block (the block a previous request diverged in, or its own
    /// last block when that is cached too) copies that block's first matching tokens into a
    /// private block of its own instead of computing them, keeping at least its last token
    /// to compute (its logits are needed).
    pub(super) fn reuse_partial_block(&mut self, s: &mut Seq) {
        let page = self.pool.page();
        let parent = s.nodes.last().copied().unwrap_or(crate::kv::ROOT);
        let rest = &s.tokens[s.computed..];
        let Some((node, n)) = self.pool.match_partial(parent, rest, rest.len() - 1) else {
            return;
        };
        // Hold the source while the copy's block is taken: allocation may evict.
        self.pool.acquire(&[node]);
        let got = self.pool.alloc();
        self.backup_evicted();
        if let Some(b) = got {
            self.exec.copy_prefix(self.pool.block_of(node), b, n);
            debug_assert_eq!(s.pages.len() * page, s.computed);
            s.pages.push(b);
            s.computed += n;
        }
        self.pool.release(&[node]);
    }
}
