"""Pipeline stages, one small module each. ``STAGES`` maps the names configs use to the classes."""

from edgeslim.engine.stage import Stage
from edgeslim.stages.baseline import Baseline
from edgeslim.stages.benchmark import Benchmark
from edgeslim.stages.export import Export
from edgeslim.stages.finetune import Finetune
from edgeslim.stages.meta_init import MetaInit
from edgeslim.stages.prune import Prune
from edgeslim.stages.quantize import Quantize
from edgeslim.stages.train import Train

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (Train, Baseline, Prune, MetaInit, Finetune, Export, Quantize, Benchmark)
}

__all__ = ["STAGES", "Baseline", "Benchmark", "Export", "Finetune", "MetaInit", "Prune", "Quantize", "Train"]
