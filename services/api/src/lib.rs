//! berth's HTTP API (Render-shaped), deploy hooks and bus commands
//!
//! (skeleton: being built)
