"""Export: the network as an ONNX or TorchScript file that takes any batch and any H × W.

The exported graph is `btbnet.model.FocusMap`: input "image", RGB float32 [N, 3, H, W] in
[0, 1] (what `btbnet.data.to_tensor` makes of a uint8 photo, and what `predict_map` feeds the
network; the ImageNet normalisation is inside the graph), output "focus", the in-focus
probability float32 [N, 1, H, W] (1.0 = in focus). Downscaling the photo to the scale the
model was trained at (what `btbnet predict --max-size` does) is left to the caller.

`export_model` writes the file atomically and only once it has checked it: it loads the file
with its own runtime (onnxruntime; torch.jit.load) and runs it at CHECK_SIZES, none of them the
size it was traced at, against the PyTorch model.

Both formats are traced at EXAMPLE_SIZE, so H and W stay symbolic only where shape arithmetic
goes through tensor ops. The model computes each stream's size as max(1, round(side · scale))
on Python ints; under tracing the sides are 0-d tensors, which round() refuses. So while
tracing, `traced_sizes` puts in the same rounding as tensor ops, and a resize without the
model's same-size shortcut, which a trace would fix at the example's size (a bilinear resize
to the same size is the identity). The fast variant's top-bottom steps upsample whenever two
blocks differ in size, as they do at any side over 8 px, so the trace keeps upsampling; where
the sizes match at run time, that is the identity too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import model as model_module
from .checkpoint import unwrap
from .io import atomic_output
from .model import FocusMap, eval_mode, scaled_size

FORMATS = ("onnx", "torchscript")
DEFAULT_OUT = {"onnx": "btbnet.onnx", "torchscript": "btbnet.pt"}
# The packages each format needs beyond torch (onnx checks the file, onnxruntime runs it),
# and how to install them; imported only by an export.
REQUIREMENTS = {"onnx": ("onnx", "onnxruntime"), "torchscript": ()}
INSTALL = "pip install 'onnx>=1.16' 'onnxruntime>=1.18'"
EXAMPLE_SIZE = (64, 64)  # (H, W) traced at: over 8 px a side (see the module docstring)
CHECK_SIZES = ((1, 80, 48), (2, 96, 128))  # (N, H, W) the exported file is run at
TOLERANCE = 1e-4  # max abs difference of probabilities allowed against PyTorch (float32 rounding)
ONNX_OPSET = 17
INPUT, OUTPUT = "image", "focus"


class MissingPackage(ImportError):
    """A package an export format needs is not installed; the message says how to install it."""


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and how far its output is from PyTorch's at `sizes` (N, H, W)."""

    format: str
    path: Path
    max_abs_diff: float
    sizes: tuple[tuple[int, int, int], ...]

    def line(self) -> str:
        """One line for people: format, path, max abs difference and the inputs it was run on."""
        inputs = ", ".join(f"{n}×3×{h}×{w}" for n, h, w in self.sizes)
        return f"{self.format} {self.path}: max abs difference vs PyTorch {self.max_abs_diff:.1e} (inputs {inputs})"


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str,
    check_sizes: Sequence[tuple[int, int, int]] = CHECK_SIZES,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Write `model` (a `MultiStreamBTBNet`, moved to the CPU) as a `fmt` file at `out`.

    The file appears at `out` only once it has been loaded with its runtime and run at every
    (N, H, W) of `check_sizes` within `tolerance` of the PyTorch model (ValueError otherwise,
    and nothing is written). MissingPackage, before any work, if `fmt` needs a package that is
    not installed. The model's training mode is restored afterwards.
    """
    check_format(fmt)
    require(fmt)
    out = Path(out)
    network = FocusMap(unwrap(model).cpu())
    with eval_mode(network), atomic_output(out) as tmp:
        write(network, tmp, fmt)
        diff = max_difference(network, runner(tmp, fmt), check_sizes)
        if not diff <= tolerance:  # also refuses NaN
            raise ValueError(
                f"{out}: the exported {fmt} model differs from PyTorch by {diff:.1e}, over {tolerance:.0e}; not written"
            )
    return ExportReport(fmt, out, diff, tuple(tuple(s) for s in check_sizes))


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def require(fmt: str) -> None:
    """MissingPackage naming the packages `fmt` needs that are not installed, and the fix."""
    missing = [name for name in REQUIREMENTS[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackage(f"--format {fmt} needs {' and '.join(missing)}, not installed; install with: {INSTALL}")


def write(network: nn.Module, path: Path, fmt: str) -> None:
    """Trace `network` (in eval mode) at EXAMPLE_SIZE into a `fmt` file at `path`."""
    example = torch.rand(1, 3, *EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0))
    with traced_sizes(), torch.no_grad():
        if fmt == "onnx":
            write_onnx(network, example, path)
        else:
            traced = torch.jit.trace(network, example, check_trace=False)  # checked at other sizes instead
            with path.open("wb") as f:  # an open file: the archive is not named after the temporary path
                torch.jit.save(traced, f)


def write_onnx(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The ONNX file, every input and output dimension but the channels symbolic.

    The TorchScript-based exporter (dynamo=False): it follows the sizes that `traced_sizes`
    computes, so H and W stay symbolic through the streams' resizes. The torch.export one
    (dynamo=True) finds no ONNX function for round() of a symbolic size and fails on this
    model, and would need the onnxscript package besides.
    """
    dims = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(
        network, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
        input_names=[INPUT], output_names=[OUTPUT], dynamic_axes={INPUT: dims, OUTPUT: dims},
    )  # fmt: skip


