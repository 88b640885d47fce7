//! Layers built to exhaust a node rather than escape its rootfs (SPEC §9,
//! §15): extension headers declaring huge sizes, expansion bombs, a disk
//! about to fill. Each is refused while the layer streams, with memory and
//! disk writes bounded; layers just under the limits still unpack.
//!
//! Large layers are written as chains of gzip members (gzip readers, ours
//! included, read them as one stream): a 1 MiB chunk is compressed once
//! and repeated, so a 4 GiB layer takes milliseconds to build and never
//! sits in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_domain::reference::Digest;
use berth_puller::{
    unpack_image, unpack_layer, Compression, ContentStore, PullFailureReason, UnpackError,
    UnpackLimits, UnpackOptions, VerifyPolicy,
};
use berth_tests::image::{sha256, Layer};
use berth_tests::layers::{self, tar_bytes, Comp, Entry};
use tar::{EntryType, Header};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BLOCK: u64 = 512;

/// A tar stream written as gzip members.
struct GzTar<W: Write> {
    out: W,
    /// sha256 of the uncompressed stream, when the test needs the diff_id.
    ctx: Option<ring::digest::Context>,
    /// The repeated 1 MiB chunk, compressed once: (its byte, the member).
    chunk: Option<(u8, Vec<u8>)>,
}

impl<W: Write> GzTar<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            ctx: None,
            chunk: None,
        }
    }

    fn hashed(mut self) -> Self {
        self.ctx = Some(ring::digest::Context::new(&ring::digest::SHA256));
        self
    }

    fn member(&mut self, raw: &[u8]) {
        if raw.is_empty() {
            return;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(raw).unwrap();
        self.out.write_all(&gz.finish().unwrap()).unwrap();
        if let Some(ctx) = &mut self.ctx {
            ctx.update(raw);
        }
    }

    /// A header block declaring `size` bytes of data.
    fn header(&mut self, kind: EntryType, name: &[u8], size: u64) {
        let mut h = match kind {
            EntryType::XHeader | EntryType::XGlobalHeader => Header::new_ustar(),
            _ => Header::new_gnu(),
        };
        h.set_entry_type(kind);
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.member(h.as_bytes());
    }

    /// `n` bytes of `byte`.
    fn repeat(&mut self, byte: u8, n: u64) {
        let chunk = vec![byte; MIB as usize];
        if n >= MIB && self.chunk.as_ref().map(|c| c.0) != Some(byte) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&chunk).unwrap();
            self.chunk = Some((byte, gz.finish().unwrap()));
        }
        for _ in 0..n / MIB {
            let member = &self.chunk.as_ref().unwrap().1;
            self.out.write_all(member).unwrap();
            if let Some(ctx) = &mut self.ctx {
                ctx.update(&chunk);
            }
        }
        self.member(&chunk[..(n % MIB) as usize]);
    }

    /// Zeros up to the next block after `size` bytes of data.
    fn pad(&mut self, size: u64) {
        let pad = size.next_multiple_of(BLOCK) - size;
        self.member(&vec![0; pad as usize]);
    }

    /// A regular file of `data`.
    fn file(&mut self, name: &str, data: &[u8]) {
        self.header(EntryType::Regular, name.as_bytes(), data.len() as u64);
        self.member(data);
        self.pad(data.len() as u64);
    }

    /// The end-of-archive marker; the writer and the `sha256:` diff_id.
    fn finish(mut self) -> (W, Option<String>) {
        self.member(&[0; 2 * BLOCK as usize]);
        let diff_id = self.ctx.take().map(|ctx| {
            let hex: String = ctx
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256:{hex}")
        });
        (self.out, diff_id)
    }
}

/// A layer whose only content is a `size`-byte file of zeros, written to
/// `path`: the classic bomb (4 GiB is some 4 MB of gzip).
fn zeros_layer(path: &Path, size: u64) -> u64 {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut tar = GzTar::new(file);
    tar.header(EntryType::Regular, b"zeros", size);
    tar.repeat(0, size);
    tar.pad(size);
    let (out, _) = tar.finish();
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// An extension header of `kind` declaring `size` bytes (all there, a
/// valid PAX `comment` record for PAX kinds), then a small file.
fn extension_layer(kind: EntryType, size: u64) -> Vec<u8> {
    let mut tar = GzTar::new(Vec::new());
    tar.header(kind, b"././@LongLink", size);
    let mut filler = size;
    if matches!(kind, EntryType::XHeader | EntryType::XGlobalHeader) {
        let prefix = format!("{size} comment=");
        tar.member(prefix.as_bytes());
        tar.repeat(b'a', size - prefix.len() as u64 - 1);
        tar.member(b"\n");
        filler = 0;
    }
    tar.repeat(b'a', filler);
    tar.pad(size);
    tar.file("f", b"ok");
    tar.finish().0
}

fn opts(limits: UnpackLimits) -> UnpackOptions {
    UnpackOptions {
        limits,
        ownership: false,
        shift: None,
        verify_diff_ids: false,
    }
}

/// Bytes under `dir`: file lengths, and blocks allocated.
fn on_disk(dir: &Path) -> (u64, u64) {
    let (mut len, mut allocated) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            len += m.len();
            allocated += m.blocks() * 512;
        }
    }
    (len, allocated)
}

