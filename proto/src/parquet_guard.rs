//! A bounded check of one Parquet column chunk's pages, run before the
//! parquet crate decodes them (the agent's replay and the core's Dataset B
//! loader each call it, with facts from the file's footer; this crate does
//! not depend on parquet).
//!
//! Why our own walk: the parquet crate (60.1) keeps its page header type
//! crate-private and sizes buffers from it before anything can look: a
//! dictionary page header claiming a billion values makes its dictionary
//! decoder allocate tens of gigabytes (`DictDecoder::set_dict` resizes to the
//! header's `num_values`), and a damaged column chunk makes its page-header
//! reading crawl for seconds to minutes. So this module reads each page
//! header itself (the Thrift compact protocol, only the fields it needs,
//! everything else skipped within the header's bytes), walks the chunk page
//! by page without decoding a page, and refuses the chunk at the first page
//! that claims more than the chunk or the row group can hold. The walk reads
//! each header once, never past the chunk, so its work is linear in the
//! chunk's size and bounded by [`MAX_PAGES_PER_CHUNK`].

/// The most pages one column chunk may have. Writers cut pages at ~1 MiB
/// (parquet-rs, pyarrow, Spark), so a 1 GiB chunk has ~1,000; this leaves
/// room for writers with tiny pages and bounds the walk (one header read a
/// page).
pub const MAX_PAGES_PER_CHUNK: u64 = 1_000_000;

/// The largest page, uncompressed, that is decoded. Writers' defaults are
/// 1 MiB for data and dictionary pages; a page over this is refused rather
/// than given a buffer of its claimed size (a dictionary of this size holds
/// at most 4 Mi byte-array values, ~128 MiB decoded).
pub const MAX_UNCOMPRESSED_PAGE_BYTES: u64 = 16 << 20;

/// The longest page header read. Headers are tens of bytes, up to a few
/// KiB with statistics of long values.
pub const MAX_PAGE_HEADER_BYTES: u64 = 256 << 10;

/// Bytes read at first for a header; grown to [`MAX_PAGE_HEADER_BYTES`]
/// only when a header is longer.
const HEADER_WINDOW: u64 = 16 << 10;

/// How deep Thrift structs, lists and maps may nest inside a page header
/// (the format nests three deep: header, page header, statistics).
const MAX_THRIFT_DEPTH: u32 = 16;

/// What the footer says about one column chunk, and what bounds its pages.
#[derive(Debug, Clone)]
pub struct ChunkFacts {
    /// Byte offset of the chunk's first page (the dictionary page's when there
    /// is one), as the parquet crate's `ColumnChunkMetaData::byte_range`.
    pub start: u64,
    /// The chunk's length in bytes (its compressed size).
    pub len: u64,
    /// The file's length: a chunk must lie inside it.
    pub file_len: u64,
    /// The most values one page may hold: the row group's rows for a column
    /// that is not repeated (one value, maybe null, a row), else the chunk's
    /// value count.
    pub max_values_per_page: u64,
    /// The fewest bits one PLAIN-encoded value of the column's physical type
    /// takes (1 for BOOLEAN, 32 for INT32 and BYTE_ARRAY, …): a dictionary
    /// page cannot hold more values than its bytes allow.
    pub min_value_bits: u64,
    /// Whether pages are compressed (any codec but UNCOMPRESSED): then a
    /// page's body is its uncompressed size once decompressed, else its
    /// stored bytes.
    pub compressed: bool,
}

/// What a walked chunk held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkPages {
    pub pages: u64,
    pub values: u64,
}

/// Page types, as the format numbers them.
const DATA_PAGE: i32 = 0;
const INDEX_PAGE: i32 = 1;
const DICTIONARY_PAGE: i32 = 2;
const DATA_PAGE_V2: i32 = 3;

