//! What makes an upload acceptable: its bytes hash to the claimed sha256,
//! and its content is what its type says — a JPEG that decodes, or an MP4
//! whose boxes tile the file with `ftyp` first and `moov` before `mdat`.
//! Everything here blocks: call it from a blocking thread.

use std::{
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::Path,
};

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the content of a staged file against its content type. The outer
/// error is the file's (I/O); the inner one is the content's, with the reason.
pub fn check_file(content_type: &str, path: &Path) -> std::io::Result<Result<(), String>> {
    match content_type {
        "image/jpeg" => Ok(check_jpeg(&std::fs::read(path)?)),
        "video/mp4" => {
            let f = File::open(path)?;
            let len = f.metadata()?.len();
            check_mp4(&mut BufReader::new(f), len)
        }
        other => Ok(Err(format!("no check for content type {other:?}"))),
    }
}

/// A JPEG: starts with SOI, decodes fully (within sane dimensions), and
/// ends with EOI (a cut-off file is refused even where the decoder would
/// fill in the missing rows).
/// Most pixels a JPEG may claim per byte of file: every 8 x 8 block of a
/// Huffman-coded scan (baseline or progressive) costs at least one bit (its
/// DC difference), so a real JPEG has at least one byte per 512 pixels.
pub const MAX_JPEG_PIXELS_PER_BYTE: u64 = 512;

pub fn check_jpeg(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err("not a JPEG: it does not start with the SOI marker FF D8".into());
    }
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if !bytes[..end].ends_with(&[0xFF, 0xD9]) {
        return Err("truncated JPEG: it does not end with the EOI marker FF D9".into());
    }
    // Dimensions first: a few hundred bytes claiming 12,304 x 9,520 pixels
    // would otherwise cost a 351 MB decode (found by fuzzing).
    let (w, h) =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg)
            .into_dimensions()
            .map_err(|e| format!("the JPEG does not decode: {e}"))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > bytes.len() as u64 * MAX_JPEG_PIXELS_PER_BYTE {
        return Err(format!(
            "the JPEG claims {w} x {h} pixels in {} bytes: too few bytes for that many (a Huffman-coded scan spends at least one bit per 8 x 8 block)",
            bytes.len()
        ));
    }
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    reader
        .decode()
        .map(|_| ())
        .map_err(|e| format!("the JPEG does not decode: {e}"))
}

/// One ISO-BMFF box header: type, start and total size (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoxHeader {
    kind: [u8; 4],
    start: u64,
    size: u64,
    header: u64,
}

impl BoxHeader {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

/// Reads the boxes that tile `[start, end)`: each size at least its header,
/// none past `end`, sizes adding up to exactly `end - start` (size 0: "to
/// the end", only allowed at the top level).
fn walk_boxes<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    top: bool,
) -> std::io::Result<Result<Vec<BoxHeader>, String>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        if end - pos < 8 {
            return Ok(Err(format!(
                "truncated MP4: {} stray bytes at offset {pos}, too few for a box header",
                end - pos
            )));
        }
        r.seek(SeekFrom::Start(pos))?;
        let mut h = [0u8; 8];
        r.read_exact(&mut h)?;
        let kind = [h[4], h[5], h[6], h[7]];
        if !kind.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Ok(Err(format!(
                "not an MP4: the box at offset {pos} has no readable type ({:02x?})",
                kind
            )));
        }
        let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let (size, header) = match size32 {
            0 if top => (end - pos, 8),
            0 => {
                return Ok(Err(format!(
                    "box `{}` at offset {pos}: size 0 is only allowed at the top level",
                    String::from_utf8_lossy(&kind)
                )))
            }
            1 => {
                if end - pos < 16 {
                    return Ok(Err(format!(
                        "truncated MP4: box `{}` at offset {pos} has no room for its 64-bit size",
                        String::from_utf8_lossy(&kind)
                    )));
                }
                let mut l = [0u8; 8];
                r.read_exact(&mut l)?;
                (u64::from_be_bytes(l), 16)
            }
            n => (u64::from(n), 8),
        };
        let b = BoxHeader {
            kind,
            start: pos,
            size,
            header,
        };
        if size < header {
            return Ok(Err(format!(
                "box `{}` at offset {pos}: size {size} is smaller than its header",
                b.name()
            )));
        }
        if size > end - pos {
            return Ok(Err(format!(
                "truncated MP4: box `{}` at offset {pos} claims {size} bytes, only {} are there",
                b.name(),
                end - pos
            )));
        }
        pos += size;
        out.push(b);
    }
    Ok(Ok(out))
}