/// Held by the tests here that write or delete tens of MiB, so they do not
/// move the free space under the disk-reserve test.
static DISK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn disk_lock() -> std::sync::MutexGuard<'static, ()> {
    DISK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Free bytes on the filesystem of `path`, as the unpacker reads them.
#[allow(clippy::useless_conversion)] // 32-bit fields on some targets
fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    u64::from(st.blocks_available()) * u64::from(st.fragment_size())
}

const CHILD: &str = "BERTH_TEST_UNPACK_BOMBS_CHILD";

/// This process's peak resident set, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Run test `name` of this binary again, alone in a fresh process with
/// `CHILD=mode`, so the peak RSS it measures is its own and not that of
/// tests running beside it; returns its `result:` line.
fn rerun_alone(name: &str, mode: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| Some(l.split_once("result: ")?.1))
        .unwrap_or_else(|| panic!("child {mode} printed no result:\n{stdout}"))
        .to_string()
}

fn field(result: &str, key: &str) -> u64 {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} missing in {result:?}"))
        .parse()
        .unwrap()
}

/// The child side: unpack (or, as a control showing that the measurement
/// sees a buffered header, read with the `tar` crate) a layer with a
/// 100 MB PAX header, and print the peak RSS growth.
fn pax_child(mode: &str) {
    let blob = extension_layer(EntryType::XHeader, 100_000_000);
    let dir = tempfile::tempdir().unwrap();
    let base = peak_rss();
    let started = Instant::now();
    let refused = match mode {
        "berth" => {
            let e = unpack_layer(
                &blob[..],
                Compression::Gzip,
                dir.path(),
                0,
                &opts(UnpackLimits::default()),
            )
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    UnpackError::Limit {
                        what: "PAX extended header size",
                        limit: 1_048_576,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage));
            1
        }
        _ => {
            let gz = flate2::read::MultiGzDecoder::new(&blob[..]);
            let mut archive = tar::Archive::new(gz);
            for entry in archive.entries().unwrap() {
                entry.unwrap();
            }
            0
        }
    };
    println!(
        "result: growth={} refused={refused} compressed={} ms={}",
        peak_rss() - base,
        blob.len(),
        started.elapsed().as_millis()
    );
}

#[test]
fn a_100_mb_pax_header_is_refused_in_bounded_memory() {
    if let Ok(mode) = std::env::var(CHILD) {
        return pax_child(&mode);
    }
    let name = "unpack_bombs::a_100_mb_pax_header_is_refused_in_bounded_memory";
    let ours = rerun_alone(name, "berth");
    let control = rerun_alone(name, "tar");
    eprintln!("berth: {ours}\ntar crate: {control}");
    assert_eq!(field(&ours, "refused"), 1);
    assert!(
        field(&control, "growth") > 90_000_000,
        "the measurement should see the tar crate buffer the header: {control}"
    );
    assert!(
        field(&ours, "growth") < 32 * MIB,
        "refusing the header must not read it: {ours}"
    );
}

#[test]
fn oversized_extension_headers_are_refused_before_they_are_read() {
    for (kind, what) in [
        (EntryType::GNULongName, "GNU long name header size"),
        (EntryType::GNULongLink, "GNU long link header size"),
        (EntryType::XHeader, "PAX extended header size"),
        (EntryType::XGlobalHeader, "PAX global header size"),
    ] {
        let blob = extension_layer(kind, 100_000_000);
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_layer(
            &blob[..],
            Compression::Gzip,
            dir.path(),
            0,
            &opts(UnpackLimits::default()),
        )
        .unwrap_err();
        let UnpackError::Limit { what: got, .. } = &e else {
            panic!("{kind:?}: expected a limit, got {e:?}");
        };
        assert_eq!(*got, what);
        assert!(e.to_string().contains(what), "{e}");
        assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage));
        assert_eq!(on_disk(dir.path()), (0, 0), "{kind:?}: nothing written");
    }
}

