//! Just enough of the i8042 keyboard controller for its reset line: the last fallback of the
//! guest's reboot path writes 0xfe (pulse reset) to the command port.

use crate::devices::bus::BusDevice;
use crate::devices::{StopReason, StopSender};

/// Spans ports 0x60 (data) to 0x64 (status/command).
pub const PORT_RANGE: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    requests: StopSender,
}

impl I8042 {
    pub fn new(requests: StopSender) -> Self {
        Self { requests }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty. No keyboard is attached.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            let _ = self
                .requests
                .send(StopReason::Reset("the i8042 reset line".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_reset() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = I8042::new(tx);
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(rx.try_recv().is_err(), "data port does not reset");
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert!(rx.try_recv().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert!(matches!(rx.try_recv().unwrap(), StopReason::Reset(_)));
    }
}
