//! berth-ingress (in progress).
