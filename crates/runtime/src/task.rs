//! The loop of a task fed by an inbox: dispatches batches to the chain's head, aligns
//! watermarks over the input channels (the minimum over channels that are neither idle
//! nor ended), passes idleness on, ticks processing time and ends when every channel has.

use sluice_dataflow::{now_millis, Envelope, ErasedInput, Message, TaskError, TaskResult};
use sluice_types::{Timestamp, MIN_WATERMARK};
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
}

impl Alignment {
    pub(crate) fn new(channels: usize) -> Self {
        Alignment {
            channels: vec![Channel { watermark: MIN_WATERMARK, idle: false, ended: false }; channels],
            watermark: MIN_WATERMARK,
            idle: false,
            open: channels,
        }
    }

    /// The combined watermark if it advanced.
    fn advanced(&mut self) -> Option<Timestamp> {
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
        (self.advanced(), change)
    }

    /// Records a channel's end; returns (watermark if advanced, whether all have ended).
    pub(crate) fn on_end(&mut self, channel: usize) -> (Option<Timestamp>, bool) {
        if !self.channels[channel].ended {
            self.channels[channel].ended = true;
            self.open -= 1;
        }
        (self.advanced(), self.open == 0)
    }
}

/// Runs a task until its inputs end (`Ok`), it fails (`Err`) or the job aborts.
pub(crate) fn run_inbox_task(
    head: &mut dyn ErasedInput,
    inbox: Receiver<Envelope>,
    channels: usize,
    abort: &AtomicBool,
    tick: Duration,
) -> TaskResult {
    let mut alignment = Alignment::new(channels);
    let mut last_tick = Instant::now();
    loop {
        if abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let envelope = match inbox.try_recv() {
            Ok(envelope) => Some(envelope),
            Err(TryRecvError::Empty) => {
                // Nothing waiting: pass on what is buffered rather than hold it back.
                head.flush()?;
                match inbox.recv_timeout(tick) {
                    Ok(envelope) => Some(envelope),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Disconnected),
                }
            }
            Err(TryRecvError::Disconnected) => return Err(TaskError::Disconnected),
        };
        if let Some(Envelope { channel, message }) = envelope {
            let channel = channel as usize;
            match message {
                Message::Data(batch) => head.batch(batch)?,
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
                Message::End => {
                    let (watermark, all_ended) = alignment.on_end(channel);
                    if let Some(w) = watermark {
                        head.watermark(w)?;
                    }
                    if all_ended {
                        head.flush()?;
                        return head.end();
                    }
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
        assert_eq!(a.on_end(2), (None, false));
        assert_eq!(a.on_idle(0, true), (Some(20), None));
        assert_eq!(a.on_idle(1, true), (None, Some(true)));
        assert_eq!(a.on_idle(1, false), (None, Some(false)));
        assert!(!a.on_end(0).1);
        assert!(a.on_end(1).1);
    }
}
