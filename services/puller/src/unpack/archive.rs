//! Framing a layer's tar stream into entries.
//!
//! The `tar` crate's reader buffers a GNU long name or link and a PAX
//! extended header whole, whatever size its header declares: a few
//! kilobytes of gzip can declare a 100 MB name and have it read into
//! memory, on every node the pull is redelivered to. This reader sees each
//! extension header's size in its 512-byte header block and refuses it
//! there, before a byte of its data is read. Otherwise it frames entries
//! as the `tar` crate does, so layers read the same: `tar::Header` parses
//! the fields; a GNU long name or link wins over PAX `path`/`linkpath`,
//! which win over the header's own fields; a PAX `size` overrides the
//! header's; the first all-zero block ends the archive.
//!
//! GNU sparse entries are handed on as they are (the applier refuses
//! them), and PAX global headers are skipped: nothing in them changes how
//! berth writes a file.

use std::borrow::Cow;
use std::io::{self, Read};

use tar::{EntryType, Header, PaxExtensions};

const BLOCK: u64 = 512;

/// Why the next entry could not be framed.
#[derive(Debug)]
pub(super) enum ArchiveError {
    /// Reading the stream failed: the blob, the decompressor or a limit of
    /// the metered stream below (the caller knows which).
    Io(io::Error),
    /// Not a tar stream this reader can frame.
    Malformed(String),
    /// An extension header declares more data than the limit.
    HeaderTooLarge {
        /// Which kind of header, as the limit it broke.
        what: &'static str,
    },
}

/// Counts the bytes read, so the reader knows where the next header is.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A tar stream read entry by entry.
pub(super) struct Archive<R> {
    inner: Counted<R>,
    /// Stream offset of the next header block.
    next: u64,
    max_header: u64,
    done: bool,
}

/// One entry: its header, the extension data that applies to it, and its
/// data (read it, or leave it: the next [`Archive::next`] skips the rest).
pub(super) struct Entry<'a, R> {
    header: Header,
    size: u64,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    data: io::Take<&'a mut Counted<R>>,
}

impl<R: Read> Archive<R> {
    /// Read `inner`, refusing extension headers over `max_header` bytes.
    pub(super) fn new(inner: R, max_header: u64) -> Self {
        Self {
            inner: Counted { inner, pos: 0 },
            next: 0,
            max_header,
            done: false,
        }
    }

    /// The stream, positioned wherever reading stopped.
    pub(super) fn into_inner(self) -> R {
        self.inner.inner
    }

    /// The next entry, or `None` at the end of the archive.
    pub(super) fn next(&mut self) -> Result<Option<Entry<'_, R>>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let mut long_name = None;
        let mut long_link = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let Some(header) = self.header()? else {
                self.done = true;
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(malformed(
                        "extension headers with no entry after them at the end of the archive",
                    ));
                }
                return Ok(None);
            };
            let kind = header.entry_type();
            let declared = header
                .entry_size()
                .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
            let (slot, what) = match kind {
                EntryType::GNULongName => (Some(&mut long_name), "GNU long name header size"),
                EntryType::GNULongLink => (Some(&mut long_link), "GNU long link header size"),
                EntryType::XHeader => (Some(&mut pax), "PAX extended header size"),
                EntryType::XGlobalHeader => (None, "PAX global header size"),
                _ => {
                    let size = match pax.as_deref().and_then(pax_size) {
                        Some(size) => size,
                        None => declared,
                    };
                    self.next = self
                        .inner
                        .pos
                        .checked_add(padded(size)?)
                        .ok_or_else(overflow)?;
                    return Ok(Some(Entry {
                        header,
                        size,
                        long_name,
                        long_link,
                        pax,
                        data: (&mut self.inner).take(size),
                    }));
                }
            };
            // The point of this reader: the size is refused before the
            // data is read, so memory never holds more than the limit.
            if declared > self.max_header {
                return Err(ArchiveError::HeaderTooLarge { what });
            }
            match slot {
                Some(slot) => {
                    if slot.is_some() {
                        return Err(malformed(&format!("two {kind:?} headers for one entry")));
                    }
                    *slot = Some(self.data(declared)?);
                }
                None => {
                    self.next = self
                        .inner
                        .pos
                        .checked_add(padded(declared)?)
                        .ok_or_else(overflow)?;
                }
            }
        }
    }

    /// Skip to the next header block and read it; `None` at the end.
    fn header(&mut self) -> Result<Option<Header>, ArchiveError> {
        let skip = self.next.saturating_sub(self.inner.pos);
        let skipped = io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())
            .map_err(ArchiveError::Io)?;
        if skipped < skip {
            return Err(malformed("unexpected end of archive in an entry's data"));
        }
        let mut header = Header::new_old();
        let block = header.as_mut_bytes();
        let mut got = 0;
        while got < block.len() {
            let Some(rest) = block.get_mut(got..) else {
                break;
            };
            match self.inner.read(rest) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(malformed("unexpected end of archive in a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Io(e)),
            }
        }
        if header.as_bytes().iter().all(|b| *b == 0) {
            return Ok(None);
        }
        // As the `tar` crate sums it: the checksum field counts as spaces.
        let bytes = header.as_bytes();
        let sum = bytes
            .iter()
            .take(148)
            .chain(bytes.iter().skip(156))
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * u32::from(b' ');
        let cksum = header
            .cksum()
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        if sum != cksum {
            return Err(malformed("archive header checksum mismatch"));
        }
        Ok(Some(header))
    }

    /// The `size` bytes of an extension header (already checked against
    /// the limit).
    fn data(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let start = self.inner.pos;
        let cap = usize::try_from(size).map_err(|_| overflow())?;
        let mut buf = Vec::with_capacity(cap);
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut buf)
            .map_err(ArchiveError::Io)?;
        if (buf.len() as u64) < size {
            return Err(malformed(
                "unexpected end of archive in an extension header",
            ));
        }
        self.next = start.checked_add(padded(size)?).ok_or_else(overflow)?;
        Ok(buf)
    }
}

