//! TLS 1.3 (rustls, ring) for Sluice's connections, when certificates are configured.
//!
//! Every process of a cluster is given the same three PEM files: the certificate chain it
//! presents when it is the listening end, its private key, and the certificate of the
//! authority that signed the certificates of the others. The dialing end checks the
//! listening end's certificate against that authority and the address it dialed (an IP
//! address in the certificate's subject alternative names, or a host name); the dialing end
//! is authenticated by the cluster secret, as without TLS (challenge-response on data
//! connections, a bearer token on calls, which TLS now keeps from being read on the wire).
//!
//! The data plane reads and writes a connection from two threads (a reader thread per
//! connection, producers that write whole frames under a lock), while a rustls session is
//! one state machine. [`split`] shares the session behind a mutex that is held only to
//! encrypt or decrypt, never while waiting on the socket: the reader waits for bytes
//! without it, the writer encrypts into a buffer under it and writes the buffer without it,
//! so a slow peer cannot make one direction block the other.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The environment variable with the path of this process's certificate chain (PEM).
pub const ENV_TLS_CERT: &str = "SLUICE_TLS_CERT";
/// The environment variable with the path of this process's private key (PEM).
pub const ENV_TLS_KEY: &str = "SLUICE_TLS_KEY";
/// The environment variable with the path of the authority's certificate (PEM) that the
/// other processes' certificates are checked against.
pub const ENV_TLS_CA: &str = "SLUICE_TLS_CA";

/// Where a process's TLS material is: all three files, or none (no TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain this process presents (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The authority the others' certificates are checked against (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// From three optional paths (flags or environment variables): all or none; one or two
    /// of them is a mistake, named with the fix.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> =
                    [(cert.is_none(), "certificate"), (key.is_none(), "key"), (ca.is_none(), "CA")]
                        .iter()
                        .filter(|(absent, _)| *absent)
                        .map(|(_, name)| *name)
                        .collect();
                Err(format!(
                    "TLS needs a certificate, its key and the CA certificate together; the {} is not given \
                     (--tls-cert/--tls-key/--tls-ca, or {ENV_TLS_CERT}/{ENV_TLS_KEY}/{ENV_TLS_CA})",
                    missing.join(" and the ")
                ))
            }
        }
    }

    /// From [`ENV_TLS_CERT`], [`ENV_TLS_KEY`] and [`ENV_TLS_CA`].
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Self::from_parts(var(ENV_TLS_CERT), var(ENV_TLS_KEY), var(ENV_TLS_CA))
    }

    /// The environment that gives these files to a child process.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [(ENV_TLS_CERT, &self.cert), (ENV_TLS_KEY, &self.key), (ENV_TLS_CA, &self.ca)]
    }

    /// Reads the three files.
    pub fn read(&self) -> Result<TlsPem, String> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("reading the TLS {what} {}: {e}", path.display()))
        };
        Ok(TlsPem { cert: read("certificate", &self.cert)?, key: read("key", &self.key)?, ca: read("CA", &self.ca)? })
    }
}

/// The PEM text of a process's TLS material.
#[derive(Clone)]
pub struct TlsPem {
    /// The certificate chain.
    pub cert: Vec<u8>,
    /// The private key.
    pub key: Vec<u8>,
    /// The authority's certificate.
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsPem").finish_non_exhaustive()
    }
}

