//! `modify_qp`: which state transitions an RC QP allows, with which attributes, and what
//! setting each attribute does.
//!
//! The table is IBTA vol. 1 section 11.2.5 (Linux `qp_state_table` in
//! `drivers/infiniband/core/verbs.c`) restricted to RC, minus what this device does not
//! support (alternate paths, Q_Keys, resizing queues). Without [`QpAttrMask::STATE`] the
//! transition is from the current state to itself.

use super::types::{AccessFlags, AhAttr, QpAttr, QpAttrMask, QpState, VerbsError};
use super::{Device, Mtu};
use crate::transport::Env;
use crate::transport::psn::PSN_MASK;
use crate::transport::qp::{DEFAULT_TTL, QueuePair};

/// The (required, optional) attributes of the transition `current -> next`, `None` if the
/// transition is not allowed.
pub(crate) fn transition(current: QpState, next: QpState) -> Option<(QpAttrMask, QpAttrMask)> {
    use QpAttrMask as M;
    use QpState::{Err, Init, Reset, Rtr, Rts, Sqd, Sqe};
    let none = M::EMPTY;
    let masks = match (current, next) {
        (Sqe, _) => return None,
        (_, Reset) | (_, Err) => (none, none),
        (Reset, Init) => (M::PKEY_INDEX | M::PORT | M::ACCESS_FLAGS, none),
        (Init, Init) => (none, M::PKEY_INDEX | M::PORT | M::ACCESS_FLAGS),
        (Init, Rtr) => (
            M::AV
                | M::PATH_MTU
                | M::DEST_QPN
                | M::RQ_PSN
                | M::MAX_DEST_RD_ATOMIC
                | M::MIN_RNR_TIMER,
            M::ACCESS_FLAGS | M::PKEY_INDEX,
        ),
        (Rtr, Rts) => (
            M::SQ_PSN | M::TIMEOUT | M::RETRY_CNT | M::RNR_RETRY | M::MAX_QP_RD_ATOMIC,
            M::CUR_STATE | M::ACCESS_FLAGS | M::MIN_RNR_TIMER | M::PATH_MIG_STATE,
        ),
        (Rts, Rts) | (Sqd, Rts) => (
            none,
            M::CUR_STATE | M::ACCESS_FLAGS | M::MIN_RNR_TIMER | M::PATH_MIG_STATE,
        ),
        (Rts, Sqd) => (none, M::EN_SQD_ASYNC_NOTIFY),
        (Sqd, Sqd) => (
            none,
            M::CUR_STATE
                | M::ACCESS_FLAGS
                | M::PKEY_INDEX
                | M::PORT
                | M::AV
                | M::MAX_QP_RD_ATOMIC
                | M::MAX_DEST_RD_ATOMIC
                | M::MIN_RNR_TIMER
                | M::TIMEOUT
                | M::RETRY_CNT
                | M::RNR_RETRY
                | M::PATH_MIG_STATE,
        ),
        _ => return None,
    };
    Some(masks)
}

/// The retransmission timeout of a `timeout` attribute: `4.096 us << timeout`, `None` for 0.
pub const fn timeout_nanos(timeout: u8) -> Option<u64> {
    if timeout == 0 {
        None
    } else {
        Some(4096u64 << (timeout & 0x1f))
    }
}