/// Walks the pages of the chunk `facts` describes, reading with `read_at`
/// (fill the buffer from a file offset, answering how many bytes were read;
/// fewer only at the file's end). Refuses, with the reason naming the page,
/// a chunk outside the file, a page header that does not parse within
/// [`MAX_PAGE_HEADER_BYTES`] or the chunk, a page that does not fit in the
/// chunk, over [`MAX_UNCOMPRESSED_PAGE_BYTES`], with more values than
/// `max_values_per_page`, or a dictionary with more values than its bytes
/// can hold, and more than [`MAX_PAGES_PER_CHUNK`] pages.
pub fn check_column_chunk(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    facts: &ChunkFacts,
) -> Result<ChunkPages, String> {
    let end = facts
        .start
        .checked_add(facts.len)
        .filter(|&end| end <= facts.file_len)
        .ok_or_else(|| {
            format!(
                "claims bytes {}..{}+{} but the file has {} bytes",
                facts.start, facts.start, facts.len, facts.file_len
            )
        })?;
    let mut at = facts.start;
    let mut out = ChunkPages::default();
    let mut buf = Vec::new();
    while at < end {
        if out.pages == MAX_PAGES_PER_CHUNK {
            return Err(format!(
                "more than {MAX_PAGES_PER_CHUNK} pages (MAX_PAGES_PER_CHUNK)"
            ));
        }
        let page = out.pages;
        let header = read_header(read_at, at, end, &mut buf)
            .map_err(|e| format!("page {page} at byte {at}: header: {e}"))?;
        at += header.len;
        check_page(&header.page, end - at, facts)
            .map_err(|e| format!("page {page} at byte {}: {e}", at - header.len))?;
        at += header.page.compressed_size as u64;
        out.pages += 1;
        if matches!(header.page.kind, DATA_PAGE | DATA_PAGE_V2) {
            out.values += header.page.num_values as u64;
        }
    }
    Ok(out)
}

fn check_page(p: &PageHeader, remaining: u64, facts: &ChunkFacts) -> Result<(), String> {
    if p.compressed_size < 0 || p.compressed_size as u64 > remaining {
        return Err(format!(
            "its {} stored bytes do not fit in the column chunk's remaining {remaining}",
            p.compressed_size
        ));
    }
    if p.uncompressed_size < 0 || p.uncompressed_size as u64 > MAX_UNCOMPRESSED_PAGE_BYTES {
        return Err(format!(
            "claims {} bytes uncompressed, over the {MAX_UNCOMPRESSED_PAGE_BYTES} decoded \
             (MAX_UNCOMPRESSED_PAGE_BYTES)",
            p.uncompressed_size
        ));
    }
    let body = if facts.compressed && !(p.kind == DATA_PAGE_V2 && p.v2_uncompressed) {
        p.uncompressed_size as u64
    } else {
        p.compressed_size as u64
    };
    if p.num_values < 0 {
        return Err(format!("claims {} values", p.num_values));
    }
    let values = p.num_values as u64;
    match p.kind {
        DATA_PAGE | DATA_PAGE_V2 if values > facts.max_values_per_page => Err(format!(
            "claims {values} values, more than the {} the column chunk can hold",
            facts.max_values_per_page
        )),
        DICTIONARY_PAGE => {
            let fit = body.saturating_mul(8) / facts.min_value_bits.max(1);
            if values > fit {
                Err(format!(
                    "a dictionary of {values} values in {body} bytes (at most {fit} fit)"
                ))
            } else if values > facts.max_values_per_page {
                Err(format!(
                    "a dictionary of {values} values, more than the {} the column chunk can hold",
                    facts.max_values_per_page
                ))
            } else {
                Ok(())
            }
        }
        DATA_PAGE | DATA_PAGE_V2 | INDEX_PAGE => Ok(()),
        other => Err(format!("unknown page type {other}")),
    }
}

/// The fields of a page header the check uses.
#[derive(Debug, Default)]
struct PageHeader {
    kind: i32,
    uncompressed_size: i32,
    compressed_size: i32,
    /// Of the data or dictionary page header; 0 for an index page.
    num_values: i32,
    /// DATA_PAGE_V2 `is_compressed = false`.
    v2_uncompressed: bool,
}

struct Header {
    page: PageHeader,
    /// Its encoded length in bytes.
    len: u64,
}