/// TLS settings for both ends of a data connection.
#[derive(Clone)]
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Builds both ends' settings from the PEM text; what is malformed is named.
    pub fn new(pem: &TlsPem) -> Result<Tls, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the TLS certificate is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the TLS certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| format!("the TLS key is not a PEM key: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&pem.ca) {
            let ca = ca.map_err(|e| format!("the TLS CA certificate is not PEM: {e}"))?;
            roots.add(ca).map_err(|e| format!("the TLS CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the TLS CA file holds no certificate".into());
        }
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the TLS certificate and key do not go together: {e}"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls { server: Arc::new(server), client: Arc::new(client) })
    }

    /// From [`TlsFiles::from_env`]: `Ok(None)` without TLS.
    pub fn from_env() -> Result<Option<Tls>, String> {
        match TlsFiles::from_env()? {
            Some(files) => Ok(Some(Tls::new(&files.read()?)?)),
            None => Ok(None),
        }
    }

    /// The dialing end's session with a peer dialed at `ip`, whose certificate must name it.
    pub fn client(&self, ip: IpAddr) -> io::Result<rustls::Connection> {
        let session =
            rustls::ClientConnection::new(self.client.clone(), ServerName::from(ip)).map_err(io::Error::other)?;
        Ok(rustls::Connection::Client(session))
    }

    /// The listening end's session.
    pub fn server(&self) -> io::Result<rustls::Connection> {
        Ok(rustls::Connection::Server(rustls::ServerConnection::new(self.server.clone()).map_err(io::Error::other)?))
    }
}

/// A TLS session over its socket, used from one thread (the handshakes), before [`split`].
pub struct TlsStream {
    session: rustls::Connection,
    socket: TcpStream,
}

impl TlsStream {
    /// Wraps `socket` in `session` and completes the TLS handshake (within the socket's
    /// read timeout).
    pub fn handshake(mut session: rustls::Connection, mut socket: TcpStream) -> io::Result<TlsStream> {
        while session.is_handshaking() {
            session.complete_io(&mut socket).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    io::Error::new(io::ErrorKind::InvalidData, format!("TLS handshake refused: {e}"))
                } else {
                    e
                }
            })?;
        }
        Ok(TlsStream { session, socket })
    }
}

impl TlsStream {
    /// The socket under the session.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.flush()?;
            if self.session.read_tls(&mut self.socket)? == 0 {
                return Ok(0);
            }
            self.session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.session.writer().write(buf)?;
        self.flush()?;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.socket)?;
        }
        Ok(())
    }
}

/// The reading half of a split TLS session.
pub struct TlsReader {
    session: Arc<Mutex<rustls::Connection>>,
    socket: TcpStream,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
}

/// The writing half of a split TLS session.
pub struct TlsWriter {
    session: Arc<Mutex<rustls::Connection>>,
    socket: TcpStream,
    encrypted: Vec<u8>,
}

