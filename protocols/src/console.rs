//! The debug console's wire format (vsock port `DEBUG_CONSOLE_PORT`). The host opens with
//! one JSON line (the command; see the agent's `debug_console`), then both sides send
//! frames: a kind byte, a big-endian u16 length, that many payload bytes. Framing gives
//! what a bare byte pipe over hybrid vsock cannot: the end of stdin (hybrid vsock has no
//! half-close), terminal resizes, stderr apart from stdout, and the exit status.

use std::io::{self, Read, Write};

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → guest: bytes for the command's stdin (or terminal).
    Stdin(Vec<u8>),
    /// Host → guest: the command's stdin ends.
    StdinEnd,
    /// Host → guest: the terminal is now `rows` × `cols`.
    Resize { rows: u16, cols: u16 },
    /// Guest → host: the command's stdout (or terminal) output.
    Stdout(Vec<u8>),
    /// Guest → host: the command's stderr (never with a terminal).
    Stderr(Vec<u8>),
    /// Guest → host, last: the exit code, or 128 + n for a command killed by signal n.
    Exit(i32),
}

const STDIN: u8 = 0;
const STDIN_END: u8 = 1;
const RESIZE: u8 = 2;
const STDOUT: u8 = 3;
const STDERR: u8 = 4;
const EXIT: u8 = 5;

impl Frame {
    /// Writes the frame; data longer than `MAX_PAYLOAD` goes out as several frames.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let one = |w: &mut dyn Write, kind: u8, payload: &[u8]| -> io::Result<()> {
            let len = u16::try_from(payload.len()).expect("chunked to MAX_PAYLOAD");
            let mut buf = Vec::with_capacity(3 + payload.len());
            buf.push(kind);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(payload);
            w.write_all(&buf)
        };
        let data = |w: &mut dyn Write, kind: u8, d: &[u8]| -> io::Result<()> {
            for chunk in d.chunks(MAX_PAYLOAD) {
                one(w, kind, chunk)?;
            }
            Ok(())
        };
        match self {
            Frame::Stdin(d) => data(w, STDIN, d),
            Frame::StdinEnd => one(w, STDIN_END, &[]),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                one(w, RESIZE, &p)
            }
            Frame::Stdout(d) => data(w, STDOUT, d),
            Frame::Stderr(d) => data(w, STDERR, d),
            Frame::Exit(code) => one(w, EXIT, &code.to_be_bytes()),
        }
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream. An unknown kind or a payload
    /// of the wrong size for its kind is an error (`InvalidData`).
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 3];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut head[1..])?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        Ok(Some(match head[0] {
            STDIN => Frame::Stdin(payload),
            STDIN_END if len == 0 => Frame::StdinEnd,
            RESIZE if len == 4 => Frame::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            },
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EXIT if len == 4 => Frame::Exit(i32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            STDIN_END | RESIZE | EXIT => return Err(bad("console frame of the wrong size")),
            _ => return Err(bad("unknown console frame kind")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_long_data_is_chunked() {
        let frames = [
            Frame::Stdin(b"hello".to_vec()),
            Frame::StdinEnd,
            Frame::Resize {
                rows: 50,
                cols: 132,
            },
            Frame::Stdout(vec![7; MAX_PAYLOAD + 10]),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Exit(-1),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        let mut got = Vec::new();
        while let Some(f) = Frame::read_from(&mut r).unwrap() {
            got.push(f);
        }
        assert_eq!(
            got.len(),
            frames.len() + 1,
            "the long stdout came in two frames"
        );
        assert_eq!(got[3], Frame::Stdout(vec![7; MAX_PAYLOAD]));
        assert_eq!(got[4], Frame::Stdout(vec![7; 10]));
        assert_eq!(got[6], Frame::Exit(-1));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &[9u8, 0, 0][..],        // unknown kind
            &[RESIZE, 0, 1, 5][..],  // wrong size
            &[EXIT, 0, 2, 0, 0][..], // wrong size
            &[STDOUT, 0, 5, 1][..],  // truncated payload
            &[STDOUT, 0][..],        // truncated header
        ] {
            let mut r = bad;
            assert!(Frame::read_from(&mut r).is_err(), "{bad:?}");
        }
        let mut empty: &[u8] = &[];
        assert_eq!(Frame::read_from(&mut empty).unwrap(), None);
    }
}
