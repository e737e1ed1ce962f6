//! Bare-metal runtime for duovm guests.
#![no_std]
