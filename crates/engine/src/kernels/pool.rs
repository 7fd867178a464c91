//! The compute thread pool: a fixed set of threads that spin briefly between parallel
//! regions (a forward pass has ~150 of them per token; waking sleeping threads each time costs
//! more than the work at batch 1), then yield, then sleep. The calling thread works too.
//!
//! Tasks are claimed through one atomic ticket holding (job epoch, next index), so a thread
//! that is late for a job can never run a task of the next one with the old closure. A task
//! that panics is caught where it ran and still counted done, so `run` never returns (or
//! unwinds) while another thread holds the borrowed job; `run` then re-raises the panic on the
//! calling thread, where the engine's scheduler contains it.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A type-erased borrowed job. Only dereferenced while `run` is blocked waiting for it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the pointee is `Sync`, and `run` keeps it alive until every task has finished.
unsafe impl Send for JobPtr {}

struct Shared {
    /// (epoch, job, task count) of the current job.
    job: Mutex<(u32, Option<JobPtr>, usize)>,
    /// `epoch << 32 | next task index`.
    ticket: AtomicU64,
    done: AtomicUsize,
    sleepers: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
    /// Set when a task of the current job panicked (checked once per `run`, without a lock).
    panicked: AtomicBool,
    /// The message of the first task of the current job that panicked.
    panic: Mutex<Option<String>>,
}

/// Spin iterations before yielding, and yields before sleeping, between jobs.
const SPINS: u32 = 4_000;
const YIELDS: u32 = 2_000;

/// The engine's compute threads.
pub struct ComputePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    epoch: AtomicU32,
    /// One `run` at a time (the job slot is shared).
    caller: Mutex<()>,
}

impl ComputePool {
    /// `threads` compute threads in all (the caller of `run` counts as one).
    pub fn new(threads: usize) -> Result<Self, String> {
        if threads == 0 {
            return Err("at least one thread".into());
        }
        let shared = Arc::new(Shared {
            job: Mutex::new((0, None, 0)),
            ticket: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut handles = Vec::new();
        for i in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("engine-compute-{i}"))
                .spawn(move || worker(&s))
                .map_err(|e| e.to_string())?;
            handles.push(h);
        }
        Ok(ComputePool {
            shared,
            threads: handles,
            epoch: AtomicU32::new(0),
            caller: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// Run `f(i)` for every `i < n` across the pool; returns when all are done. Calls from
    /// several threads are serialized; `f` must not call `run` on the same pool.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.threads.is_empty() || n == 1 {
            (0..n).for_each(f);
            return;
        }
        let _one = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        // SAFETY: the lifetime is erased only for the duration of this call: we return after
        // `done == n`, and workers only run tasks claimed under this job's epoch.
        let job = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f)
        });
        s.done.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = (epoch, Some(job), n);
        s.ticket.store(u64::from(epoch) << 32, Ordering::Release);
        if *s.sleepers.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let mine = work(s, epoch, job, n);
        s.done.fetch_add(mine, Ordering::AcqRel);
        // Wait for the stragglers; yield once it takes long, so a descheduled worker (other
        // processes share the cores) gets the CPU back instead of us burning it.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Every task is done: no thread holds the job any more; a panic may travel on.
        if s.panicked.swap(false, Ordering::AcqRel) {
            let msg = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
            panic!("a compute task panicked: {}", msg.unwrap_or_default());
        }
    }

    /// Split `data` into `chunk`-sized pieces and run `f(index, piece)` on each in parallel.
    pub fn chunks_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: chunks are disjoint and within `data`, which outlives `run`.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, piece)
        });
    }
}

