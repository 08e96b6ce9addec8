//! `braid-proxy init`: its flags ([`init`]) and the iptables rules it installs ([`iptables`]).

pub mod init;
pub mod iptables;
