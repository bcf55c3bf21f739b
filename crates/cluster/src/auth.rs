//! The cluster secret: where it comes from, and the check every call passes. Clients send
//! it as a bearer token (`authorization: Bearer <secret>`); the servers compare it in
//! constant time and refuse, with a log line, any call without it or with another one.
//! Without TLS (not built yet) the token travels in clear: run a cluster on loopback or a
//! trusted network only.

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

/// A gRPC client channel with the secret attached to every call.
pub type AuthedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Attach>;

/// Connects to `address` (host:port, or a URL), trying again until `within` has passed
/// (the other end may still be starting).
pub async fn connect(address: &str, within: std::time::Duration) -> Result<tonic::transport::Channel, String> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("'{address}' is not an address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("cannot reach {address} within {within:?}: {e}"))
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
