"""Where the modules of the old, flat course/ folder went.

Notebooks saved before the course was arranged by role still import the old names, e.g.
`from course.flash import flash_attention_torch`: a student half-way through a day must not lose
their work to a tidy-up. Each old name imports as a module holding the new module's names (the
same objects), so such a notebook runs, and is graded, unchanged.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

MOVED = {
    "course.attention": ("course.reference.masks", "course.reference.sdpa"),
    "course.multihead": ("course.reference.multihead",),
    "course.kv_cache": ("course.reference.kv_cache",),
    "course.sparse": ("course.reference.sparse",),
    "course.flash": ("course.reference.online_softmax",),
    "course.flash_triton": ("course.reference.flash_triton",),
    "course.linear_attention": ("course.reference.linear_attention",),
    "course.nystrom": ("course.reference.nystrom",),
    "course.scan": ("course.reference.mamba_scan",),
    "course.capstone": ("course.reference.capstone", "course.explore.capstone"),
    "course.mechanisms": ("course.reference.mechanisms",),
    "course.tiny_transformer": ("course.models.tiny_transformer",),
    "course.hybrid": ("course.models.hybrid",),
    "course.widgets": ("course.explore.heatmap",),
    "course.mask_explorer": ("course.explore.masks",),
    "course.cache_explorer": ("course.explore.kv_cache",),
    "course.pattern_explorer": ("course.explore.sparse",),
    "course.online_softmax_explorer": ("course.explore.online_softmax",),
    "course.tile_explorer": ("course.explore.flash_triton",),
    "course.linear_explorer": ("course.explore.linear_attention",),
    "course.scan_explorer": ("course.explore.mamba_scan",),
    "course.gallery": ("course.explore.gallery",),
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and fills it with the names of the module(s) it became."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # the default: a fresh, empty module

    def exec_module(self, module) -> None:
        for new_name in MOVED[module.__name__]:
            new = importlib.import_module(new_name)
            module.__dict__.update((k, v) for k, v in vars(new).items() if not k.startswith("__"))


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
