//! Command-line parsing, by hand: the binary has a handful of flags and should build in seconds.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Printed with every usage error.
pub const USAGE: &str = "usage:
  braid-shop serve [--listen ADDR] [--role ROLE] [--version V] [--files DIR]
                   [--upstream NAME=URL]... [--delay-ms N]
                   [--fail-percent P] [--hang-percent P] [--reset-percent P]
  braid-shop get URL
  braid-shop orders --url URL [--count N | --duration SECONDS] [--concurrency C] [--pause-ms N]";

/// What the process was asked to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Serve HTTP.
    Serve(ServeSettings),
    /// Fetch one URL and print the body.
    Get {
        /// The URL to fetch (plain `http://` only).
        url: String,
    },
    /// Place orders and print where they went.
    Orders(OrderSettings),
}

/// Settings of `braid-shop orders`.
#[derive(Debug, PartialEq)]
pub struct OrderSettings {
    /// The order service's URL.
    pub url: String,
    /// Stop after this many orders.
    pub count: Option<u64>,
    /// Stop after this many seconds. Without count or duration: run forever, printing a summary
    /// every 10 seconds (the demo's traffic generator).
    pub duration: Option<u64>,
    /// Orders in flight at once (default 1).
    pub concurrency: usize,
    /// Pause of each worker between orders (default 0).
    pub pause_ms: u64,
}

/// Settings of `braid-shop serve`.
#[derive(Debug, PartialEq)]
pub struct ServeSettings {
    /// Where to listen (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// The service this process plays, reported in every answer (default `echo`).
    pub role: String,
    /// The version reported in every answer (default `v1`).
    pub version: String,
    /// A directory whose files are served under `/files/<name>`.
    pub files: Option<PathBuf>,
    /// Services this one calls for every request, by name (the order service calls user,
    /// inventory and payment); their answers are embedded in its own.
    pub upstreams: Vec<(String, String)>,
    /// Wait this long before answering (a slow backend).
    pub delay_ms: u64,
    /// How this backend misbehaves (a demo of what the mesh absorbs).
    pub misbehave: Misbehave,
}

/// Ways to make a backend misbehave, each a percentage (0 to 100) spread evenly over the
/// requests or connections (every second one at 50): `/healthz` always answers, so that the
/// pod stays Ready and the mesh, not the kubelet, has to deal with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Misbehave {
    /// Requests answered `503 Service Unavailable` at once.
    pub fail_percent: u64,
    /// Requests never answered (the connection stays open).
    pub hang_percent: u64,
    /// Connections closed as soon as they are accepted, before any request is read.
    pub reset_percent: u64,
}

/// Parses the arguments after the program name.
pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    match args.next().as_deref() {
        Some("serve") => parse_serve(args).map(Command::Serve),
        Some("get") => {
            let url = args.next().ok_or("get needs a URL")?;
            match args.next() {
                Some(extra) => Err(format!("unexpected argument {extra:?}")),
                None => Ok(Command::Get { url }),
            }
        }
        Some("orders") => parse_orders(args).map(Command::Orders),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("missing command".into()),
    }
}

fn parse_serve(mut args: impl Iterator<Item = String>) -> Result<ServeSettings, String> {
    let mut settings = ServeSettings {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        role: "echo".into(),
        version: "v1".into(),
        files: None,
        upstreams: Vec::new(),
        delay_ms: 0,
        misbehave: Misbehave::default(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                settings.listen = value
                    .parse()
                    .map_err(|error| format!("--listen {value:?}: {error}"))?;
            }
            "--role" => settings.role = value,
            "--version" => settings.version = value,
            "--files" => settings.files = Some(value.into()),
            "--upstream" => {
                let (name, url) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--upstream {value:?}: expected NAME=URL"))?;
                settings.upstreams.push((name.into(), url.into()));
            }
            "--delay-ms" => settings.delay_ms = number(&flag, &value)?,
            "--fail-percent" => settings.misbehave.fail_percent = percent(&flag, &value)?,
            "--hang-percent" => settings.misbehave.hang_percent = percent(&flag, &value)?,
            "--reset-percent" => settings.misbehave.reset_percent = percent(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(settings)
}

fn number(flag: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?}: not a number"))
}

fn percent(flag: &str, value: &str) -> Result<u64, String> {
    number(flag, value)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("{flag} {value:?}: not a percentage from 0 to 100"))
}

fn parse_orders(mut args: impl Iterator<Item = String>) -> Result<OrderSettings, String> {
    let mut settings = OrderSettings {
        url: String::new(),
        count: None,
        duration: None,
        concurrency: 1,
        pause_ms: 0,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => settings.url = value,
            "--count" => settings.count = Some(number(&flag, &value)?),
            "--duration" => settings.duration = Some(number(&flag, &value)?),
            "--concurrency" => {
                settings.concurrency = number(&flag, &value)?.clamp(1, 256) as usize;
            }
            "--pause-ms" => settings.pause_ms = number(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if settings.url.is_empty() {
        return Err("orders needs --url".into());
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &str) -> Result<Command, String> {
        parse(words.split_whitespace().map(String::from))
    }

    #[test]
    fn serve_takes_every_flag() {
        let Ok(Command::Serve(settings)) =
            parse_words("serve --listen 127.0.0.1:9 --role payment --version v2 --files /x")
        else {
            panic!("serve did not parse");
        };
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(
            (settings.role.as_str(), settings.version.as_str()),
            ("payment", "v2")
        );
        assert_eq!(settings.files, Some(PathBuf::from("/x")));
        let Ok(Command::Serve(order)) =
            parse_words("serve --upstream user=http://user:8080 --delay-ms 200")
        else {
            panic!("serve did not parse");
        };
        assert_eq!(
            order.upstreams,
            [("user".into(), "http://user:8080".into())]
        );
        assert_eq!(order.delay_ms, 200);
        assert_eq!(order.misbehave, Misbehave::default());
        let Ok(Command::Serve(bad)) =
            parse_words("serve --fail-percent 50 --hang-percent 0 --reset-percent 100")
        else {
            panic!("serve did not parse");
        };
        assert_eq!(
            bad.misbehave,
            Misbehave {
                fail_percent: 50,
                hang_percent: 0,
                reset_percent: 100
            }
        );
        let Ok(Command::Orders(orders)) =
            parse_words("orders --url http://order:8080/order --count 10 --concurrency 4")
        else {
            panic!("orders did not parse");
        };
        assert_eq!((orders.count, orders.concurrency), (Some(10), 4));
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            parse_words("serve --role"),
            Err("--role needs a value".into())
        );
        assert!(parse_words("serve --listen nowhere").is_err_and(|e| e.contains("--listen")));
        assert_eq!(
            parse_words("serve --colour red"),
            Err("unknown flag \"--colour\"".into())
        );
        assert_eq!(parse_words("get"), Err("get needs a URL".into()));
        assert_eq!(
            parse_words("serve --upstream user"),
            Err("--upstream \"user\": expected NAME=URL".into())
        );
        assert_eq!(
            parse_words("orders --url http://order --count many"),
            Err("--count \"many\": not a number".into())
        );
        assert_eq!(
            parse_words("serve --fail-percent 101"),
            Err("--fail-percent \"101\": not a percentage from 0 to 100".into())
        );
        assert_eq!(
            parse_words("orders --count 1"),
            Err("orders needs --url".into())
        );
    }
}