#[test]
fn headers_at_the_limit_still_unpack() {
    let limits = UnpackLimits::default();
    for kind in [EntryType::XHeader, EntryType::XGlobalHeader] {
        let at = extension_layer(kind, limits.max_header_bytes);
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&at[..], Compression::Gzip, dir.path(), 0, &opts(limits)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"ok");
        let over = extension_layer(kind, limits.max_header_bytes + 1);
        let dir = tempfile::tempdir().unwrap();
        let e =
            unpack_layer(&over[..], Compression::Gzip, dir.path(), 0, &opts(limits)).unwrap_err();
        assert!(matches!(e, UnpackError::Limit { .. }), "{kind:?}: {e:?}");
    }
    // GNU long names and links as long as a path may be.
    let long: String = (0..20).map(|i| format!("{i:0>199}/")).collect();
    let long = &long[..3990];
    let target = format!("/{}", "t".repeat(3999));
    let blob = Comp::Gzip
        .compress(
            &tar_bytes(&[Entry::file(long, b"deep"), Entry::symlink("link", &target)]).unwrap(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&blob[..], Compression::Gzip, dir.path(), 0, &opts(limits)).unwrap();
    assert_eq!(std::fs::read(dir.path().join(long)).unwrap(), b"deep");
    assert_eq!(
        std::fs::read_link(dir.path().join("link")).unwrap(),
        Path::new(&target)
    );
}

/// With its size unknown (a stream), the ratio is measured against the
/// compressed bytes read so far, and the bomb's file is written until the
/// stream crosses the bound: never beyond it.
#[test]
fn a_bomb_stops_at_the_ratio_limit_while_streaming() {
    let _disk = disk_lock();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("layer.gz");
    let compressed = zeros_layer(&blob, 4 * GIB);
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    let limits = UnpackLimits {
        expansion_floor: 32 * MIB,
        max_expansion_ratio: 10,
        ..UnpackLimits::default()
    };
    let started = Instant::now();
    let e = unpack_layer(
        std::fs::File::open(&blob).unwrap(),
        Compression::Gzip,
        &target,
        0,
        &opts(limits),
    )
    .unwrap_err();
    let elapsed = started.elapsed();
    let UnpackError::ExpansionRatio { limit, .. } = e else {
        panic!("expected an expansion-ratio refusal, got {e:?}");
    };
    assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage));
    let (written, allocated) = on_disk(&target);
    eprintln!(
        "4 GiB of zeros in {compressed} bytes: refused at {limit} bytes after writing {written} \
         ({allocated} allocated) in {elapsed:?}"
    );
    assert!(limit <= 32 * MIB, "{e}");
    assert!(
        written <= limit && allocated <= limit,
        "{written} > {limit}"
    );
}

/// Through the store, with the defaults a node uses: the image's
/// compressed size is known, so the bomb's header alone is refused.
#[test]
fn a_real_size_bomb_is_refused_with_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.gz");
    zeros_layer(&path, 4 * GIB);
    let blob = std::fs::read(&path).unwrap();
    let store = ContentStore::open(dir.path().join("store"), VerifyPolicy::Size).unwrap();
    let digest = put_image(&store, blob, "sha256:".to_string() + &"0".repeat(64));
    let started = Instant::now();
    let e = unpack_image(&store, &digest, &UnpackOptions::default()).unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("refused in {elapsed:?}: {e}");
    let UnpackError::ExpansionRatio {
        limit,
        ratio,
        compressed,
        ..
    } = e
    else {
        panic!("expected an expansion-ratio refusal, got {e:?}");
    };
    assert_eq!((limit, ratio), (GIB, 100), "{e}");
    assert!(compressed < 8 * MIB, "{e}");
    assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage));
    assert!(!store.has_tree(&digest));
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "the partial tree is removed: {tmp:?}");
}

/// Expanded bytes that are never written (past the end-of-archive marker,
/// read for the diff_id) count too.
#[test]
fn a_bomb_past_the_end_of_the_archive_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = GzTar::new(Vec::new());
    tar.file("f", b"ok");
    tar.member(&[0; 2 * BLOCK as usize]);
    tar.repeat(0, 4 * GIB);
    let (blob, _) = tar.finish();
    let store = ContentStore::open(dir.path().join("store"), VerifyPolicy::Size).unwrap();
    let digest = put_image(&store, blob, "sha256:".to_string() + &"0".repeat(64));
    let limits = UnpackLimits {
        expansion_floor: 16 * MIB,
        max_expansion_ratio: 2,
        ..UnpackLimits::default()
    };
    let e = unpack_image(&store, &digest, &opts(limits)).unwrap_err();
    assert!(
        matches!(e, UnpackError::ExpansionRatio { limit, .. } if limit == 16 * MIB),
        "{e:?}"
    );
}