@contextlib.contextmanager
def traced_sizes() -> Iterator[None]:
    """For the block: the model's stream sizes and resizes as ops a trace keeps (see the module
    docstring), and no warnings about what tracing fixes (explained there) or about the
    tracing APIs' deprecation (torch is pinned)."""
    saved = model_module.scaled_size, model_module.resize
    model_module.scaled_size, model_module.resize = traced_scaled_size, traced_resize
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*(deprecated|legacy TorchScript-based ONNX|will be removed)")
            yield
    finally:
        model_module.scaled_size, model_module.resize = saved


def traced_scaled_size(size: Sequence[int | torch.Tensor], scale: float) -> tuple[int | torch.Tensor, ...]:
    """`btbnet.model.scaled_size` that also takes traced sides (0-d integer tensors): the same
    max(1, round(side · scale)), in float64 and rounding half to even as Python's round()."""
    if not any(isinstance(side, torch.Tensor) for side in size):
        return scaled_size(size, scale)  # the model's own (the name was bound before patching)
    return tuple(torch.round(torch.as_tensor(side).double() * scale).clamp(min=1).long() for side in size)


def traced_resize(x: torch.Tensor, size: Sequence[int | torch.Tensor]) -> torch.Tensor:
    """`btbnet.model.resize` without its same-size shortcut, which a trace would fix at the
    example's size: always the bilinear resize (the identity when the size already matches)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)



def runner(path: Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file at `path`, loaded with its runtime, as a function of the input tensor."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # its deprecation: torch is pinned
            warnings.filterwarnings("ignore", message=r".*deprecated", category=DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        return lambda x: loaded(x)
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a few runs: no busy waits
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


def max_difference(
    network: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], sizes: Sequence[tuple[int, int, int]]
) -> float:
    """Max abs difference of `run` from `network` on random images of every (N, H, W) in
    `sizes`; ValueError if an output's shape differs from PyTorch's."""
    generator = torch.Generator().manual_seed(1)
    worst = torch.tensor(0.0)
    for n, h, w in sizes:
        x = torch.rand(n, 3, h, w, generator=generator)
        with torch.inference_mode():
            expected, got = network(x), run(x)
        if got.shape != expected.shape:
            shapes = f"output {list(got.shape)} for input {list(x.shape)}, expected {list(expected.shape)}"
            raise ValueError(f"exported model: {shapes}")
        worst = torch.maximum(worst, (got - expected).abs().max())  # NaN stays NaN
    return worst.item()
