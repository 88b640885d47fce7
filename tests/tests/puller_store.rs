//! The content store on its own: only verified bytes are ever committed,
//! unfinished ingests leave nothing (dropped) or are cleaned at start-up
//! (crash), and `has` re-checks what it hands out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_domain::reference::Digest;
use berth_puller::{ContentStore, StoreError, VerifyPolicy};
use berth_tests::image::sha256;
use tokio::io::AsyncWriteExt;

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::parse(&sha256(bytes)).unwrap()
}

fn count(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

#[tokio::test]
async fn ingest_commits_only_verified_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path(), VerifyPolicy::Size).unwrap();
    let good = b"hello blob".to_vec();
    let d = digest_of(&good);

    // Right size, wrong content.
    let mut ing = store.ingest(&d, good.len() as u64).await.unwrap();
    ing.write_all(b"hellO blob").await.unwrap();
    let e = ing.commit().await.unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch(_)), "{e}");
    assert!(!store.blob_path(&d).exists());
    assert_eq!(count(&dir.path().join("ingest")), 0);

    // Too short.
    let mut ing = store.ingest(&d, good.len() as u64).await.unwrap();
    ing.write_all(b"hello").await.unwrap();
    assert!(ing.commit().await.is_err());
    assert!(!store.blob_path(&d).exists());

    // Too long: refused while writing.
    let mut ing = store.ingest(&d, good.len() as u64).await.unwrap();
    assert!(ing.write_all(b"hello blob and more").await.is_err());
    drop(ing);
    assert_eq!(count(&dir.path().join("ingest")), 0);

    // Dropped half-way: nothing visible, nothing left.
    let mut ing = store.ingest(&d, good.len() as u64).await.unwrap();
    ing.write_all(b"hel").await.unwrap();
    ing.flush().await.unwrap();
    assert_eq!(count(&dir.path().join("ingest")), 1);
    drop(ing);
    assert_eq!(count(&dir.path().join("ingest")), 0);
    assert!(!store.has(&d, good.len() as u64));

    // The real thing.
    let mut ing = store.ingest(&d, good.len() as u64).await.unwrap();
    ing.write_all(&good).await.unwrap();
    let path = ing.commit().await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), good);
    assert!(store.has(&d, good.len() as u64));
    assert!(!store.has(&d, good.len() as u64 + 1));
}

#[tokio::test]
async fn crash_leftovers_are_cleaned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let _store = ContentStore::open(dir.path(), VerifyPolicy::Size).unwrap();
    }
    // What a SIGKILL mid-download / mid-unpack leaves behind.
    std::fs::write(dir.path().join("ingest/abc"), b"partial").unwrap();
    std::fs::create_dir_all(dir.path().join("tmp/xyz/rootfs/etc")).unwrap();
    let _store = ContentStore::open(dir.path(), VerifyPolicy::Size).unwrap();
    assert_eq!(count(&dir.path().join("ingest")), 0);
    assert_eq!(count(&dir.path().join("tmp")), 0);
}

#[test]
fn has_rechecks_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = b"some config".to_vec();
    let d = digest_of(&bytes);
    let sized = ContentStore::open(dir.path(), VerifyPolicy::Size).unwrap();
    sized.put(&d, &bytes).unwrap();
    assert!(sized.has(&d, bytes.len() as u64));
    // Same-size rot: the size policy cannot see it, the rehash policy can
    // (and removes the blob so it is fetched again).
    std::fs::write(sized.blob_path(&d), b"some confiG").unwrap();
    assert!(sized.has(&d, bytes.len() as u64));
    let rehash = ContentStore::open(dir.path(), VerifyPolicy::Rehash).unwrap();
    assert!(!rehash.has(&d, bytes.len() as u64));
    assert!(!rehash.blob_path(&d).exists());
    // Truncation is caught by the size check.
    sized.put(&d, &bytes).unwrap();
    std::fs::write(sized.blob_path(&d), b"some").unwrap();
    assert!(!sized.has(&d, bytes.len() as u64));
    // put refuses bytes that do not match.
    assert!(matches!(
        sized.put(&d, b"other"),
        Err(StoreError::DigestMismatch(_))
    ));
}
