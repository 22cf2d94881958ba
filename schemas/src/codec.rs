//! MessagePack bodies: encoded with field names (so `muster decode` shows readable JSON and fields can be added),
//! decoded only after a size check.

use serde::{de::DeserializeOwned, Serialize};

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload exceeded the limit for its kind.
    #[error("payload is {len} bytes; the limit for this message is {limit}")]
    TooLarge {
        /// Size of the payload in bytes, as received (it was not decoded).
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The payload was not valid MessagePack for the expected type.
    #[error("malformed MessagePack: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
}

/// Encodes `value` as MessagePack with named fields.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data types into a Vec cannot fail: no I/O, string keys, no unsupported types.
    rmp_serde::to_vec_named(value).expect("muster wire types always serialize")
}

/// Decodes a `T` from `payload` if it is at most `limit` bytes.
pub fn decode<T: DeserializeOwned>(payload: &[u8], limit: usize) -> Result<T, DecodeError> {
    if payload.len() > limit {
        return Err(DecodeError::TooLarge { len: payload.len(), limit });
    }
    Ok(rmp_serde::from_slice(payload)?)
}

/// Turns any MessagePack body into JSON (for `muster decode` and `nats sub --translate`).
pub fn to_json(payload: &[u8]) -> Result<serde_json::Value, DecodeError> {
    Ok(rmp_serde::from_slice(payload)?)
}
