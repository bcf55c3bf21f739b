//! The handshake that opens every connection: both ends prove that they hold the cluster
//! secret without sending it (a challenge and response over SHA-256 of the secret and two
//! fresh nonces, one from each end, so an answer recorded once is worth nothing later),
//! and the accepting end checks that the dialing one belongs to the same job and attempt
//! and built the same job graph.
//! A connection of an older attempt is refused: after a restart, a process of the failed
//! attempt cannot feed the new one.
//!
//! ```text
//! dialer -> acceptor: "SLNT" version job attempt process graph-fingerprint dialer-nonce
//! acceptor -> dialer: acceptor-nonce H("acceptor" secret dialer-nonce acceptor-nonce)
//! dialer -> acceptor: H("dialer" secret dialer-nonce acceptor-nonce)
//! acceptor -> dialer: 0 (accepted) | 1 reason
//! ```

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 4] = b"SLNT";
const VERSION: u16 = 1;
const NONCE: usize = 16;
/// The longest job name or refusal a handshake carries.
const MAX_TEXT: usize = 4096;

/// Who a connection's end is, and the secret both ends must share.
#[derive(Clone)]
pub struct Identity {
    /// The cluster secret.
    pub secret: std::sync::Arc<[u8]>,
    /// The job.
    pub job: String,
    /// The job's attempt (grows with every restart).
    pub attempt: u64,
    /// This process's index among the job's processes.
    pub process: u32,
    /// The fingerprint of the job graph this process built: every process of a job must
    /// build the same one (same binary, same arguments).
    pub graph: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Identity")
            .field("job", &self.job)
            .field("attempt", &self.attempt)
            .field("process", &self.process)
            .field("graph", &format_args!("{:016x}", self.graph))
            .finish()
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not hold the cluster secret (or holds another one).
    #[error("the peer {0} failed to prove it holds the cluster secret: check that every process uses the same one")]
    WrongSecret(&'static str),
    /// The peer belongs to another job or attempt, or speaks another protocol.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection failed.
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
}

fn proof(role: &str, secret: &[u8], dialer: &[u8; NONCE], acceptor: &[u8; NONCE]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(role.as_bytes());
    h.update((secret.len() as u64).to_le_bytes());
    h.update(secret);
    h.update(dialer);
    h.update(acceptor);
    h.finalize().into()
}

fn nonce() -> io::Result<[u8; NONCE]> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).map_err(|e| io::Error::other(format!("no random nonce: {e}")))?;
    Ok(n)
}

fn write_text(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(&(text.len() as u32).to_le_bytes())?;
    out.write_all(text.as_bytes())
}

fn read_text(input: &mut impl Read) -> io::Result<String> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_TEXT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a handshake text too long"));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a handshake text not UTF-8"))
}

/// Opens a connection from the dialing end: `Ok` means both ends proved the secret and
/// the acceptor took the dialer's job and attempt.
pub fn dial<S: Read + Write>(stream: &mut S, me: &Identity) -> Result<(), HandshakeError> {
    let mine = nonce()?;
    let mut hello = Vec::with_capacity(64);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    write_text(&mut hello, &me.job)?;
    hello.extend_from_slice(&me.attempt.to_le_bytes());
    hello.extend_from_slice(&me.process.to_le_bytes());
    hello.extend_from_slice(&me.graph.to_le_bytes());
    hello.extend_from_slice(&mine);
    stream.write_all(&hello)?;
    stream.flush()?;
    let mut theirs = [0u8; NONCE];
    let mut their_proof = [0u8; 32];
    stream.read_exact(&mut theirs)?;
    stream.read_exact(&mut their_proof)?;
    if their_proof != proof("acceptor", &me.secret, &mine, &theirs) {
        return Err(HandshakeError::WrongSecret("it connected to"));
    }
    stream.write_all(&proof("dialer", &me.secret, &mine, &theirs))?;
    stream.flush()?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict)?;
    match verdict[0] {
        0 => Ok(()),
        _ => Err(HandshakeError::Refused(read_text(stream)?)),
    }
}

/// Accepts a connection: checks the dialer's secret, job and attempt; returns the
/// dialer's process index.
pub fn accept<S: Read + Write>(stream: &mut S, me: &Identity) -> Result<u32, HandshakeError> {
    let mut magic = [0u8; 6];
    stream.read_exact(&mut magic)?;
    if &magic[..4] != MAGIC {
        return Err(HandshakeError::Refused("not a Sluice data connection".into()));
    }
    let version = u16::from_le_bytes([magic[4], magic[5]]);
    let job = read_text(stream)?;
    let mut fixed = [0u8; 8 + 4 + 8 + NONCE];
    stream.read_exact(&mut fixed)?;
    let attempt = u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
    let process = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    let graph = u64::from_le_bytes(fixed[12..20].try_into().expect("8 bytes"));
    let theirs: [u8; NONCE] = fixed[20..].try_into().expect("nonce");
    let mine = nonce()?;
    stream.write_all(&mine)?;
    stream.write_all(&proof("acceptor", &me.secret, &theirs, &mine))?;
    stream.flush()?;
    let mut their_proof = [0u8; 32];
    stream.read_exact(&mut their_proof)?;
    let refusal = if their_proof != proof("dialer", &me.secret, &theirs, &mine) {
        Some((HandshakeError::WrongSecret("that connected"), "wrong cluster secret".to_string()))
    } else if version != VERSION {
        let why = format!("protocol version {version}, this process speaks {VERSION}");
        Some((HandshakeError::Refused(why.clone()), why))
    } else if job != me.job || attempt != me.attempt {
        let why = format!(
            "a connection of job '{job}' attempt {attempt} reached job '{}' attempt {} (an older attempt's \
             process is refused)",
            me.job, me.attempt
        );
        Some((HandshakeError::Refused(why.clone()), why))
    } else if graph != me.graph {
        let why = format!(
            "process {process} built another job graph (fingerprint {graph:016x}) than process {} ({:016x}): every \
             process of a job must run the same binary with the same arguments",
            me.process, me.graph
        );
        Some((HandshakeError::Refused(why.clone()), why))
    } else {
        None
    };
    match refusal {
        None => {
            stream.write_all(&[0])?;
            stream.flush()?;
            Ok(process)
        }
        Some((error, why)) => {
            stream.write_all(&[1])?;
            write_text(stream, &why)?;
            stream.flush()?;
            Err(error)
        }
    }
}
