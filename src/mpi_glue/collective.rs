//! Byte-blob collectives on top of rsmpi: what the session and `scalable_benchmark` use to move
//! JSON plans, histograms and CSV rows between ranks. Counts travel first (a gather or scatter
//! of one integer each), then the bytes in one `Gatherv` / `Scatterv`.

use mpi::datatype::{Partition, PartitionMut};
use mpi::traits::*;
use mpi::{Count, Rank};

use super::SessionError;

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect()
}

fn count_of(len: usize) -> Result<Count, SessionError> {
    Count::try_from(len).map_err(|_| SessionError::Mpi(format!("{len} bytes exceed an MPI count")))
}

/// Gathers every rank's `bytes` at `root` (in rank order); `None` on the other ranks.
/// Collective: every rank of `comm` must call it.
pub fn gather_bytes<C: Communicator>(
    comm: &C,
    root: Rank,
    bytes: &[u8],
) -> Result<Option<Vec<Vec<u8>>>, SessionError> {
    let root_process = comm.process_at_rank(root);
    let mine = [count_of(bytes.len())?];
    if comm.rank() != root {
        root_process.gather_into(&mine[..]);
        root_process.gather_varcount_into(bytes);
        return Ok(None);
    }
    let mut counts = vec![0 as Count; comm.size() as usize];
    root_process.gather_into_root(&mine[..], &mut counts[..]);
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    count_of(total)?;
    let displs = displacements(&counts);
    let mut all = vec![0u8; total];
    {
        let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
        root_process.gather_varcount_into_root(bytes, &mut part);
    }
    Ok(Some(
        counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect(),
    ))
}

/// Sends `parts[r]` from `root` to rank `r`; returns this rank's part. `parts` is read on the
/// root only (one entry per rank); other ranks pass `None`. Collective.
pub fn scatter_bytes<C: Communicator>(
    comm: &C,
    root: Rank,
    parts: Option<&[Vec<u8>]>,
) -> Result<Vec<u8>, SessionError> {
    let root_process = comm.process_at_rank(root);
    let mut mine = [0 as Count];
    if comm.rank() != root {
        root_process.scatter_into(&mut mine[..]);
        let mut buf = vec![0u8; mine[0].max(0) as usize];
        root_process.scatter_varcount_into(&mut buf[..]);
        return Ok(buf);
    }
    let parts =
        parts.ok_or_else(|| SessionError::Mpi("the root of a scatter needs its parts".into()))?;
    if parts.len() != comm.size() as usize {
        return Err(SessionError::Mpi(format!(
            "{} parts for {} ranks",
            parts.len(),
            comm.size()
        )));
    }
    let counts = parts
        .iter()
        .map(|p| count_of(p.len()))
        .collect::<Result<Vec<_>, _>>()?;
    root_process.scatter_into_root(&counts[..], &mut mine[..]);
    let displs = displacements(&counts);
    let flat: Vec<u8> = parts.concat();
    count_of(flat.len())?;
    let mut buf = vec![0u8; mine[0] as usize];
    let part = Partition::new(&flat[..], &counts[..], &displs[..]);
    root_process.scatter_varcount_into_root(&part, &mut buf[..]);
    Ok(buf)
}

/// Every rank's `flag`, on every rank (an `Allgather` of one byte each).
pub fn all_flags<C: Communicator>(comm: &C, flag: bool) -> Vec<bool> {
    let mine = [u8::from(flag)];
    let mut all = vec![0u8; comm.size() as usize];
    comm.all_gather_into(&mine[..], &mut all[..]);
    all.into_iter().map(|b| b != 0).collect()
}
