//! The host side of one device forward step, kept apart from any kernel launch so that CI
//! checks it without a GPU: from the scheduler's slices, the flat per-token arrays the kernels
//! read (token ids, positions, the KV slot each token writes, its sequence), each sequence's
//! query range, context length and block table (padded to the batch's widest), the rows whose
//! logits leave the device, and, for decode steps replayed from a captured graph, padding up
//! to the graph's batch bucket (a padding row writes no KV and attends to nothing).

use crate::model::SeqInput;

/// A slot or block-table entry that does not exist: padding.
pub const NONE: u32 = u32::MAX;

/// Batch sizes a decode graph is captured for; a decode batch runs in the smallest bucket
/// that holds it.
pub const DECODE_BUCKETS: [usize; 13] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// The smallest bucket holding `batch` sequences (`None` past the largest).
pub fn bucket_for(batch: usize) -> Option<usize> {
    DECODE_BUCKETS.iter().copied().find(|&b| b >= batch)
}

/// What one forward step's kernels read, built on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// Per token row (padding included): its id, position, KV slot (`block · page + offset`,
    /// or [`NONE`]) and sequence.
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub token_seq: Vec<u32>,
    /// Per sequence: the first token row of its queries (`seqs + 1` entries), and the context
    /// it attends to after this step (start + new tokens; 0 for padding).
    pub query_start: Vec<u32>,
    pub context: Vec<u32>,
    /// `seqs × table_width` block ids, [`NONE`] past a sequence's pages.
    pub block_table: Vec<u32>,
    pub table_width: usize,
    /// Token rows whose logits are wanted, in order.
    pub logit_rows: Vec<u32>,
    /// Token rows before padding.
    pub real_tokens: usize,
}

impl StepPlan {
    /// The plan of `seqs` over a cache of `page`-token blocks.
    pub fn new(seqs: &[SeqInput<'_>], page: usize) -> Self {
        let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        let width = seqs
            .iter()
            .map(|q| (q.start + q.tokens.len()).div_ceil(page))
            .max()
            .unwrap_or(0);
        let mut p = StepPlan {
            tokens: Vec::with_capacity(t),
            positions: Vec::with_capacity(t),
            slots: Vec::with_capacity(t),
            token_seq: Vec::with_capacity(t),
            query_start: Vec::with_capacity(seqs.len() + 1),
            context: Vec::with_capacity(seqs.len()),
            block_table: vec![NONE; seqs.len() * width],
            table_width: width,
            logit_rows: Vec::new(),
            real_tokens: t,
        };
        for (i, q) in seqs.iter().enumerate() {
            let first = p.tokens.len();
            p.query_start.push(first as u32);
            let end = q.start + q.tokens.len();
            p.context.push(end as u32);
            let used = end.div_ceil(page);
            p.block_table[i * width..i * width + used].copy_from_slice(&q.pages[..used]);
            for (j, &tok) in q.tokens.iter().enumerate() {
                let pos = q.start + j;
                p.tokens.push(tok);
                p.positions.push(pos as u32);
                p.slots
                    .push(q.pages[pos / page] * page as u32 + (pos % page) as u32);
                p.token_seq.push(i as u32);
            }
            let rows = q.logits.rows(q.tokens.len());
            let last = p.tokens.len();
            p.logit_rows.extend((last - rows..last).map(|r| r as u32));
            debug_assert!(last > first, "a slice has tokens");
        }
        p.query_start.push(p.tokens.len() as u32);
        p
    }

    pub fn seqs(&self) -> usize {
        self.context.len()
    }

    /// A decode step (one token per sequence).
    pub fn is_decode(&self) -> bool {
        self.tokens.len() == self.seqs()
    }

    /// Pad a decode step to `bucket` sequences: each padding sequence has one token (id 0,
    /// position 0) that writes no KV ([`NONE`] slot), attends to nothing (context 0, no
    /// blocks) and wants no logits, so the captured graph of that size runs unchanged.
    pub fn pad_decode(&mut self, bucket: usize) {
        assert!(self.is_decode() && bucket >= self.seqs());
        for _ in self.seqs()..bucket {
            let i = self.seqs() as u32;
            self.tokens.push(0);
            self.positions.push(0);
            self.slots.push(NONE);
            self.token_seq.push(i);
            self.context.push(0);
            *self.query_start.last_mut().expect("one past the last") = i;
            self.query_start.push(i + 1);
            self.block_table
                .extend(std::iter::repeat_n(NONE, self.table_width));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Logits;

    fn seq<'a>(tokens: &'a [u32], start: usize, pages: &'a [u32], logits: Logits) -> SeqInput<'a> {
        SeqInput {
            tokens,
            start,
            pages,
            logits,
        }
    }

    #[test]
    fn slots_tables_and_logit_rows() {
        // A prefill chunk crossing a block boundary on scattered pages, a decode step, and
        // a prompt whose every row is wanted.
        let a = [10, 11, 12, 13];
        let b = [20];
        let c = [30, 31];
        let plan = StepPlan::new(
            &[
                seq(&a, 2, &[7, 3], Logits::Last),
                seq(&b, 5, &[9, 1], Logits::Last),
                seq(&c, 0, &[4], Logits::All),
            ],
            4,
        );
        assert_eq!(plan.tokens, vec![10, 11, 12, 13, 20, 30, 31]);
        assert_eq!(plan.positions, vec![2, 3, 4, 5, 5, 0, 1]);
        // Position 4 of the first sequence is block 3, offset 0: slot 12.
        assert_eq!(plan.slots, vec![30, 31, 12, 13, 5, 16, 17]);
        assert_eq!(plan.token_seq, vec![0, 0, 0, 0, 1, 2, 2]);
        assert_eq!(plan.query_start, vec![0, 4, 5, 7]);
        assert_eq!(plan.context, vec![6, 6, 2]);
        assert_eq!(plan.table_width, 2);
        assert_eq!(plan.block_table, vec![7, 3, 9, 1, 4, NONE]);
        assert_eq!(plan.logit_rows, vec![3, 4, 5, 6]);
        assert!(!plan.is_decode());
    }

    #[test]
    fn decode_padding_writes_nothing_and_attends_to_nothing() {
        let (a, b) = ([1], [2]);
        let mut plan = StepPlan::new(
            &[
                seq(&a, 4, &[0, 5], Logits::Last),
                seq(&b, 0, &[6], Logits::Last),
            ],
            4,
        );
        assert!(plan.is_decode());
        assert_eq!(bucket_for(2), Some(2));
        assert_eq!(bucket_for(3), Some(4));
        assert_eq!(bucket_for(257), None);
        plan.pad_decode(4);
        assert_eq!(plan.tokens.len(), 4);
        assert_eq!(plan.slots, vec![20, 24, NONE, NONE]);
        assert_eq!(plan.context, vec![5, 1, 0, 0]);
        assert_eq!(plan.query_start, vec![0, 1, 2, 3, 4]);
        assert_eq!(
            plan.block_table,
            vec![0, 5, 6, NONE, NONE, NONE, NONE, NONE]
        );
        assert_eq!(plan.logit_rows, vec![0, 1], "padding wants no logits");
        assert_eq!(plan.real_tokens, 2);
    }
}
