//! Just enough of RFB (the VNC protocol, RFC 6143) for the proxy: spotting the user's input in
//! what the browser sends, and the security handshake the portal does with the desktop on the
//! browser's behalf so the VNC password never leaves the portal.
//!
//! [`InputParser`] follows the client→server stream and reports whether a chunk held a
//! KeyEvent (4), a PointerEvent (5) or a QEMU extended key event (255/0): the user's input, which
//! keeps a desktop from being culled. Everything else a client sends on its own
//! (FramebufferUpdateRequest, SetEncodings, fences, continuous updates) is not input, so an open
//! but untouched tab counts as idle. Websocket messages do not line up with RFB messages, so the
//! parser keeps a few header bytes and a count of bytes to skip between chunks; it never buffers
//! a message body.

use des::Des;
use des::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// The version the portal speaks to browsers (noVNC speaks it too).
pub const VERSION_3_8: &[u8; 12] = b"RFB 003.008\n";

/// RFB security types the portal knows.
pub const SECURITY_NONE: u8 = 1;
pub const SECURITY_VNC_AUTH: u8 = 2;

/// Where the parser stands in the client's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `RFB 003.00x\n` (12 bytes).
    Version,
    /// The security type the client picked (1 byte; RFB 3.7 and later).
    SecurityChoice,
    /// ClientInit (1 byte: share the desktop or not).
    ClientInit,
    /// Client messages, one after another.
    Messages,
    /// Bytes to pass over (a message body, the 16-byte VNC authentication answer), then `then`.
    Skip { left: u64, then: Next },
    /// A stream the parser cannot follow (an old protocol version, an encrypting security type,
    /// a message type it does not know): every chunk counts as input from here on, because
    /// culling a desktop someone is working in is worse than keeping an idle one.
    Opaque,
}

/// Where the parser goes after skipping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    ClientInit,
    Messages,
}

/// The longest header the parser needs before it knows what to do (the version string).
const HEADER_MAX: usize = 12;

/// Follows a client→server RFB stream and tells which chunks held user input.
#[derive(Clone, Debug)]
pub struct InputParser {
    state: State,
    header: [u8; HEADER_MAX],
    have: usize,
}

/// How long a client message is, as far as its header tells.
enum Length {
    /// The header is at least this long; read that much first.
    NeedHeader(usize),
    /// The whole message, header included, is this long.
    Total(u64),
    /// Not a message type the parser knows.
    Unknown,
}

impl Default for InputParser {
    fn default() -> Self {
        Self::new()
    }
}

impl InputParser {
    /// A parser at the start of a connection (the client's version string comes first).
    pub fn new() -> Self {
        Self { state: State::Version, header: [0; HEADER_MAX], have: 0 }
    }

    /// A parser for a stream whose security handshake is done; ClientInit comes next. The
    /// portal's own handshake with the browser ends there.
    pub fn after_security() -> Self {
        Self { state: State::ClientInit, header: [0; HEADER_MAX], have: 0 }
    }

    /// Whether the parser has given up following the stream.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Reads the next chunk of the stream; `true` if it held (the start of) user input.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut input = false;
        while !data.is_empty() {
            match self.state {
                State::Opaque => return true,
                State::Skip { left, then } => {
                    let taken = left.min(data.len() as u64);
                    data = &data[taken as usize..];
                    self.state = match then {
                        _ if taken < left => State::Skip { left: left - taken, then },
                        Next::ClientInit => State::ClientInit,
                        Next::Messages => State::Messages,
                    };
                    continue;
                }
                _ => {}
            }
            let wanted = self.header_wanted();
            let taken = (wanted - self.have).min(data.len());
            self.header[self.have..self.have + taken].copy_from_slice(&data[..taken]);
            self.have += taken;
            data = &data[taken..];
            if self.have == wanted {
                input |= self.step();
            }
        }
        input
    }

    /// How many header bytes the current state needs before [`InputParser::step`] can decide.
    fn header_wanted(&self) -> usize {
        match self.state {
            State::Version => 12,
            State::SecurityChoice | State::ClientInit => 1,
            State::Messages => match message_length(&self.header[..self.have]) {
                Length::NeedHeader(n) => n,
                Length::Total(_) | Length::Unknown => self.have.max(1),
            },
            State::Skip { .. } | State::Opaque => 0,
        }
    }

    /// Acts on a complete header; `true` if it began a user-input message.
    fn step(&mut self) -> bool {
        let header = &self.header[..self.have];
        let mut input = false;
        self.state = match self.state {
            State::Version => match parse_version(header) {
                Some(minor) if minor >= 7 => State::SecurityChoice,
                _ => State::Opaque,
            },
            State::SecurityChoice => match header[0] {
                SECURITY_NONE => State::ClientInit,
                // The answer to the challenge, then ClientInit.
                SECURITY_VNC_AUTH => State::Skip { left: 16, then: Next::ClientInit },
                _ => State::Opaque,
            },
            State::ClientInit => State::Messages,
            State::Messages => match message_length(header) {
                Length::NeedHeader(_) => return false,
                Length::Unknown => State::Opaque,
                Length::Total(total) => {
                    input = is_input(header);
                    let left = total - self.have as u64;
                    if left == 0 { State::Messages } else { State::Skip { left, then: Next::Messages } }
                }
            },
            state @ (State::Skip { .. } | State::Opaque) => state,
        };
        self.have = 0;
        // Once the stream cannot be followed, everything counts (see State::Opaque).
        input || self.state == State::Opaque
    }
}

