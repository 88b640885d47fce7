//! Docker image references (filled in by the reference work).
