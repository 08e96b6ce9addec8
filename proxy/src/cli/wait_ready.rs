//! `braid-proxy wait-ready`.

use std::io::Write as _;
use std::time::Duration;

use braid_sidecar::ADMIN_PORT;

/// `wait-ready`: polls the admin `/ready` until it answers 200 (for the postStart hook of
/// clusters without native sidecars, so that the application starts after the proxy).
pub fn wait_ready() -> Result<(), String> {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let answer =
            std::net::TcpStream::connect(("127.0.0.1", ADMIN_PORT)).and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                stream.write_all(
                    b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            });
        if answer.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("the proxy was not ready within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
