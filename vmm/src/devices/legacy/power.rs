//! The hardware-reduced ACPI sleep control, sleep status and reset registers (ports named in the
//! FADT, see `boot::acpi`). Power-off is S5 through the sleep control register.

use crate::boot::acpi::{S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::devices::bus::BusDevice;
use crate::devices::{StopReason, StopSender};
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT,
};

/// Ports from the sleep control register to the reset register.
pub const PORT_RANGE: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1) as u64;
const CONTROL: u64 = 0;
const RESET: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;

pub struct AcpiPower {
    requests: StopSender,
}

impl AcpiPower {
    pub fn new(requests: StopSender) -> Self {
        Self { requests }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Every register reads 0; for the status register that means "not woken".
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        let request = match offset {
            CONTROL if value & SLEEP_ENABLE != 0 && (value >> 2) & 0x7 == S5_SLEEP_TYPE => {
                Some(StopReason::PowerOff)
            }
            RESET if *value == ACPI_RESET_VALUE => Some(StopReason::Reset),
            _ => None,
        };
        if let Some(r) = request {
            let _ = self.requests.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        dev.write(CONTROL, &[S5_SLEEP_TYPE << 2]);
        assert!(rx.try_recv().is_err(), "no SLP_EN, no power-off");
        dev.write(CONTROL, &[(3 << 2) | SLEEP_ENABLE]);
        assert!(rx.try_recv().is_err(), "S3 is not supported");
        dev.write(CONTROL, &[(S5_SLEEP_TYPE << 2) | SLEEP_ENABLE]);
        assert_eq!(rx.try_recv().unwrap(), StopReason::PowerOff);
    }

    #[test]
    fn reset_value_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = AcpiPower::new(tx);
        dev.write(RESET, &[0x7]);
        assert!(rx.try_recv().is_err());
        dev.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(rx.try_recv().unwrap(), StopReason::Reset);
        dev.write(RESET, &[ACPI_RESET_VALUE, 0]);
        assert!(rx.try_recv().is_err(), "wide writes are ignored");
    }
}
