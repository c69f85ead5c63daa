//! Accepts gRPC requests shaped as Linkerd 1's client sends them.
//!
//! Linkerd 1's mesh client sends an empty `:authority`. The `h2` server parses `:authority`
//! as a URI authority, finds the empty one malformed and resets the stream, so a Linkerd 1
//! router could never bind through us. An empty authority means "no authority", which HTTP/2
//! allows, so this adapter removes it before `h2` reads the request.
//!
//! HPACK compression state is kept per connection and direction, so header blocks cannot be
//! edited in place: every header block the client sends is decoded (tracking the client's
//! table) and encoded again (with a table the server's decoder tracks). All other frames, and
//! everything the server sends, pass through unchanged. A connection that does not open with
//! the HTTP/2 preface, or whose headers cannot be decoded, is passed through untouched and
//! left for `h2` to judge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server's frame size limit (HTTP/2's default, which the server keeps).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The most header block this adapter buffers; a larger one is passed through unchanged.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// A connection whose client-to-server header blocks are rewritten as described above.
pub struct LinkerdCompat<T> {
    inner: T,
    rewriter: Rewriter,
    read_buf: Box<[u8]>,
}

enum Stage {
    /// Reading the connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2, or undecodable: bytes pass through unchanged.
    Passthrough,
}

struct Rewriter {
    stage: Stage,
    /// Bytes read from the client and not processed yet.
    input: BytesMut,
    /// Bytes ready for the server.
    output: BytesMut,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// A header block split over HEADERS and CONTINUATION frames, collected so far.
    block: Option<HeaderBlock>,
}

struct HeaderBlock {
    stream: [u8; 4],
    end_stream: bool,
    fragment: Vec<u8>,
    /// The frames as received, in case the block cannot be decoded.
    raw: Vec<u8>,
}

impl<T> LinkerdCompat<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        LinkerdCompat { inner, rewriter: Rewriter::new(), read_buf: vec![0; 16 * 1024].into_boxed_slice() }
    }
}

impl Rewriter {
    fn new() -> Self {
        Rewriter {
            stage: Stage::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            block: None,
        }
    }

    /// Takes bytes from the client and produces what the server should read.
    fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.stage, Stage::Passthrough) {
            self.output.extend_from_slice(bytes);
            return;
        }
        self.input.extend_from_slice(bytes);
        if matches!(self.stage, Stage::Preface) {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.pass_through();
                return;
            }
            if self.input.len() < PREFACE.len() {
                return;
            }
            self.output.extend_from_slice(&self.input.split_to(PREFACE.len()));
            self.stage = Stage::Frames;
        }
        while let Some(frame) = self.next_frame() {
            self.frame(frame);
            if matches!(self.stage, Stage::Passthrough) {
                return;
            }
        }
    }

    fn pass_through(&mut self) {
        self.stage = Stage::Passthrough;
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        let rest = self.input.split();
        self.output.extend_from_slice(&rest);
    }

    fn next_frame(&mut self) -> Option<BytesMut> {
        if self.input.len() < FRAME_HEADER_LEN {
            return None;
        }
        let len = (self.input[0] as usize) << 16 | (self.input[1] as usize) << 8 | self.input[2] as usize;
        (self.input.len() >= FRAME_HEADER_LEN + len).then(|| self.input.split_to(FRAME_HEADER_LEN + len))
    }

    fn frame(&mut self, frame: BytesMut) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            HEADERS => {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    // Malformed padding: let the server report it.
                    self.output.extend_from_slice(&frame);
                    return;
                };
                let block = HeaderBlock {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                };
                self.block = Some(block);
            }
            CONTINUATION if self.block.is_some() => {
                if let Some(block) = &mut self.block {
                    block.fragment.extend_from_slice(payload);
                    block.raw.extend_from_slice(&frame);
                }
            }
            _ => {
                self.output.extend_from_slice(&frame);
                return;
            }
        }
        let oversized = self.block.as_ref().is_some_and(|b| b.raw.len() > MAX_HEADER_BLOCK);
        if oversized {
            self.pass_through();
        } else if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.rewrite(block);
        }
    }

    fn rewrite(&mut self, block: HeaderBlock) {
        let headers = match self.decoder.decode(&block.fragment) {
            Ok(headers) => headers,
            Err(_) => {
                self.block = Some(block);
                self.pass_through();
                return;
            }
        };
        let kept = headers.iter().filter(|(name, value)| !(name.as_slice() == b":authority" && value.is_empty()));
        let encoded = self.encoder.encode(kept.map(|(n, v)| (n.as_slice(), v.as_slice())));
        let chunks: Vec<&[u8]> =
            if encoded.is_empty() { vec![&[][..]] } else { encoded.chunks(MAX_FRAME_PAYLOAD).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let mut flags = if i == last { END_HEADERS } else { 0 };
            if i == 0 && block.end_stream {
                flags |= END_STREAM;
            }
            let len = chunk.len();
            self.output.put_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            self.output.put_slice(&block.stream);
            self.output.put_slice(chunk);
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut fragment = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        padding = *fragment.first()? as usize;
        fragment = &fragment[1..];
    }
    if flags & PRIORITY != 0 {
        fragment = fragment.get(5..)?;
    }
    fragment.get(..fragment.len().checked_sub(padding)?)
}

