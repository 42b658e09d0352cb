//! Which source fetches which piece of a multi-source download.
//!
//! Sources pull: a source that finishes a piece asks for the next, so a fast source takes more
//! pieces than a slow one without any rate estimate. A piece a source gives up on (it failed,
//! stalled or lied) goes back to the front of the queue for the others. Once the queue is
//! empty, an idle source may also take a piece another source is still fetching (the endgame:
//! whichever finishes first wins, the other is cancelled), so one slow source cannot hold up
//! the end. Without the endgame (a paid download, where a duplicate costs money) an idle source
//! instead takes over a piece whose source has held it far longer than pieces take (three times
//! the median, and at least a floor): the slow source is cancelled, keeps what it delivered,
//! and the new one fetches only the rest. No byte is fetched twice unless its source failed.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The most sources that fetch one piece at once in the endgame.
const MAX_HOLDERS: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Queued,
    /// Being fetched by these sources (more than one only in the endgame), since then.
    Running(Vec<usize>, Instant),
    Done,
}

/// The pieces of one download and who holds them.
#[derive(Debug)]
pub(crate) struct Schedule {
    pieces: Vec<State>,
    queue: VecDeque<usize>,
    endgame: bool,
    left: usize,
    /// How long each piece verified so far took.
    took: Vec<Duration>,
    /// Pieces a source gave up on or was overtaken on.
    handed: Vec<bool>,
    /// A piece is taken over (without the endgame) only after at least this long.
    floor: Duration,
}

impl Schedule {
    /// `n` pieces, all queued in order; `endgame`: whether idle sources may duplicate pieces
    /// in flight once nothing is queued (else they take over slow ones, after `floor` at least).
    pub(crate) fn new(n: usize, endgame: bool, floor: Duration) -> Self {
        let (pieces, queue) = (vec![State::Queued; n], (0..n).collect());
        Self { pieces, queue, endgame, left: n, took: Vec::new(), handed: vec![false; n], floor }
    }

