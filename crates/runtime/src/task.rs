//! The loop of a task fed by an inbox: dispatches batches to the chain's head, aligns
//! watermarks over the input channels (the minimum over channels that are neither idle
//! nor ended), passes idleness on, ticks processing time and ends when every channel has.
//! Once a channel ends because the job stops (not because its input is exhausted), the
//! watermark is frozen: the input that would have followed may still belong to any window.

use sluice_dataflow::snapshot::{Barrier, BarrierStates};
use sluice_dataflow::{
    now_millis, ChannelCredits, Ending, Envelope, ErasedInput, Message, TaskControl, TaskError, TaskResult,
};
use sluice_types::{Timestamp, MIN_WATERMARK};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
struct Channel {
    watermark: Timestamp,
    idle: bool,
    ended: bool,
}

/// Watermark and idleness bookkeeping over a task's input channels.
pub(crate) struct Alignment {
    channels: Vec<Channel>,
    watermark: Timestamp,
    idle: bool,
    open: usize,
    /// A channel ended with [`Ending::Stopped`].
    stopped: bool,
}

impl Alignment {
    pub(crate) fn new(channels: usize) -> Self {
        Alignment {
            channels: vec![Channel { watermark: MIN_WATERMARK, idle: false, ended: false }; channels],
            watermark: MIN_WATERMARK,
            idle: false,
            open: channels,
            stopped: false,
        }
    }

    /// The combined watermark if it advanced.
    fn advanced(&mut self) -> Option<Timestamp> {
        if self.stopped {
            return None;
        }
        let min = self.channels.iter().filter(|c| !c.idle && !c.ended).map(|c| c.watermark).min()?;
        (min > self.watermark).then(|| {
            self.watermark = min;
            min
        })
    }

    /// Records a channel's watermark; returns the combined watermark if it advanced.
    pub(crate) fn on_watermark(&mut self, channel: usize, watermark: Timestamp) -> Option<Timestamp> {
        let c = &mut self.channels[channel];
        c.watermark = c.watermark.max(watermark);
        self.advanced()
    }

    /// Records a channel's idleness; returns (watermark if advanced, new task idleness if changed).
    pub(crate) fn on_idle(&mut self, channel: usize, idle: bool) -> (Option<Timestamp>, Option<bool>) {
        self.channels[channel].idle = idle;
        let all_idle = self.channels.iter().all(|c| c.idle || c.ended);
        let change = (all_idle != self.idle).then(|| {
            self.idle = all_idle;
            all_idle
        });
        if all_idle && !self.stopped {
            // The last active channel went idle: as Flink's watermark valve does, move to the
            // largest watermark any channel has reached, so records already received are
            // not held back until some channel wakes up.
            let max = self.channels.iter().filter(|c| !c.ended).map(|c| c.watermark).max();
            if let Some(max) = max.filter(|m| *m > self.watermark) {
                self.watermark = max;
                return (Some(max), change);
            }
            return (None, change);
        }
        (self.advanced(), change)
    }

    /// Records a channel's end; returns (watermark if advanced, whether all have ended).
    pub(crate) fn on_end(&mut self, channel: usize, ending: Ending) -> (Option<Timestamp>, bool) {
        self.stopped |= ending == Ending::Stopped;
        if !self.channels[channel].ended {
            self.channels[channel].ended = true;
            self.open -= 1;
        }
        (self.advanced(), self.open == 0)
    }

    /// How the task's input as a whole ended: stopped if any channel was.
    pub(crate) fn ending(&self) -> Ending {
        if self.stopped {
            Ending::Stopped
        } else {
            Ending::Finished
        }
    }
}

/// Barrier alignment: which channels have delivered the current barrier, and what arrived
/// on them since (held back in exactly-once mode until every channel has delivered it).
struct Barriers {
    exactly_once: bool,
    current: Option<Barrier>,
    delivered: Vec<bool>,
    held: VecDeque<Envelope>,
}

impl Barriers {
    fn holds(&self, channel: usize) -> bool {
        self.exactly_once && self.current.is_some() && self.delivered[channel]
    }

    /// Whether every channel that has not ended has delivered the current barrier.
    fn complete(&self, alignment: &Alignment) -> bool {
        self.current.is_some()
            && self.delivered.iter().zip(&alignment.channels).all(|(delivered, c)| *delivered || c.ended)
    }
}