/// Just under `max(floor, ratio × compressed)` unpacks, just over does
/// not; and past the floor, the ratio is over the image's whole compressed
/// size (a layer that starts with zeros is not taken for a bomb).
#[test]
fn a_layer_under_the_expansion_limits_unpacks() {
    let _disk = disk_lock();
    let limits = UnpackLimits {
        expansion_floor: 16 * MIB,
        max_expansion_ratio: 10,
        ..UnpackLimits::default()
    };
    // Header, data, end marker: exactly the floor, then one block more.
    for (extra, fits) in [(0, true), (BLOCK, false)] {
        let size = 16 * MIB - 3 * BLOCK + extra;
        let mut tar = GzTar::new(Vec::new()).hashed();
        tar.header(EntryType::Regular, b"zeros", size);
        tar.repeat(0, size);
        tar.pad(size);
        let (blob, diff_id) = tar.finish();
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("store"), VerifyPolicy::Size).unwrap();
        let digest = put_image(&store, blob, diff_id.unwrap());
        let r = unpack_image(&store, &digest, &opts_verified(limits));
        assert_eq!(r.is_ok(), fits, "{size}: {r:?}");
    }
    // 48 MiB of zeros, then 6 MiB that does not compress: 54 MiB out of
    // some 6 MiB, under ten times.
    let mut tar = GzTar::new(Vec::new()).hashed();
    let noise = noise(6 * MIB as usize);
    tar.header(EntryType::Regular, b"zeros", 48 * MIB);
    tar.repeat(0, 48 * MIB);
    tar.file("noise", &noise);
    let (blob, diff_id) = tar.finish();
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store"), VerifyPolicy::Size).unwrap();
    let digest = put_image(&store, blob, diff_id.unwrap());
    let rootfs = unpack_image(&store, &digest, &opts_verified(limits)).unwrap();
    assert_eq!(
        std::fs::metadata(rootfs.join("zeros")).unwrap().len(),
        48 * MIB
    );
}

#[test]
fn unpacking_stops_at_the_free_disk_reserve() {
    let _disk = disk_lock();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("layer.gz");
    zeros_layer(&blob, 4 * GIB);
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    // Room for 32 MiB; the ratio is out of the way.
    let limits = UnpackLimits {
        expansion_floor: u64::MAX,
        min_free_disk: free_bytes(&target) - 32 * MIB,
        ..UnpackLimits::default()
    };
    let e = unpack_layer(
        std::fs::File::open(&blob).unwrap(),
        Compression::Gzip,
        &target,
        0,
        &opts(limits),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::DiskReserve { .. }), "{e:?}");
    // The node is short of disk; the image is not at fault.
    assert_eq!(e.reason(), None, "{e}");
    let (written, allocated) = on_disk(&target);
    eprintln!("stopped after writing {written} bytes ({allocated} allocated): {e}");
    // 32 MiB, plus what the applier holds in its 256 KiB copy buffer when
    // the free space is read, plus what other processes on this
    // filesystem free meanwhile (tests of other modules, builds): far
    // below the 4 GiB the layer holds.
    assert!(allocated <= 96 * MIB, "{allocated}");

    // Already below the reserve: nothing is written at all.
    let target = dir.path().join("rootfs2");
    std::fs::create_dir(&target).unwrap();
    let limits = UnpackLimits {
        min_free_disk: free_bytes(&target) + GIB,
        ..UnpackLimits::default()
    };
    let small = Comp::Gzip
        .compress(&tar_bytes(&[Entry::file("f", b"x")]).unwrap())
        .unwrap();
    let e = unpack_layer(&small[..], Compression::Gzip, &target, 0, &opts(limits)).unwrap_err();
    assert!(matches!(e, UnpackError::DiskReserve { .. }), "{e:?}");
    assert_eq!(on_disk(&target), (0, 0));
}

fn opts_verified(limits: UnpackLimits) -> UnpackOptions {
    UnpackOptions {
        verify_diff_ids: true,
        ..opts(limits)
    }
}

/// Bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Commit a one-layer gzip image of `blob` into `store`.
fn put_image(store: &ContentStore, blob: Vec<u8>, diff_id: String) -> Digest {
    let layer = Layer {
        digest: sha256(&blob),
        diff_id,
        blob,
    };
    let image = layers::image(vec![(layer, Comp::Gzip)]).unwrap();
    let put = |d: &str, bytes: &[u8]| store.put(&Digest::parse(d).unwrap(), bytes).unwrap();
    put(&image.config_digest, &image.config);
    for l in &image.layers {
        put(&l.digest, &l.blob);
    }
    put(&image.digest, &image.manifest);
    Digest::parse(&image.digest).unwrap()
}
