//! Container logs in the CRI format that the kubelet reads (`kubectl logs`):
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F a whole line
//! 2016-10-06T00:17:09.669794202Z stderr P the first 16 KiB of a longer line
//! 2016-10-06T00:17:09.669794203Z stderr F and its end
//! ```
//!
//! One record per line: an RFC 3339 UTC timestamp with nanoseconds, the stream, a tag (`F` for
//! the last or only chunk of a line, `P` for a partial chunk) and the content without its
//! newline. [`CriLogWriter`] writes and rotates such files; [`read_logs`] decodes them the way
//! the kubelet serves `kubectl logs` (tail, since, timestamps, byte limit, follow).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest content of one record; longer lines are split into `P` chunks (as containerd,
/// whose reader buffer is 16 KiB).
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// How often a follower looks for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// A container output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed CRI log line: {0}")]
    Malformed(String),
    #[error("invalid time {0:?}: expected RFC 3339, such as 2016-10-06T00:17:09.669794202Z")]
    InvalidTime(String),
}

/// The current time as the CRI format writes it: RFC 3339, UTC, nanoseconds.
fn now_rfc3339_nano() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

/// Writes a container's output to a CRI log file, rotating it by size.
#[derive(Debug)]
pub struct CriLogWriter {
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    file: File,
    size: u64,
    /// Bytes of a line not yet ended by a newline, per stream.
    pending: [Vec<u8>; 2],
}

impl CriLogWriter {
    /// Opens (appending to) the log at `path`. When the file grows beyond `max_size` bytes
    /// (0: never) it is rotated: `path.N-1` is dropped, `path.i` becomes `path.i+1`, `path`
    /// becomes `path.1` and a new `path` is started, so that at most `max_files` files (the
    /// current one included) exist.
    pub fn open(path: &Path, max_size: u64, max_files: usize) -> io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(CriLogWriter {
            path: path.to_path_buf(),
            max_size,
            max_files: max_files.max(1),
            file,
            size,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Writes output of `stream`: each complete line as one record (or `P` chunks then an `F`
    /// chunk when longer than [`MAX_RECORD_CONTENT`]); an incomplete line is kept until its
    /// newline comes, except that full 16 KiB chunks of it are written as `P` records at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let index = stream.index();
        self.pending[index].extend_from_slice(data);
        let mut pending = std::mem::take(&mut self.pending[index]);
        let mut start = 0;
        let result = (|| {
            while let Some(newline) = pending[start..].iter().position(|b| *b == b'\n') {
                let line_end = start + newline;
                self.write_line(stream, &pending[start..line_end], true)?;
                start = line_end + 1;
            }
            while pending.len() - start >= MAX_RECORD_CONTENT {
                let chunk_end = start + MAX_RECORD_CONTENT;
                self.write_record(stream, true, &pending[start..chunk_end])?;
                start = chunk_end;
            }
            Ok(())
        })();
        pending.drain(..start);
        self.pending[index] = pending;
        result
    }

    /// At the end of the output: writes the lines still pending (without a newline) as `F`
    /// records.
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream.index()]);
            if !pending.is_empty() {
                self.write_line(stream, &pending, true)?;
            }
        }
        Ok(())
    }

    /// A line (without newline): `P` chunks of 16 KiB, the last chunk tagged `F` if `complete`.
    fn write_line(&mut self, stream: Stream, line: &[u8], complete: bool) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_RECORD_CONTENT).peekable();
        if chunks.peek().is_none() {
            return self.write_record(stream, !complete, b"");
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.write_record(stream, !(last && complete), chunk)?;
        }
        Ok(())
    }

    fn write_record(&mut self, stream: Stream, partial: bool, content: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(content.len() + 48);
        record.extend_from_slice(now_rfc3339_nano().as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.extend_from_slice(if partial { b" P " } else { b" F " });
        record.extend_from_slice(content);
        record.push(b'\n');
        // One write per record, unbuffered, so that a follower never sees half a record for
        // long.
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        if self.max_size > 0 && self.size > self.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotated(&self, generation: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{generation}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            // No room for an older file: start over.
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&self.rotated(self.max_files - 1))?;
            for generation in (1..self.max_files - 1).rev() {
                rename_if_exists(&self.rotated(generation), &self.rotated(generation + 1))?;
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// One decoded record of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: Stream,
    /// `P`: the line goes on in the next record of the same stream.
    pub partial: bool,
    pub content: Vec<u8>,
}

/// Parses one record (a trailing newline is ignored).
pub fn parse_line(line: &[u8]) -> Result<LogLine, LogError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let malformed = || LogError::Malformed(String::from_utf8_lossy(line).into_owned());
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = fields
        .next()
        .filter(|t| !t.is_empty())
        .ok_or_else(malformed)?;
    let time = std::str::from_utf8(time)
        .map_err(|_| malformed())?
        .to_string();
    let stream = match fields.next().ok_or_else(malformed)? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(malformed()),
    };
    // The tag may carry more flags after ':'; only the first one is defined (P or F).
    let tag = fields.next().ok_or_else(malformed)?;
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(malformed()),
    };
    let content = fields.next().unwrap_or_default().to_vec();
    Ok(LogLine {
        time,
        stream,
        partial,
        content,
    })
}

