"""The UNet experts of a model: resident, read at their first step (lazy), or sharing one Cell (offload)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from pangu_cli.errors import ModelError
from pangu_cli.models.checkpoint import check_keys
from pangu_cli.models.checkpoint_index import TensorRef, read_tensors
from pangu_cli.models.device_options import DeviceOptions, prepare_unet
from pangu_cli.models.networks import build_unet, built_network
from pangu_cli.models.param_table import ParamTable
from pangu_cli.models.registry import ModelSpec
from pangu_cli.models.unet import UNetModel

ROLES = ("structure", "texture")  # noisiest range first


class UNetBank:
    """The UNets of a model by role. Each is read from its checkpoint at load (eager) or at its first call (lazy).
    With `offload` there is one Cell: calling an expert whose weights are not in it swaps them in, from the host
    copy kept at the first read (`cache="host"`) or from the file again (`cache="disk"`)."""

    def __init__(self, spec: ModelSpec, refs: dict[str, dict[str, TensorRef]], labels: dict[str, str],
                 opts: DeviceOptions, offload: bool, unets: dict[str, UNetModel]):
        self.spec, self.refs, self.labels, self.opts, self.offload = spec, refs, labels, opts, offload
        self.roles = [role for role in ROLES if role in refs]
        self.unets = unets  # shared with LoadedModel.unets: the Cells holding weights now, by role
        self.resident: str | None = None  # offload: whose weights the shared Cell holds
        self.reads: list[str] = []  # roles in the order their weights were put into a Cell
        self.seconds = 0.0  # time spent reading / swapping weights
        self._cells: dict[str, tuple] = {}  # role (or "shared") → (UNet, ParamTable)
        self._host: dict[str, dict[str, np.ndarray]] = {}
        self.spare: UNetModel | None = None  # an empty UNet already built (for the key check), used first

    def expert(self, role: str) -> Callable:
        def call(*args, **kwargs):
            return self.get(role)(*args, **kwargs)

        return call

    def get(self, role: str):
        """The UNet Cell for `role`, with its weights in place."""
        if role not in self.refs:
            raise ModelError(f"model '{self.spec.name}' has no {role} UNet")
        slot = "shared" if self.offload else role
        if slot not in self._cells:
            unet, self.spare = self.spare or built_network(self.spec, build_unet, self.opts.half), None
            table = ParamTable(unet, self.opts.half)
            self._cells[slot] = (prepare_unet(unet, self.opts), table)
        unet, table = self._cells[slot]
        if (self.resident != role) if self.offload else (role not in self.unets):
            self._fill(role, table)
            if self.offload:
                self.unets.clear()
                self.resident = role
            self.unets[role] = unet
        return unet

    def _fill(self, role: str, table: ParamTable) -> None:
        start = time.perf_counter()
        check_keys(table.shapes(), self.refs[role], self.labels[role])
        if role in self._host:
            table.fill(self._host[role].items())
        else:
            keep = {} if self.offload and self.opts.offload_cache == "host" else None
            table.fill(read_tensors(self.refs[role]), keep=keep)
            if keep is not None:
                self._host[role] = keep
        self.reads.append(role)
        self.seconds += time.perf_counter() - start
