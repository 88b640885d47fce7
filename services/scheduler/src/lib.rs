//! berth's scheduler: drives deploys through their pipeline and keeps every service's instances placed, healthy and on the recorded digest
//!
//! (skeleton: being built)
