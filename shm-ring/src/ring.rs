//! Lock-free SPSC descriptor rings in shared memory (see the module docs once written).