/// An MP4 (ISO-BMFF) file of `len` bytes: top-level boxes tile the file,
/// `ftyp` comes first, `moov` (holding `mvhd` and a `trak`) and `mdat` are
/// there, and `moov` comes before `mdat` (fast start).
pub fn check_mp4<R: Read + Seek>(r: &mut R, len: u64) -> std::io::Result<Result<(), String>> {
    let mut head = [0u8; 8];
    if len < 8 {
        return Ok(Err(format!("not an MP4: {len} bytes")));
    }
    r.read_exact(&mut head)?;
    if &head[4..] != b"ftyp" {
        return Ok(Err(format!(
            "not an MP4: the first box is not `ftyp` (starts {:02x?})",
            head
        )));
    }
    let boxes = match walk_boxes(r, 0, len, true)? {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let find = |k: &[u8; 4]| boxes.iter().position(|b| &b.kind == k);
    let Some(moov) = find(b"moov") else {
        return Ok(Err("not a playable MP4: no `moov` box".into()));
    };
    let Some(mdat) = find(b"mdat") else {
        return Ok(Err("not a playable MP4: no `mdat` box".into()));
    };
    if mdat < moov {
        return Ok(Err(
            "MP4 is not fast-start: `mdat` comes before `moov` (remux with -movflags +faststart)"
                .into(),
        ));
    }
    let m = &boxes[moov];
    let children = match walk_boxes(r, m.start + m.header, m.start + m.size, false)? {
        Ok(c) => c,
        Err(e) => return Ok(Err(format!("in `moov`: {e}"))),
    };
    for need in [b"mvhd", b"trak"] {
        if !children.iter().any(|c| &c.kind == need) {
            return Ok(Err(format!(
                "not a playable MP4: `moov` has no `{}`",
                String::from_utf8_lossy(need)
            )));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_tiny_jpeg_claiming_huge_dimensions_is_refused_before_decoding() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/media_jpeg-huge-dimensions"
        ))
        .unwrap();
        let started = std::time::Instant::now();
        let e = check_jpeg(&bytes).unwrap_err();
        assert!(e.contains("too few bytes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }

    fn moov() -> Vec<u8> {
        let mut p = bx(b"mvhd", &[0; 100]);
        p.extend(bx(b"trak", &[0; 20]));
        bx(b"moov", &p)
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        check_mp4(&mut std::io::Cursor::new(bytes), bytes.len() as u64).unwrap()
    }

    #[test]
    fn a_fast_start_mp4_passes() {
        let mut f = bx(b"ftyp", b"isom\0\0\x02\0isomiso2");
        f.extend(moov());
        f.extend(bx(b"mdat", &[7; 1000]));
        assert_eq!(check(&f), Ok(()));
        // A 64-bit size, and size 0 ("to the end") on the last box.
        let mut g = bx(b"ftyp", b"isom\0\0\x02\0");
        g.extend(moov());
        g.extend([0, 0, 0, 1]);
        g.extend(b"mdat");
        g.extend(26u64.to_be_bytes());
        g.extend([1; 10]);
        g.extend([0, 0, 0, 0]);
        g.extend(b"free");
        g.extend([0; 5]);
        assert_eq!(check(&g), Ok(()));
    }

    #[test]
    fn broken_mp4s_are_refused_with_the_reason() {
        let ftyp = bx(b"ftyp", b"isom\0\0\x02\0");
        let mdat = bx(b"mdat", &[7; 1000]);
        let late: Vec<u8> = [ftyp.clone(), mdat.clone(), moov()].concat();
        assert!(check(&late).unwrap_err().contains("fast-start"));
        let full: Vec<u8> = [ftyp.clone(), moov(), mdat.clone()].concat();
        let cut = &full[..full.len() - 10];
        assert!(check(cut).unwrap_err().contains("truncated"), "{cut:?}");
        let no_ftyp: Vec<u8> = [moov(), mdat.clone()].concat();
        assert!(check(&no_ftyp).unwrap_err().contains("ftyp"));
        let no_moov: Vec<u8> = [ftyp.clone(), mdat.clone()].concat();
        assert!(check(&no_moov).unwrap_err().contains("moov"));
        let mut tiny = ftyp.clone();
        tiny.extend([0, 0, 0, 4]);
        tiny.extend(b"mdat");
        assert!(check(&tiny)
            .unwrap_err()
            .contains("smaller than its header"));
        assert!(check(b"\xff\xd8\xff\xe0 this is a jpeg")
            .unwrap_err()
            .contains("not an MP4"));
        let bad_moov: Vec<u8> = [ftyp, bx(b"moov", &bx(b"trak", &[0; 4])), mdat].concat();
        assert!(check(&bad_moov).unwrap_err().contains("mvhd"));
    }

    #[test]
    fn jpegs_must_decode_and_be_whole() {
        let img =
            image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 0]));
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        assert_eq!(check_jpeg(&jpeg), Ok(()));
        assert!(check_jpeg(&jpeg[..jpeg.len() / 2])
            .unwrap_err()
            .contains("truncated"));
        assert!(check_jpeg(b"GIF89a....").unwrap_err().contains("SOI"));
        let mut garbage = jpeg[..4].to_vec();
        garbage.extend([0x55; 200]);
        garbage.extend([0xFF, 0xD9]);
        assert!(check_jpeg(&garbage)
            .unwrap_err()
            .contains("does not decode"));
    }
}
