//! The cluster secret: where it comes from, and the check every call passes. Clients send
//! it as a bearer token (`authorization: Bearer <secret>`); the servers compare it in
//! constant time and refuse, with a log line, any call without it or with another one.
//! With certificates configured ([`ClusterTls`]) every call travels over TLS 1.3 and the
//! caller checks the server's certificate against the cluster's CA; without them the token
//! travels in clear, so run such a cluster on loopback or a trusted network only.

use std::sync::Arc;
use tonic::{Request, Status};

/// The environment variable holding the secret itself.
pub const ENV_SECRET: &str = "SLUICE_SECRET";
/// The environment variable holding the path of a file with the secret.
pub const ENV_SECRET_FILE: &str = "SLUICE_SECRET_FILE";

/// The cluster secret.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from its text (trimmed); empty is refused.
    pub fn new(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the cluster secret is empty".into());
        }
        Ok(Secret(Arc::from(text)))
    }

    /// The secret from `--secret-file FILE` if given, else `SLUICE_SECRET`, else the file
    /// `SLUICE_SECRET_FILE` names. Nothing runs open: no secret is an error.
    pub fn load(file: Option<&std::path::Path>) -> Result<Secret, String> {
        let from_file = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading the cluster secret from {}: {e}", path.display()))
                .and_then(|t| Secret::new(&t))
        };
        if let Some(path) = file {
            return from_file(path);
        }
        if let Ok(text) = std::env::var(ENV_SECRET) {
            return Secret::new(&text);
        }
        if let Ok(path) = std::env::var(ENV_SECRET_FILE) {
            return from_file(std::path::Path::new(&path));
        }
        Err(format!(
            "no cluster secret: pass --secret-file FILE or set {ENV_SECRET} or {ENV_SECRET_FILE} (every process of \
             a cluster, and the command line, use the same one; `sluice cluster` writes one)"
        ))
    }

    /// The secret's text (for a job process's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `token` is the secret, compared in constant time.
    fn matches(&self, token: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The server-side check, as a tonic interceptor.
    pub fn check(&self) -> Check {
        Check(self.clone())
    }

    /// The client-side interceptor that adds the secret to every call.
    pub fn attach(&self) -> Attach {
        Attach(format!("Bearer {}", self.0).parse().ok())
    }

    /// Whether an HTTP `Authorization` header value carries the secret.
    pub fn accepts_header(&self, value: &str) -> bool {
        value.strip_prefix("Bearer ").is_some_and(|t| self.matches(t.trim()))
    }
}

/// Refuses calls without the secret (server side).
#[derive(Clone, Debug)]
pub struct Check(Secret);

impl tonic::service::Interceptor for Check {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(token) if self.0.matches(token) => Ok(request),
            Some(_) => {
                tracing::warn!(peer = ?request.remote_addr(), "refused a call with a wrong cluster secret");
                Err(Status::unauthenticated("wrong cluster secret"))
            }
            None => {
                tracing::warn!(peer = ?request.remote_addr(), "refused a call without the cluster secret");
                Err(Status::unauthenticated("the call carries no cluster secret (authorization: Bearer ...)"))
            }
        }
    }
}

/// Adds the secret to every call (client side).
#[derive(Clone, Debug)]
pub struct Attach(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Attach {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.clone().ok_or_else(|| Status::invalid_argument("the cluster secret is not valid text"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A server's TLS material (the coordinator's, a worker's), loaded and checked at start.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    files: sluice_net::TlsFiles,
    pem: sluice_net::tls::TlsPem,
    /// The same material for the blocking servers (the HTTP status endpoint).
    blocking: sluice_net::Tls,
}

impl ClusterTls {
    /// Reads the three files and checks that they make a valid configuration (the key
    /// matches the certificate, the CA is a certificate), so that a mistake stops the
    /// process at start, named.
    pub fn load(files: sluice_net::TlsFiles) -> Result<ClusterTls, String> {
        let pem = files.read()?;
        let blocking = sluice_net::Tls::new(&pem)?;
        Ok(ClusterTls { files, pem, blocking })
    }

    /// Where the material is (for the environment of job processes).
    pub fn files(&self) -> &sluice_net::TlsFiles {
        &self.files
    }

    /// The CA certificate that the servers called are checked against.
    pub fn ca(&self) -> Ca {
        Ca(Arc::from(self.pem.ca.as_slice()))
    }

    /// The gRPC server's TLS settings.
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.pem.cert, &self.pem.key))
    }

    /// The settings for a blocking server on a plain socket (`sluice_net::tls::TlsStream`).
    pub fn blocking(&self) -> &sluice_net::Tls {
        &self.blocking
    }
}

/// The CA certificate (PEM) a caller checks servers against: with it, calls use TLS.
#[derive(Clone, Debug)]
pub struct Ca(Arc<[u8]>);

impl Ca {
    /// Reads the CA certificate from `path`.
    pub fn read(path: &std::path::Path) -> Result<Ca, String> {
        let pem = std::fs::read(path).map_err(|e| format!("reading the TLS CA {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("the TLS CA {} holds no PEM certificate", path.display()));
        }
        Ok(Ca(Arc::from(pem)))
    }
}

/// A gRPC client channel with the secret attached to every call.
pub type AuthedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Attach>;

/// Connects to `address` (host:port, or a URL), trying again until `within` has passed
/// (the other end may still be starting). With `ca`, over TLS, the server's certificate
/// checked against it and the address's host.
pub async fn connect(
    address: &str,
    ca: Option<&Ca>,
    within: std::time::Duration,
) -> Result<tonic::transport::Channel, String> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = match address.split_once("://") {
        Some((_, rest)) => format!("{scheme}://{rest}"),
        None => format!("{scheme}://{address}"),
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("'{address}' is not an address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(60));
    if let Some(Ca(pem)) = ca {
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS to {address}: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                let cause = std::error::Error::source(&e).map(|c| format!(" ({c})")).unwrap_or_default();
                return Err(format!("cannot reach {address} within {within:?}: {e}{cause}"));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn calls_without_the_secret_or_with_another_are_refused() {
        let secret = Secret::new("s3cret\n").unwrap();
        let mut check = secret.check();
        let mut attached = Request::new(());
        attached = secret.attach().call(attached).unwrap();
        assert!(check.call(attached).is_ok());
        assert_eq!(check.call(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let wrong = Secret::new("other").unwrap().attach().call(Request::new(())).unwrap();
        assert_eq!(check.call(wrong).unwrap_err().message(), "wrong cluster secret");
        assert!(secret.accepts_header("Bearer s3cret") && !secret.accepts_header("Bearer s3cre"));
        assert!(Secret::new("  ").unwrap_err().contains("empty"));
    }
}
