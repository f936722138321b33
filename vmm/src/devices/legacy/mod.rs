//! Legacy port-I/O devices: the serial console, the i8042 reset line and the ACPI power ports.

pub mod i8042;
pub mod power;
pub mod serial;
