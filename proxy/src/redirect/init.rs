//! The flags of `braid-proxy init`, parsed by a pure function that reports every bad flag
//! (the exit code is then 64), so that a pod's init container says all that is wrong at once.

use braid_sidecar::{parse_cidrs, parse_ports};

use crate::redirect::iptables::{Backend, Redirect};

/// What `init` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Init {
    /// The redirection to install.
    pub redirect: Redirect,
    /// The iptables flavour; `None`: the one already in use.
    pub backend: Option<Backend>,
    /// Print the `iptables-restore` payload instead of applying it.
    pub dry_run: bool,
}

/// Parses `init`'s flags; every bad one is reported.
pub fn parse(args: &[String]) -> Result<Init, Vec<String>> {
    let mut init = Init {
        redirect: Redirect::default(),
        backend: None,
        dry_run: false,
    };
    let mut errors = Vec::new();
    let number = |flag: &str, value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))
    };
    let port = |flag: &str, value: &str| match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{flag}: {value:?} is not a port")),
    };
    for arg in args {
        let (flag, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        let redirect = &mut init.redirect;
        let result = match flag {
            "--proxy-uid" => number(flag, value).map(|v| redirect.proxy_uid = v),
            "--inbound-port" => port(flag, value).map(|v| redirect.inbound_port = v),
            "--outbound-port" => port(flag, value).map(|v| redirect.outbound_port = v),
            "--exclude-inbound-ports" => parse_ports(value)
                .map(|v| redirect.exclude_inbound_ports = v)
                .map_err(|e| format!("{flag}: {e}")),
            "--exclude-outbound-ports" => parse_ports(value)
                .map(|v| redirect.exclude_outbound_ports = v)
                .map_err(|e| format!("{flag}: {e}")),
            "--exclude-outbound-cidrs" => parse_cidrs(value)
                .map(|v| redirect.exclude_outbound_cidrs = v)
                .map_err(|e| format!("{flag}: {e}")),
            "--exclude-uids" => value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| number(flag, v))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| redirect.exclude_uids = v),
            "--backend" => match value {
                "auto" | "nft" | "legacy" => {
                    init.backend = match value {
                        "nft" => Some(Backend::Nft),
                        "legacy" => Some(Backend::Legacy),
                        _ => None,
                    };
                    Ok(())
                }
                other => Err(format!(
                    "--backend: {other:?}: expected auto, nft or legacy"
                )),
            },
            "--dry-run" => {
                init.dry_run = true;
                Ok(())
            }
            _ => Err(format!("unknown flag {arg:?}")),
        };
        if let Err(error) = result {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(init)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reports_every_bad_flag() {
        let args: Vec<String> = ["--outbound-port=0", "--exclude-uids=root", "--colour"]
            .map(String::from)
            .to_vec();
        let errors = parse(&args).expect_err("refused");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("--outbound-port") && errors[1].starts_with("--exclude-uids"),
            "{errors:?}"
        );
    }

    #[test]
    fn good_flags_set_the_redirect() {
        let args: Vec<String> = [
            "--inbound-port=16006",
            "--exclude-inbound-ports=9100,9101",
            "--dry-run",
        ]
        .map(String::from)
        .to_vec();
        let init = parse(&args).expect("valid");
        assert_eq!(init.redirect.inbound_port, 16006);
        assert_eq!(init.redirect.exclude_inbound_ports, [9100, 9101]);
        assert!(init.dry_run && init.backend.is_none());
    }

    #[test]
    fn bad_exclusion_lists_name_the_flag_and_the_item() {
        let args: Vec<String> = [
            "--exclude-outbound-ports=80,http",
            "--exclude-outbound-cidrs=10.0.0.0/33",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            parse(&args).expect_err("refused"),
            [
                "--exclude-outbound-ports: \"http\" is not a port (1 to 65535)",
                "--exclude-outbound-cidrs: \"10.0.0.0/33\" has a bad prefix length",
            ]
        );
        let args = vec!["--exclude-outbound-cidrs=10.0.0.0/8, fd00::/8".to_string()];
        assert_eq!(
            parse(&args).expect("valid").redirect.exclude_outbound_cidrs,
            [
                ("10.0.0.0".parse().expect("ip"), 8),
                ("fd00::".parse().expect("ip"), 8)
            ]
        );
    }
}