impl Device {
    /// Checks every attribute the mask names.
    fn check_qp_attr(
        &self,
        qp: &QueuePair,
        attr: &QpAttr,
        mask: QpAttrMask,
    ) -> Result<(), VerbsError> {
        let bad = |condition: bool| {
            if condition {
                Err(VerbsError::InvalidAttribute)
            } else {
                Ok(())
            }
        };
        if mask.contains(QpAttrMask::CUR_STATE) {
            bad(attr.cur_qp_state != qp.state)?;
        }
        if mask.contains(QpAttrMask::PORT) {
            bad(attr.port_num != 1)?;
        }
        if mask.contains(QpAttrMask::PKEY_INDEX) {
            bad(attr.pkey_index != 0)?;
        }
        if mask.contains(QpAttrMask::ACCESS_FLAGS) {
            bad(!AccessFlags::ALL.contains(attr.qp_access_flags))?;
        }
        if mask.contains(QpAttrMask::AV) {
            check_address_vector(&attr.ah_attr)?;
        }
        if mask.contains(QpAttrMask::PATH_MTU) {
            bad(attr.path_mtu > self.config.active_mtu)?;
        }
        if mask.contains(QpAttrMask::TIMEOUT) {
            bad(attr.timeout > 31)?;
        }
        if mask.contains(QpAttrMask::RETRY_CNT) {
            bad(attr.retry_cnt > 7)?;
        }
        if mask.contains(QpAttrMask::RNR_RETRY) {
            bad(attr.rnr_retry > 7)?;
        }
        if mask.contains(QpAttrMask::MIN_RNR_TIMER) {
            bad(attr.min_rnr_timer > 31)?;
        }
        if mask.contains(QpAttrMask::MAX_QP_RD_ATOMIC) {
            bad(u32::from(attr.max_rd_atomic) > self.config.max_qp_init_rd_atom)?;
        }
        if mask.contains(QpAttrMask::MAX_DEST_RD_ATOMIC) {
            bad(u32::from(attr.max_dest_rd_atomic) > self.config.max_qp_rd_atom)?;
        }
        if mask.contains(QpAttrMask::DEST_QPN) {
            bad(attr.dest_qp_num > PSN_MASK || attr.dest_qp_num == 0)?;
        }
        if mask.contains(QpAttrMask::RQ_PSN) {
            bad(attr.rq_psn > PSN_MASK)?;
        }
        if mask.contains(QpAttrMask::SQ_PSN) {
            bad(attr.sq_psn > PSN_MASK)?;
        }
        Ok(())
    }

    pub(crate) fn modify_qp_slot(
        &mut self,
        slot: usize,
        attr: &QpAttr,
        mask: QpAttrMask,
    ) -> Result<(), VerbsError> {
        let qp = self.qps[slot].as_ref().ok_or(VerbsError::InvalidHandle)?;
        let current = qp.state;
        let next = if mask.contains(QpAttrMask::STATE) {
            attr.qp_state
        } else {
            current
        };
        let (required, optional) =
            transition(current, next).ok_or(VerbsError::InvalidTransition)?;
        let given = QpAttrMask(mask.0 & !QpAttrMask::STATE.0);
        if !given.contains(required) || !required.union(optional).contains(given) {
            return Err(VerbsError::InvalidAttrMask);
        }
        self.check_qp_attr(qp, attr, given)?;

        let Device {
            qps,
            mrs,
            cqs,
            counters,
            ..
        } = self;
        let Some(qp) = qps[slot].as_mut() else {
            return Err(VerbsError::InvalidHandle);
        };
        let mut env = Env {
            mrs,
            cqs,
            counters,
            now: 0,
        };
        apply(qp, attr, given);
        match next {
            QpState::Reset => {
                qp.drop_work_requests(&mut env);
                qp.reset();
            }
            QpState::Err if current != QpState::Err => qp.enter_error(&mut env, false),
            QpState::Rts if current == QpState::Rtr => {
                qp.req.cursor = qp.sq_head_seq;
                qp.reset_retry_counters();
            }
            _ => {}
        }
        qp.state = next;
        qp.attr.qp_state = next;
        if matches!(next, QpState::Rts | QpState::Sqd) {
            self.schedule(slot);
        }
        Ok(())
    }
}

fn check_address_vector(ah: &AhAttr) -> Result<(), VerbsError> {
    let valid = ah.is_global
        && ah.port_num <= 1
        && ah.grh.sgid_index == 0
        && ah.grh.dgid.to_ipv4().is_some_and(|address| {
            !address.is_unspecified() && !address.is_broadcast() && !address.is_multicast()
        });
    if valid {
        Ok(())
    } else {
        Err(VerbsError::InvalidAttribute)
    }
}