/// Runs a task until its inputs end (`Ok`), it fails (`Err`) or the job aborts.
pub(crate) fn run_inbox_task(
    head: &mut dyn ErasedInput,
    inbox: Receiver<Envelope>,
    credits: ChannelCredits,
    abort: &AtomicBool,
    tick: Duration,
    control: &TaskControl,
    exactly_once: bool,
) -> TaskResult {
    let channels = credits.0.len();
    let mut alignment = Alignment::new(channels);
    let mut barriers =
        Barriers { exactly_once, current: None, delivered: vec![false; channels], held: VecDeque::new() };
    // Messages held back during an alignment, to be processed once it completes.
    let mut replay: VecDeque<Envelope> = VecDeque::new();
    let mut last_tick = Instant::now();
    loop {
        if abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let envelope = if let Some(envelope) = replay.pop_front() {
            Some(envelope)
        } else {
            match inbox.try_recv() {
                Ok(envelope) => Some(envelope),
                Err(TryRecvError::Empty) => {
                    // Nothing waiting: pass on what is buffered rather than hold it back.
                    let work = sluice_dataflow::progress::busy();
                    head.flush()?;
                    drop(work);
                    match inbox.recv_timeout(tick) {
                        Ok(envelope) => Some(envelope),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Disconnected),
                    }
                }
                Err(TryRecvError::Disconnected) => return Err(TaskError::Disconnected),
            }
        };
        // What follows, up to the next wait for input, is this task's work (for the stall
        // detector; waiting for credit inside it does not count).
        let _work = sluice_dataflow::progress::busy();
        if let Some(envelope) = envelope {
            let channel = envelope.channel as usize;
            if barriers.holds(channel) {
                barriers.held.push_back(envelope);
                continue;
            }
            match envelope.message {
                Message::Data(batch) => {
                    head.batch(batch)?;
                    credits.release(channel);
                }
                Message::Watermark(w) => {
                    if let Some(w) = alignment.on_watermark(channel, w) {
                        head.watermark(w)?;
                    }
                }
                Message::Idle(idle) => {
                    let (watermark, change) = alignment.on_idle(channel, idle);
                    if let Some(w) = watermark {
                        head.watermark(w)?;
                    }
                    if let Some(idle) = change {
                        head.idle(idle)?;
                    }
                }
                Message::Barrier(barrier) => {
                    match barriers.current {
                        Some(current) if current.id > barrier.id => {} // a stale barrier of an abandoned checkpoint
                        Some(current) if current.id == barrier.id => barriers.delivered[channel] = true,
                        _ => {
                            // A newer checkpoint: any alignment in progress was abandoned.
                            replay.extend(barriers.held.drain(..));
                            barriers.current = Some(barrier);
                            barriers.delivered.iter_mut().for_each(|d| *d = false);
                            barriers.delivered[channel] = true;
                        }
                    }
                }
                Message::End(ending) => {
                    let (watermark, all_ended) = alignment.on_end(channel, ending);
                    if let Some(w) = watermark {
                        head.watermark(w)?;
                    }
                    if all_ended && barriers.current.is_none() {
                        head.flush()?;
                        let mut states = BarrierStates::new();
                        head.end(alignment.ending(), &mut states)?;
                        return control.report(None, states);
                    }
                }
            }
            if barriers.complete(&alignment) {
                let barrier = barriers.current.take().expect("complete implies a barrier");
                let mut states = BarrierStates::new();
                head.barrier(barrier, &mut states)?;
                control.report(Some(barrier.id), states)?;
                // What was held back comes first, in arrival order, before anything newer.
                let mut held = std::mem::take(&mut barriers.held);
                held.extend(replay.drain(..));
                replay = held;
                if alignment.open == 0 && replay.is_empty() {
                    head.flush()?;
                    let mut states = BarrierStates::new();
                    head.end(alignment.ending(), &mut states)?;
                    return control.report(None, states);
                }
            }
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            head.processing_time(now_millis())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataflow::Credit;
    use std::sync::Arc;

    #[test]
    fn watermark_is_the_minimum_over_active_channels() {
        let mut a = Alignment::new(3);
        assert_eq!(a.on_watermark(0, 10), None);
        assert_eq!(a.on_watermark(1, 20), None);
        assert_eq!(a.on_watermark(2, 5), Some(5));
        // An idle channel stops holding the watermark back.
        assert_eq!(a.on_idle(2, true), (Some(10), None));
        // Back from idleness with an older watermark: the output never goes back.
        assert_eq!(a.on_idle(2, false), (None, None));
        assert_eq!(a.on_watermark(2, 7), None);
        assert_eq!(a.on_end(2, Ending::Finished), (None, false));
        assert_eq!(a.on_idle(0, true), (Some(20), None));
        assert_eq!(a.on_idle(1, true), (None, Some(true)));
        // All idle: the largest watermark any channel reached is passed on.
        let mut b = Alignment::new(2);
        assert_eq!(b.on_watermark(0, 30), None);
        assert_eq!(b.on_idle(0, true), (None, None));
        assert_eq!(b.on_idle(1, true), (Some(30), Some(true)));
        assert_eq!(a.on_idle(1, false), (None, Some(false)));
        assert!(!a.on_end(0, Ending::Finished).1);
        assert!(a.on_end(1, Ending::Finished).1);
    }

    /// Records what reaches the head of a task, as text (with the credit of channel 0
    /// as the batch arrives, if a probe is set).
    struct Recorder(Vec<String>, Option<Arc<Credit>>);

    impl ErasedInput for Recorder {
        fn batch(&mut self, batch: Box<dyn std::any::Any + Send>) -> TaskResult {
            let batch = batch.downcast::<Vec<u32>>().expect("test batches are Vec<u32>");
            match &self.1 {
                Some(credit) => self.0.push(format!("data {batch:?} credit {}", credit.available())),
                None => self.0.push(format!("data {batch:?}")),
            }
            Ok(())
        }
        fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
            self.0.push(format!("watermark {watermark}"));
            Ok(())
        }
        fn idle(&mut self, idle: bool) -> TaskResult {
            self.0.push(format!("idle {idle}"));
            Ok(())
        }
        fn processing_time(&mut self, _now: Timestamp) -> TaskResult {
            Ok(())
        }
        fn flush(&mut self) -> TaskResult {
            Ok(())
        }
        fn barrier(&mut self, barrier: Barrier, _states: &mut sluice_dataflow::snapshot::BarrierStates) -> TaskResult {
            self.0.push(format!("barrier {}", barrier.id));
            Ok(())
        }
        fn end(&mut self, ending: Ending, _states: &mut sluice_dataflow::snapshot::BarrierStates) -> TaskResult {
            self.0.push(format!("end {ending:?}"));
            Ok(())
        }
    }

    /// Feeds scripted (channel, message) pairs to a two-channel task and returns what its
    /// head saw and the checkpoints it reported.
    fn script(exactly_once: bool, messages: Vec<(u32, Message)>) -> (Vec<String>, Vec<Option<u64>>) {
        script_with_credits(exactly_once, messages, false)
    }

    fn script_with_credits(
        exactly_once: bool,
        messages: Vec<(u32, Message)>,
        probe: bool,
    ) -> (Vec<String>, Vec<Option<u64>>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(messages.len() + 1);
        for (channel, message) in messages {
            tx.send(Envelope { channel, message }).unwrap();
        }
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let control = TaskControl::new(0, None, reports_tx);
        let (first, second) = (Credit::new(64), Credit::new(64));
        let mut head = Recorder(Vec::new(), probe.then(|| first.clone()));
        let credits = ChannelCredits(vec![first, second]);
        let abort = AtomicBool::new(false);
        run_inbox_task(&mut head, rx, credits, &abort, Duration::from_secs(60), &control, exactly_once).unwrap();
        (head.0, reports.try_iter().map(|r| r.checkpoint).collect())
    }

    fn data(values: &[u32]) -> Message {
        Message::Data(Box::new(values.to_vec()))
    }

    fn barrier(id: u64) -> Message {
        Message::Barrier(Barrier { id, timestamp: 0 })
    }

    #[test]
    fn exactly_once_holds_back_a_channel_that_delivered_the_barrier() {
        let (seen, reports) = script(
            true,
            vec![
                (0, data(&[1])),
                (0, barrier(7)),
                (0, data(&[2])),
                (1, data(&[10])),
                (1, barrier(7)),
                (1, data(&[11])),
            ]
            .into_iter()
            .chain([(0, Message::End(Ending::Finished)), (1, Message::End(Ending::Finished))])
            .collect(),
        );
        // [2] arrived after channel 0's barrier: it waits until channel 1's barrier.
        assert_eq!(seen, vec!["data [1]", "data [10]", "barrier 7", "data [2]", "data [11]", "end Finished"]);
        assert_eq!(reports, vec![Some(7), None]);
    }

    #[test]
    fn at_least_once_lets_records_overtake_the_barrier() {
        let (seen, reports) = script(
            false,
            vec![
                (0, barrier(3)),
                (0, data(&[2])),
                (1, data(&[10])),
                (1, barrier(3)),
                (0, Message::End(Ending::Finished)),
                (1, Message::End(Ending::Finished)),
            ],
        );
        assert_eq!(seen, vec!["data [2]", "data [10]", "barrier 3", "end Finished"]);
        assert_eq!(reports, vec![Some(3), None]);
    }

    #[test]
    fn an_ended_channel_counts_as_aligned_and_a_newer_barrier_abandons_an_older_one() {
        let (seen, reports) = script(
            true,
            vec![
                (0, barrier(1)),
                (0, data(&[5])),
                (1, barrier(2)),
                (1, Message::End(Ending::Finished)),
                (0, barrier(2)),
                (0, Message::End(Ending::Finished)),
            ],
        );
        // Barrier 2 supersedes 1 (abandoned): channel 0's held [5] is released, then 2 aligns
        // once channel 0 delivers it (channel 1 has ended).
        assert_eq!(seen, vec!["data [5]", "barrier 2", "end Finished"]);
        assert_eq!(reports, vec![Some(2), None]);
    }

    #[test]
    fn a_stopped_channel_freezes_the_watermark_and_the_task_ends_stopped() {
        let (seen, _) = script(
            true,
            vec![
                (0, Message::Watermark(10)),
                (1, Message::Watermark(20)),
                // Channel 0 stops at 10: its next records could be at 11, so the other
                // channel's 20 must not pass, nor the largest watermark when all go idle.
                (0, Message::End(Ending::Stopped)),
                (1, Message::Watermark(30)),
                (1, Message::Idle(true)),
                (1, Message::End(Ending::Stopped)),
            ],
        );
        assert_eq!(seen, vec!["watermark 10", "idle true", "end Stopped"]);
    }

    #[test]
    fn an_exhausted_channel_no_longer_holds_the_watermark_back() {
        let (seen, _) = script(
            true,
            vec![
                (0, Message::Watermark(10)),
                (1, Message::Watermark(20)),
                (0, Message::End(Ending::Finished)),
                (1, Message::End(Ending::Finished)),
            ],
        );
        assert_eq!(seen, vec!["watermark 10", "watermark 20", "end Finished"]);
    }

    #[test]
    fn a_held_channel_gets_no_credit_back_until_its_batches_are_processed() {
        let (seen, _) = script_with_credits(
            true,
            vec![
                (0, data(&[1])),
                (0, barrier(4)),
                (0, data(&[2])),
                (0, data(&[3])),
                (1, data(&[10])),
                (1, barrier(4)),
                (0, Message::End(Ending::Finished)),
                (1, Message::End(Ending::Finished)),
            ],
            true,
        );
        // Channel 0's credit as each batch is processed (a batch gives its credit back
        // after): 64 at first; [1] gave one back; [2] and [3] wait behind the barrier and
        // give theirs back only once processed, after the alignment.
        assert_eq!(
            seen,
            vec![
                "data [1] credit 64",
                "data [10] credit 65",
                "barrier 4",
                "data [2] credit 65",
                "data [3] credit 66",
                "end Finished"
            ]
        );
    }

    #[test]
    fn a_producer_waits_for_credit_and_fails_once_the_consumer_has_gone() {
        let credit = Credit::new(1);
        credit.acquire().unwrap();
        let waiting = {
            let credit = credit.clone();
            std::thread::spawn(move || credit.acquire())
        };
        // Pacing, not a condition: the waiter must still be blocked after this.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiting.is_finished(), "no credit: the producer waits");
        credit.release();
        waiting.join().unwrap().unwrap();
        let gone = {
            let credit = credit.clone();
            std::thread::spawn(move || credit.acquire())
        };
        drop(ChannelCredits(vec![credit as Arc<dyn sluice_dataflow::CreditReturn>]));
        assert!(matches!(gone.join().unwrap(), Err(TaskError::Disconnected)));
    }
}