impl ComputePool {
    /// Three slices split in step (`chunk` elements of each per task; all must give the same
    /// number of chunks): `f(index, a_piece, b_piece, c_piece)`.
    pub fn chunks_mut3<A: Send, B: Send, C: Send>(
        &self,
        (a, ka): (&mut [A], usize),
        (b, kb): (&mut [B], usize),
        (c, kc): (&mut [C], usize),
        f: impl Fn(usize, &mut [A], &mut [B], &mut [C]) + Sync,
    ) {
        let (ka, kb, kc) = (ka.max(1), kb.max(1), kc.max(1));
        let n = a.len().div_ceil(ka);
        assert!(
            b.len().div_ceil(kb) == n && c.len().div_ceil(kc) == n,
            "chunk counts differ"
        );
        let (la, lb, lc) = (a.len(), b.len(), c.len());
        let (pa, pb, pc) = (
            SendPtr(a.as_mut_ptr()),
            SendPtr(b.as_mut_ptr()),
            SendPtr(c.as_mut_ptr()),
        );
        self.run(n, &|i| {
            // SAFETY: task i gets the i-th chunk of each slice; chunks are disjoint and in
            // bounds, and the slices outlive `run`.
            let (x, y, z) = unsafe {
                (
                    std::slice::from_raw_parts_mut(pa.get().add(i * ka), (la - i * ka).min(ka)),
                    std::slice::from_raw_parts_mut(pb.get().add(i * kb), (lb - i * kb).min(kb)),
                    std::slice::from_raw_parts_mut(pc.get().add(i * kc), (lc - i * kc).min(kc)),
                )
            };
            f(i, x, y, z)
        });
    }
}

struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only to hand out disjoint sub-slices of a `Send` slice.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Claim and run tasks of job `epoch` until none are left; returns how many ran.
fn work(s: &Shared, epoch: u32, job: JobPtr, n: usize) -> usize {
    let mut ran = 0;
    let mut t = s.ticket.load(Ordering::Acquire);
    loop {
        if (t >> 32) as u32 != epoch || (t as u32 as usize) >= n {
            return ran;
        }
        match s
            .ticket
            .compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: the job is alive: its `run` waits for this task to be counted done.
                let task = || unsafe { (*job.0)(t as u32 as usize) };
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)) {
                    let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert_with(|| panic_message(&*p));
                    s.panicked.store(true, Ordering::Release);
                }
                ran += 1;
                t += 1;
            }
            Err(cur) => t = cur,
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

fn worker(s: &Shared) {
    let mut seen = 0u32;
    loop {
        let mut idle = 0u32;
        let epoch = loop {
            let e = (s.ticket.load(Ordering::Acquire) >> 32) as u32;
            if e != seen {
                break e;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            idle += 1;
            if idle < SPINS {
                std::hint::spin_loop();
            } else if idle < SPINS + YIELDS {
                std::thread::yield_now();
            } else {
                let mut g = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *g += 1;
                while (s.ticket.load(Ordering::Acquire) >> 32) as u32 == seen
                    && !s.stop.load(Ordering::Relaxed)
                {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                *g -= 1;
                idle = 0;
            }
        };
        seen = epoch;
        let (e, job, n) = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let (true, Some(job)) = (e == epoch, job) {
            let ran = work(s, epoch, job, n);
            if ran > 0 {
                s.done.fetch_add(ran, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _g = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_every_task_once_across_many_jobs() {
        let pool = ComputePool::new(3).unwrap();
        for round in 0..2000 {
            let n = 1 + round % 17;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
        }
        // A panicking task, on a pool thread or the caller: `run` waits for every task, then
        // the panic reaches the caller; the pool keeps working afterwards.
        for bad in [0usize, 5] {
            let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(8, &|i| {
                    if i == bad {
                        panic!("task {i} fails");
                    }
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
            }));
            let msg = panic_message(&*r.unwrap_err());
            assert!(msg.contains(&format!("task {bad} fails")), "{msg}");
            assert_eq!(
                hits.iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .sum::<usize>(),
                7
            );
        }
        let mut v = vec![0u32; 1000];
        pool.chunks_mut(&mut v, 64, |i, c| c.iter_mut().for_each(|x| *x = i as u32));
        assert!(v.iter().enumerate().all(|(j, &x)| x as usize == j / 64));
    }
}
