//! The classifier's input header and output format.
//!
//! Input:
//! ```text
//! [b"RFCK"][k: u16 LE][image bytes ...]   top-k with k in 1..=MAX_K
//! [image bytes ...]                        top-DEFAULT_K
//! ```
//! Output payload (after the [`app_status`](rfaas_function::app_status) byte 0), little-endian:
//! ```text
//! [n: u32] then n times [class index: u32][score: f32][label length: u16][label: UTF-8]
//! ```
//! in decreasing score order (ties: lower index first). The label is empty when the allocation
//! shipped no `labels` asset or the list is shorter than the model's classes.

use rfaas_function::app_status::{AppError, AppErrorCode};

/// The header's first four bytes.
pub const MAGIC: [u8; 4] = *b"RFCK";

/// Length of the header.
pub const HEADER_LEN: usize = 6;

/// Classes returned without a header.
pub const DEFAULT_K: usize = 5;

/// The most classes a header may ask for.
pub const MAX_K: usize = 1000;

/// One class of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    /// Index in the model's output.
    pub index: u32,
    /// The model's output for it (as the model computes it: probabilities when the model ends
    /// with a softmax, logits otherwise).
    pub score: f32,
    /// Its label, empty when unknown.
    pub label: String,
}

/// Prepends the header asking for the top `k` classes to `image`.
pub fn with_top_k(k: u16, image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + image.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&k.to_le_bytes());
    out.extend_from_slice(image);
    out
}

/// Splits an input into k and the image bytes.
pub fn parse(input: &[u8]) -> Result<(usize, &[u8]), AppError> {
    if !input.starts_with(&MAGIC) {
        return Ok((DEFAULT_K, input));
    }
    let Some((head, image)) = input.split_first_chunk::<HEADER_LEN>() else {
        return Err(AppError::new(
            AppErrorCode::BadInput,
            "classifier header truncated",
        ));
    };
    let k = usize::from(u16::from_le_bytes([head[4], head[5]]));
    if !(1..=MAX_K).contains(&k) {
        return Err(AppError::new(
            AppErrorCode::BadInput,
            format!("top-k of {k}: k must be 1..={MAX_K}"),
        ));
    }
    Ok((k, image))
}

/// The `k` best of `scores` (all when fewer), best first; `labels[i]` labels class `i`.
pub fn top_k(scores: &[f32], k: usize, labels: &[String]) -> Vec<Class> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // total_cmp: a NaN score sorts, it does not panic.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Class {
            index: i as u32,
            score: scores[i],
            label: labels.get(i).cloned().unwrap_or_default(),
        })
        .collect()
}

/// Encodes classes as the output payload.
pub fn encode(classes: &[Class]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + classes.len() * 24);
    out.extend_from_slice(&(classes.len() as u32).to_le_bytes());
    for c in classes {
        let label = &c.label.as_bytes()[..c.label.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&c.index.to_le_bytes());
        out.extend_from_slice(&c.score.to_le_bytes());
        out.extend_from_slice(&(label.len() as u16).to_le_bytes());
        out.extend_from_slice(label);
    }
    out
}

/// Decodes an output payload (after the status byte).
pub fn decode(mut payload: &[u8]) -> Result<Vec<Class>, String> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if p.len() < n {
            return Err(format!(
                "classifier output truncated: {} bytes left, {n} needed",
                p.len()
            ));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    let n = u32::from_le_bytes(take(&mut payload, 4)?.try_into().unwrap()) as usize;
    if n > MAX_K.max(payload.len() / 10) {
        return Err(format!("classifier output claims {n} classes"));
    }
    let mut classes = Vec::with_capacity(n);
    for _ in 0..n {
        let index = u32::from_le_bytes(take(&mut payload, 4)?.try_into().unwrap());
        let score = f32::from_le_bytes(take(&mut payload, 4)?.try_into().unwrap());
        let len = u16::from_le_bytes(take(&mut payload, 2)?.try_into().unwrap());
        let label = String::from_utf8_lossy(take(&mut payload, usize::from(len))?).into_owned();
        classes.push(Class {
            index,
            score,
            label,
        });
    }
    if !payload.is_empty() {
        return Err(format!(
            "{} bytes after the classifier output",
            payload.len()
        ));
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_labels() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let got = top_k(&[0.1, 0.7, 0.1, f32::NAN, 0.05], 3, &labels);
        // total_cmp puts a positive NaN above every number.
        let idx: Vec<u32> = got.iter().map(|c| c.index).collect();
        assert_eq!(idx, vec![3, 1, 0]);
        assert_eq!(got[1].label, "b");
        assert_eq!(got[0].label, "");
        assert_eq!(top_k(&[1.0], 5, &[]).len(), 1);
    }

    #[test]
    fn encode_decode_round_trip() {
        let classes = vec![
            Class {
                index: 7,
                score: 0.5,
                label: "cat".into(),
            },
            Class {
                index: 2,
                score: -1.25,
                label: String::new(),
            },
        ];
        let bytes = encode(&classes);
        assert_eq!(bytes.len(), 4 + (10 + 3) + 10);
        assert_eq!(decode(&bytes).unwrap(), classes);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn header() {
        assert_eq!(parse(&with_top_k(3, b"img")).unwrap(), (3, &b"img"[..]));
        assert_eq!(parse(b"img").unwrap(), (DEFAULT_K, &b"img"[..]));
        assert!(parse(&with_top_k(0, b"x")).is_err());
        assert!(parse(b"RFCK\x01").is_err());
    }
}