fn read_header(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    at: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> Result<Header, String> {
    let most = (end - at).min(MAX_PAGE_HEADER_BYTES);
    let mut window = most.min(HEADER_WINDOW);
    loop {
        buf.resize(window as usize, 0);
        let mut got = 0;
        while got < buf.len() {
            match read_at(at + got as u64, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read: {e}")),
            }
        }
        buf.truncate(got);
        let mut r = Compact { buf, at: 0 };
        match r.page_header() {
            Ok(page) => {
                return Ok(Header {
                    page,
                    len: r.at as u64,
                })
            }
            Err(Short) if window < most => window = most,
            Err(Short) if most == MAX_PAGE_HEADER_BYTES => {
                return Err(format!(
                    "longer than {MAX_PAGE_HEADER_BYTES} bytes (MAX_PAGE_HEADER_BYTES)"
                ))
            }
            Err(Short) => return Err("runs past the end of the column chunk".into()),
            Err(Bad(why)) => return Err(why),
        }
    }
}

/// Why a header did not parse.
enum ThriftError {
    /// It needs more bytes than were read.
    Short,
    Bad(String),
}
use ThriftError::{Bad, Short};

/// A Thrift compact-protocol reader over a byte slice.
struct Compact<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Compact-protocol type ids.
const T_STOP: u8 = 0;
const T_TRUE: u8 = 1;
const T_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

impl Compact<'_> {
    fn byte(&mut self) -> Result<u8, ThriftError> {
        let b = *self.buf.get(self.at).ok_or(Short)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, ThriftError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(Bad("a varint over 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Bad("a varint over 64 bits".into()))
    }

    fn zigzag(&mut self) -> Result<i64, ThriftError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self, ty: u8) -> Result<i32, ThriftError> {
        if ty != T_I32 {
            return Err(Bad(format!("an i32 field has type {ty}")));
        }
        i32::try_from(self.zigzag()?).map_err(|_| Bad("an i32 out of range".into()))
    }

    fn skip_bytes(&mut self, n: u64) -> Result<(), ThriftError> {
        let left = (self.buf.len() - self.at) as u64;
        if n > left {
            return Err(Short);
        }
        self.at += n as usize;
        Ok(())
    }

    /// Skips one value of type `ty`; every value takes at least a byte, so
    /// skipping is linear in the bytes read.
    fn skip(&mut self, ty: u8, depth: u32) -> Result<(), ThriftError> {
        if depth > MAX_THRIFT_DEPTH {
            return Err(Bad(format!("nested deeper than {MAX_THRIFT_DEPTH}")));
        }
        match ty {
            T_TRUE | T_FALSE | T_BYTE => self.skip_bytes(1),
            T_I16 | T_I32 | T_I64 => self.varint().map(drop),
            T_DOUBLE => self.skip_bytes(8),
            T_BINARY => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            T_LIST | T_SET => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let elem = h & 0x0f;
                for _ in 0..n {
                    // In a list a boolean takes a byte, like any element.
                    self.skip(elem, depth + 1)?;
                }
                Ok(())
            }
            T_MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                for _ in 0..n {
                    self.skip(kv >> 4, depth + 1)?;
                    self.skip(kv & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            T_STRUCT => self.fields(depth + 1, &mut |r, _, ty| r.skip_value(ty, depth + 1)),
            other => Err(Bad(format!("unknown Thrift type {other}"))),
        }
    }

    /// Reads a struct's fields up to its stop byte, handing each field's id
    /// and type to `field` (which reads or skips its value). A boolean
    /// field's value is its type (`T_TRUE`/`T_FALSE`), with nothing to read.
    fn fields(
        &mut self,
        depth: u32,
        field: &mut dyn FnMut(&mut Self, i16, u8) -> Result<(), ThriftError>,
    ) -> Result<(), ThriftError> {
        if depth > MAX_THRIFT_DEPTH {
            return Err(Bad(format!("nested deeper than {MAX_THRIFT_DEPTH}")));
        }
        let mut last: i16 = 0;
        loop {
            let h = self.byte()?;
            let ty = h & 0x0f;
            if ty == T_STOP {
                return Ok(());
            }
            let id = match h >> 4 {
                0 => i16::try_from(self.zigzag()?)
                    .map_err(|_| Bad("a field id out of range".into()))?,
                delta => last.wrapping_add(i16::from(delta)),
            };
            last = id;
            field(self, id, ty)?;
        }
    }

    fn page_header(&mut self) -> Result<PageHeader, ThriftError> {
        let mut p = PageHeader::default();
        let mut seen_type = false;
        self.fields(0, &mut |r, id, ty| match id {
            1 => {
                p.kind = r.i32(ty)?;
                seen_type = true;
                Ok(())
            }
            2 => r.i32(ty).map(|v| p.uncompressed_size = v),
            3 => r.i32(ty).map(|v| p.compressed_size = v),
            // Data page (5), dictionary page (7), data page v2 (8) headers:
            // field 1 is `num_values` in each.
            5 | 7 | 8 if ty == T_STRUCT => r.fields(1, &mut |r, sub, ty| match (id, sub) {
                (_, 1) => r.i32(ty).map(|v| p.num_values = v),
                (8, 7) => {
                    p.v2_uncompressed = ty == T_FALSE;
                    Ok(())
                }
                _ => r.skip_value(ty, 2),
            }),
            _ => r.skip_value(ty, 1),
        })?;
        if !seen_type {
            return Err(Bad("no page type".into()));
        }
        Ok(p)
    }

    /// Skips a field's value (a boolean field has none).
    fn skip_value(&mut self, ty: u8, depth: u32) -> Result<(), ThriftError> {
        if matches!(ty, T_TRUE | T_FALSE) {
            Ok(())
        } else {
            self.skip(ty, depth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol page header: type, sizes, and the page's own
    /// header (field `sub`) with `num_values`.
    fn header(kind: i32, uncompressed: i32, compressed: i32, sub: u8, values: i32) -> Vec<u8> {
        fn zz(v: i64, out: &mut Vec<u8>) {
            let mut u = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let b = (u & 0x7f) as u8;
                u >>= 7;
                if u == 0 {
                    out.push(b);
                    return;
                }
                out.push(b | 0x80);
            }
        }
        let mut h = Vec::new();
        // Fields 1, 2, 3 (type, uncompressed, compressed): each one past the
        // last.
        for v in [kind, uncompressed, compressed] {
            h.push((1 << 4) | T_I32);
            zz(v.into(), &mut h);
        }
        h.push(((sub - 3) << 4) | T_STRUCT);
        h.push((1 << 4) | T_I32);
        zz(values.into(), &mut h);
        h.push((1 << 4) | T_I32); // encoding
        zz(0, &mut h);
        h.push(T_STOP);
        h.push(T_STOP);
        h
    }

    fn facts(len: usize, rows: u64) -> ChunkFacts {
        ChunkFacts {
            start: 0,
            len: len as u64,
            file_len: len as u64,
            max_values_per_page: rows,
            min_value_bits: 32,
            compressed: false,
        }
    }

    fn check(bytes: &[u8], f: &ChunkFacts) -> Result<ChunkPages, String> {
        check_column_chunk(
            &mut |at, buf| {
                let at = (at as usize).min(bytes.len());
                let n = buf.len().min(bytes.len() - at);
                buf[..n].copy_from_slice(&bytes[at..at + n]);
                Ok(n)
            },
            f,
        )
    }

    #[test]
    fn a_plain_chunk_of_a_dictionary_and_a_data_page_passes() {
        let mut chunk = header(DICTIONARY_PAGE, 8, 8, 7, 2);
        chunk.extend([0; 8]);
        chunk.extend(header(DATA_PAGE, 4, 4, 5, 3));
        chunk.extend([0; 4]);
        let got = check(&chunk, &facts(chunk.len(), 3)).unwrap();
        assert_eq!(
            got,
            ChunkPages {
                pages: 2,
                values: 3
            }
        );
    }

    #[test]
    fn a_dictionary_claiming_a_billion_values_is_refused() {
        let mut chunk = header(DICTIONARY_PAGE, 8, 8, 7, 1_000_000_000);
        chunk.extend([0; 8]);
        let e = check(&chunk, &facts(chunk.len(), u64::MAX)).unwrap_err();
        assert!(
            e.contains("a dictionary of 1000000000 values in 8 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_data_page_with_more_values_than_rows_is_refused() {
        let mut chunk = header(DATA_PAGE, 4, 4, 5, 11);
        chunk.extend([0; 4]);
        let e = check(&chunk, &facts(chunk.len(), 10)).unwrap_err();
        assert!(e.contains("claims 11 values, more than the 10"), "{e}");
    }

    #[test]
    fn a_page_over_the_uncompressed_cap_is_refused() {
        let mut chunk = header(DATA_PAGE, i32::MAX, 4, 5, 1);
        chunk.extend([0; 4]);
        let e = check(&chunk, &facts(chunk.len(), 10)).unwrap_err();
        assert!(e.contains("MAX_UNCOMPRESSED_PAGE_BYTES"), "{e}");
    }

    #[test]
    fn a_page_running_past_its_chunk_or_a_chunk_past_its_file_is_refused() {
        let mut chunk = header(DATA_PAGE, 40, 40, 5, 1);
        chunk.extend([0; 4]);
        let e = check(&chunk, &facts(chunk.len(), 10)).unwrap_err();
        assert!(e.contains("do not fit in the column chunk"), "{e}");
        let mut f = facts(chunk.len(), 10);
        f.len += 1;
        let e = check(&chunk, &f).unwrap_err();
        assert!(e.contains("but the file has"), "{e}");
        let e = check(&chunk[..5], &facts(5, 10)).unwrap_err();
        assert!(e.contains("runs past the end of the column chunk"), "{e}");
    }

    #[test]
    fn a_header_of_a_huge_list_is_refused_within_its_bytes() {
        // Field 9 (unknown): a list of i64 claiming 2^32 elements, then
        // nothing: skipping stops at the chunk's end.
        let mut chunk = vec![0x99, 0xf6, 0x80, 0x80, 0x80, 0x80, 0x10];
        chunk.extend([0x01; 64]);
        let e = check(&chunk, &facts(chunk.len(), 10)).unwrap_err();
        assert!(e.contains("runs past the end"), "{e}");
    }
}
