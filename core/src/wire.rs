//! The one framing bdc's own protocols use: a big-endian length prefix, then postcard bytes,
//! with a size limit on every message. `bdc/paid/1` uses a `u16` prefix (its messages are
//! ~140 bytes), `bdc/jobs/1` a `u32` one (a job request carries SQL or a program's arguments).
//!
//! Errors carry their wire code ([`HasErrorCode`], as iroh-blobs' provider errors do), so the
//! code a connection or stream is closed with comes from the error's type, never from a number
//! picked at the call site.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt};

/// An error that knows the stable numeric code it is sent as (a QUIC connection close code on
/// `bdc/paid/1`, a `JobUpdate::Failed` code on `bdc/jobs/1`).
pub trait HasErrorCode {
    fn code(&self) -> u32;
}

/// The width of the length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// 2 bytes: `bdc/paid/1`.
    U16,
    /// 4 bytes: `bdc/jobs/1`.
    U32,
}

impl Prefix {
    fn len(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// A frame that could not be read or decoded. Whose fault: the sender's for `TooLarge`,
/// `Truncated` and `Malformed`; the transport's for `Io`.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("the stream ended inside a message")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(#[source] postcard::Error),
    #[error("cannot read the stream: {0}")]
    Io(#[source] std::io::Error),
}

/// `msg` framed: the length prefix, then its postcard bytes.
///
/// Panics only if `msg` does not serialize (every bdc message does) or does not fit the prefix
/// (callers frame messages far below `u16::MAX`).
pub fn encode<T: Serialize>(msg: &T, prefix: Prefix) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("bdc messages serialize");
    let mut out = Vec::with_capacity(body.len() + prefix.len());
    match prefix {
        Prefix::U16 => {
            out.extend_from_slice(&u16::try_from(body.len()).expect("message fits a u16 prefix").to_be_bytes())
        }
        Prefix::U32 => {
            out.extend_from_slice(&u32::try_from(body.len()).expect("message fits a u32 prefix").to_be_bytes())
        }
    }
    out.extend_from_slice(&body);
    out
}

/// Decodes a frame body (without its prefix), refusing bodies above `limit`.
pub fn decode<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, FrameError> {
    if body.len() > limit {
        return Err(FrameError::TooLarge { len: body.len(), limit });
    }
    postcard::from_bytes(body).map_err(FrameError::Malformed)
}

/// Reads one frame and decodes it. `Ok(None)` when the stream ends cleanly before a frame;
/// a length above `limit` is refused before any of the body is read or allocated.
pub async fn read<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    prefix: Prefix,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    let head = &mut len[..prefix.len()];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]).await.map_err(FrameError::Io)? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let n = match prefix {
        Prefix::U16 => u16::from_be_bytes([len[0], len[1]]) as usize,
        Prefix::U32 => u32::from_be_bytes(len) as usize,
    };
    if n > limit {
        return Err(FrameError::TooLarge { len: n, limit });
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode(&body, limit).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_every_bad_frame_has_its_error() {
        for prefix in [Prefix::U16, Prefix::U32] {
            let msg = (7u32, "trades".to_string(), vec![1u8; 100]);
            let f = encode(&msg, prefix);
            assert_eq!(f.len(), prefix.len() + postcard::to_stdvec(&msg).unwrap().len());
            let mut both = f.clone();
            both.extend_from_slice(&f);
            let mut r = both.as_slice();
            for _ in 0..2 {
                let got: Option<(u32, String, Vec<u8>)> = read(&mut r, prefix, 1024).await.unwrap();
                assert_eq!(got.as_ref(), Some(&msg));
            }
            assert!(read::<(u32, String, Vec<u8>), _>(&mut r, prefix, 1024).await.unwrap().is_none(), "clean end");
            // cut inside the prefix, inside the body
            for cut in [1, f.len() - 1] {
                let err = read::<(u32, String, Vec<u8>), _>(&mut &f[..cut], prefix, 1024).await.unwrap_err();
                assert!(matches!(err, FrameError::Truncated), "{prefix:?} cut at {cut}: {err}");
            }
            // a length claiming more than the limit is refused before the body is read
            let err = read::<(u32, String, Vec<u8>), _>(&mut f.as_slice(), prefix, 10).await.unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { limit: 10, .. }), "{err}");
            // bytes that do not decode
            let mut junk = f.clone();
            junk.truncate(prefix.len());
            junk.extend_from_slice(&[0xff; 3]);
            junk[prefix.len() - 1] = 3;
            let err = read::<(u32, String, Vec<u8>), _>(&mut junk.as_slice(), prefix, 1024).await.unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        }
    }
}
