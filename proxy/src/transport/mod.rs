//! Byte-level plumbing shared by both listeners: protocol detection ([`detect`]), a stream that
//! replays what detection read ([`prefixed`]), and the deadlines and counted copying of
//! connections ([`deadline`]).

pub mod deadline;
pub mod detect;
pub mod prefixed;