/// Stores the attributes the (checked) mask names and derives the engine's values.
fn apply(qp: &mut QueuePair, attr: &QpAttr, mask: QpAttrMask) {
    use QpAttrMask as M;
    if mask.contains(M::ACCESS_FLAGS) {
        qp.attr.qp_access_flags = attr.qp_access_flags;
    }
    if mask.contains(M::PORT) {
        qp.attr.port_num = attr.port_num;
    }
    if mask.contains(M::PKEY_INDEX) {
        qp.attr.pkey_index = attr.pkey_index;
    }
    if mask.contains(M::AV) {
        qp.attr.ah_attr = attr.ah_attr;
        let grh = &attr.ah_attr.grh;
        if let Some(address) = grh.dgid.to_ipv4() {
            qp.dest_addr = address;
        }
        qp.ttl = if grh.hop_limit == 0 {
            DEFAULT_TTL
        } else {
            grh.hop_limit
        };
        qp.traffic_class = grh.traffic_class;
    }
    if mask.contains(M::PATH_MTU) {
        qp.attr.path_mtu = attr.path_mtu;
        qp.mtu = attr.path_mtu.bytes();
    }
    if mask.contains(M::DEST_QPN) {
        qp.attr.dest_qp_num = attr.dest_qp_num;
    }
    if mask.contains(M::RQ_PSN) {
        qp.attr.rq_psn = attr.rq_psn;
        qp.set_rq_psn(attr.rq_psn);
    }
    if mask.contains(M::MAX_DEST_RD_ATOMIC) {
        qp.attr.max_dest_rd_atomic = attr.max_dest_rd_atomic;
        qp.set_responder_resources(attr.max_dest_rd_atomic);
    }
    if mask.contains(M::MIN_RNR_TIMER) {
        qp.attr.min_rnr_timer = attr.min_rnr_timer;
    }
    if mask.contains(M::SQ_PSN) {
        qp.attr.sq_psn = attr.sq_psn;
        qp.set_sq_psn(attr.sq_psn);
    }
    if mask.contains(M::TIMEOUT) {
        qp.attr.timeout = attr.timeout;
        qp.timeout_ns = timeout_nanos(attr.timeout);
    }
    if mask.contains(M::RETRY_CNT) {
        qp.attr.retry_cnt = attr.retry_cnt;
        qp.comp.retry_cnt = attr.retry_cnt;
    }
    if mask.contains(M::RNR_RETRY) {
        qp.attr.rnr_retry = attr.rnr_retry;
        qp.comp.rnr_retry = attr.rnr_retry;
    }
    if mask.contains(M::MAX_QP_RD_ATOMIC) {
        qp.attr.max_rd_atomic = attr.max_rd_atomic;
    }
    if mask.contains(M::EN_SQD_ASYNC_NOTIFY) {
        qp.attr.en_sqd_async_notify = attr.en_sqd_async_notify;
    }
}

/// The default MTU is what the design's 1500-byte link carries.
const _: () = assert!(matches!(Mtu::for_link_mtu(1500), Some(Mtu::Mtu1024)));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_pingpong_masks_are_accepted() {
        let (required, optional) = transition(QpState::Reset, QpState::Init).unwrap();
        assert_eq!(required.union(QpAttrMask::STATE), QpAttrMask::INIT_REQUIRED);
        assert!(optional.is_empty());
        let (required, _) = transition(QpState::Init, QpState::Rtr).unwrap();
        assert_eq!(required.union(QpAttrMask::STATE), QpAttrMask::RTR_REQUIRED);
        let (required, _) = transition(QpState::Rtr, QpState::Rts).unwrap();
        assert_eq!(required.union(QpAttrMask::STATE), QpAttrMask::RTS_REQUIRED);
    }

    #[test]
    fn invalid_transitions() {
        assert!(transition(QpState::Reset, QpState::Rtr).is_none());
        assert!(transition(QpState::Reset, QpState::Rts).is_none());
        assert!(transition(QpState::Init, QpState::Rts).is_none());
        assert!(transition(QpState::Rtr, QpState::Init).is_none());
        assert!(transition(QpState::Err, QpState::Rts).is_none());
        assert!(transition(QpState::Err, QpState::Reset).is_some());
        assert!(transition(QpState::Rts, QpState::Err).is_some());
        assert!(transition(QpState::Sqd, QpState::Rts).is_some());
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_nanos(0), None);
        assert_eq!(timeout_nanos(1), Some(8192));
        assert_eq!(timeout_nanos(14), Some(4096 << 14)); // 67 ms, rc_pingpong's
        assert_eq!(timeout_nanos(31), Some(4096 << 31));
    }
}
