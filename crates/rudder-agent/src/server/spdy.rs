//! The server half of SPDY/3.1 as Kubernetes streams use it
//! (`k8s.io/apimachinery/pkg/util/httpstream/spdy`, built on
//! `moby/spdystream`): `kubectl port-forward` opens one SPDY stream per
//! direction-pair it needs, on a connection that is either an HTTP upgrade
//! (`Upgrade: SPDY/3.1`) or, since kubectl 1.31, tunnelled in the binary
//! messages of a WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`).
//!
//! Only what those peers use is implemented:
//! - `SYN_STREAM` from the client opens a stream; the server answers
//!   `SYN_REPLY` with no headers (as the Kubernetes stream server does once
//!   it accepted the stream) and hands it to the caller.
//! - `DATA` frames carry bytes; the `FIN` flag half-closes a direction.
//! - `RST_STREAM` aborts a stream; `PING` from the client is echoed;
//!   `GOAWAY` ends the connection.
//! - `SETTINGS`, `WINDOW_UPDATE` and the like are read and ignored: spdystream
//!   implements no flow control, so neither side waits for window updates.
//!
//! Header blocks are compressed with zlib over one stream per direction,
//! primed with the SPDY/3 dictionary ([`DICTIONARY`]) and sync-flushed after
//! every block.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The protocol version carried in every control frame.
const VERSION: u16 = 3;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;

/// The `FIN` flag, the same bit on data and control frames.
const FLAG_FIN: u8 = 0x01;

/// `RST_STREAM` status: the stream was cancelled.
pub const RST_CANCEL: u32 = 5;
/// `RST_STREAM` status: the stream broke the protocol.
const RST_PROTOCOL_ERROR: u32 = 1;

/// Frames above this are refused: the 24-bit length allows 16 MiB, and no
/// Kubernetes client sends frames anywhere near it.
const MAX_FRAME: usize = 1 << 24;
/// The largest data frame this side sends.
pub const MAX_DATA: usize = 32 * 1024;

/// The strings the SPDY/3 header dictionary starts with, each prefixed with
/// its length as a 32-bit big-endian number.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The raw text the SPDY/3 header dictionary ends with.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The zlib dictionary of SPDY/3 header blocks (section 2.6.10.1 of the
/// draft).
pub fn dictionary() -> Vec<u8> {
    let mut out = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    out
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    Headers(String),
}

/// Header pairs of a stream, names lower-case as SPDY requires.
pub type Headers = Vec<(String, String)>;

/// One frame, as this module reads or writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    /// A control frame this side ignores (SETTINGS, WINDOW_UPDATE, ...).
    Other(u16),
}

/// Compresses outgoing header blocks (one zlib stream per connection).
pub struct HeaderWriter {
    zlib: Compress,
}

impl Default for HeaderWriter {
    fn default() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&dictionary())
            .expect("a fresh zlib stream accepts a dictionary");
        HeaderWriter { zlib }
    }
}

impl HeaderWriter {
    /// The compressed block of `headers`.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            let before = self.zlib.total_in();
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            input = &input[(self.zlib.total_in() - before) as usize..];
            // A sync flush is complete once the input is used up and zlib
            // left room in the output.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decompresses incoming header blocks (one zlib stream per connection).
pub struct HeaderReader {
    zlib: Decompress,
}

impl Default for HeaderReader {
    fn default() -> Self {
        HeaderReader {
            zlib: Decompress::new(true),
        }
    }
}

impl HeaderReader {
    /// The header pairs of one compressed block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if raw.capacity() - raw.len() < 256 {
                raw.reserve(raw.capacity().max(256));
            }
            let before = self.zlib.total_in();
            match self
                .zlib
                .decompress_vec(input, &mut raw, FlushDecompress::Sync)
            {
                Ok(status) => {
                    input = &input[(self.zlib.total_in() - before) as usize..];
                    if status == Status::StreamEnd {
                        return Err(SpdyError::Headers(
                            "the header compression stream ended".into(),
                        ));
                    }
                    if input.is_empty() && raw.len() < raw.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    input = &input[(self.zlib.total_in() - before) as usize..];
                    self.zlib
                        .set_dictionary(&dictionary())
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if raw.len() < 4 {
            return Err(SpdyError::Malformed("truncated header block"));
        }
        let n = raw.get_u32() as usize;
        if raw.len() < n {
            return Err(SpdyError::Malformed("truncated header block"));
        }
        let (value, rest) = raw.split_at(n);
        *raw = rest;
        Ok(value)
    }
    if raw.len() < 4 {
        return Err(SpdyError::Malformed("truncated header block"));
    }
    let count = raw.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        let name = String::from_utf8_lossy(name).into_owned();
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SpdyError::Malformed("header names must be lower-case"));
        }
        // Several values of one name are NUL-separated.
        for value in value.split(|&b| b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    Ok(headers)
}

