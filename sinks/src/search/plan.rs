//! Which items of a batch go in the next bulk request, from the engine's
//! answers so far. Pure (no I/O): the lane sends what [`BulkPlan::next_step`]
//! says and reports how the engine answered; the verdicts themselves come
//! from [`super::retry`].
//!
//! - Items the engine rejected for now (429, 5xx, a version conflict) go
//!   to the next round, after a backoff, together with every later item of
//!   the batch on the same document, so the state scripts see one host's
//!   events in order.
//! - A request the engine refused as a whole for what it holds (400, e.g.
//!   an `_id` over 512 bytes; 413, too large) is split in halves, first
//!   half first, down to the single items it refuses alone; those are
//!   rejected for good with the engine's reason, the rest is applied.
//! - A request that got no answer (engine down, timeout, 429/5xx on the
//!   whole request) is sent again as it was, before anything after it.

use std::collections::{HashSet, VecDeque};

/// How the engine answered one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Applied (or already there).
    Done,
    /// Rejected for now: send again next round.
    Retry,
    /// Rejected for good, with the engine's reason.
    Reject(String),
}

/// How the engine answered one request of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Every item applied.
    AllDone,
    /// One outcome per item sent, in order.
    Items(Vec<ItemOutcome>),
    /// An answer that does not match the request (item count): every item
    /// again next round.
    Mismatch,
    /// No answer: the same request again, after a backoff.
    Unavailable,
    /// Refused as a whole for what it holds, with the engine's reason.
    Refused(String),
}

/// What the lane does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these items (indices into the batch), in this order.
    Send(Vec<usize>),
    /// Items wait for another round: back off, then ask again.
    Backoff,
    /// Every item is applied or rejected for good.
    Done,
}

/// The plan of one batch.
#[derive(Debug)]
pub struct BulkPlan {
    /// Per item: a hash of its target document (index and `_id`).
    targets: Vec<u64>,
    /// Requests still to send this round, in order.
    queue: VecDeque<Vec<usize>>,
    /// Items for the next round.
    later: Vec<usize>,
    /// Documents with an item in `later`: their later items wait too.
    held: HashSet<u64>,
    /// Items rejected for good, with the reason.
    rejected: Vec<(usize, String)>,
    /// Items put off to a later round so far (for the metric).
    deferred: u64,
}

impl BulkPlan {
    /// A plan for items whose targets are `targets`: first, all of them in
    /// one request.
    pub fn new(targets: Vec<u64>) -> BulkPlan {
        let all: Vec<usize> = (0..targets.len()).collect();
        BulkPlan {
            targets,
            queue: if all.is_empty() {
                VecDeque::new()
            } else {
                VecDeque::from([all])
            },
            later: Vec::new(),
            held: HashSet::new(),
            rejected: Vec::new(),
            deferred: 0,
        }
    }

    /// The next step. Items behind a held document are put off here.
    pub fn next_step(&mut self) -> Step {
        while let Some(chunk) = self.queue.pop_front() {
            let (send, wait): (Vec<usize>, Vec<usize>) = chunk
                .into_iter()
                .partition(|&i| !self.held.contains(&self.targets[i]));
            self.put_off(wait);
            if !send.is_empty() {
                return Step::Send(send);
            }
        }
        if self.later.is_empty() {
            return Step::Done;
        }
        let mut round = std::mem::take(&mut self.later);
        round.sort_unstable();
        self.held.clear();
        self.queue.push_back(round);
        Step::Backoff
    }

