//! The 16550A UART on COM1 (from vm-superio): the guest console.

use std::io::Write;

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
