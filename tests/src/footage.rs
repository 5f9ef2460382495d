//! Footage for the tests: a small real JPEG and its content address.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes` (the media store's content address).
pub fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 64×48 gradient encoded as a real JPEG (quality 90).
pub fn gradient_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .unwrap();
    jpeg
}
