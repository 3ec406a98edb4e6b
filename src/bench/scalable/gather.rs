//! Every rank's rows and summary to rank 0 (collective): the rows travel as typed records
//! (serde into postcard bytes), never as CSV text; rank 0 decodes each rank's bytes in parallel
//! (rayon).

use mpi::traits::*;
use rayon::prelude::*;

use super::rank::{RankState, RankSummary};
use super::ScalableError;
use crate::bench::invocation::Record;
use crate::mpi_glue::collective::{all_flags, gather_bytes};

/// Every rank's rows and summary, on rank 0 (collective).
pub(super) struct Gathered {
    /// Every rank's rows, in rank order.
    pub(super) records: Vec<Record>,
    pub(super) summaries: Vec<RankSummary>,
    /// Ranks whose rows could not travel (too many bytes for one MPI count).
    pub(super) dropped: Vec<i32>,
    /// Ranks whose rows arrived unreadable, with why.
    pub(super) unreadable: Vec<(i32, String)>,
}

/// A rank's rows as bytes: its records, serialised with postcard (compact binary, varints), not
/// CSV text.
pub(super) fn encode_rows(records: &[Record]) -> Vec<u8> {
    // Serialising plain structs of strings and integers into memory cannot fail.
    postcard::to_stdvec(records).unwrap_or_default()
}

/// One rank's bytes back into its records (no bytes: no rows).
pub(super) fn decode_rows(rank: usize, bytes: &[u8]) -> Result<Vec<Record>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    postcard::from_bytes(bytes).map_err(|e| format!("unreadable rows from rank {rank}: {e}"))
}

/// Every rank's bytes decoded (one rayon task per rank) and concatenated in rank order; the
/// ranks whose bytes are unreadable, with why.
pub(super) fn merge_rows(rows: &[Vec<u8>]) -> (Vec<Record>, Vec<(i32, String)>) {
    let decoded: Vec<Result<Vec<Record>, String>> = rows
        .par_iter()
        .enumerate()
        .map(|(rank, bytes)| decode_rows(rank, bytes))
        .collect();
    let mut records = Vec::with_capacity(decoded.iter().flatten().map(Vec::len).sum());
    let mut unreadable = Vec::new();
    for (rank, d) in decoded.into_iter().enumerate() {
        match d {
            Ok(mut r) => records.append(&mut r),
            Err(e) => unreadable.push((rank as i32, e)),
        }
    }
    (records, unreadable)
}

pub(super) fn gather_all<C: Communicator>(
    comm: &C,
    state: &RankState,
) -> Result<Option<Gathered>, ScalableError> {
    let rows = encode_rows(&state.records);
    // Gatherv counts are i32 in total: a rank that would overflow them sends no rows (and
    // every rank agrees first, so that nobody waits in a gather the root left).
    let limit = i32::MAX as usize / comm.size().max(1) as usize;
    let fits = all_flags(comm, rows.len() <= limit);
    let dropped: Vec<i32> = (0..fits.len() as i32)
        .filter(|&r| !fits[r as usize])
        .collect();
    let rows = gather_bytes(comm, 0, if rows.len() <= limit { &rows[..] } else { b"" })?;
    let summary = serde_json::to_vec(&state.summary()).unwrap_or_default();
    let summaries = gather_bytes(comm, 0, &summary)?;
    Ok(match (rows, summaries) {
        (Some(rows), Some(s)) => {
            let (records, unreadable) = merge_rows(&rows);
            Some(Gathered {
                records,
                summaries: s
                    .iter()
                    .enumerate()
                    .map(|(r, b)| {
                        serde_json::from_slice(b).unwrap_or_else(|e| RankSummary {
                            rank: r as i32,
                            failure: Some(format!("unreadable summary from rank {r}: {e}")),
                            ..RankSummary::default()
                        })
                    })
                    .collect(),
                dropped,
                unreadable,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rank: u32, repetition: usize) -> Record {
        Record {
            benchmark: super::super::BENCHMARK.into(),
            mode: "cold".into(),
            provider: "shm".into(),
            payload_bytes: 64,
            rank,
            world_size: 3,
            node: "em-1,with a comma".into(),
            worker: 0,
            repetition,
            latency_ns: 12_345 + repetition as u64,
            phases: vec![1, 2, 3, 4, 5],
        }
    }

    #[test]
    fn rows_travel_as_typed_records_and_merge_in_rank_order() {
        let rank0 = vec![record(0, 0), record(0, 1)];
        let rank2 = vec![record(2, 0)];
        let bytes = vec![encode_rows(&rank0), Vec::new(), encode_rows(&rank2)];
        let (records, unreadable) = merge_rows(&bytes);
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let expected: Vec<Record> = rank0.into_iter().chain(rank2).collect();
        assert_eq!(records, expected);
    }

    #[test]
    fn unreadable_rows_name_their_rank() {
        let bytes = vec![encode_rows(&[record(0, 0)]), b"rank,mode\n1,warm".to_vec()];
        let (records, unreadable) = merge_rows(&bytes);
        assert_eq!(records, [record(0, 0)]);
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].0, 1);
        assert!(unreadable[0].1.starts_with("unreadable rows from rank 1:"));
    }
}