/// What [`read_logs`] writes: the options of `kubectl logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub follow: bool,
    /// Only the last N lines (of the selected streams).
    pub tail: Option<usize>,
    /// Prefix each line with its RFC 3339 timestamp and a space.
    pub timestamps: bool,
    /// Only lines at or after this RFC 3339 time.
    pub since_rfc3339: Option<String>,
    /// Stop after writing this many bytes.
    pub limit_bytes: Option<u64>,
    /// One stream only; `None` for both.
    pub streams: Option<Stream>,
}

/// Writes the decoded log at `path` to `out`: the content of each line, with the `P` chunks of a
/// long line joined, like `kubectl logs`. Only the current file is read, as the kubelet does
/// (rotated files are not). With `follow`, it keeps reading (polling every 100 ms), onto the new
/// file when the log is rotated, until `stop()` returns true, then drains what is left. Records
/// that cannot be parsed are skipped with a warning.
pub fn read_logs(
    path: &Path,
    opts: &ReadOptions,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<(), LogError> {
    let since = opts
        .since_rfc3339
        .as_deref()
        .map(|text| {
            text.parse::<jiff::Timestamp>()
                .map_err(|_| LogError::InvalidTime(text.to_string()))
        })
        .transpose()?;
    let mut decoder = Decoder {
        opts,
        since,
        out,
        written: 0,
        limit_reached: false,
        lines: [None, None],
        tail: opts.tail.map(|n| (n, VecDeque::new())),
    };

    let mut file = File::open(path)?;
    let mut identity = file_identity(&file.metadata()?);
    let mut buffer = Vec::new();
    loop {
        read_records(&mut file, &mut buffer, &mut decoder)?;
        if decoder.limit_reached || !opts.follow {
            break;
        }
        // Everything written so far is read: what --tail selects is known.
        decoder.release_tail()?;
        if stop() {
            read_records(&mut file, &mut buffer, &mut decoder)?;
            break;
        }
        match fs::metadata(path) {
            Ok(metadata) if file_identity(&metadata) != identity => {
                // Rotated: the writer finished the old file before renaming it.
                read_records(&mut file, &mut buffer, &mut decoder)?;
                decoder.record_remainder(&mut buffer)?;
                file = File::open(path)?;
                identity = file_identity(&file.metadata()?);
            }
            // Not rotated, or rotated and the new file not created yet.
            _ => std::thread::sleep(FOLLOW_POLL),
        }
    }
    if !decoder.limit_reached {
        decoder.record_remainder(&mut buffer)?;
        // Also writes what --tail kept, the unfinished lines counting as its last lines.
        decoder.finish_partial_lines()?;
    }
    decoder.out.flush()?;
    Ok(())
}

fn file_identity(metadata: &fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

/// Reads what `file` has now and decodes its complete records, keeping an unfinished record in
/// `buffer`.
fn read_records(
    file: &mut File,
    buffer: &mut Vec<u8>,
    decoder: &mut Decoder<'_>,
) -> Result<(), LogError> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let read = file.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(newline) = buffer[start..].iter().position(|b| *b == b'\n') {
            decoder.record(&buffer[start..start + newline])?;
            start += newline + 1;
            if decoder.limit_reached {
                return Ok(());
            }
        }
        buffer.drain(..start);
    }
}