    /// Records the engine's answer to `sent` (what [`Self::next_step`] returned).
    pub fn answered(&mut self, sent: Vec<usize>, answer: Answer) {
        match answer {
            Answer::AllDone => {}
            Answer::Items(outcomes) if outcomes.len() == sent.len() => {
                let mut again = Vec::new();
                for (i, outcome) in sent.into_iter().zip(outcomes) {
                    let target = self.targets[i];
                    if self.held.contains(&target) {
                        // Behind an item of this request sent again: it
                        // goes again after it, whatever it got.
                        again.push(i);
                        continue;
                    }
                    match outcome {
                        ItemOutcome::Done => {}
                        ItemOutcome::Retry => {
                            self.held.insert(target);
                            again.push(i);
                        }
                        ItemOutcome::Reject(reason) => self.rejected.push((i, reason)),
                    }
                }
                self.put_off(again);
            }
            Answer::Items(_) | Answer::Mismatch => {
                for &i in &sent {
                    self.held.insert(self.targets[i]);
                }
                self.put_off(sent);
            }
            Answer::Unavailable => self.queue.push_front(sent),
            Answer::Refused(reason) => {
                if sent.len() == 1 {
                    self.rejected.push((sent[0], reason));
                } else {
                    let mut first = sent;
                    let second = first.split_off(first.len() / 2);
                    self.queue.push_front(second);
                    self.queue.push_front(first);
                }
            }
        }
    }

    fn put_off(&mut self, items: Vec<usize>) {
        for &i in &items {
            self.held.insert(self.targets[i]);
        }
        self.deferred += items.len() as u64;
        self.later.extend(items);
    }

    /// Items rejected for good so far, with the engine's reason.
    pub fn rejected(&self) -> &[(usize, String)] {
        &self.rejected
    }

    /// Items put off to a later round since the last call.
    pub fn take_deferred(&mut self) -> u64 {
        std::mem::take(&mut self.deferred)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::search::retry::{refusal_reason, request_verdict, RequestVerdict};

    /// A fake engine for the planner: refuses as a whole (with `status`)
    /// any request that holds a poison item, or that is larger than `max`
    /// items; answers 429 once for the items in `busy`.
    struct Engine {
        poison: HashSet<usize>,
        max: usize,
        status: u16,
        busy: HashSet<usize>,
        applied: Vec<usize>,
        requests: usize,
    }

    impl Engine {
        fn answer(&mut self, sent: &[usize]) -> Answer {
            self.requests += 1;
            let refused = sent.len() > self.max || sent.iter().any(|i| self.poison.contains(i));
            if refused {
                let body: &[u8] = if self.status == 413 {
                    b""
                } else {
                    br#"{"error":{"type":"action_request_validation_exception","reason":"Validation Failed: 1: id [x] is too long, must be no longer than 512 bytes but was: 600;"},"status":400}"#
                };
                assert_eq!(request_verdict(self.status), RequestVerdict::Refused);
                return Answer::Refused(refusal_reason(self.status, body));
            }
            let mut out = Vec::new();
            for &i in sent {
                if self.busy.remove(&i) {
                    out.push(ItemOutcome::Retry);
                } else {
                    self.applied.push(i);
                    out.push(ItemOutcome::Done);
                }
            }
            Answer::Items(out)
        }
    }

    fn run(plan: &mut BulkPlan, engine: &mut Engine) -> usize {
        let mut backoffs = 0;
        for _ in 0..10_000 {
            match plan.next_step() {
                Step::Done => return backoffs,
                Step::Backoff => backoffs += 1,
                Step::Send(sent) => {
                    let a = engine.answer(&sent);
                    plan.answered(sent, a);
                }
            }
        }
        panic!("the plan does not end");
    }

    fn engine(status: u16, poison: &[usize], max: usize) -> Engine {
        Engine {
            poison: poison.iter().copied().collect(),
            max,
            status,
            busy: HashSet::new(),
            applied: Vec::new(),
            requests: 0,
        }
    }

    #[test]
    fn a_400_is_bisected_down_to_the_poison_and_the_rest_applied_in_order() {
        let n = 1000;
        let mut plan = BulkPlan::new((0..n as u64).collect());
        let mut e = engine(400, &[617], usize::MAX);
        assert_eq!(run(&mut plan, &mut e), 0);
        let rejected: Vec<usize> = plan.rejected().iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, [617]);
        assert!(
            plan.rejected()[0].1.contains("512 bytes"),
            "{:?}",
            plan.rejected()
        );
        let want: Vec<usize> = (0..n).filter(|&i| i != 617).collect();
        assert_eq!(e.applied, want, "every other item, once, in order");
        // log2(1000) levels, two requests each, plus the first.
        assert!(e.requests <= 2 * 10 + 1, "{} requests", e.requests);
    }

