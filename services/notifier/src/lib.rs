//! berth's notifier and service events timeline: failure notifications by email, Slack and signed webhooks
//!
//! (skeleton: being built)