impl<T: AsyncRead + Unpin> AsyncRead for LinkerdCompat<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = &mut this.rewriter.output;
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.read_buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of input: whatever is left (an incomplete frame) goes as it is.
                if this.rewriter.input.is_empty() && this.rewriter.block.is_none() {
                    return Poll::Ready(Ok(()));
                }
                this.rewriter.pass_through();
                continue;
            }
            this.rewriter.feed(read.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LinkerdCompat<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for LinkerdCompat<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T> std::fmt::Debug for LinkerdCompat<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkerdCompat").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits the rewritten output into frames and decodes their header blocks.
    fn header_lists(output: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut rest = &output[PREFACE.len()..];
        let (mut lists, mut block) = (Vec::new(), Vec::new());
        while rest.len() >= FRAME_HEADER_LEN {
            let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
            let (kind, flags) = (rest[3], rest[4]);
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(&rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
                if flags & END_HEADERS != 0 {
                    lists.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER_LEN + len..];
        }
        lists
    }

    #[test]
    fn an_empty_authority_is_removed_and_other_headers_kept_across_blocks() {
        let mut client = Encoder::new();
        let first = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b""),
            (b":path", b"/io.linkerd.mesh.Codec/ShowPath"),
            (b"content-type", b"application/grpc+proto"),
        ]);
        // The second block leans on the client's dynamic table from the first.
        let second = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"namer:4321"),
            (b"x-big", &[b'a'; 20_000][..]),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // Split the second block across HEADERS and CONTINUATION, with padding, fed a byte at a time.
        let (a, b) = second.split_at(second.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let mut rewriter = Rewriter::new();
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte));
        }
        let lists = header_lists(&rewriter.output);
        assert_eq!(lists.len(), 2);
        assert!(!lists[0].iter().any(|(n, _)| n == b":authority"), "the empty authority is gone");
        assert_eq!(lists[0].len(), 4);
        assert!(lists[1].iter().any(|(n, v)| n == b":authority" && v == b"namer:4321"), "a real authority stays");
        assert_eq!(lists[1].iter().find(|(n, _)| n == b"x-big").map(|(_, v)| v.len()), Some(20_000));
        // The data frame passed through unchanged.
        assert!(rewriter.output.windows(5).any(|w| w == b"\0\0\0\0\0"));
    }

    #[test]
    fn other_protocols_pass_through() {
        let mut rewriter = Rewriter::new();
        rewriter.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(&rewriter.output[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
}