    /// The next piece for source `src`: the first queued one; else, in the endgame, the piece
    /// in flight with the fewest holders that `src` does not hold (the oldest of them); else a
    /// piece another source has held too long, taken over.
    pub(crate) fn next(&mut self, src: usize, now: Instant) -> Option<usize> {
        while let Some(i) = self.queue.pop_front() {
            if self.pieces[i] == State::Queued {
                self.pieces[i] = State::Running(vec![src], now);
                return Some(i);
            }
        }
        if !self.endgame {
            return self.take_over(src, now);
        }
        let joined = self
            .pieces
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                State::Running(h, _) if h.len() < MAX_HOLDERS && !h.contains(&src) => Some((i, h.len())),
                _ => None,
            })
            .min_by_key(|(i, holders)| (*holders, *i));
        // every piece in flight has its two holders (two slow ones, say): take one over
        let Some((i, _)) = joined else {
            return self.take_over(src, now);
        };
        if let State::Running(h, _) = &mut self.pieces[i] {
            h.push(src);
        }
        Some(i)
    }

    /// The oldest piece held by another source for longer than three times the median piece
    /// (or, before any piece was verified, the floor alone), now `src`'s alone.
    fn take_over(&mut self, src: usize, now: Instant) -> Option<usize> {
        let mut took = self.took.clone();
        took.sort();
        let median = took.get(took.len() / 2).copied().unwrap_or_default();
        let limit = self.floor.max(median * 3);
        let i = self.pieces.iter().position(
            |s| matches!(s, State::Running(h, since) if !h.contains(&src) && now.duration_since(*since) > limit),
        )?;
        self.pieces[i] = State::Running(vec![src], now);
        self.handed[i] = true;
        Some(i)
    }

    /// Whether a source gave piece `i` up or was overtaken on it (what it verified may still
    /// be reaching the store).
    pub(crate) fn handed(&self, i: usize) -> bool {
        self.handed[i]
    }

    /// Source `src` verified piece `i`: true if it is the first to (the others still
    /// fetching it stop: they no longer [`hold`](Self::holds) it).
    pub(crate) fn done(&mut self, i: usize, now: Instant) -> bool {
        match std::mem::replace(&mut self.pieces[i], State::Done) {
            State::Running(_, since) => self.took.push(now.duration_since(since)),
            State::Queued => {}
            State::Done => return false,
        }
        self.left -= 1;
        true
    }

    /// Source `src` gave up on piece `i`: unless another source still fetches it, it goes back
    /// to the front of the queue.
    pub(crate) fn release(&mut self, i: usize, src: usize) {
        if let State::Running(h, _) = &mut self.pieces[i] {
            h.retain(|s| *s != src);
            if h.is_empty() {
                self.pieces[i] = State::Queued;
                self.queue.push_front(i);
                self.handed[i] = true;
            }
        }
    }

    /// Whether `src` is still to fetch piece `i` (not done, not taken over).
    pub(crate) fn holds(&self, i: usize, src: usize) -> bool {
        matches!(&self.pieces[i], State::Running(h, _) if h.contains(&src))
    }

    /// Every piece verified.
    pub(crate) fn finished(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(10);

    #[test]
    fn sources_pull_in_order_and_a_released_piece_goes_first() {
        let t = Instant::now();
        let mut s = Schedule::new(4, false, FLOOR);
        assert_eq!((s.next(0, t), s.next(1, t)), (Some(0), Some(1)));
        // source 1 fails its piece: the next source to ask gets it before piece 2
        s.release(1, 1);
        assert!(!s.holds(1, 1));
        assert_eq!(s.next(0, t), Some(1));
        assert!(s.done(0, t));
        assert!(s.done(1, t));
        assert_eq!((s.next(0, t), s.next(0, t)), (Some(2), Some(3)));
        // nothing queued, no endgame, and nothing held too long: nobody takes a piece in flight
        assert_eq!(s.next(1, t + FLOOR), None);
        s.done(2, t);
        assert!(!s.finished());
        s.done(3, t);
        assert!(s.finished());
    }

    #[test]
    fn the_endgame_duplicates_only_pieces_in_flight_and_at_most_twice() {
        let t = Instant::now();
        let mut s = Schedule::new(3, true, FLOOR);
        assert_eq!((s.next(0, t), s.next(1, t), s.next(2, t)), (Some(0), Some(1), Some(2)));
        s.done(2, t);
        // source 2 is idle: it helps with the oldest piece in flight it does not hold
        assert_eq!(s.next(2, t), Some(0));
        // source 2 already holds 0; piece 1 has one holder left to add
        assert_eq!(s.next(2, t), Some(1));
        // both in-flight pieces have two holders now
        assert_eq!(s.next(3, t), None);
        // source 2 wins piece 0: source 0's copy is cancelled
        assert!(s.done(0, t));
        assert!(!s.holds(0, 0));
        // a late finish of the same piece counts once
        assert!(!s.done(0, t));
        // source 1 gives up on piece 1, source 2 still has it: nothing is queued again
        s.release(1, 1);
        assert_eq!(s.next(1, t), Some(1));
        assert!(s.done(1, t));
        assert!(s.finished());
    }

    #[test]
    fn a_piece_every_holder_gave_up_on_is_fetched_again() {
        let t = Instant::now();
        let mut s = Schedule::new(1, true, FLOOR);
        assert_eq!(s.next(0, t), Some(0));
        assert_eq!(s.next(1, t), Some(0));
        s.release(0, 0);
        s.release(0, 1);
        assert_eq!(s.next(2, t), Some(0));
        assert!(!s.finished());
    }

    #[test]
    fn without_the_endgame_a_piece_held_far_too_long_is_taken_over_once() {
        let t = Instant::now();
        let sec = Duration::from_secs(1);
        let mut s = Schedule::new(4, false, FLOOR);
        assert_eq!((s.next(0, t), s.next(1, t), s.next(1, t)), (Some(0), Some(1), Some(2)));
        // source 1 verifies its pieces in 4 s each; source 0 sits on piece 0
        s.done(1, t + 4 * sec);
        assert_eq!(s.next(1, t + 4 * sec), Some(3));
        s.done(2, t + 5 * sec);
        s.done(3, t + 8 * sec);
        // three times the median (4 s) is 12 s: not yet at 11 s
        assert_eq!(s.next(1, t + 11 * sec), None);
        assert!(s.holds(0, 0));
        // past it: source 1 takes piece 0 over, and source 0 no longer holds it
        assert_eq!(s.next(1, t + 13 * sec), Some(0));
        assert!(s.holds(0, 1) && !s.holds(0, 0));
        // the piece is source 1's now, not a candidate for another take-over right away
        assert_eq!(s.next(0, t + 14 * sec), None);
        s.done(0, t + 15 * sec);
        assert!(s.finished());
        assert!(s.handed(0) && !s.handed(1));
        // with no piece verified yet there is no median: the floor alone decides
        let mut s = Schedule::new(1, false, FLOOR);
        assert_eq!(s.next(0, t), Some(0));
        assert_eq!(s.next(1, t + FLOOR), None);
        assert_eq!(s.next(1, t + FLOOR + sec), Some(0));
        // in the endgame, two holders that sit on a piece are overtaken the same way
        let mut s = Schedule::new(1, true, FLOOR);
        assert_eq!((s.next(0, t), s.next(1, t), s.next(2, t)), (Some(0), Some(0), None));
        assert_eq!(s.next(2, t + 2 * FLOOR), Some(0));
        assert!(s.holds(0, 2) && !s.holds(0, 0) && !s.holds(0, 1));
    }
}