impl<R: Read> Entry<'_, R> {
    /// The header block (its own fields, not the extension headers').
    pub(super) fn header(&self) -> &Header {
        &self.header
    }

    /// Data bytes, PAX `size` applied.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// The entry's name as the archive states it.
    pub(super) fn path_bytes(&self) -> Cow<'_, [u8]> {
        if let Some(name) = &self.long_name {
            return Cow::Borrowed(without_nul(name));
        }
        if let Some(path) = self.pax_value(b"path") {
            return Cow::Borrowed(path);
        }
        self.header.path_bytes()
    }

    /// A link's target as the archive states it.
    pub(super) fn link_name_bytes(&self) -> Option<Cow<'_, [u8]>> {
        if let Some(link) = &self.long_link {
            return Some(Cow::Borrowed(without_nul(link)));
        }
        if let Some(link) = self.pax_value(b"linkpath") {
            return Some(Cow::Borrowed(link));
        }
        self.header.link_name_bytes()
    }

    /// The PAX records that apply to this entry.
    pub(super) fn pax_extensions(&self) -> Option<PaxExtensions<'_>> {
        self.pax.as_deref().map(PaxExtensions::new)
    }

    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax_extensions()?
            .filter_map(Result::ok)
            .find(|e| e.key_bytes() == key)
            .map(|e| e.value_bytes())
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

/// PAX `size`, read as the `tar` crate reads it: the first `size` record,
/// ignored when it or a record before it is malformed.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for record in PaxExtensions::new(pax) {
        let record = record.ok()?;
        if record.key_bytes() == b"size" {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> Result<u64, ArchiveError> {
    size.checked_next_multiple_of(BLOCK).ok_or_else(overflow)
}

/// A GNU long name or link ends in one NUL.
fn without_nul(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(&[0]).unwrap_or(bytes)
}

fn malformed(what: &str) -> ArchiveError {
    ArchiveError::Malformed(what.to_string())
}

fn overflow() -> ArchiveError {
    malformed("entry size overflows the archive offset")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn block(kind: EntryType, name: &str, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn member(out: &mut Vec<u8>, kind: EntryType, name: &str, data: &[u8]) {
        out.extend(block(kind, name, data.len() as u64));
        out.extend(data);
        out.resize(out.len().next_multiple_of(BLOCK as usize), 0);
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend(format!("{len}{body}").into_bytes());
        }
        out
    }

    #[test]
    fn a_header_over_the_limit_is_refused_without_reading_its_data() {
        for kind in [
            EntryType::GNULongName,
            EntryType::GNULongLink,
            EntryType::XHeader,
            EntryType::XGlobalHeader,
        ] {
            // Only the header block: reading any data would meet the end.
            let tar = block(kind, "././@LongLink", 1 << 30);
            let mut archive = Archive::new(&tar[..], 1 << 20);
            let e = archive.next().err().unwrap();
            assert!(
                matches!(e, ArchiveError::HeaderTooLarge { .. }),
                "{kind:?}: {e:?}"
            );
        }
    }

    #[test]
    fn extension_records_apply_to_the_next_entry_as_the_tar_crate_reads_them() {
        let mut tar = Vec::new();
        // PAX `size` frames the data (the header says 0), PAX `path`
        // names the entry, and a GNU long name wins over it.
        member(
            &mut tar,
            EntryType::XHeader,
            "pax",
            &pax(&[("path", "from-pax"), ("size", "3")]),
        );
        member(
            &mut tar,
            EntryType::GNULongName,
            "././@LongLink",
            b"from-gnu\0",
        );
        tar.extend(block(EntryType::Regular, "short", 0));
        tar.extend(b"abc");
        tar.resize(tar.len().next_multiple_of(BLOCK as usize), 0);
        member(
            &mut tar,
            EntryType::XHeader,
            "pax",
            &pax(&[("linkpath", "t")]),
        );
        member(&mut tar, EntryType::Symlink, "l", b"");
        tar.extend([0; 1024]);
        let mut archive = Archive::new(&tar[..], 1 << 20);
        let mut first = archive.next().unwrap().unwrap();
        assert_eq!(&*first.path_bytes(), b"from-gnu");
        assert_eq!(first.size(), 3);
        let mut data = Vec::new();
        first.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc");
        let second = archive.next().unwrap().unwrap();
        assert_eq!(&*second.path_bytes(), b"l");
        assert_eq!(second.link_name_bytes().as_deref(), Some(&b"t"[..]));
        assert!(archive.next().unwrap().is_none());
    }

    #[test]
    fn stray_extension_headers_are_malformed() {
        let mut twice = Vec::new();
        member(&mut twice, EntryType::GNULongName, "././@LongLink", b"a\0");
        member(&mut twice, EntryType::GNULongName, "././@LongLink", b"b\0");
        member(&mut twice, EntryType::Regular, "f", b"");
        let mut dangling = Vec::new();
        member(
            &mut dangling,
            EntryType::XHeader,
            "pax",
            &pax(&[("path", "p")]),
        );
        dangling.extend([0; 1024]);
        for tar in [twice, dangling] {
            let mut archive = Archive::new(&tar[..], 1 << 20);
            let e = archive.next().err().unwrap();
            assert!(matches!(e, ArchiveError::Malformed(_)), "{e:?}");
        }
    }
}
