//! systemd service notification (the `sd_notify` protocol, without libsystemd).
//!
//! Under `Type=notify`, `hexa serve` sends `READY=1` once its API socket listens. Under
//! `WatchdogSec=`, it then sends `WATCHDOG=1` every half period, but only after its own API
//! answered `GET /readyz` with 200 over loopback: a server that stopped accepting or
//! answering is killed by systemd and restarted (`Restart=on-failure`). Outside systemd
//! (`NOTIFY_SOCKET` unset) all of this does nothing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest time one `/readyz` probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where notifications go: the `NOTIFY_SOCKET` systemd gave the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    /// A socket in the filesystem (`/run/systemd/notify`).
    Path(PathBuf),
    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`).
    Abstract(Vec<u8>),
}

impl NotifySocket {
    /// Parses a `NOTIFY_SOCKET` value; `None` when it names no usable socket.
    pub fn parse(value: &str) -> Option<NotifySocket> {
        if let Some(name) = value.strip_prefix('@') {
            (!name.is_empty()).then(|| NotifySocket::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Some(NotifySocket::Path(PathBuf::from(value)))
        } else {
            None
        }
    }

    /// The socket from the environment, if this process runs under `Type=notify`.
    pub fn from_env() -> Option<NotifySocket> {
        std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|v| NotifySocket::parse(&v))
    }

    /// Sends one notification datagram (e.g. `READY=1`).
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let n = match self {
            NotifySocket::Path(p) => sock.send_to(state.as_bytes(), p)?,
            NotifySocket::Abstract(name) => {
                let addr = UnixAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        if n != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), if it is meant for this process
/// (`WATCHDOG_PID` absent or equal to our PID).
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The loopback address that reaches a server listening on `listen` (a wildcard address
/// becomes the loopback address of its family).
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Whether the server at `addr` answers `GET /readyz` with status 200 within
/// [`PROBE_TIMEOUT`].
pub async fn probe_ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        // The status line fits in the first bytes; read until it is complete.
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            let n = s.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
        }
        io::Result::Ok(buf[..len].starts_with(b"HTTP/1.1 200 "))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

/// Tells systemd the server listening on `listen` is ready and, when a watchdog is
/// configured, spawns the task that keeps it fed while `/readyz` answers 200. Must run
/// inside a tokio runtime. Does nothing outside `Type=notify`.
pub fn start(listen: SocketAddr) {
    let Some(socket) = NotifySocket::from_env() else {
        return;
    };
    if let Err(e) = socket.send("READY=1") {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let period = watchdog_period(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let Some(period) = period else {
        return;
    };
    let addr = probe_addr(listen);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if probe_ready(addr).await {
                if let Err(e) = socket.send("WATCHDOG=1") {
                    tracing::warn!(error = %e, "cannot feed the systemd watchdog");
                }
            } else {
                tracing::warn!("own /readyz probe failed; not feeding the systemd watchdog");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_notify_socket_values() {
        assert_eq!(
            NotifySocket::parse("/run/systemd/notify"),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse("@sd-notify"),
            Some(NotifySocket::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(NotifySocket::parse(""), None);
        assert_eq!(NotifySocket::parse("@"), None);
        assert_eq!(NotifySocket::parse("relative/path"), None);
    }

    #[test]
    fn sends_datagrams_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        NotifySocket::Path(path).send("READY=1").unwrap();
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("hexa-sdnotify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
        NotifySocket::Abstract(name.into_bytes())
            .send("WATCHDOG=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            NotifySocket::Path(dir.path().join("absent"))
                .send("READY=1")
                .is_err()
        );
    }

    #[test]
    fn watchdog_period_honours_pid_and_value() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_period(Some("30000000"), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_period(Some("30000000"), Some(&me)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_period(Some("30000000"), Some("1")), None);
        assert_eq!(watchdog_period(Some("0"), None), None);
        assert_eq!(watchdog_period(Some("soon"), None), None);
        assert_eq!(watchdog_period(None, None), None);
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8080".parse().unwrap()),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("192.168.1.5:80".parse().unwrap()),
            "192.168.1.5:80".parse().unwrap()
        );
    }

    /// A one-shot HTTP server answering the first request with `status_line`.
    async fn answer_once(status_line: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(status_line.as_bytes()).await.unwrap();
            s.write_all(b"\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn probe_accepts_only_200() {
        assert!(probe_ready(answer_once("HTTP/1.1 200 OK").await).await);
        assert!(!probe_ready(answer_once("HTTP/1.1 503 Service Unavailable").await).await);
        // Nothing listening.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(!probe_ready(addr).await);
    }
}