/// The minor version of `RFB 003.00x\n`.
fn parse_version(header: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(header).ok()?;
    let rest = text.strip_prefix("RFB 003.")?.strip_suffix('\n')?;
    rest.parse().ok()
}

/// Whether a message that starts with `header` is keyboard or pointer input.
fn is_input(header: &[u8]) -> bool {
    match header[0] {
        4 | 5 => true,
        255 => header.get(1) == Some(&0),
        _ => false,
    }
}

fn be16(bytes: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The length of the client message that starts with `header` (at least its type byte).
fn message_length(header: &[u8]) -> Length {
    let Some(&kind) = header.first() else { return Length::NeedHeader(1) };
    let need = |n: usize, total: &dyn Fn(&[u8]) -> u64| {
        if header.len() < n { Length::NeedHeader(n) } else { Length::Total(total(header)) }
    };
    match kind {
        // SetPixelFormat
        0 => Length::Total(20),
        // SetEncodings: count at 2..4, four bytes each.
        2 => need(4, &|h| 4 + 4 * be16(&h[2..4])),
        // FramebufferUpdateRequest
        3 => Length::Total(10),
        // KeyEvent
        4 => Length::Total(8),
        // PointerEvent
        5 => Length::Total(6),
        // ClientCutText: length at 4..8; negative (two's complement) is the extended clipboard.
        6 => need(8, &|h| 8 + u64::from((be32(&h[4..8]) as i32).unsigned_abs())),
        // EnableContinuousUpdates
        150 => Length::Total(10),
        // ClientFence: payload length at 8 (at most 64).
        248 => need(9, &|h| 9 + u64::from(h[8])),
        // SetDesktopSize: screen count at 6, 16 bytes each.
        251 => need(8, &|h| 8 + 16 * u64::from(h[6])),
        // xvp
        252 => Length::Total(4),
        // QEMU client messages: 0 extended key event; 1 audio (operation 2 carries a format).
        255 => {
            if header.len() < 2 {
                return Length::NeedHeader(2);
            }
            match header[1] {
                0 => Length::Total(12),
                1 => need(4, &|h| if be16(&h[2..4]) == 2 { 10 } else { 4 }),
                _ => Length::Unknown,
            }
        }
        _ => Length::Unknown,
    }
}

/// The answer to a VNC authentication challenge: the challenge DES-encrypted with the password
/// (its first eight bytes, zero-padded, each byte's bits reversed, as VNC has always done).
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (slot, byte) in key.iter_mut().zip(password) {
        *slot = byte.reverse_bits();
    }
    let cipher = Des::new(GenericArray::from_slice(&key));
    let mut response = *challenge;
    for block in response.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    response
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const HANDSHAKE_NONE: &[u8] = b"RFB 003.008\n\x01\x01";
    /// A VNC authentication answer full of 4s and 5s, which must not be read as messages.
    const HANDSHAKE_VNC_AUTH: &[u8] =
        b"RFB 003.008\n\x02\x04\x05\x04\x05\x04\x05\x04\x05\x04\x05\x04\x05\x04\x05\x04\x05\x01";
    const FRAMEBUFFER_UPDATE_REQUEST: &[u8] = &[3, 1, 0, 0, 0, 0, 4, 0, 3, 0];
    const KEY_EVENT: &[u8] = &[4, 1, 0, 0, 0, 0, 0xff, 0x0d];
    /// No button, no motion: still the user's hand on the mouse.
    const POINTER_EVENT: &[u8] = &[5, 0, 0, 10, 0, 20];
    const QEMU_KEY_EVENT: &[u8] = &[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e];
    const SET_PIXEL_FORMAT: &[u8] = &[0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
    /// Three encodings whose bytes look like key and pointer events.
    const SET_ENCODINGS: &[u8] = &[2, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0x21];
    const CUT_TEXT: &[u8] = &[6, 0, 0, 0, 0, 0, 0, 3, 4, 5, 4];
    /// Extended clipboard: the length is negative (-4).
    const CUT_TEXT_EXTENDED: &[u8] = &[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfc, 4, 5, 4, 5];
    const ENABLE_CONTINUOUS_UPDATES: &[u8] = &[150, 1, 0, 0, 0, 0, 4, 0, 3, 0];
    const CLIENT_FENCE: &[u8] = &[248, 0, 0, 0, 0, 0, 0, 1, 2, 4, 5];
    const SET_DESKTOP_SIZE: &[u8] = &[251, 0, 4, 0, 3, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0];

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[rstest]
    #[case::handshake_only(stream(&[HANDSHAKE_NONE]), false)]
    #[case::update_requests(stream(&[HANDSHAKE_NONE, FRAMEBUFFER_UPDATE_REQUEST, FRAMEBUFFER_UPDATE_REQUEST]), false)]
    #[case::setup_messages(
        stream(&[HANDSHAKE_NONE, SET_PIXEL_FORMAT, SET_ENCODINGS, ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE]),
        false
    )]
    #[case::clipboard(stream(&[HANDSHAKE_NONE, CUT_TEXT, CUT_TEXT_EXTENDED, SET_DESKTOP_SIZE]), false)]
    #[case::vnc_auth_answer_is_not_input(stream(&[HANDSHAKE_VNC_AUTH, FRAMEBUFFER_UPDATE_REQUEST]), false)]
    #[case::key(stream(&[HANDSHAKE_NONE, FRAMEBUFFER_UPDATE_REQUEST, KEY_EVENT]), true)]
    #[case::pointer_without_change(stream(&[HANDSHAKE_NONE, POINTER_EVENT]), true)]
    #[case::qemu_key(stream(&[HANDSHAKE_VNC_AUTH, SET_ENCODINGS, QEMU_KEY_EVENT]), true)]
    #[case::after_clipboard(stream(&[HANDSHAKE_NONE, CUT_TEXT_EXTENDED, POINTER_EVENT]), true)]
    #[case::unknown_message_counts(stream(&[HANDSHAKE_NONE, &[77, 0, 0, 0]]), true)]
    #[case::old_protocol_counts(b"RFB 003.003\n\x01".to_vec(), true)]
    fn input_is_found_however_the_stream_is_split(#[case] stream: Vec<u8>, #[case] input: bool) {
        // Whole, at every two-way split, and byte by byte.
        assert_eq!(InputParser::new().feed(&stream), input, "whole");
        for at in 0..=stream.len() {
            let mut parser = InputParser::new();
            let (a, b) = stream.split_at(at);
            assert_eq!(parser.feed(a) | parser.feed(b), input, "split at {at}");
        }
        let mut parser = InputParser::new();
        let seen = stream.iter().fold(false, |seen, byte| parser.feed(std::slice::from_ref(byte)) | seen);
        assert_eq!(seen, input, "byte by byte");
    }

    #[test]
    fn a_stream_it_cannot_follow_counts_as_input_from_then_on() {
        let mut parser = InputParser::new();
        assert!(!parser.feed(HANDSHAKE_NONE));
        assert!(parser.feed(&[77]));
        assert!(parser.is_opaque());
        assert!(parser.feed(FRAMEBUFFER_UPDATE_REQUEST));
    }

    #[test]
    fn input_is_reported_by_the_chunk_where_the_message_starts() {
        let stream =
            stream(&[HANDSHAKE_NONE, FRAMEBUFFER_UPDATE_REQUEST, KEY_EVENT, FRAMEBUFFER_UPDATE_REQUEST, POINTER_EVENT]);
        let mut parser = InputParser::new();
        let reported: Vec<usize> = (0..stream.len()).filter(|&at| parser.feed(&stream[at..=at])).collect();
        let key_at = HANDSHAKE_NONE.len() + FRAMEBUFFER_UPDATE_REQUEST.len();
        let pointer_at = key_at + KEY_EVENT.len() + FRAMEBUFFER_UPDATE_REQUEST.len();
        assert_eq!(reported, vec![key_at, pointer_at]);
    }

    #[test]
    fn after_the_portals_handshake_client_init_comes_first() {
        let mut parser = InputParser::after_security();
        assert!(!parser.feed(&[1]));
        assert!(!parser.feed(FRAMEBUFFER_UPDATE_REQUEST));
        assert!(parser.feed(KEY_EVENT));
        assert!(!parser.is_opaque());
    }

    #[test]
    fn vnc_auth_encrypts_each_half_of_the_challenge() {
        // Known answer: DES of zero blocks under the bit-reversed key of "password" is what
        // VNC servers expect; both halves are encrypted alike (ECB).
        let challenge = [0u8; 16];
        let response = vnc_auth_response(b"password", &challenge);
        assert_eq!(response[..8], response[8..]);
        assert_ne!(response, challenge);
        // Only the first eight bytes of the password count.
        assert_eq!(vnc_auth_response(b"password-longer", &challenge), response);
    }
}
