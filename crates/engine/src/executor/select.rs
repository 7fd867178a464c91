//! Which executor an engine runs (`--device`): the CPU kernels, the device executor on the
//! plain-Rust reference kernels, or CUDA (behind the `cuda` feature). A device this build or
//! this machine cannot drive is a configuration error that says which, never a panic.

use std::str::FromStr;

use super::device::{DeviceExecutor, DeviceOps, HostOps};
use super::{CpuExecutor, Executor};
use crate::kernels::ComputePool;
use crate::model::Weights;
use crate::EngineError;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU executor (SIMD kernels over host memory).
    #[default]
    Cpu,
    /// The device executor on the plain-Rust reference kernels: the GPU path's host side
    /// without a GPU (slow; for checking, not serving).
    Reference,
    /// CUDA device `N` (needs a build with the `cuda` feature and an NVIDIA driver).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "reference" => Ok(Device::Reference),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "{s:?} is not a device: use cpu, cuda, cuda:N (N the device index) or reference"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Reference => f.write_str("reference"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What a build without the `cuda` feature says to `--device cuda`.
pub const NO_CUDA_FEATURE: &str = "this dynamo-worker was built without the `cuda` feature; \
    build it with `cargo build --release -p dynamo-worker --features cuda` (launch/build-cuda.sh \
    builds it and checks the kernels; no CUDA toolkit is needed) or run with --device cpu";

/// Whether `device` can run here, checked before anything is loaded: a build without the
/// `cuda` feature, a machine without an NVIDIA driver, or a device index past the machine's
/// count is an error that says which.
pub fn probe(device: Device) -> Result<(), String> {
    match device {
        Device::Cpu | Device::Reference => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => super::device::cuda::CudaOps::probe(index),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(NO_CUDA_FEATURE.into()),
    }
}

/// The executor for `device` over `weights`, with `blocks` KV blocks of `page` tokens, and a
/// description of what runs it. `graphs`: the context length, when decode steps run padded to
/// buckets from persistent buffers (captured and replayed as CUDA graphs on a GPU; on the
/// reference ops the same padded path runs directly).
pub fn executor(
    device: Device,
    weights: Weights,
    blocks: usize,
    page: usize,
    threads: ComputePool,
    graphs: Option<usize>,
) -> Result<(Box<dyn Executor>, String), EngineError> {
    match device {
        Device::Cpu => Ok((
            Box::new(CpuExecutor::new(weights, blocks, page, threads)),
            format!("cpu ({:?} kernels)", crate::kernels::isa()),
        )),
        Device::Reference => Ok(on_device(HostOps, weights, blocks, page, threads, graphs)),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => {
            let ops = super::device::cuda::CudaOps::open(index).map_err(EngineError::Config)?;
            Ok(on_device(ops, weights, blocks, page, threads, graphs))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(EngineError::Config(NO_CUDA_FEATURE.into())),
    }
}

/// The device executor on `ops`, with decode graphs when `graphs` gives the context length.
fn on_device<O: DeviceOps + 'static>(
    ops: O,
    weights: Weights,
    blocks: usize,
    page: usize,
    threads: ComputePool,
    graphs: Option<usize>,
) -> (Box<dyn Executor>, String) {
    let mut e = DeviceExecutor::new(ops, weights, blocks, page, threads);
    if let Some(context) = graphs {
        e.enable_graphs(context);
    }
    let d = e.describe();
    (Box::new(e), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!("reference".parse(), Ok(Device::Reference));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("cuda:N"), "{bad}: {e}");
        }
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn a_cuda_device_is_refused_with_the_reason() {
        assert_eq!(probe(Device::Cpu), Ok(()));
        let e = probe(Device::Cuda(0)).unwrap_err();
        if cfg!(feature = "cuda") {
            // This machine has no GPU driver (CI); on one that has, there is nothing to check.
            if e.contains("no NVIDIA driver") {
                return;
            }
            assert!(e.contains("CUDA device"), "{e}");
        } else {
            assert!(e.contains("without the `cuda` feature"), "{e}");
        }
    }
}
