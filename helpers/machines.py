"""The machines readers run the series on, as data: GPU, compute capability, the kernels it has, memory and RAM.

Introduced in notebook 02. One catalogue, used to plan how a model loads (helpers.routes) and to estimate whether
it fits (helpers.memory). `SD35_MACHINE=colab-t4` (or any name below) makes `setup()` and `load_pipeline` plan
exactly as that machine would, then run the offline model on this CPU with that route: "what will my T4 do?",
answered before paying for one. Without it, the machine is the GPU PyTorch sees here, or none.

Kernel facts, read from PyTorch's source (torch 2.13):
- bf16 tensor cores need compute capability 8.0 (Ampere); the T4 (7.5) computes bf16 on CUDA cores, several times
  slower than fp16, which its tensor cores take.
- cuDNN convolutions in bf16 need 8.0 (`supportsBFloat16ConvolutionWithCuDNNv8`, aten/src/ATen/cuda/detail/
  CUDAHooks.cpp); below it a bf16 convolution falls back to im2col, with a column buffer per convolution.
- Fused attention: flash attention needs 8.0; the memory-efficient kernel takes float16 and float32 from 5.0 and
  bfloat16 only from 8.0 (`can_use_mem_efficient_attention`, aten/src/ATen/native/transformers/cuda/sdp_utils.cpp).
  Where neither applies PyTorch runs its math kernel, which stores every attention score.
- FP8 tensor cores need 8.9 (L4, H100).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from helpers.checks import shown

MACHINE_VARIABLE = "SD35_MACHINE"
"""The environment variable that makes the series plan as a catalogue machine, on this CPU."""

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Machine:
    """A reader's machine: its GPU (name, compute capability, memory), how many, and the host's RAM."""

    name: str
    title: str
    gpu: str
    compute_capability: tuple[int, int]
    gpu_gb: float
    """GPU memory (GB, 10^9 bytes) a process can plan with: the card's, or what was free when it was read."""
    host_gb: float | None
    """The machine's RAM in GB (None: not known)."""
    gpus: int = 1
    source: str = ""
    tensor_tflops: float | None = None
    """Dense 16-bit tensor-core throughput of one GPU in TFLOP/s (NVIDIA's datasheets), in the dtype it computes in:
    for estimates of time before a measurement."""

    @property
    def bf16_tensor_cores(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def fp8_tensor_cores(self) -> bool:
        return self.compute_capability >= (8, 9)

    @property
    def dtype(self) -> str:
        """The dtype the series computes in here: bf16 (the checkpoints' format) where the GPU has bf16 tensor cores,
        float16 below compute capability 8.0, where bf16 runs on CUDA cores (Stability AI's reference code runs
        the MMDiT and the VAE in float16)."""
        return "bfloat16" if self.bf16_tensor_cores else "float16"

    def fused_attention(self, dtype: str) -> bool:
        """Whether PyTorch has a fused attention kernel for `dtype` on this GPU (else it runs its math kernel)."""
        return _check_dtype(dtype) != "bfloat16" or self.bf16_tensor_cores

    def cudnn_convolutions(self, dtype: str) -> bool:
        """Whether cuDNN runs this GPU's convolutions in `dtype` (else im2col with a column buffer per layer)."""
        return _check_dtype(dtype) != "bfloat16" or self.bf16_tensor_cores

    def share(self, processes: int) -> Machine:
        """This machine as each of `processes` processes launched together sees it: 1/N of the RAM each."""
        if processes <= 1 or self.host_gb is None:
            return self
        return replace(self, host_gb=self.host_gb / processes)

    def describe(self) -> str:
        host = "" if self.host_gb is None else f", {self.host_gb:g} GB RAM"
        count = f"{self.gpus} x " if self.gpus > 1 else ""
        major, minor = self.compute_capability
        return f"{self.title}: {count}{self.gpu} {self.gpu_gb:g} GB (compute capability {major}.{minor}){host}"


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={shown(dtype)} is not a dtype of this series. Use one of: {', '.join(DTYPES)}.")
    return dtype


_AWS = "AWS instance types page (GPU memory, instance memory in GiB, converted to GB)"
MACHINES: dict[str, Machine] = {
    machine.name: machine
    for machine in (
        Machine("colab-t4", "free Colab", "NVIDIA T4", (7, 5), 15.8, 12.7,
                tensor_tflops=65, source="Colab's free GPU runtime: 15.8 GB as PyTorch reports a T4, 12.7 GB of RAM"),
        Machine("colab-l4", "Colab L4 runtime", "NVIDIA L4", (8, 9), 24, 53.0,
                tensor_tflops=121, source="Colab's L4 runtime as its resource panel shows it (not measured here)"),
        Machine("colab-a100", "Colab A100 runtime", "NVIDIA A100", (8, 0), 40, 83.5,
                tensor_tflops=312, source="Colab's A100 runtime as its resource panel shows it (not measured here)"),
        Machine("sagemaker-g5-xlarge", "SageMaker ml.g5.xlarge", "NVIDIA A10G", (8, 6), 24, 17.2,
                tensor_tflops=125, source=_AWS + ": 16 GiB"),
        Machine("sagemaker-g5-2xlarge", "SageMaker ml.g5.2xlarge", "NVIDIA A10G", (8, 6), 24, 34.4,
                tensor_tflops=125, source=_AWS + ": 32 GiB"),
        Machine("sagemaker-g5-12xlarge", "SageMaker ml.g5.12xlarge", "NVIDIA A10G", (8, 6), 24, 206.2, gpus=4,
                tensor_tflops=125, source=_AWS + ": 4 GPUs, 192 GiB"),
        Machine("sagemaker-g6-xlarge", "SageMaker ml.g6.xlarge", "NVIDIA L4", (8, 9), 24, 17.2,
                tensor_tflops=121, source=_AWS + ": 16 GiB"),
        Machine("sagemaker-p4d", "SageMaker ml.p4d.24xlarge", "NVIDIA A100", (8, 0), 40, 1236.9, gpus=8,
                tensor_tflops=312, source=_AWS + ": 8 GPUs, 1152 GiB"),
        Machine("h100", "one H100 (the GPU check's machine)", "NVIDIA H100 80GB HBM3", (9, 0), 80, 135.1,
                tensor_tflops=989, source="measured by python -m helpers.gpu_check (helpers/gpu_runs/h100-run1.json)"),
    )
}
"""The machines readers use. The memory figures decide routes; each has its source. Throughput: NVIDIA's datasheets
(dense, without sparsity): T4 65 (fp16), L4 121, A10 125 (AWS's A10G variant publishes none: the A10's figure is
used), A100 312, H100 SXM 989."""


class UnknownMachineError(ValueError):
    """A machine name that is not in the catalogue."""


def get_machine(machine: str | Machine) -> Machine:
    """The catalogue entry for a name (a Machine is passed through); an unknown name lists the machines."""
    if isinstance(machine, Machine):
        return machine
    found = MACHINES.get(machine.strip().lower()) if isinstance(machine, str) else None
    if found is None:
        raise UnknownMachineError(f"machine={shown(machine)} is not a machine of the catalogue. Use one of: "
                                  f"{', '.join(MACHINES)}.")
    return found


def machine_rule(value: object, name: str = "machine") -> Machine:
    """A catalogue machine given by name or as a Machine: a rule for `helpers.checks`."""
    if not isinstance(value, (str, Machine)):
        raise UnknownMachineError(f"{name}={shown(value)} must be a machine's name, one of: {', '.join(MACHINES)}.")
    return get_machine(value)


def emulated_machine(environ: dict[str, str] | None = None) -> Machine | None:
    """The machine SD35_MACHINE names (None when it is unset or empty): an unknown value raises, listing them."""
    environ = os.environ if environ is None else environ
    raw = environ.get(MACHINE_VARIABLE, "")
    if not raw.strip():
        return None
    try:
        return get_machine(raw)
    except UnknownMachineError:
        raise UnknownMachineError(
            f"{MACHINE_VARIABLE}={shown(raw)} is not a machine of the catalogue. Set it to one of: {', '.join(MACHINES)} "
            f"(for example `export {MACHINE_VARIABLE}=colab-t4`), or unset it to use this machine."
        ) from None


def live_machine(device: str = "cuda") -> Machine | None:
    """The GPU PyTorch sees here as a Machine: its *free* memory (another kernel or a pipeline still held takes its
    share), its compute capability, and this process's share of the RAM. None without a CUDA GPU."""
    import psutil
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(device)
    properties = torch.cuda.get_device_properties(index)
    free_bytes, _ = torch.cuda.mem_get_info(index)
    processes = _processes_launched_together()
    return Machine("this machine", "this machine", properties.name, (properties.major, properties.minor),
                   round(free_bytes / 1e9, 2), round(psutil.virtual_memory().total / 1e9, 1),
                   gpus=torch.cuda.device_count(), source="read from PyTorch here").share(processes)


def _processes_launched_together() -> int:
    """How many processes were launched together on this machine (torchrun, under `accelerate launch`, sets
    LOCAL_WORLD_SIZE): they all load at once, so each plans with its share of the RAM."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def catalogue_table():
    """The catalogue as a Table: each machine's GPU, kernels, memory and RAM."""
    from helpers.display import Table

    return Table([{
        "SD35_MACHINE": machine.name, "machine": machine.title, "GPU": machine.gpu,
        "compute capability": ".".join(map(str, machine.compute_capability)),
        "GPU memory (GB)": f"{machine.gpus} x {machine.gpu_gb:g}" if machine.gpus > 1 else f"{machine.gpu_gb:g}",
        "RAM (GB)": f"{machine.host_gb:g}", "computes in": machine.dtype,
        "bf16 tensor cores": "yes" if machine.bf16_tensor_cores else "no",
        "FP8": "yes" if machine.fp8_tensor_cores else "no",
    } for machine in MACHINES.values()], title="The machines of the catalogue (SD35_MACHINE)")
