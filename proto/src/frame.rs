//! Length-prefixed framing shared by the agent and its clients.
//!
//! A frame is a 4-byte big-endian body length followed by the body. A length
//! of zero or above [`MAX_FRAME_LEN`] is a protocol error, detected before any
//! body byte is read.

use std::fmt;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroize;

/// Largest accepted frame body, in bytes. The largest legitimate message is an
/// import of many tokens; 1 MiB holds several thousand of them.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// Failure to read, write or decode one frame.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between two frames.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated { received: usize, expected: usize },
    /// The length prefix is zero or above `max`: [`MAX_FRAME_LEN`], or the
    /// smaller limit of the socket.
    BadLength { length: u64, max: u64 },
    /// The body is not a valid message of the expected type.
    Malformed { reason: String },
    /// The socket failed or timed out.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed by peer"),
            FrameError::Truncated { received, expected } => write!(
                f,
                "connection closed in the middle of a frame ({received} of {expected} bytes)"
            ),
            FrameError::BadLength { length, max } => {
                write!(f, "invalid frame length {length} (must be 1 to {max} bytes)")
            }
            FrameError::Malformed { reason } => write!(f, "malformed message: {reason}"),
            // A socket timeout (SO_RCVTIMEO, SO_SNDTIMEO) ends the call
            // with EAGAIN, which reads as "Resource temporarily unavailable".
            FrameError::Io(err) if err.kind() == io::ErrorKind::WouldBlock => {
                write!(f, "timed out waiting for the peer")
            }
            FrameError::Io(err) => write!(f, "socket error: {err}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(err: io::Error) -> Self {
        FrameError::Io(err)
    }
}

/// Checks a length prefix and returns the body length it announces.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(header);
    let bad = |length: u64| FrameError::BadLength {
        length,
        max: MAX_FRAME_LEN as u64,
    };
    let length = usize::try_from(length).map_err(|_| bad(u64::from(length)))?;
    if length == 0 || length > MAX_FRAME_LEN {
        return Err(bad(length as u64));
    }
    Ok(length)
}

/// Serialises `message` into a complete frame, prefix included.
///
/// A plain vector that grows frees its old blocks without wiping them, and
/// those could hold part of a code. So the frame grows in a
/// [`WipingBuffer`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut buffer = WipingBuffer::with_capacity(256);
    buffer.0.extend_from_slice(&[0u8; HEADER_LEN]);
    serde_json::to_writer(&mut buffer, message).map_err(|err| FrameError::Malformed {
        reason: err.to_string(),
    })?;
    let mut frame = std::mem::take(&mut buffer.0);
    let length = frame.len() - HEADER_LEN;
    let prefix = match u32::try_from(length) {
        Ok(prefix) if length <= MAX_FRAME_LEN => prefix.to_be_bytes(),
        _ => {
            frame.zeroize();
            return Err(FrameError::BadLength {
                length: length as u64,
                max: MAX_FRAME_LEN as u64,
            });
        }
    };
    frame[..HEADER_LEN].copy_from_slice(&prefix);
    Ok(frame)
}

/// A byte buffer that wipes its old block each time it moves to a larger
/// one, and its content when it is cleared or dropped.
pub struct WipingBuffer(Vec<u8>);

impl WipingBuffer {
    pub fn with_capacity(capacity: usize) -> WipingBuffer {
        WipingBuffer(Vec::with_capacity(capacity))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Wipes the content and empties the buffer, keeping its block.
    pub fn clear(&mut self) {
        let length = self.0.len();
        self.0[..length].zeroize();
        self.0.clear();
    }
}

impl Drop for WipingBuffer {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Write for WipingBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let needed = self.0.len().saturating_add(bytes.len());
        if needed > self.0.capacity() {
            let mut larger = Vec::with_capacity(needed.max(self.0.capacity().saturating_mul(2)));
            larger.extend_from_slice(&self.0);
            // Wipes the whole old block before it is freed.
            self.0.zeroize();
            self.0 = larger;
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes a frame body. The error names only the kind of problem and its
/// position: serde's own message can quote the peer's input (an unknown
/// tag, a number given for a code), which could carry a secret or forge
/// a log line.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|err| {
        let kind = match err.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "JSON that is not a valid message",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        FrameError::Malformed {
            reason: format!("{kind} at line {} column {}", err.line(), err.column()),
        }
    })
}

/// Writes one frame to a blocking stream.
pub fn write_frame<W: Write, T: Serialize>(stream: &mut W, message: &T) -> Result<(), FrameError> {
    let frame = zeroize::Zeroizing::new(encode(message)?);
    stream.write_all(&frame)?;
    stream.flush()?;
    Ok(())
}

/// Reads one frame from a blocking stream and decodes it.
pub fn read_frame<R: Read, T: DeserializeOwned>(stream: &mut R) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or_eof(stream, &mut header, true)?;
    let length = body_len(header)?;
    let mut body = zeroize::Zeroizing::new(vec![0u8; length]);
    read_exact_or_eof(stream, &mut body, false)?;
    decode(&body)
}

fn read_exact_or_eof<R: Read>(stream: &mut R, buf: &mut [u8], at_boundary: bool) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && at_boundary => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    received: filled,
                    expected: buf.len(),
                })
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(FrameError::Io(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn socket_timeout_reads_as_timeout() {
        let timeout = FrameError::Io(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(timeout.to_string(), "timed out waiting for the peer");
        let other = FrameError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(other.to_string().starts_with("socket error: "), "{other}");
    }

    #[test]
    fn rejects_zero_length() {
        assert!(matches!(
            body_len([0, 0, 0, 0]),
            Err(FrameError::BadLength { length: 0, .. })
        ));
    }

    #[test]
    fn rejects_length_above_cap() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(body_len(header), Err(FrameError::BadLength { .. })));
        assert!(matches!(body_len([0xff; 4]), Err(FrameError::BadLength { .. })));
    }

    #[test]
    fn wiping_buffer_grows_and_clears() {
        let mut buffer = WipingBuffer::with_capacity(2);
        buffer.write_all(b"12345678").unwrap();
        buffer.write_all(b"90").unwrap();
        assert_eq!(buffer.as_slice(), b"1234567890");
        buffer.clear();
        assert!(buffer.as_slice().is_empty());
    }

    #[test]
    fn round_trips_a_value() {
        let frame = encode(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 7]);
        let value: serde_json::Value = read_frame(&mut &frame[..]).unwrap();
        assert_eq!(value["a"], 1);
    }

    #[test]
    fn reports_truncated_body() {
        let frame = encode(&serde_json::json!({"a": 1})).unwrap();
        let err = read_frame::<_, serde_json::Value>(&mut &frame[..8]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                received: 4,
                expected: 7
            }
        ));
    }

    #[test]
    fn reports_close_between_frames() {
        let err = read_frame::<_, serde_json::Value>(&mut &[][..]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn reports_garbage_body() {
        let mut frame = vec![0, 0, 0, 3];
        frame.extend_from_slice(b"{{{");
        let err = read_frame::<_, serde_json::Value>(&mut &frame[..]).unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }));
    }
}
