//! The request pipeline shared by every path through the proxy: the driver ([`drive()`]) with
//! what it asks of each codec ([`exchange`]), its pure decisions ([`decide`]), an outbound request's attempts ([`attempts`]: breaker,
//! outlier state, failover and retries), the inbound side's admission ([`admit`]), failures that keep their cause ([`failure`]), the one place
//! that answers for the proxy ([`respond`]), and the one record of each request ([`record`]).

pub mod admit;
pub mod attempts;
pub mod decide;
pub mod drive;
pub mod exchange;
pub mod failure;
pub mod record;
pub mod respond;

pub use decide::{Injected, Picked, Plan, Rolls};
pub use drive::{Bound, Deadline, Exchange, HOLD_FOR_ENDPOINTS, Held, InboundTarget, drive};
pub use failure::{ConnectCause, ExchangeCause, Failure, Kind, Overload, UpstreamError};
pub use record::RequestRecord;
pub use respond::{PROXY_ERROR_HEADER, Protocol, UNPROCESSED_HEADER};
