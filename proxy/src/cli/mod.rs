//! The subcommands of the `braid-proxy` binary, which only dispatches to them: [`init`],
//! [`run`] and [`wait_ready`].

pub mod init;
pub mod run;
pub mod wait_ready;
