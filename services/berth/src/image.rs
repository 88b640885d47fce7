//! `berth image normalize REF`: prints the fully qualified form of an image
//! reference (`alpine` → `docker.io/library/alpine:latest`) using the same
//! grammar the resolver uses, so users can check what berth will pull.

use crate::exit::Outcome;

pub fn normalize(reference: &str) -> Outcome {
    match berth_domain::reference::normalize_cli(reference) {
        Ok(normalized) => {
            println!("{normalized}");
            Outcome::Ok
        }
        Err(e) => Outcome::Usage(format!("invalid image reference {reference:?}: {e}")),
    }
}
