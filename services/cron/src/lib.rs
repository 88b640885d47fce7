//! berth's cron runner: starts cron job runs on their 5-field UTC schedules, one active run per job
//!
//! (skeleton: being built)
