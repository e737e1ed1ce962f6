//! 24-bit packet sequence number arithmetic.
//!
//! PSNs count modulo 2^24. Two PSNs are ordered by their distance modulo 2^24 taken as a
//! signed 24-bit number, as rxe's `psn_compare` does: `b` is after `a` when `b - a` lies in
//! `1..2^23`. Every comparison of PSNs in the engine goes through [`diff`].

/// Mask of a PSN.
pub const PSN_MASK: u32 = 0x00ff_ffff;

/// `psn + count` modulo 2^24.
pub const fn add(psn: u32, count: u32) -> u32 {
    psn.wrapping_add(count) & PSN_MASK
}

/// `psn - count` modulo 2^24.
pub const fn sub(psn: u32, count: u32) -> u32 {
    psn.wrapping_sub(count) & PSN_MASK
}

/// The signed distance from `b` to `a` (`a - b`) in -2^23..2^23: positive when `a` is after
/// `b`.
pub const fn diff(a: u32, b: u32) -> i32 {
    ((a.wrapping_sub(b) << 8) as i32) >> 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        assert_eq!(add(PSN_MASK, 1), 0);
        assert_eq!(add(0xff_fff0, 0x20), 0x10);
        assert_eq!(sub(0, 1), PSN_MASK);
        assert_eq!(diff(0, PSN_MASK), 1);
        assert_eq!(diff(PSN_MASK, 0), -1);
        assert_eq!(diff(0x10, 0xff_fff0), 0x20);
        assert_eq!(diff(5, 5), 0);
        assert_eq!(diff(0x40_0000, 0), 0x40_0000);
        assert_eq!(diff(0x80_0000, 0), -0x80_0000);
        assert_eq!(diff(0x7f_ffff, 0), 0x7f_ffff);
    }

    #[test]
    fn diff_inverts_add() {
        for base in [0, 1, 0x7f_ffff, 0x80_0000, PSN_MASK - 3, PSN_MASK] {
            for delta in [0u32, 1, 2, 127, 128, 0x7f_ffff] {
                assert_eq!(diff(add(base, delta), base), delta as i32);
                assert_eq!(diff(base, add(base, delta)), -(delta as i32));
                assert_eq!(sub(add(base, delta), delta), base);
            }
        }
    }
}
