//! A cheap look at an upload before it is cached: is it an ELF shared object for this
//! machine? (The dynamic loader decides for good when an executor loads it; this only keeps
//! arbitrary bytes out of the cache.)

/// Why bytes are not a shared object this machine could load.
pub fn check_shared_object(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let class = bytes[4];
    let data = bytes[5];
    let want_class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    let want_data = if cfg!(target_endian = "little") { 1 } else { 2 };
    if class != want_class || data != want_data {
        return Err(format!(
            "an ELF file of another word size or byte order (class {class}, data {data})"
        ));
    }
    let e_type = if data == 1 {
        u16::from_le_bytes([bytes[16], bytes[17]])
    } else {
        u16::from_be_bytes([bytes[16], bytes[17]])
    };
    // ET_DYN: a shared object (or a position-independent executable, which dlopen refuses).
    if e_type != 3 {
        return Err(format!(
            "an ELF file of type {e_type}, not a shared object (3)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shared_objects_pass() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        // A test binary is an executable: ELF, but not ET_DYN unless built as PIE.
        assert!(me.starts_with(b"\x7fELF"));
        let mut so = me[..64].to_vec();
        so[16] = 3;
        so[17] = 0;
        assert!(check_shared_object(&so).is_ok());
        so[16] = 2;
        assert!(check_shared_object(&so).unwrap_err().contains("type 2"));
        assert!(check_shared_object(&[0u8; 100]).is_err());
        assert!(check_shared_object(b"\x7fELF").is_err());
    }
}