    #[test]
    fn a_413_is_split_until_requests_fit_and_an_item_too_large_alone_is_rejected() {
        // The engine takes at most 100 items per request; item 5 is too large alone.
        let mut plan = BulkPlan::new((0..1000).collect());
        let mut e = engine(413, &[5], 100);
        run(&mut plan, &mut e);
        assert_eq!(plan.rejected().len(), 1);
        assert_eq!(plan.rejected()[0].0, 5);
        assert!(plan.rejected()[0].1.starts_with("HTTP 413"));
        let want: Vec<usize> = (0..1000).filter(|&i| i != 5).collect();
        assert_eq!(e.applied, want);
    }

    #[test]
    fn several_poisons_and_an_all_poison_batch() {
        let mut plan = BulkPlan::new((0..64).collect());
        let mut e = engine(400, &[0, 31, 32, 63], usize::MAX);
        run(&mut plan, &mut e);
        let mut r: Vec<usize> = plan.rejected().iter().map(|(i, _)| *i).collect();
        r.sort_unstable();
        assert_eq!(r, [0, 31, 32, 63]);
        assert_eq!(e.applied.len(), 60);
        let mut plan = BulkPlan::new((0..3).collect());
        let mut e = engine(400, &[0, 1, 2], usize::MAX);
        run(&mut plan, &mut e);
        assert_eq!(plan.rejected().len(), 3);
        assert!(e.applied.is_empty());
    }

    #[test]
    fn an_item_sent_again_holds_later_items_on_its_document_across_split_requests() {
        // Items 0..8 on documents 0,1,0,1,...; item 2 (doc 0) gets a 429 in
        // the second half of a split: item 4, 6 (doc 0) must follow it, not
        // overtake it; the 400 on item 7 is bisected meanwhile.
        let targets: Vec<u64> = (0..8).map(|i| i % 2).collect();
        let mut plan = BulkPlan::new(targets);
        let mut e = engine(400, &[7], usize::MAX);
        e.busy.insert(2);
        let backoffs = run(&mut plan, &mut e);
        assert_eq!(backoffs, 1);
        assert_eq!(
            plan.rejected().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [7]
        );
        let doc0: Vec<usize> = e.applied.iter().copied().filter(|i| i % 2 == 0).collect();
        assert_eq!(doc0, [0, 2, 4, 6], "document 0's items in order");
        let doc1: Vec<usize> = e.applied.iter().copied().filter(|i| i % 2 == 1).collect();
        assert_eq!(doc1, [1, 3, 5]);
    }

    #[test]
    fn no_answer_sends_the_same_request_again_before_anything_after_it() {
        let mut plan = BulkPlan::new((0..4).collect());
        let Step::Send(a) = plan.next_step() else {
            panic!()
        };
        plan.answered(a.clone(), Answer::Refused("HTTP 413: x".into()));
        let Step::Send(first) = plan.next_step() else {
            panic!()
        };
        assert_eq!(first, [0, 1]);
        plan.answered(first.clone(), Answer::Unavailable);
        assert_eq!(plan.next_step(), Step::Send(first.clone()));
        plan.answered(first, Answer::AllDone);
        let Step::Send(second) = plan.next_step() else {
            panic!()
        };
        assert_eq!(second, [2, 3]);
        plan.answered(second, Answer::Mismatch);
        assert_eq!(plan.next_step(), Step::Backoff);
        assert_eq!(plan.take_deferred(), 2);
        assert_eq!(plan.next_step(), Step::Send(vec![2, 3]));
        plan.answered(vec![2, 3], Answer::AllDone);
        assert_eq!(plan.next_step(), Step::Done);
        assert!(plan.rejected().is_empty());
    }

    #[test]
    fn an_empty_batch_is_done() {
        assert_eq!(BulkPlan::new(Vec::new()).next_step(), Step::Done);
    }
}
