//! Command-line parsing, by hand: the binary has four flags and should build in seconds.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Printed with every usage error.
pub const USAGE: &str = "usage:
  braid-shop serve [--listen ADDR] [--role ROLE] [--version V] [--files DIR]
  braid-shop get URL";

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
            _ => return Err(format!("unknown flag {flag:?}")),
        }
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
    }
}
