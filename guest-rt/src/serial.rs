//! The serial log: bytes written to this OS's 16550-style transmit register.
//!
//! The host agent collects the bytes per OS, splits them into lines and prefixes them with
//! `[a]` or `[b]`; it never makes the guest wait, so the transmit register needs no polling.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU16, Ordering};

static PORT: AtomicU16 = AtomicU16::new(shm_ring::layout::SERIAL_PORT_A);

/// Selects the serial port.
pub fn init(port: u16) {
    PORT.store(port, Ordering::Relaxed);
}

/// A handle that formats onto the serial port.
#[derive(Debug)]
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let port = PORT.load(Ordering::Relaxed);
        for byte in text.bytes() {
            crate::cpu::outb(port, byte);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Writing to the port cannot fail.
    let _ = Serial.write_fmt(args);
}

/// Prints to the serial log.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial log.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
