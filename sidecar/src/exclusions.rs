//! The exclusion annotations (traffic the redirect leaves alone) and the parser of their lists.
//! The webhook checks an annotation with it before it admits the pod, and `braid-proxy init`
//! parses the flag the webhook wrote with it again: one rule, one message.

use std::net::IpAddr;

/// What an exclusion list holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExclusionKind {
    /// Ports, such as `9100,9101`.
    Ports,
    /// Networks, such as `10.0.0.0/8,fd00::/8`.
    Cidrs,
}

/// A pod annotation that excludes traffic from redirection, and the `braid-proxy init` flag the
/// webhook passes it on as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exclusion {
    /// The pod annotation.
    pub annotation: &'static str,
    /// The `braid-proxy init` flag.
    pub flag: &'static str,
    /// What its list holds.
    pub kind: ExclusionKind,
}

/// Every exclusion annotation, in the order the webhook writes the flags.
pub const EXCLUSIONS: [Exclusion; 3] = [
    Exclusion {
        annotation: "braid.dev/exclude-inbound-ports",
        flag: "--exclude-inbound-ports",
        kind: ExclusionKind::Ports,
    },
    Exclusion {
        annotation: "braid.dev/exclude-outbound-ports",
        flag: "--exclude-outbound-ports",
        kind: ExclusionKind::Ports,
    },
    Exclusion {
        annotation: "braid.dev/exclude-outbound-cidrs",
        flag: "--exclude-outbound-cidrs",
        kind: ExclusionKind::Cidrs,
    },
];

impl Exclusion {
    /// `value` as the flag's value: the same list with blanks and empty items dropped, or what
    /// is wrong with it.
    pub fn normalize(&self, value: &str) -> Result<String, ListError> {
        match self.kind {
            ExclusionKind::Ports => parse_ports(value).map(|_| ()),
            ExclusionKind::Cidrs => parse_cidrs(value).map(|_| ()),
        }?;
        Ok(items(value).collect::<Vec<_>>().join(","))
    }
}

/// An item of an exclusion list that is not what the list holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// Not a port number from 1 to 65535.
    #[error("{0:?} is not a port (1 to 65535)")]
    NotAPort(String),
    /// Not `address/prefix`.
    #[error("{0:?} is not a CIDR like 10.0.0.0/8")]
    NotACidr(String),
    /// The address part does not parse.
    #[error("{0:?} has no valid address")]
    BadAddress(String),
    /// The prefix length is longer than the address.
    #[error("{0:?} has a bad prefix length")]
    BadPrefix(String),
}

/// Parses a comma-separated list of ports (blanks and empty items ignored).
pub fn parse_ports(value: &str) -> Result<Vec<u16>, ListError> {
    items(value)
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(ListError::NotAPort(p.into())),
        })
        .collect()
}

/// Parses a comma-separated list of CIDRs (blanks and empty items ignored).
pub fn parse_cidrs(value: &str) -> Result<Vec<(IpAddr, u8)>, ListError> {
    items(value)
        .map(|cidr| {
            let (address, prefix) = cidr
                .split_once('/')
                .ok_or_else(|| ListError::NotACidr(cidr.into()))?;
            let address: IpAddr = address
                .parse()
                .map_err(|_| ListError::BadAddress(cidr.into()))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            match prefix.parse::<u8>() {
                Ok(bits) if bits <= max => Ok((address, bits)),
                _ => Err(ListError::BadPrefix(cidr.into())),
            }
        })
        .collect()
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_blanks_and_empty_items_ignored() {
        assert_eq!(parse_ports(" 9100, ,9101,"), Ok(vec![9100, 9101]));
        assert_eq!(
            parse_cidrs("10.0.0.0/8, fd00::/8"),
            Ok(vec![
                ("10.0.0.0".parse().expect("ip"), 8),
                ("fd00::".parse().expect("ip"), 8)
            ])
        );
        assert_eq!(parse_ports(""), Ok(vec![]));
    }

    #[test]
    fn every_bad_item_is_named() {
        assert_eq!(parse_ports("80,0"), Err(ListError::NotAPort("0".into())));
        assert_eq!(parse_ports("http"), Err(ListError::NotAPort("http".into())));
        assert_eq!(
            parse_cidrs("10.0.0.0"),
            Err(ListError::NotACidr("10.0.0.0".into()))
        );
        assert_eq!(
            parse_cidrs("10.0.0/8"),
            Err(ListError::BadAddress("10.0.0/8".into()))
        );
        assert_eq!(
            parse_cidrs("10.0.0.0/33"),
            Err(ListError::BadPrefix("10.0.0.0/33".into()))
        );
        assert_eq!(
            parse_cidrs("::/129").map_err(|e| e.to_string()),
            Err("\"::/129\" has a bad prefix length".into())
        );
    }

    #[test]
    fn an_annotation_becomes_its_flag_value() {
        let [inbound, _, cidrs] = EXCLUSIONS;
        assert_eq!(inbound.normalize(" 9100 ,9101,"), Ok("9100,9101".into()));
        assert_eq!(cidrs.normalize("10.0.0.0/8 ,"), Ok("10.0.0.0/8".into()));
        assert!(inbound.normalize("10.0.0.0/8").is_err());
    }
}