/// Splits a session whose handshake is done into a reader and a writer for two threads.
pub fn split(stream: TlsStream) -> io::Result<(TlsReader, TlsWriter)> {
    let TlsStream { mut session, socket } = stream;
    // Large frames are encrypted whole rather than in 64 KiB steps.
    session.set_buffer_limit(Some(1 << 20));
    let session = Arc::new(Mutex::new(session));
    let reader = TlsReader {
        session: session.clone(),
        socket: socket.try_clone()?,
        raw: vec![0u8; 64 << 10].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    Ok((reader, TlsWriter { session, socket, encrypted: Vec::with_capacity(64 << 10) }))
}

fn lock(session: &Mutex<rustls::Connection>) -> std::sync::MutexGuard<'_, rustls::Connection> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = lock(&self.session);
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Bytes already read from the socket go in a little at a time, so that
                // what they decrypt to is read out before more goes in.
                if self.start < self.end {
                    let mut pending = &self.raw[self.start..self.end];
                    let taken = session.read_tls(&mut pending)?;
                    self.start += taken;
                    session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
                    continue;
                }
            }
            // Waiting for the peer, without the session: the writer goes on meanwhile.
            let n = self.socket.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            (self.start, self.end) = (0, n);
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = {
            let mut session = lock(&self.session);
            let written = session.writer().write(buf)?;
            while session.wants_write() {
                session.write_tls(&mut self.encrypted)?;
            }
            written
        };
        // Written to the socket without the session, so that a peer slow to read holds up
        // only this direction.
        let result = self.socket.write_all(&self.encrypted);
        self.encrypted.clear();
        result.map(|()| written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes a certificate authority and a certificate it signs for `hosts` (IP addresses or
/// host names), for a cluster on one machine or a test: the PEM text of the certificate,
/// its key and the authority's certificate. For a real deployment, use certificates of
/// your own authority.
pub fn generate(hosts: &[&str]) -> Result<TlsPem, String> {
    let failed = |e: rcgen::Error| format!("making a TLS certificate: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Sluice cluster CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(failed)?;
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let cert = rcgen::CertificateParams::new(hosts).map_err(failed)?.signed_by(&key, &ca).map_err(failed)?;
    Ok(TlsPem { cert: cert.pem().into_bytes(), key: key.serialize_pem().into_bytes(), ca: ca.pem().into_bytes() })
}

impl TlsPem {
    /// Writes the three files into `dir` (`cert.pem`, `key.pem` readable by the owner only,
    /// `ca.pem`) and returns where they are.
    pub fn write_to(&self, dir: &Path) -> Result<TlsFiles, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem"), ca: dir.join("ca.pem") };
        for (path, text) in [(&files.cert, &self.cert), (&files.key, &self.key), (&files.ca, &self.ca)] {
            std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("making {} private: {e}", files.key.display()))?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> TlsPem {
        generate(&["127.0.0.1"]).unwrap()
    }

    fn pair(server_tls: &Tls, client_tls: &Tls) -> (io::Result<TlsStream>, io::Result<TlsStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server_tls = server_tls.clone();
        let accepting = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            TlsStream::handshake(server_tls.server()?, socket)
        });
        let socket = TcpStream::connect(address).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let dialed = TlsStream::handshake(client_tls.client(address.ip()).unwrap(), socket);
        (accepting.join().unwrap(), dialed)
    }

    #[test]
    fn a_split_session_carries_both_directions_at_once_and_a_foreign_certificate_is_refused() {
        let tls = Tls::new(&material()).unwrap();
        let (server, client) = pair(&tls, &tls);
        let (mut server_reader, mut server_writer) = split(server.unwrap()).unwrap();
        let (mut client_reader, mut client_writer) = split(client.unwrap()).unwrap();
        // Both ends write 8 MiB while the other reads: with a session locked across a
        // blocking write, this would deadlock once the socket buffers are full.
        let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        let (p1, p2) = (payload.clone(), payload.clone());
        let writing = std::thread::spawn(move || {
            for chunk in p1.chunks(100_000) {
                server_writer.write_all(chunk).unwrap();
            }
        });
        let writing_back = std::thread::spawn(move || {
            for chunk in p2.chunks(70_000) {
                client_writer.write_all(chunk).unwrap();
            }
        });
        let mut at_client = vec![0u8; payload.len()];
        let reading_back = std::thread::spawn(move || {
            let mut at_server = vec![0u8; 8 << 20];
            server_reader.read_exact(&mut at_server).unwrap();
            at_server
        });
        client_reader.read_exact(&mut at_client).unwrap();
        assert!(at_client == payload, "the client read what the server wrote");
        assert!(reading_back.join().unwrap() == payload, "the server read what the client wrote");
        writing.join().unwrap();
        writing_back.join().unwrap();

        // A dialer that trusts another authority refuses the certificate.
        let other = Tls::new(&material()).unwrap();
        let (_, client) = pair(&tls, &other);
        let error = client.err().expect("refused").to_string();
        assert!(error.contains("TLS handshake refused") && error.contains("certificate"), "{error}");
    }

    #[test]
    fn partial_or_malformed_settings_are_refused_with_the_fix() {
        let error = TlsFiles::from_parts(Some("c".into()), None, Some("a".into())).unwrap_err();
        assert!(error.contains("the key is not given") && error.contains("--tls-key"), "{error}");
        assert_eq!(TlsFiles::from_parts(None, None, None).unwrap(), None);
        let mut bad = material();
        bad.key = b"not a key".to_vec();
        assert!(Tls::new(&bad).unwrap_err().contains("not a PEM key"));
        let mut mismatched = material();
        mismatched.key = material().key;
        assert!(Tls::new(&mismatched).unwrap_err().contains("do not go together"));
    }
}
