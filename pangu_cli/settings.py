"""The fully resolved settings of one image: what the engine needs and what the PNG records.

No MindSpore here: the CLI resolves and validates everything before a model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pangu_cli import __version__

STYLE_ORDER = ("art", "anime", "photo")  # the reference's branch order: aesthetic, anime, photography


@dataclass
class ImageSettings:
    prompt: str
    seed: int
    steps: int
    guidance: float
    sampler: str
    width: int
    height: int
    bucket_index: int
    model: str
    negative: str = ""
    styles: dict[str, float] = field(default_factory=dict)
    switch_t: int = 500
    switch_lag: bool = True
    model_fingerprint: str = ""
    language: str = ""
    ratio: str = ""
    ensemble: dict | None = None  # a Coop-Diffusion recipe (`pangu_cli.ensemble`); None: the model's own split

    def active_styles(self) -> list[tuple[str, float]]:
        """Style branches with a non-zero scale, in the reference's branch order."""
        ordered = [s for s in STYLE_ORDER if s in self.styles] + sorted(set(self.styles) - set(STYLE_ORDER))
        return [(name, float(self.styles[name])) for name in ordered if self.styles[name]]

    def recipe(self) -> dict:
        """What the PNG stores: enough to re-run the image exactly (keys as `pangu_cli.output` documents)."""
        data = asdict(self)
        for ours, theirs in _RECIPE_NAMES.items():
            data[theirs] = data.pop(ours)
        del data["width"], data["height"]
        data["size"] = [self.width, self.height]
        data["version"] = __version__
        return data

    @classmethod
    def from_recipe(cls, recipe: dict) -> "ImageSettings":
        data = dict(recipe)
        for ours, theirs in _RECIPE_NAMES.items():
            if theirs in data:
                data[ours] = data.pop(theirs)
        if "size" in data:
            data["width"], data["height"] = data.pop("size")
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


# Our field names → the recipe vocabulary of pangu_cli.output (shared with the A1111 text).
_RECIPE_NAMES = {"model_fingerprint": "model_hash", "switch_t": "switch"}
