//! Is a JPEG file whole? Walks its marker segments to the first scan, then looks for the
//! end-of-image marker in the entropy-coded data that follows.
//!
//! Layout (ITU T.81 B.1): `FF D8` (SOI), then segments `FF xx` + a 2-byte big-endian length
//! that counts itself, up to `FF DA` (SOS), the scan's header segment, then entropy-coded data in
//! which a data byte `FF` is always followed by `00` (stuffing) or a restart marker `D0`–`D7`;
//! progressive files put further segments (tables, more scans) between scans; `FF D9` (EOI)
//! ends the image. Marker segments are walked by their lengths rather than searched for, so a
//! thumbnail embedded in the EXIF segment (a whole JPEG of its own, with its own EOI) is skipped.

/// Whether `bytes` is a JPEG with an end-of-image marker after its first scan. Trailing bytes
/// after the marker (some cameras append data) are allowed.
pub fn is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return false;
    }
    let mut i = 2;
    // Segments before the first scan.
    loop {
        // Fill bytes (FF FF ...) may precede a marker.
        while bytes.get(i) == Some(&0xff) && bytes.get(i + 1) == Some(&0xff) {
            i += 1;
        }
        let (Some(&0xff), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return false;
        };
        if marker == 0xd9 {
            return false; // EOI before any scan: no image data
        }
        let Some(len) = bytes
            .get(i + 2..i + 4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += 2 + len;
        if marker == 0xda {
            break;
        }
    }
    // Entropy-coded data (and, in progressive files, further segments) up to EOI.
    while i + 1 < bytes.len() {
        if bytes[i] == 0xff && bytes[i + 1] == 0xd9 {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, one segment (APP0 of length 4), SOS (length 3), data with a stuffed FF, EOI.
    fn tiny(with_eoi: bool) -> Vec<u8> {
        let mut v = vec![0xff, 0xd8, 0xff, 0xe0, 0, 4, 1, 2, 0xff, 0xda, 0, 3, 9];
        v.extend_from_slice(&[0x12, 0xff, 0x00, 0x34, 0xff, 0xd3, 0x56]);
        if with_eoi {
            v.extend_from_slice(&[0xff, 0xd9]);
        }
        v
    }

    #[test]
    fn whole_and_cut_files() {
        assert!(is_complete(&tiny(true)));
        let mut trailing = tiny(true);
        trailing.extend_from_slice(b"camera data");
        assert!(is_complete(&trailing));
        let whole = tiny(true);
        for cut in 0..whole.len() - 1 {
            assert!(!is_complete(&whole[..cut]), "cut at {cut}");
        }
        assert!(!is_complete(b"\x89PNG"));
    }

    #[test]
    fn an_eoi_inside_a_segment_does_not_count() {
        // An APP1 segment that contains FF D9 (an embedded thumbnail's end), then a scan cut
        // short: not complete.
        let v = vec![
            0xff, 0xd8, 0xff, 0xe1, 0, 6, 0xff, 0xd9, 0, 0, 0xff, 0xda, 0, 2, 1, 2, 3,
        ];
        assert!(!is_complete(&v));
    }
}
