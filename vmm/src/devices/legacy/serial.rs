//! The 16550A UART on COM1 (from vm-superio): the guest console, and the bounded file it can
//! be written to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Raises the UART's interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The most a console file ([`ConsoleFile`]) grows to.
pub const CONSOLE_FILE_MAX: u64 = 4 << 20;
/// How much of a console file is kept when it would grow past [`CONSOLE_FILE_MAX`].
pub const CONSOLE_FILE_KEEP: u64 = 1 << 20;
/// How far into the kept part a line start is looked for, so that the file begins with a whole
/// line.
const LINE_START_SEARCH: usize = 4096;

/// The guest console as a file of bounded size (`--console PATH`). The file usually lives in
/// `/run`, in RAM, and the guest decides how much it prints: when a write would take the file
/// past `max` bytes, only its newest `keep` bytes (that write's included) are kept, moved to the
/// start of the file. So the file always ends with the newest output, and reading its tail, as
/// the host does for error messages, stays cheap.
pub struct ConsoleFile {
    file: File,
    /// The file's length, which is where the next write goes.
    len: u64,
    max: u64,
    keep: u64,
}

impl ConsoleFile {
    /// Creates (or truncates) the console file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::with_limits(file, CONSOLE_FILE_MAX, CONSOLE_FILE_KEEP))
    }

    /// Writes to `file`, empty and open for reading and writing, keeping it within `max` bytes.
    fn with_limits(file: File, max: u64, keep: u64) -> Self {
        Self {
            file,
            len: 0,
            max,
            keep: keep.min(max),
        }
    }

    /// Rewrites the file as the newest `keep` bytes of its content followed by `incoming`.
    fn keep_newest(&mut self, incoming: &[u8]) -> std::io::Result<()> {
        let keep = usize::try_from(self.keep).unwrap_or(usize::MAX);
        let new = &incoming[incoming.len().saturating_sub(keep)..];
        let old_len = (keep - new.len()).min(usize::try_from(self.len).unwrap_or(usize::MAX));
        let mut kept = vec![0u8; old_len];
        self.file
            .read_exact_at(&mut kept, self.len - old_len as u64)?;
        kept.extend_from_slice(new);
        // Begin with a whole line, if one starts soon enough.
        let start = kept
            .iter()
            .take(LINE_START_SEARCH)
            .position(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let kept = &kept[start..];
        self.file.write_all_at(kept, 0)?;
        self.len = kept.len() as u64;
        self.file.set_len(self.len)
    }
}

impl Write for ConsoleFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len + buf.len() as u64 > self.max {
            self.keep_newest(buf)?;
        } else {
            self.file.write_all_at(buf, self.len)?;
            self.len += buf.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The longest console line kept for [`SerialConsole::last_line`]; the rest of a line is dropped.
const LAST_LINE_MAX: usize = 240;

/// The console output, remembering the last non-empty line that went through it (what a guest
/// printed just before it reset or hung says most about why).
struct Output {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    last: Vec<u8>,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' | b'\r' if !self.line.is_empty() => {
                    std::mem::swap(&mut self.last, &mut self.line);
                    self.line.clear();
                }
                b'\n' | b'\r' => {}
                _ if self.line.len() < LAST_LINE_MAX => self.line.push(b),
                _ => {}
            }
        }
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, Output>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        let out = Output {
            out,
            line: Vec::new(),
            last: Vec::new(),
        };
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// The last line the guest printed (the unfinished one if there is one), lossily decoded.
    pub fn last_line(&self) -> String {
        let o = self.uart.writer();
        let line = if o.line.is_empty() { &o.last } else { &o.line };
        String::from_utf8_lossy(line).into_owned()
    }

    /// Queues host input for the guest to read; returns how many bytes fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(off)) = (data, u8::try_from(offset)) {
            *byte = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(off)) = (data, u8::try_from(offset)) {
            // A failed write to the console output must not stop the guest.
            if let Err(e) = self.uart.write(off, *byte) {
                tracing::debug!(error = ?e, "serial console write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output_and_raise_the_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        // Enable the THR-empty interrupt (IER bit 1), then send two bytes.
        s.write(1, &[0x02]);
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn the_last_line_is_remembered() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq, Box::new(std::io::sink()));
        assert_eq!(s.last_line(), "");
        for b in b"first\r\nsecond\r\n\r\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.last_line(), "second");
        for b in b"third, unfinished" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.last_line(), "third, unfinished");
        for _ in 0..1000 {
            s.write(0, b"x");
        }
        assert_eq!(s.last_line().len(), LAST_LINE_MAX);
    }

    #[test]
    fn input_is_readable_from_rbr() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq, Box::new(std::io::sink()));
        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut b = [0];
        s.read(0, &mut b);
        assert_eq!(&b, b"x");
    }

    fn console_file(name: &str, max: u64, keep: u64) -> (ConsoleFile, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("husk-console-{}-{name}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (ConsoleFile::with_limits(file, max, keep), path)
    }

    #[test]
    fn the_console_file_stays_bounded_and_ends_with_the_newest_bytes() {
        let (mut f, path) = console_file("bounded", 100, 40);
        let mut all = Vec::new();
        for i in 0..1000u32 {
            let b = b'a' + (i % 26) as u8;
            f.write_all(&[b]).unwrap();
            all.push(b);
            let content = std::fs::read(&path).unwrap();
            assert!(content.len() <= 100, "{} bytes", content.len());
            assert!(all.ends_with(&content), "not the newest bytes");
        }
        // Once it was cut, at least the kept part is there.
        assert!(std::fs::read(&path).unwrap().len() >= 40);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_write_larger_than_the_kept_part_leaves_its_own_end() {
        let (mut f, path) = console_file("large", 100, 40);
        f.write_all(&[b'x'; 90]).unwrap();
        let big: Vec<u8> = (0..200u8).map(|i| b'a' + i % 26).collect();
        f.write_all(&big).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &big[160..]);
        f.write_all(b"!").unwrap();
        assert!(std::fs::read(&path).unwrap().ends_with(b"!"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_kept_part_starts_with_a_whole_line() {
        let (mut f, path) = console_file("lines", 100, 40);
        for i in 0..20 {
            f.write_all(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        let content = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(content.starts_with("line "), "{content:?}");
        assert!(content.ends_with("line 19\n"), "{content:?}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_console_flood_through_the_uart_keeps_the_file_bounded() {
        let (f, path) = console_file("uart", 4096, 1024);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq, Box::new(f));
        for i in 0..100_000u32 {
            s.write(0, &[b'0' + (i % 10) as u8]);
        }
        for b in b"\nlast words\n" {
            s.write(0, &[*b]);
        }
        let content = std::fs::read(&path).unwrap();
        assert!(content.len() <= 4096);
        assert!(content.ends_with(b"9\nlast words\n"));
        assert_eq!(s.last_line(), "last words");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq, Box::new(std::io::sink()));
        let mut b = [0xaa; 2];
        s.read(0, &mut b);
        assert_eq!(b, [0xaa; 2]);
        s.write(0, &[1, 2]);
    }
}