struct Decoder<'a> {
    opts: &'a ReadOptions,
    since: Option<jiff::Timestamp>,
    out: &'a mut dyn Write,
    written: u64,
    limit_reached: bool,
    /// Per stream, a line whose `P` chunks have come but not its `F` chunk: its time and content.
    lines: [Option<(String, Vec<u8>)>; 2],
    /// With --tail: how many lines, and the last of them so far.
    tail: Option<(usize, VecDeque<Vec<u8>>)>,
}

impl Decoder<'_> {
    fn record(&mut self, raw: &[u8]) -> Result<(), LogError> {
        let record = match parse_line(raw) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!("skipping a log record: {err}");
                return Ok(());
            }
        };
        if self.opts.streams.is_some_and(|only| only != record.stream) {
            return Ok(());
        }
        let slot = &mut self.lines[record.stream.index()];
        let (time, mut content) = slot.take().unwrap_or((record.time, Vec::new()));
        content.extend_from_slice(&record.content);
        if record.partial {
            *slot = Some((time, content));
            return Ok(());
        }
        self.line(&time, content, true)
    }

    /// An unfinished last record (the writer died mid-record) at the very end.
    fn record_remainder(&mut self, buffer: &mut Vec<u8>) -> Result<(), LogError> {
        if !buffer.is_empty() && !self.limit_reached {
            let remainder = std::mem::take(buffer);
            self.record(&remainder)?;
        }
        buffer.clear();
        Ok(())
    }

    fn line(&mut self, time: &str, content: Vec<u8>, newline: bool) -> Result<(), LogError> {
        if let Some(since) = self.since {
            match time.parse::<jiff::Timestamp>() {
                Ok(at) if at < since => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("skipping a log line with an invalid time {time:?}");
                    return Ok(());
                }
            }
        }
        let mut bytes = Vec::with_capacity(content.len() + 32);
        if self.opts.timestamps {
            bytes.extend_from_slice(time.as_bytes());
            bytes.push(b' ');
        }
        bytes.extend_from_slice(&content);
        if newline {
            bytes.push(b'\n');
        }
        match &mut self.tail {
            Some((keep, lines)) => {
                lines.push_back(bytes);
                while lines.len() > *keep {
                    lines.pop_front();
                }
                Ok(())
            }
            None => self.emit(&bytes),
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        if self.limit_reached {
            return Ok(());
        }
        let bytes = match self.opts.limit_bytes {
            Some(limit) => {
                let room = limit.saturating_sub(self.written);
                if bytes.len() as u64 >= room {
                    self.limit_reached = true;
                }
                &bytes[..bytes.len().min(room as usize)]
            }
            None => bytes,
        };
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        // A follower's reader wants lines as they come.
        if self.opts.follow {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Writes the lines kept for --tail; later lines are written as they come.
    fn release_tail(&mut self) -> Result<(), LogError> {
        if let Some((_, lines)) = self.tail.take() {
            for line in lines {
                self.emit(&line)?;
            }
        }
        Ok(())
    }

    /// Lines whose last chunk never came, at the end of the log: written as they are.
    fn finish_partial_lines(&mut self) -> Result<(), LogError> {
        for index in 0..2 {
            if let Some((time, content)) = self.lines[index].take() {
                self.line(&time, content, false)?;
            }
        }
        self.release_tail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn records(path: &Path) -> Vec<LogLine> {
        fs::read(path)
            .unwrap()
            .split_inclusive(|b| *b == b'\n')
            .map(|line| parse_line(line).unwrap())
            .collect()
    }

    fn read(path: &Path, opts: &ReadOptions) -> String {
        let mut out = Vec::new();
        read_logs(path, opts, &mut out, &|| true).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_complete_lines_per_stream_in_the_cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 0, 1).unwrap();
        writer.write(Stream::Stdout, b"hello\nwor").unwrap();
        writer.write(Stream::Stderr, b"oops\n").unwrap();
        writer.write(Stream::Stdout, b"ld\n\n").unwrap();

        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for line in &lines {
            let (time, rest) = line.split_once(' ').unwrap();
            // RFC 3339 UTC with nanoseconds: 2016-10-06T00:17:09.669794202Z
            assert_eq!(time.len(), 30, "{time}");
            assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
            time.parse::<jiff::Timestamp>().unwrap();
            assert!(rest.starts_with("stdout F ") || rest.starts_with("stderr F "));
        }
        let parsed = records(&path);
        let contents: Vec<(Stream, &[u8])> = parsed
            .iter()
            .map(|r| (r.stream, r.content.as_slice()))
            .collect();
        assert_eq!(
            contents,
            vec![
                (Stream::Stdout, &b"hello"[..]),
                (Stream::Stderr, &b"oops"[..]),
                (Stream::Stdout, &b"world"[..]),
                (Stream::Stdout, &b""[..]),
            ]
        );
        assert!(parsed.iter().all(|r| !r.partial));
    }

    #[test]
    fn long_lines_become_partial_chunks_and_eof_flushes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 0, 1).unwrap();
        let long = vec![b'a'; MAX_RECORD_CONTENT * 2 + 10];
        writer.write(Stream::Stdout, &long).unwrap();
        // The two full chunks are out already; 10 bytes wait for their newline.
        assert_eq!(records(&path).len(), 2);
        writer.write(Stream::Stdout, b"\n").unwrap();
        writer
            .write(Stream::Stderr, b"no newline at the end")
            .unwrap();
        writer.flush_partial().unwrap();

        let parsed = records(&path);
        let shape: Vec<(Stream, bool, usize)> = parsed
            .iter()
            .map(|r| (r.stream, r.partial, r.content.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Stream::Stdout, true, MAX_RECORD_CONTENT),
                (Stream::Stdout, true, MAX_RECORD_CONTENT),
                (Stream::Stdout, false, 10),
                (Stream::Stderr, false, 21),
            ]
        );
        let decoded = read(&path, &ReadOptions::default());
        let mut expected = String::from_utf8(long).unwrap();
        expected.push('\n');
        expected.push_str("no newline at the end\n");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn a_line_of_exactly_one_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 0, 1).unwrap();
        let chunk = vec![b'b'; MAX_RECORD_CONTENT];
        // With its newline in the same write: one full record.
        writer
            .write(Stream::Stdout, &[&chunk[..], b"\n"].concat())
            .unwrap();
        // Without: the 16 KiB chunk goes out as P before its newline comes, and the newline
        // ends it with an empty F record (as containerd's 16 KiB line reader does).
        writer.write(Stream::Stdout, &chunk).unwrap();
        writer.write(Stream::Stdout, b"\n").unwrap();
        writer.flush_partial().unwrap();
        let shape: Vec<(bool, usize)> = records(&path)
            .iter()
            .map(|r| (r.partial, r.content.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (false, MAX_RECORD_CONTENT),
                (true, MAX_RECORD_CONTENT),
                (false, 0)
            ]
        );
        let line = format!("{}\n", "b".repeat(MAX_RECORD_CONTENT));
        assert_eq!(read(&path, &ReadOptions::default()), line.repeat(2));
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 200, 3).unwrap();
        for i in 0..40 {
            writer
                .write(
                    Stream::Stdout,
                    format!("line {i:02} {}\n", "x".repeat(40)).as_bytes(),
                )
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["0.log", "0.log.1", "0.log.2"]);
        // Every file but the current one went just past the limit.
        for name in ["0.log.1", "0.log.2"] {
            let size = fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size > 200 && size < 400, "{name}: {size}");
        }
        // Newest in the current file, older ones in .1 then .2, none lost between them.
        let numbers = |name: &str| -> Vec<u32> {
            records(&dir.path().join(name))
                .iter()
                .map(|r| String::from_utf8_lossy(&r.content)[5..7].parse().unwrap())
                .collect()
        };
        let (two, one, current) = (numbers("0.log.2"), numbers("0.log.1"), numbers("0.log"));
        assert_eq!(*two.last().unwrap() + 1, one[0]);
        assert_eq!(*one.last().unwrap() + 1, current[0]);
        assert_eq!(*current.last().unwrap(), 39);
        // The reader, like the kubelet, shows the current file.
        let text = read(&path, &ReadOptions::default());
        assert!(text.ends_with(&format!("line 39 {}\n", "x".repeat(40))));
    }

    #[test]
    fn rotation_with_one_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 100, 1).unwrap();
        for _ in 0..10 {
            writer.write(Stream::Stdout, &[b'y'; 80]).unwrap();
            writer.write(Stream::Stdout, b"\n").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(fs::metadata(&path).unwrap().len() <= 100);
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        CriLogWriter::open(&path, 0, 1)
            .unwrap()
            .write(Stream::Stdout, b"one\n")
            .unwrap();
        CriLogWriter::open(&path, 0, 1)
            .unwrap()
            .write(Stream::Stdout, b"two\n")
            .unwrap();
        assert_eq!(read(&path, &ReadOptions::default()), "one\ntwo\n");
    }

    #[test]
    fn parses_records() {
        let line =
            parse_line(b"2016-10-06T00:17:09.669794202Z stdout F content with  spaces\n").unwrap();
        assert_eq!(
            line,
            LogLine {
                time: "2016-10-06T00:17:09.669794202Z".to_string(),
                stream: Stream::Stdout,
                partial: false,
                content: b"content with  spaces".to_vec(),
            }
        );
        let line = parse_line(b"2016-10-06T00:17:09Z stderr P:extra chunk").unwrap();
        assert!(line.partial && line.stream == Stream::Stderr);
        assert_eq!(line.content, b"chunk");
        assert!(parse_line(b"2016-10-06T00:17:09Z stdout F")
            .unwrap()
            .content
            .is_empty());
        for bad in [
            &b""[..],
            b"2016-10-06T00:17:09Z",
            b"2016-10-06T00:17:09Z stdin F x",
            b"2016-10-06T00:17:09Z stdout X x",
        ] {
            assert!(
                matches!(parse_line(bad), Err(LogError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    fn fixture(dir: &Path) -> PathBuf {
        let path = dir.join("0.log");
        fs::write(
            &path,
            "2024-01-01T00:00:01.000000000Z stdout F one\n\
             2024-01-01T00:00:02.000000000Z stderr F two\n\
             garbage that is not a record\n\
             2024-01-01T00:00:03.000000000Z stdout P thr\n\
             2024-01-01T00:00:03.500000000Z stderr F four\n\
             2024-01-01T00:00:04.000000000Z stdout F ee\n\
             2024-01-01T00:00:05.000000000Z stdout F five\n",
        )
        .unwrap();
        path
    }

    #[test]
    fn reads_with_kubectl_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        assert_eq!(
            read(&path, &ReadOptions::default()),
            "one\ntwo\nfour\nthree\nfive\n"
        );
        let tail = ReadOptions {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(read(&path, &tail), "three\nfive\n");
        let stdout_tail = ReadOptions {
            tail: Some(3),
            streams: Some(Stream::Stdout),
            ..Default::default()
        };
        assert_eq!(read(&path, &stdout_tail), "one\nthree\nfive\n");
        let stderr = ReadOptions {
            streams: Some(Stream::Stderr),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            read(&path, &stderr),
            "2024-01-01T00:00:02.000000000Z two\n2024-01-01T00:00:03.500000000Z four\n"
        );
        // A line counts from its first chunk's time.
        let since = ReadOptions {
            since_rfc3339: Some("2024-01-01T00:00:03Z".to_string()),
            ..Default::default()
        };
        assert_eq!(read(&path, &since), "four\nthree\nfive\n");
        let limited = ReadOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(read(&path, &limited), "one\ntw");
        let tail_zero = ReadOptions {
            tail: Some(0),
            ..Default::default()
        };
        assert_eq!(read(&path, &tail_zero), "");
        let bad_since = ReadOptions {
            since_rfc3339: Some("yesterday".to_string()),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(matches!(
            read_logs(&path, &bad_since, &mut out, &|| true),
            Err(LogError::InvalidTime(_))
        ));
        assert!(matches!(
            read_logs(
                &dir.path().join("missing.log"),
                &ReadOptions::default(),
                &mut out,
                &|| true
            ),
            Err(LogError::Io(_))
        ));
    }

    #[test]
    fn unfinished_lines_at_the_end_are_written_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        // A writer killed after a P chunk, and a last record without its newline.
        fs::write(
            &path,
            "2024-01-01T00:00:01Z stdout F one\n\
             2024-01-01T00:00:02Z stdout P cut \n\
             2024-01-01T00:00:03Z stderr F no newline",
        )
        .unwrap();
        assert_eq!(
            read(&path, &ReadOptions::default()),
            "one\nno newline\ncut "
        );
        let tail = ReadOptions {
            tail: Some(1),
            streams: Some(Stream::Stdout),
            ..Default::default()
        };
        assert_eq!(read(&path, &tail), "cut ");
    }

    /// A `Write` shared with the test thread.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedOutput {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// Waits (a few seconds at most) until the output contains `needle`.
        fn wait_for(&self, needle: &str) {
            for _ in 0..500 {
                if self.text().contains(needle) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("never saw {needle:?} in {:?}", self.text());
        }
    }

    #[test]
    fn follows_across_rotations_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut writer = CriLogWriter::open(&path, 300, 3).unwrap();
        writer
            .write(Stream::Stdout, b"before 1\nbefore 2\n")
            .unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let output = SharedOutput::default();
        let follower = {
            let (path, stop, mut output) = (path.clone(), stop.clone(), output.clone());
            std::thread::spawn(move || {
                let opts = ReadOptions {
                    follow: true,
                    tail: Some(1),
                    ..Default::default()
                };
                read_logs(&path, &opts, &mut output, &|| stop.load(Ordering::SeqCst))
            })
        };
        output.wait_for("before 2\n");
        writer.write(Stream::Stderr, b"during\n").unwrap();
        output.wait_for("during\n");
        // Enough lines to rotate several times while the follower reads.
        let mut expected = String::from("before 2\nduring\n");
        for i in 0..12 {
            let line = format!("rotating {i:02} {}\n", "z".repeat(30));
            writer.write(Stream::Stdout, line.as_bytes()).unwrap();
            expected.push_str(&line);
            // The follower, like the kubelet's, must see each rotation before the next one.
            output.wait_for(&line);
        }
        output.wait_for("rotating 11");
        writer.write(Stream::Stdout, b"last words").unwrap();
        writer.flush_partial().unwrap();
        expected.push_str("last words\n");
        stop.store(true, Ordering::SeqCst);
        follower.join().unwrap().unwrap();
        assert!(fs::metadata(dir.path().join("0.log.2")).is_ok());
        assert_eq!(output.text(), expected);
    }
}
