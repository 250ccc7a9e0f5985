//! Worker threads whose first failure stops the others.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Raised by the first worker of this process that fails, so that the others stop at
/// their next wait instead of sitting out the timeout. Cloned into every worker.
#[derive(Debug, Clone, Default)]
pub struct Abort(Arc<AtomicUsize>);

impl Abort {
    /// Not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that worker `rank` failed (the first call wins).
    pub fn fail(&self, rank: usize) {
        let _ = self
            .0
            .compare_exchange(0, rank + 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The rank of the first worker that failed, if one did.
    pub fn failed(&self) -> Option<usize> {
        self.0.load(Ordering::SeqCst).checked_sub(1)
    }
}

/// Runs this node's workers: `main()` as local worker 0 on the calling thread (it may hold
/// what cannot cross threads: a progress display, say) and `others(local)` for `local` in
/// `1..workers`, each on a thread of its own. The first worker to fail (an error or a
/// panic) raises `abort` with its global rank (`rank_of(local)`), so the others stop at
/// their next wait; the error returned is that worker's, not the others' "stopped because
/// worker N failed". A panic is re-raised here once every thread has ended.
///
/// # Errors
/// The first failing worker's error.
pub fn run_workers<T, U: Send, E: Send>(
    workers: usize,
    abort: &Abort,
    rank_of: impl Fn(usize) -> usize + Sync,
    main: impl FnOnce() -> Result<T, E>,
    others: impl Fn(usize) -> Result<U, E> + Sync,
) -> Result<(T, Vec<U>), E> {
    let watch = |local: usize, succeeded: bool| {
        if !succeeded {
            abort.fail(rank_of(local));
        }
    };
    let (first, rest) = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..workers.max(1))
            .map(|local| {
                let (others, watch) = (&others, &watch);
                scope.spawn(move || {
                    let result = catch_unwind(AssertUnwindSafe(|| others(local)));
                    watch(local, matches!(result, Ok(Ok(_))));
                    result
                })
            })
            .collect();
        let first = catch_unwind(AssertUnwindSafe(main));
        watch(0, matches!(first, Ok(Ok(_))));
        let rest: Vec<_> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(Err))
            .collect();
        (first, rest)
    });
    let failed = abort.failed();
    let mut errors = Vec::new();
    let mut panic = None;
    let first = match first {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            errors.push((rank_of(0), e));
            None
        }
        Err(payload) => {
            panic = Some(payload);
            None
        }
    };
    let mut outputs = Vec::with_capacity(rest.len());
    for (index, result) in rest.into_iter().enumerate() {
        match result {
            Ok(Ok(value)) => outputs.push(value),
            Ok(Err(e)) => errors.push((rank_of(index + 1), e)),
            Err(payload) => {
                panic.get_or_insert(payload);
            }
        }
    }
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
    match first {
        Some(value) if errors.is_empty() => Ok((value, outputs)),
        _ => {
            let at = errors
                .iter()
                .position(|(rank, _)| Some(*rank) == failed)
                .unwrap_or(0);
            Err(errors.swap_remove(at).1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_reported_and_seen_by_the_others() {
        let abort = Abort::new();
        // The others wait until they see the failure, as at an all-reduce.
        let wait = || {
            while abort.failed().is_none() {
                std::thread::yield_now();
            }
            Err::<(), _>(format!("stopped by {:?}", abort.failed()))
        };
        let result = run_workers(
            3,
            &abort,
            |l| l + 10,
            wait,
            |local| {
                if local == 1 {
                    return Err(format!("worker {local} broke"));
                }
                wait()
            },
        );
        assert_eq!(result, Err("worker 1 broke".to_string()));
        assert_eq!(abort.failed(), Some(11));
    }

    #[test]
    fn results_come_back_in_order() {
        let out = run_workers(
            4,
            &Abort::new(),
            |l| l,
            || Ok("main"),
            |l| Ok::<_, ()>(l * l),
        );
        assert_eq!(out, Ok(("main", vec![1, 4, 9])));
    }
}
