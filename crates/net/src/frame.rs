//! The frames a connection carries after its handshake, in both directions: a fixed
//! 17-byte header (kind, channel, payload length) and the payload. Batches are the
//! producer's encoded `Vec<Record<T>>`; control messages (watermark, idleness, barrier,
//! end) travel in-band on their channel, in order with its batches; credits travel back
//! from the consumer to the producer on the same connection.

use sluice_dataflow::snapshot::Barrier;
use sluice_dataflow::{Ending, Message};
use std::io::{self, Read, Write};

/// One channel of a job, named the same way by both of its ends: the consumer task (its
/// chain's head node and subtask) and the channel's index among that task's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    /// The node at the head of the consumer's chain.
    pub node: u32,
    /// The consumer subtask.
    pub subtask: u32,
    /// The channel's index at the consumer.
    pub channel: u32,
}

/// The most bytes one frame's payload may hold: a batch is cut far below this
/// (`max_batch_bytes`), so anything larger is a corrupt or hostile stream.
pub const MAX_PAYLOAD: u32 = 256 << 20;

/// What a frame carries.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// An encoded batch.
    Data(Vec<u8>),
    /// A watermark.
    Watermark(i64),
    /// The channel became idle or active.
    Idle(bool),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The channel ended.
    End(Ending),
    /// The consumer processed this many batches of the channel.
    Credit(u32),
    /// A message of the job's control (checkpoint coordination between its processes),
    /// encoded by the runtime; it is not on a channel.
    Control(Vec<u8>),
    /// The sender closes the connection on purpose (anything else that ends the stream
    /// is a failure: a process that was killed says nothing).
    Goodbye,
}

const DATA: u8 = 1;
const WATERMARK: u8 = 2;
const IDLE: u8 = 3;
const BARRIER: u8 = 4;
const END: u8 = 5;
const CREDIT: u8 = 6;
const GOODBYE: u8 = 7;
const CONTROL: u8 = 8;

impl Frame {
    /// The frame of a control message (`None` for data, which the writer encodes).
    pub fn control(message: &Message) -> Option<Frame> {
        Some(match message {
            Message::Data(_) => return None,
            Message::Watermark(w) => Frame::Watermark(*w),
            Message::Idle(idle) => Frame::Idle(*idle),
            Message::Barrier(b) => Frame::Barrier(*b),
            Message::End(e) => Frame::End(*e),
        })
    }

    /// Writes the frame for `channel` (not flushed).
    pub fn write(&self, channel: ChannelId, out: &mut impl Write) -> io::Result<()> {
        let mut small = [0u8; 16];
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Data(bytes) => (DATA, bytes),
            Frame::Control(bytes) => (CONTROL, bytes),
            Frame::Watermark(w) => {
                small[..8].copy_from_slice(&w.to_le_bytes());
                (WATERMARK, &small[..8])
            }
            Frame::Idle(idle) => {
                small[0] = *idle as u8;
                (IDLE, &small[..1])
            }
            Frame::Barrier(b) => {
                small[..8].copy_from_slice(&b.id.to_le_bytes());
                small[8..16].copy_from_slice(&b.timestamp.to_le_bytes());
                (BARRIER, &small[..16])
            }
            Frame::End(e) => {
                small[0] = (*e == Ending::Stopped) as u8;
                (END, &small[..1])
            }
            Frame::Credit(n) => {
                small[..4].copy_from_slice(&n.to_le_bytes());
                (CREDIT, &small[..4])
            }
            Frame::Goodbye => (GOODBYE, &small[..0]),
        };
        let mut header = [0u8; 17];
        header[0] = kind;
        header[1..5].copy_from_slice(&channel.node.to_le_bytes());
        header[5..9].copy_from_slice(&channel.subtask.to_le_bytes());
        header[9..13].copy_from_slice(&channel.channel.to_le_bytes());
        header[13..17].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        out.write_all(&header)?;
        out.write_all(payload)
    }

    /// Reads the next frame; `Ok(None)` if the stream ended between frames.
    pub fn read(input: &mut impl Read) -> io::Result<Option<(ChannelId, Frame)>> {
        let mut header = [0u8; 17];
        match input.read_exact(&mut header[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        input.read_exact(&mut header[1..])?;
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let channel = ChannelId { node: word(1), subtask: word(5), channel: word(9) };
        let len = word(13);
        if len > MAX_PAYLOAD {
            return Err(invalid(format!("a frame of {len} bytes, more than the {MAX_PAYLOAD} allowed")));
        }
        let mut payload = vec![0u8; len as usize];
        input.read_exact(&mut payload)?;
        match header[0] {
            DATA => return Ok(Some((channel, Frame::Data(payload)))),
            CONTROL => return Ok(Some((channel, Frame::Control(payload)))),
            _ => {}
        }
        let fixed = |n: usize| -> io::Result<&[u8]> {
            (payload.len() == n)
                .then_some(&payload[..])
                .ok_or_else(|| invalid(format!("a frame of kind {} with {} bytes", header[0], payload.len())))
        };
        let frame = match header[0] {
            WATERMARK => Frame::Watermark(i64::from_le_bytes(fixed(8)?.try_into().expect("8 bytes"))),
            IDLE => Frame::Idle(fixed(1)?[0] != 0),
            BARRIER => {
                let b = fixed(16)?;
                Frame::Barrier(Barrier {
                    id: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                    timestamp: i64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
                })
            }
            END => Frame::End(if fixed(1)?[0] != 0 { Ending::Stopped } else { Ending::Finished }),
            CREDIT => Frame::Credit(u32::from_le_bytes(fixed(4)?.try_into().expect("4 bytes"))),
            GOODBYE => {
                fixed(0)?;
                Frame::Goodbye
            }
            kind => return Err(invalid(format!("a frame of unknown kind {kind}"))),
        };
        Ok(Some((channel, frame)))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_reads_back_as_written() {
        let channel = ChannelId { node: 7, subtask: 3, channel: 11 };
        let frames = vec![
            Frame::Data(vec![1, 2, 3]),
            Frame::Data(Vec::new()),
            Frame::Watermark(-42),
            Frame::Idle(true),
            Frame::Barrier(Barrier { id: 9, timestamp: 1_700_000_000_000 }),
            Frame::End(Ending::Stopped),
            Frame::End(Ending::Finished),
            Frame::Credit(2),
            Frame::Goodbye,
            Frame::Control(vec![9, 9]),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.write(channel, &mut bytes).unwrap();
        }
        let mut input = &bytes[..];
        for f in frames {
            assert_eq!(Frame::read(&mut input).unwrap(), Some((channel, f)));
        }
        assert_eq!(Frame::read(&mut input).unwrap(), None, "a clean end");
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let channel = ChannelId { node: 0, subtask: 0, channel: 0 };
        let mut bytes = Vec::new();
        Frame::Watermark(5).write(channel, &mut bytes).unwrap();
        bytes[0] = 99;
        assert!(Frame::read(&mut &bytes[..]).unwrap_err().to_string().contains("unknown kind 99"));
        let mut huge = vec![DATA];
        huge.extend([0u8; 12]);
        huge.extend(u32::MAX.to_le_bytes());
        assert!(Frame::read(&mut &huge[..]).unwrap_err().to_string().contains("more than"));
        let mut short = Vec::new();
        Frame::Barrier(Barrier { id: 1, timestamp: 2 }).write(channel, &mut short).unwrap();
        short.truncate(short.len() - 3);
        assert_eq!(Frame::read(&mut &short[..]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
