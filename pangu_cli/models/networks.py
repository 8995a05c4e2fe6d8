"""A model's networks built from its manifest, with parameters left uninitialised (a checkpoint fills them)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

from pangu_cli.errors import ModelError
from pangu_cli.models.conditioner import Conditioner
from pangu_cli.models.registry import ModelSpec
from pangu_cli.models.unet import UNetModel
from pangu_cli.models.vae import AutoencoderKL


def build_conditioner(spec: ModelSpec) -> Conditioner:
    size = spec.manifest.get("size_embedding", {}).get("dim")
    options = spec.manifest.get("conditioning", {})  # routing / concat; the reference's defaults when absent
    return Conditioner(spec.manifest["text_encoders"], size_embed_dim=size, **options)


def build_vae(spec: ModelSpec) -> AutoencoderKL | None:
    vae = spec.manifest.get("vae")
    return AutoencoderKL(**vae) if vae else None


def build_unet(spec: ModelSpec) -> UNetModel:
    return UNetModel(**spec.manifest["unet"])


def without_init():
    """Build parameters without initial values (they come from a checkpoint): no time, no memory."""
    try:
        from mindspore.nn.utils import no_init_parameters
    except ImportError:  # removed in a later MindSpore: building initialises, which is only slower
        return nullcontext()
    return no_init_parameters()


@contextmanager
def _plain_kernels(active: bool) -> Iterator[None]:
    """Build with MindSpore's own ops: pangu's fast CPU kernels (`fast_ops`) take fp32 weights only."""
    try:
        from pangu_cli.models import fast_ops
    except ImportError:
        fast_ops = None
    if not active or fast_ops is None or not fast_ops.enabled():
        yield
        return
    fast_ops.set_enabled(False)
    try:
        yield
    finally:
        fast_ops.set_enabled(True)


def built_network(spec: ModelSpec, factory: Callable, half: object = None):
    """A network of `spec` with uninitialised parameters (every one is then checked and read from a file);
    `half`: it will hold half-precision weights."""
    try:
        with without_init(), _plain_kernels(half is not None):
            return factory(spec)
    except ModelError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"model '{spec.name}' has an invalid network config: {exc}", "check model.json") from exc


def param_shapes(cell) -> dict[str, tuple]:
    return {name: tuple(param.shape) for name, param in cell.parameters_and_names()}
