//! ACPI fixed hardware, as far as a microVM needs it: the PM1a event block (nothing ever
//! happens), the PM1a control block (power-off by entering S5) and the reset register. The
//! ports are named in the FADT, see `boot::acpi`.

use crate::boot::acpi::{PM1_SCI_ENABLE, PM1_SLEEP_ENABLE, S5_SLEEP_TYPE};
use crate::devices::bus::BusDevice;
use crate::devices::{StopReason, StopSender};
use crate::layout::{ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_RESET_PORT, ACPI_RESET_VALUE};

/// Ports from the PM1a event block to the reset register.
pub const PORT_RANGE: u64 = (ACPI_RESET_PORT - ACPI_PM1A_EVT_PORT + 1) as u64;
const PM1_CONTROL: u64 = (ACPI_PM1A_CNT_PORT - ACPI_PM1A_EVT_PORT) as u64;
const RESET: u64 = (ACPI_RESET_PORT - ACPI_PM1A_EVT_PORT) as u64;

const PM1_ENABLE: u64 = 2;

pub struct AcpiPower {
    stop: StopSender,
    /// PM1 enable register: the guest enables fixed events and reads the bits back. No event
    /// ever fires, so the status register stays zero.
    pm1_enable: u16,
}

impl AcpiPower {
    pub fn new(stop: StopSender) -> Self {
        Self {
            stop,
            pm1_enable: 0,
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // PM1 control always says "ACPI mode": there is no SMI handshake to switch into it.
        let value: u16 = match offset {
            PM1_ENABLE => self.pm1_enable,
            PM1_CONTROL => PM1_SCI_ENABLE,
            _ => 0,
        };
        data.fill(0);
        for (d, v) in data.iter_mut().zip(value.to_le_bytes()) {
            *d = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let request = match (offset, data) {
            (PM1_ENABLE, [lo, hi]) => {
                self.pm1_enable = u16::from_le_bytes([*lo, *hi]);
                None
            }
            (PM1_CONTROL, [lo, hi]) => {
                let v = u16::from_le_bytes([*lo, *hi]);
                let sleep_type = ((v >> 10) & 0x7) as u8;
                (v & PM1_SLEEP_ENABLE != 0 && sleep_type == S5_SLEEP_TYPE)
                    .then_some(StopReason::PowerOff)
            }
            (RESET, [v]) if *v == ACPI_RESET_VALUE => {
                Some(StopReason::Reset("the ACPI reset register".into()))
            }
            _ => None,
        };
        if let Some(r) = request {
            let _ = self.stop.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm1(v: u16) -> [u8; 2] {
        v.to_le_bytes()
    }

    #[test]
    fn entering_s5_powers_off() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        let s5 = u16::from(S5_SLEEP_TYPE) << 10;
        dev.write(PM1_CONTROL, &pm1(s5));
        assert!(rx.try_recv().is_err(), "no SLP_EN, no power-off");
        dev.write(PM1_CONTROL, &pm1((3 << 10) | PM1_SLEEP_ENABLE));
        assert!(rx.try_recv().is_err(), "S3 is not supported");
        dev.write(PM1_CONTROL, &pm1(s5 | PM1_SLEEP_ENABLE)[..1]);
        assert!(rx.try_recv().is_err(), "byte writes are ignored");
        dev.write(PM1_CONTROL, &pm1(s5 | PM1_SLEEP_ENABLE));
        assert_eq!(rx.try_recv().unwrap(), StopReason::PowerOff);
    }

    #[test]
    fn reset_value_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        dev.write(RESET, &[0x7]);
        assert!(rx.try_recv().is_err());
        dev.write(RESET, &[ACPI_RESET_VALUE]);
        assert!(matches!(rx.try_recv().unwrap(), StopReason::Reset(_)));
    }

    #[test]
    fn pm1_control_reads_acpi_mode() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        let mut b = [0xff; 2];
        dev.read(PM1_CONTROL, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_SCI_ENABLE);
        dev.read(0, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn pm1_enable_reads_back() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        dev.write(PM1_ENABLE, &pm1(0x0020));
        let mut b = [0; 2];
        dev.read(PM1_ENABLE, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x20);
    }
}
