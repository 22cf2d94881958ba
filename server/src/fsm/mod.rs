//! Pure state machines: no I/O, no clock; the async shells step them and perform what they return.

pub mod component;
pub mod host;