/// Reads one frame from `io`; `None` at a clean end of the connection.
pub async fn read_frame(
    io: &mut (impl AsyncRead + Unpin),
    headers: &mut HeaderReader,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if length >= MAX_FRAME {
        return Err(SpdyError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        return Ok(Some(Frame::Data {
            stream,
            fin,
            data: Bytes::from(body),
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let mut body: &[u8] = &body;
    let need = |body: &[u8], n: usize| {
        if body.len() < n {
            Err(SpdyError::Malformed("control frame too short"))
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(body, 10)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            let _associated = body.get_u32();
            let _priority_and_slot = body.get_u16();
            Frame::SynStream {
                stream,
                fin,
                headers: headers.decode(body)?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            need(body, 4)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            let block = headers.decode(body)?;
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream,
                    fin,
                    headers: block,
                }
            } else {
                Frame::Headers {
                    stream,
                    fin,
                    headers: block,
                }
            }
        }
        TYPE_RST_STREAM => {
            need(body, 8)?;
            Frame::RstStream {
                stream: body.get_u32() & 0x7fff_ffff,
                status: body.get_u32(),
            }
        }
        TYPE_PING => {
            need(body, 4)?;
            Frame::Ping(body.get_u32())
        }
        TYPE_GOAWAY => {
            need(body, 4)?;
            let last_stream = body.get_u32() & 0x7fff_ffff;
            let status = if body.len() >= 4 { body.get_u32() } else { 0 };
            Frame::GoAway {
                last_stream,
                status,
            }
        }
        other => Frame::Other(other),
    };
    Ok(Some(frame))
}

/// The bytes of `frame` on the wire.
pub fn encode_frame(frame: &Frame, headers: &mut HeaderWriter) -> Result<Vec<u8>, SpdyError> {
    let control = |kind: u16, flags: u8, body: &[u8]| {
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    };
    let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
    Ok(match frame {
        Frame::Data { stream, fin, data } => {
            if data.len() >= MAX_FRAME {
                return Err(SpdyError::TooLarge(data.len()));
            }
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.push(fin_flag(*fin));
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
            out
        }
        Frame::SynStream {
            stream,
            fin,
            headers: pairs,
        } => {
            let mut body = Vec::new();
            body.extend_from_slice(&stream.to_be_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&0u16.to_be_bytes());
            body.extend_from_slice(&headers.encode(pairs)?);
            control(TYPE_SYN_STREAM, fin_flag(*fin), &body)
        }
        Frame::SynReply {
            stream,
            fin,
            headers: pairs,
        }
        | Frame::Headers {
            stream,
            fin,
            headers: pairs,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&headers.encode(pairs)?);
            control(kind, fin_flag(*fin), &body)
        }
        Frame::RstStream { stream, status } => {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(TYPE_RST_STREAM, 0, &body)
        }
        Frame::Ping(id) => control(TYPE_PING, 0, &id.to_be_bytes()),
        Frame::GoAway {
            last_stream,
            status,
        } => {
            let mut body = last_stream.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(TYPE_GOAWAY, 0, &body)
        }
        Frame::Other(kind) => control(*kind, 0, &[]),
    })
}

/// A stream the client opened.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data, until its `FIN` (the channel closes) or a reset.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl IncomingStream {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends on one stream of the connection.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` in frames of at most [`MAX_DATA`] bytes; false once the
    /// connection is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data {
                stream: self.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            };
            if self.out.send(frame).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream from this side (an empty `FIN` data frame).
    pub async fn finish(&self) {
        let _ = self
            .out
            .send(Frame::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    /// Aborts the stream.
    pub async fn reset(&self, status: u32) {
        let _ = self
            .out
            .send(Frame::RstStream {
                stream: self.id,
                status,
            })
            .await;
    }
}

/// Serves one SPDY connection until the client ends it: every stream the
/// client opens is accepted and handed to `on_stream`.
pub async fn serve<IO>(io: IO, mut on_stream: impl FnMut(IncomingStream)) -> Result<(), SpdyError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
    let write_task = tokio::spawn(async move {
        let mut compressor = HeaderWriter::default();
        while let Some(frame) = out_rx.recv().await {
            let bytes = match encode_frame(&frame, &mut compressor) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::debug!(error = %e, "dropping an unencodable SPDY frame");
                    continue;
                }
            };
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            // Flush when nothing else is queued, so a burst goes out together.
            if out_rx.is_empty() && writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut decompressor = HeaderReader::default();
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_stream = 0u32;
    let result = loop {
        let frame = match read_frame(&mut reader, &mut decompressor).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                // Client streams are odd and increasing (spdystream checks
                // the same on its side).
                if stream % 2 == 0 || stream <= last_stream {
                    let _ = out_tx
                        .send(Frame::RstStream {
                            stream,
                            status: RST_PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                }
                last_stream = stream;
                let (data_tx, data_rx) = mpsc::channel(16);
                if !fin {
                    streams.insert(stream, data_tx);
                }
                let _ = out_tx
                    .send(Frame::SynReply {
                        stream,
                        fin: false,
                        headers: Vec::new(),
                    })
                    .await;
                on_stream(IncomingStream {
                    id: stream,
                    headers,
                    data: data_rx,
                    writer: StreamWriter {
                        id: stream,
                        out: out_tx.clone(),
                    },
                });
            }
            Frame::Data { stream, fin, data } => {
                if let Some(sender) = streams.get(&stream) {
                    // A reader that went away drops what it no longer wants.
                    if !data.is_empty() && sender.send(data).await.is_err() {
                        streams.remove(&stream);
                    }
                }
                if fin {
                    streams.remove(&stream);
                }
            }
            Frame::Headers { stream, fin, .. } => {
                if fin {
                    streams.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                streams.remove(&stream);
            }
            Frame::Ping(id) => {
                // Client pings are odd: echo them. An even id answers a ping
                // of ours (there are none).
                if id % 2 == 1 {
                    let _ = out_tx.send(Frame::Ping(id)).await;
                }
            }
            Frame::GoAway { .. } => break Ok(()),
            Frame::SynReply { .. } | Frame::Other(_) => {}
        }
    };
    // Every reader sees the end; the writer finishes once the stream handlers
    // drop their writers.
    streams.clear();
    drop(on_stream);
    drop(out_tx);
    let _ = write_task.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        // Its Adler-32, which zlib streams primed with it announce.
        let (mut a, mut b) = (1u32, 0u32);
        for byte in &dictionary {
            a = (a + *byte as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 3_821_447_106);
    }

    #[test]
    fn header_blocks_round_trip_over_one_zlib_stream() {
        let mut writer = HeaderWriter::default();
        let mut reader = HeaderReader::default();
        let first: Headers = vec![
            ("streamtype".into(), "error".into()),
            ("port".into(), "8080".into()),
            ("requestid".into(), "0".into()),
        ];
        let second: Headers = vec![
            ("streamtype".into(), "data".into()),
            ("port".into(), "8080".into()),
            ("requestid".into(), "0".into()),
        ];
        let a = writer.encode(&first).unwrap();
        let b = writer.encode(&second).unwrap();
        let empty = writer.encode(&[]).unwrap();
        assert_eq!(reader.decode(&a).unwrap(), first);
        assert_eq!(reader.decode(&b).unwrap(), second);
        assert_eq!(reader.decode(&empty).unwrap(), Vec::new());
        // The second block relies on the first's history: alone it is not a
        // valid stream.
        assert!(HeaderReader::default().decode(&b).is_err());
    }

    #[test]
    fn upper_case_header_names_are_refused() {
        let mut raw = BytesMut::new();
        raw.put_u32(1);
        raw.put_u32(4);
        raw.put_slice(b"Port");
        raw.put_u32(1);
        raw.put_slice(b"1");
        assert!(matches!(
            parse_header_block(&raw),
            Err(SpdyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: vec![("streamtype".into(), "data".into())],
            },
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: Vec::new(),
            },
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream: 3,
                status: RST_CANCEL,
            },
            Frame::Ping(7),
            Frame::GoAway {
                last_stream: 3,
                status: 0,
            },
        ];
        let mut writer = HeaderWriter::default();
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(encode_frame(frame, &mut writer).unwrap());
        }
        let mut reader = HeaderReader::default();
        let mut io: &[u8] = &wire;
        let mut read = Vec::new();
        while let Some(frame) = read_frame(&mut io, &mut reader).await.unwrap() {
            read.push(frame);
        }
        assert_eq!(read, frames);
    }

    #[tokio::test]
    async fn the_server_replies_streams_echoes_pings_and_delivers_data() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (streams_tx, mut streams_rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(server, move |stream| {
            let _ = streams_tx.send(stream);
        }));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut writer = HeaderWriter::default();
        let mut reader = HeaderReader::default();
        let send = |frame: Frame, writer: &mut HeaderWriter| encode_frame(&frame, writer).unwrap();
        let open = send(
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: vec![("port".into(), "80".into())],
            },
            &mut writer,
        );
        client_write.write_all(&open).await.unwrap();
        let reply = read_frame(&mut client_read, &mut reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply,
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: Vec::new()
            }
        );
        let mut stream = streams_rx.recv().await.unwrap();
        assert_eq!(stream.header("port"), Some("80"));

        client_write
            .write_all(&send(Frame::Ping(1), &mut writer))
            .await
            .unwrap();
        assert_eq!(
            read_frame(&mut client_read, &mut reader)
                .await
                .unwrap()
                .unwrap(),
            Frame::Ping(1)
        );

        let data = send(
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"abc"),
            },
            &mut writer,
        );
        client_write.write_all(&data).await.unwrap();
        assert_eq!(
            stream.data.recv().await.unwrap(),
            Bytes::from_static(b"abc")
        );
        // FIN: the client's direction is over.
        assert!(stream.data.recv().await.is_none());

        assert!(stream.writer.send(b"xyz").await);
        stream.writer.finish().await;
        assert_eq!(
            read_frame(&mut client_read, &mut reader)
                .await
                .unwrap()
                .unwrap(),
            Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"xyz")
            }
        );
        assert_eq!(
            read_frame(&mut client_read, &mut reader)
                .await
                .unwrap()
                .unwrap(),
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::new()
            }
        );
        drop(stream);
        client_write.shutdown().await.unwrap();
        server.await.unwrap().unwrap();
    }
}
