//! Durable pull workers on the work stream (implementation in progress).
