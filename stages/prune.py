"""``prune``: structural channel pruning with torch-pruning.

The classifier (every layer producing the class logits) is protected. The target is a
per-layer channel ratio, or a fraction of the parameters / MACs to keep (the ratio is then
found by bisection). After pruning, BatchNorm statistics are re-estimated on training data.

Attention is found by its layout (:func:`attention_settings`): a module with an integer
``num_heads`` and a ``qkv`` Linear (timm's, as in the built-in ``vit_tiny``), or with
``num_attention_heads`` and ``query``/``key``/``value`` Linears (Hugging Face BERT's
``BertSelfAttention``), gives torch-pruning ``num_heads`` for those Linears, so head dimensions are
removed evenly across heads; the hidden size, shared through residuals and LayerNorms, shrinks
consistently. Afterwards timm's stored ``head_dim`` and BERT's ``attention_head_size`` /
``all_head_size`` follow the pruned projections, and BERT's ``query`` rows are rescaled so its
softmax keeps the original 1/sqrt(head size). An ``nn.MultiheadAttention`` gets ``num_heads``
channel groups, so its embedding stays divisible by its head count.

``head_pruning_ratio`` (default 0: keep every head) also removes that fraction of each timm- or
BERT-style attention layer's heads whole (torch-pruning's ``prune_num_heads``); the new head counts
go into the pruning history (``{"attention_heads": {name: count}}``), since the pruned shapes alone
do not tell them, so a rebuilt model matches. torch-pruning cannot remove heads of
``nn.MultiheadAttention``: asking it to is a one-line error, as is a model with no attention.
``drop_layers`` first removes whole transformer blocks, measured one by one; in a model without
attention it replaces that many skippable blocks (residual blocks, squeeze-excitations) by the
identity, chosen the same way (:mod:`edgeslim.prune.layers`).

What torch-pruning cannot see is handled before it runs (:mod:`edgeslim.prune.graph`): bare
parameters (a ViT's ``cls_token``/``pos_embed``) shrink with the embedding, or keep the layers
they join whole when laid out across them; modules the output does not depend on (a spare layer,
a pooler the head ignores) are left out. ``ignore`` takes names or glob patterns. Each of these
is a note, a prune that removes (almost) nothing is a warning saying why, and a layout
torch-pruning cannot follow is a one-line error naming the layer, never a traceback.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from pydantic import Field, field_validator, model_validator
from torch import nn

from edgeslim.config.schema import MeasureSpec, StrictModel
from edgeslim.data.batches import Inputs, seen_tokens
from edgeslim.engine.measure import measure_side_by_side
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult
from edgeslim.engine.store import TORCH
from edgeslim.errors import UserError, first_line
from edgeslim.export.onnx_io import export_onnx
from edgeslim.models.loader import count_params_and_macs, output_layer_name, save_torch_artifact
from edgeslim.prune.criteria import CRITERIA, build_importance, prepare_importance
from edgeslim.prune.graph import (
    HEAD_COUNTS,
    Unused,
    find_unused,
    graph_arguments,
    head_counts,
    head_projections,
    locate_failure,
    parameter_conflicts,
    sync_head_dims,
    unwrapped_parameters,
)
from edgeslim.prune.latency import block_savings, build_table, choose_ratios
from edgeslim.prune.layers import DROP_BLOCKS, DROP_LAYERS, drop_blocks, drop_skippable, skippable_blocks
from edgeslim.prune.multiples import choose_multiple, describe, measure_multiples
from edgeslim.prune.vocab import prune_vocabulary, token_embedding
from edgeslim.train.loop import evaluate, recalibrate_batchnorm

FALLBACK_FACTOR = 0.7  # accuracy-guard fallback: each retry prunes 30% less
LITTLE = 0.01  # a prune removing less than this fraction of the parameters is called out, with the reason
ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM)  # torch-pruning's default group roots


def attention_settings(model: nn.Module) -> dict[str, dict[nn.Module, int]]:
    """torch-pruning arguments for the model's attention layers (fresh dicts on every call:
    ``BasePruner`` fills its ``*_channel_groups`` arguments in place, and their defaults are shared).

    * ``num_heads`` — ``{m.qkv: m.num_heads}`` for each module with an integer ``num_heads`` and a
      ``qkv`` Linear whose forward reshapes to heads (timm's ``Attention``), and ``{m.query:
      m.num_attention_heads}`` (``key``, ``value`` alike) for Hugging Face BERT's ``BertSelfAttention``:
      without it the pruned projections no longer split into heads;
    * ``out_channel_groups`` — ``{mha: mha.num_heads}`` for each ``nn.MultiheadAttention``, whose
      pruned ``embed_dim`` must stay divisible by its head count.
    """
    num_heads: dict[nn.Module, int] = {}
    groups: dict[nn.Module, int] = {}
    for module in model.modules():
        found = head_projections(module)
        if isinstance(module, nn.MultiheadAttention):
            groups[module] = module.num_heads
        elif found is not None:
            attr, layers = found
            num_heads.update(dict.fromkeys(layers, getattr(module, attr)))
    return {"num_heads": num_heads, "out_channel_groups": groups, "in_channel_groups": {}}


def match_modules(model: nn.Module, patterns: list[str], where: str) -> dict[str, list[str]]:
    """The dotted module names each entry of ``patterns`` selects: the exact name, else every name
    matching it as an fnmatch glob (``"*.attention.*"``, ``"blocks.0.*"``), so a user need not list
    dozens of layers one by one. An entry that selects nothing is a one-line ``UserError`` at ``where``
    naming it and some modules that do exist (a typo must not silently prune a layer meant to stay)."""
    names = [n for n, _ in model.named_modules() if n]
    matches = {p: [p] if p in names else [n for n in names if fnmatch.fnmatchcase(n, p)] for p in patterns}
    missing = [p for p, found in matches.items() if not found]
    if missing:
        hints = list(dict.fromkeys(n for p in missing for n in difflib.get_close_matches(p, names, n=5, cutoff=0.4)))
        shown = (hints + [n for n in names if n not in hints])[:10]
        more = f", … ({len(names)} in all)" if len(names) > len(shown) else ""
        raise UserError(
            f"{where}: no module named or matching {', '.join(repr(p) for p in missing)} in the model; "
            f"modules include {', '.join(shown)}{more}"
        )
    return matches


def _vocabulary_note(v: dict[str, Any]) -> str:
    return (
        f"vocabulary: {v['module']} keeps {v['rows_after']:,} of {v['rows_before']:,} token rows (the tokens the "
        f"training data uses + special tokens; the others read [UNK]): {v['params_removed']:,} params fewer; "
        f"val accuracy {v['val_accuracy_after']:.4f}"
    )


def _depth_note(d: dict[str, Any]) -> str:
    which = (
        f"dropped blocks {d['indices']} of {d['container']} (kept {d['kept']}"
        if "container" in d
        else f"replaced blocks {', '.join(d['blocks'])} by the identity ("
    )
    return (
        f"{which}; each the one whose absence raised the calibration loss least): params {d['params_before']:,} → "
        f"{d['params_after']:,}, val accuracy {d['val_accuracy_before']:.4f} → {d['val_accuracy_after']:.4f}"
    )


def _union(matches: dict[str, list[str]]) -> list[str]:
    """Every matched name once, in first-matched order."""
    return list(dict.fromkeys(n for found in matches.values() for n in found))


class PruneConfig(StrictModel):
    importance: str = Field("hessian", description="a registered criterion: l1, l2, taylor, hessian")
    pruning_ratio: float = Field(0.5, gt=0, lt=1, description="fraction of channels removed per layer")
    target_params: float | None = Field(None, gt=0, lt=1, description="keep this fraction of the parameters")
    target_macs: float | None = Field(None, gt=0, lt=1, description="keep this fraction of the MACs")
    iterative_steps: int = Field(1, ge=1, le=100, description="prune in this many steps (importance re-scored)")
    global_pruning: bool = False
    calibration_samples: int = Field(128, ge=1, description="training samples for taylor/hessian scores")
    bn_recalibration_batches: int = Field(20, ge=0)
    round_to: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None,
        description="keep channel counts multiples of this (rounded down); 'auto': the multiple that measures "
        "fastest per MAC on the host profile (1, 4, 8 or 16; see edgeslim.prune.multiples)",
    )
    target_latency_ms: float | None = Field(
        None,
        gt=0,
        description="choose a ratio per layer from a measured per-layer latency table (host profile) so the "
        "pruned model's p50 is predicted at this; the report gives predicted vs measured",
    )
    latency_ratios: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        min_length=1,
        description="target_latency_ms: the per-layer ratios measured (and chosen from)",
    )
    head_pruning_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of each attention layer's heads removed whole (0: keep the head count, "
        "prune only head dims)",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="module names or glob patterns (fnmatch on dotted names, e.g. '*.attention.*') to leave unpruned",
    )
    drop_layers: int = Field(
        0,
        ge=0,
        description="remove this many whole blocks first (transformer blocks; in models without attention, "
        "residual blocks or squeeze-excitations, replaced by the identity), each time the one whose absence "
        "raises the calibration loss least (measured by skipping it)",
    )
    drop_by: Literal["loss", "loss_per_ms"] = Field(
        "loss",
        description="drop_layers in models without attention: 'loss' removes the block whose absence raises the "
        "calibration loss least; 'loss_per_ms' the least loss increase per millisecond its absence saves "
        "(each block's saving measured once on this host, side by side, and cached)",
    )
    vocabulary: bool = Field(
        False,
        description="text models: keep only the token embeddings of the tokens the training data uses (plus the "
        "tokenizer's special tokens); other tokens read the [UNK] row",
    )

    @field_validator("importance")
    @classmethod
    def _known_criterion(cls, name: str) -> str:
        if name not in CRITERIA:
            names = [repr(n) for n in CRITERIA]
            raise ValueError(f"Input should be {', '.join(names[:-1])} or {names[-1]}")
        return name

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        targets = [self.target_params, self.target_macs, self.target_latency_ms]
        if sum(t is not None for t in targets) > 1:
            raise ValueError("give at most one of target_params, target_macs and target_latency_ms")
        if self.target_latency_ms is not None and (self.iterative_steps > 1 or self.global_pruning):
            raise ValueError("target_latency_ms sets a ratio per layer: use iterative_steps 1, global_pruning false")
        if any(not 0 < r < 1 for r in self.latency_ratios):
            raise ValueError("latency_ratios: each between 0 and 1 (exclusive)")
        return self


class Prune(Stage[PruneConfig]):
    name = "prune"
    accepts = (TORCH,)

    def plan(self, request: PlanRequest) -> StagePlan:
        """A latency target's or ``round_to: auto``'s choice depends on where it is timed: the host profile
        joins the key."""
        key_parts = {}
        if self.config.target_latency_ms is not None or self.config.round_to == "auto":
            host = request.config.host
            key_parts["host"] = {
                "threads": host.threads[0],
                "batch_size": host.batch_sizes[0],
                "opt": host.graph_optimization,
            }
        return StagePlan(output_kind=request.input_kind, key_parts=key_parts)

    def fallback(self, attempt: int, previous: StageResult) -> Prune | None:
        """Prune less: each attempt removes 30% fewer channels (or keeps 30% more of the target)."""
        cfg = self.config
        factor = FALLBACK_FACTOR**attempt
        if cfg.target_params is not None or cfg.target_macs is not None:
            key = "target_params" if cfg.target_params is not None else "target_macs"
            keep = 1 - (1 - getattr(cfg, key)) * factor
            return None if keep > 0.99 else Prune(cfg.model_copy(update={key: round(keep, 4)}))
        ratio = cfg.pruning_ratio * factor
        return None if ratio < 0.01 else Prune(cfg.model_copy(update={"pruning_ratio": round(ratio, 4)}))

    @staticmethod
    def _prune_vocabulary(ctx: StageContext, model: nn.Module, example: Any, history: list[Any]) -> dict[str, Any]:
        """Keep the token rows the training data uses (and the special tokens); appends the edit."""
        tokens = ctx.data.tokens
        name = token_embedding(model, example) if tokens is not None else None
        if tokens is None or name is None:
            raise UserError(
                f"{ctx.where}.vocabulary: needs text data (token ids from a tokenizer) and a model whose token "
                "embedding reads input_ids directly"
            )
        fallback = tokens.unk_id if tokens.unk_id is not None else tokens.pad_id
        keep = sorted(seen_tokens(ctx.data.train) | set(tokens.special_ids) | {fallback, tokens.pad_id})
        before = model.get_submodule(name)
        rows_before, dim = before.num_embeddings, before.embedding_dim
        history.append(prune_vocabulary(model, name, keep, fallback))
        accuracy, _ = evaluate(model, ctx.data.val)
        return {
            "module": name,
            "rows_before": rows_before,
            "rows_after": len(keep),
            "params_removed": (rows_before - len(keep)) * dim,
            "val_accuracy_after": accuracy,
        }

    @staticmethod
    def _drop_layers(ctx: StageContext, cfg: PruneConfig, model: nn.Module, example: Any) -> dict[str, Any]:
        """Depth pruning before anything else (the other steps then see the shorter model)."""
        where = f"{ctx.where}.drop_layers"
        x, y = ctx.calibration_samples(cfg.calibration_samples)
        params_before, _ = count_params_and_macs(model, example)
        acc_before, _ = evaluate(model, ctx.data.val)
        savings = None
        try:
            if head_counts(model):  # a transformer: remove blocks from its list (and its config's layer count)
                edit = drop_blocks(model, cfg.drop_layers, x, y, F.cross_entropy)
            else:
                savings = _block_savings(ctx, model, example) if cfg.drop_by == "loss_per_ms" else None
                edit = drop_skippable(model, cfg.drop_layers, example, x, y, F.cross_entropy, savings)
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        _check_still_runs(model, example, where)
        params, _ = count_params_and_macs(model, example)
        recorded = edit.get(DROP_LAYERS) or edit[DROP_BLOCKS]
        return {
            "edit": edit,
            **{k: v for k, v in recorded.items() if k != "scores"},
            "skip_losses": recorded["scores"],
            **({"savings_ms": savings} if savings else {}),
            "params_before": params_before,
            "params_after": params,
            "val_accuracy_before": acc_before,
            "val_accuracy_after": evaluate(model, ctx.data.val)[0],
        }

    def run(self, ctx: StageContext, cfg: PruneConfig) -> StageResult:
        model = ctx.models.load(ctx.input)
        example = ctx.example()
        depth = self._drop_layers(ctx, cfg, model, example) if cfg.drop_layers else None
        modules = dict(model.named_modules())
        matches = match_modules(model, cfg.ignore, f"{ctx.where}.ignore")
        protected = output_layer_name(model, example)
        unused = find_unused(model, example)
        ignored = [modules[protected], *(modules[n] for n in _union(matches) + unused.all)]
        bare = {name: dim for name, (_, dim) in unwrapped_parameters(model).items()}
        conflicts = parameter_conflicts(model, example, ignored, ROOT_TYPES, unused.dead)
        ignored += [modules[n] for layers in conflicts.values() for n in layers]
        left_whole = {  # why layers other than the classifier stay whole, for the no-op warning
            "ignore matched": _union(matches),
            "the forward pass does not use": unused.all,
            "bare parameters hold": [n for layers in conflicts.values() for n in layers],
        }
        notes = _unused_notes(model, unused) + [
            f"left the output channels of {_few(layers)} whole: the bare parameter '{name}' joins them, but its "
            f"dim {bare[name]} (the last one longer than 1, which torch-pruning prunes) is not their channel axis"
            for name, layers in conflicts.items()
        ]
        if cfg.head_pruning_ratio > 0:
            _check_head_pruning(model, ignored, ctx.where)
        heads_before = head_counts(model)
        calib_x, calib_y = ctx.calibration_samples(cfg.calibration_samples)
        params_before, macs_before = count_params_and_macs(model, example)
        acc_before, _ = evaluate(model, ctx.data.val)

        round_to, multiples = cfg.round_to, None
        if round_to == "auto":
            round_to, multiples, note = self._choose_round_to(ctx, model, ignored, unused.dead, example)
            notes.append(note)
        ratio = cfg.pruning_ratio
        if cfg.target_params is not None or cfg.target_macs is not None:
            ratio = self._ratio_for_target(
                model, ignored, unused.dead, example, calib_x, calib_y, params_before, macs_before, ctx.where, round_to
            )
        layer_ratios: dict[nn.Module, float] = {}
        latency: dict[str, Any] | None = None
        if cfg.target_latency_ms is not None:
            chosen, latency = self._ratios_for_latency(ctx, model, ignored, unused.dead, example, round_to)
            layer_ratios = {modules[n]: r for n, r in chosen.items()}
            ratio = 0.0

        importance = build_importance(cfg.importance)
        pruner = _Pruner(
            model,
            example,
            importance=importance,
            pruning_ratio=ratio,
            pruning_ratio_dict=layer_ratios or None,
            iterative_steps=cfg.iterative_steps,
            global_pruning=cfg.global_pruning,
            ignored_layers=ignored,
            round_to=round_to,
            root_module_types=list(ROOT_TYPES),
            **attention_settings(model),
            **_head_options(cfg.head_pruning_ratio),
            **graph_arguments(model, unused.dead),
        )
        initial_heads = dict(pruner.num_heads)
        steps: list[dict[str, Any]] = []
        for step in range(cfg.iterative_steps):
            prepare_importance(importance, model, calib_x, calib_y)
            _schedule_heads(pruner, initial_heads, cfg, step + 1)
            sizes = _head_sizes(model)
            _step(pruner, ctx.where)
            _after_step(model, pruner, sizes)
            model.zero_grad(set_to_none=True)
            _check_still_runs(model, example, ctx.where)
            raw_acc, _ = evaluate(model, ctx.data.val)
            recalibrated = recalibrate_batchnorm(model, ctx.data.train, cfg.bn_recalibration_batches, 64) > 0
            recal_acc = evaluate(model, ctx.data.val)[0] if recalibrated else raw_acc  # no BatchNorm: unchanged
            params, macs = count_params_and_macs(model, example)
            steps.append(
                {
                    "step": step + 1,
                    "params": params,
                    "macs": macs,
                    "val_accuracy_pruned": raw_acc,
                    "val_accuracy_bn_recalibrated": recal_acc,
                }
            )
        ours: list[Any] = [depth["edit"]] if depth else []  # replayed first, as it happened
        ours += [list(h) for h in pruner.pruning_history()]
        heads_after = head_counts(model)
        if heads_after != heads_before:  # the pruned shapes do not tell how many heads are left
            ours.append({HEAD_COUNTS: heads_after})
        vocabulary = self._prune_vocabulary(ctx, model, example, ours) if cfg.vocabulary else None
        history = ctx.models.history_of(ctx.input) + ours
        params, macs = count_params_and_macs(model, example)
        removed_channels = sum(len(h[2]) for h in ours if isinstance(h, list) and h[1])
        warnings = []
        if removed_channels == 0 or params_before - params < LITTLE * params_before:
            what = "nothing" if params == params_before else f"only {1 - params / params_before:.2%} of the parameters"
            warnings.append(
                f"warning: pruning removed {what} ({removed_channels} channel(s)): "
                f"{_why_so_little(pruner, model, protected, left_whole, removed_channels, ratio)}"
            )
        if latency is not None:
            latency["measured_ms"], latency["measured_full_ms"] = self._measure_against(ctx, model, example)
            notes.append(
                f"latency target {cfg.target_latency_ms} ms: {len(latency['ratios'])} layer ratio(s) chosen from "
                f"the measured table; predicted p50 {latency['predicted_ms']:.4g} ms, measured "
                f"{latency['measured_ms']:.4g} ms (unpruned {latency['measured_full_ms']:.4g} ms, timed beside it)"
                + (
                    f"; the per-layer table was reused from this host's cache (measured {latency['table_cached_from']})"
                    if latency["table_cached_from"]
                    else ""
                )
            )
        artifact = save_torch_artifact(
            ctx.out_dir, model, kind=TORCH, pruning_history=history, params=params, macs=macs
        )
        channels = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
        return StageResult(
            artifact,
            details={
                "pruning_ratio": ratio,
                "importance": cfg.importance,
                "params_before": params_before,
                "macs_before": macs_before,
                "params_after": params,
                "macs_after": macs,
                "params_kept": params / params_before,
                "macs_kept": macs / macs_before,
                "val_accuracy_before": acc_before,
                "steps": steps,
                "vocabulary": vocabulary,
                "drop_layers": {k: v for k, v in depth.items() if k != "edit"} if depth else None,
                "conv_channels": channels,
                "ignore_matches": matches,
                "channels_removed": removed_channels,
                "unwrapped_parameters": bare,
                "unwrapped_conflicts": conflicts,
                "unused_modules": {"never_called": unused.never_called, "dead": unused.dead},
                "attention_heads": {n: [heads_before[n], heads_after[n]] for n in heads_before},
                "latency_target": latency,
                "round_to": round_to,
                "round_to_auto": multiples,
            },
            notes=[
                *([_depth_note(depth)] if depth else []),
                f"{cfg.importance} importance, channel ratio {ratio:.3f} in {cfg.iterative_steps} step(s): "
                f"params {params_before:,} → {params:,} ({params / params_before:.1%}), "
                f"MACs {macs / macs_before:.1%} kept; val accuracy {acc_before:.4f} → "
                f"{steps[-1]['val_accuracy_pruned']:.4f} pruned"
                + (
                    f" → {steps[-1]['val_accuracy_bn_recalibrated']:.4f} after BatchNorm re-estimation"
                    if recalibrated
                    else ""
                ),
                *_head_notes(heads_before, heads_after),
                *([_vocabulary_note(vocabulary)] if vocabulary else []),
                *notes,
                *warnings,
            ],
        )

    def _choose_round_to(
        self, ctx: StageContext, model: nn.Module, ignored: list[nn.Module], dead: list[str], example: Inputs
    ) -> tuple[int, dict[str, Any], str]:
        """``round_to: auto``: time the model pruned uniformly (at ``pruning_ratio``) at each candidate
        multiple and keep the one that pays (``edgeslim.prune.multiples``). Returns the multiple, the
        details for the report and the note."""
        cfg = self.config
        ignored_names = _names_of(model, ignored)

        def prune_uniform(copy_: nn.Module, multiple: int) -> nn.Module:
            return _prune_copy(
                copy_,
                example,
                ignored_names,
                dead,
                ctx.where,
                pruning_ratio=cfg.pruning_ratio,
                round_to=multiple if multiple > 1 else None,
                **_head_options(cfg.head_pruning_ratio),
            )

        measured = measure_multiples(
            model, example, prune_uniform, ctx.data, ctx.config.host, _table_measure(ctx.config.measure)
        )
        chosen = choose_multiple(measured)
        details, note = describe(measured, chosen, cfg.pruning_ratio)
        return chosen, details, note

    def _ratios_for_latency(
        self,
        ctx: StageContext,
        model: nn.Module,
        ignored: list[nn.Module],
        dead: list[str],
        example: Inputs,
        round_to: int | None,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Per-layer ratios from the measured latency table (``edgeslim.prune.latency``)."""
        cfg = self.config
        ignored_names = _names_of(model, ignored)
        candidates = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) and n not in ignored_names
        ]

        def prune_one(copy_: nn.Module, name: str, r: float) -> nn.Module:
            layer = dict(copy_.named_modules())[name]
            return _prune_copy(
                copy_,
                example,
                ignored_names,
                dead,
                ctx.where,
                pruning_ratio=0.0,
                pruning_ratio_dict={layer: r},
                round_to=round_to,
            )

        ratios = sorted(cfg.latency_ratios)
        table = build_table(
            model,
            example,
            candidates,
            ratios,
            prune_one,
            ctx.data,
            ctx.config.host,
            _table_measure(ctx.config.measure),
            cache_key={"round_to": round_to, "ignored": sorted(ignored_names), "dead": sorted(dead)},
        )
        chosen, predicted = choose_ratios(table, cfg.target_latency_ms, ratios)  # type: ignore[arg-type]
        if predicted > cfg.target_latency_ms:  # type: ignore[operator]
            ctx_note = "unreachable: every measured layer at its largest ratio"
        else:
            ctx_note = "reached"
        return chosen, {
            "target_ms": cfg.target_latency_ms,
            "predicted_ms": predicted,
            "target": ctx_note,
            "ratios": chosen,
            "table": table.to_json(),
            "table_cached_from": table.cached_from,  # None: measured by this stage
        }

    @staticmethod
    def _measure_against(ctx: StageContext, model: nn.Module, example: Inputs) -> tuple[float, float]:
        """The pruned model's p50 beside the stage's input model (host profile, interleaved)."""
        with tempfile.TemporaryDirectory(prefix="edgeslim-pruned-") as tmp:
            original = ctx.models.load(ctx.input)
            files = [
                export_onnx(copy.deepcopy(model).eval(), example, Path(tmp) / "pruned.onnx"),
                export_onnx(original.eval(), example, Path(tmp) / "input.onnx"),
            ]
            timed = measure_side_by_side(files, ctx.config.host, _table_measure(ctx.config.measure), ctx.data)
        return timed[0]["latency_ms"]["p50"], timed[1]["latency_ms"]["p50"]

    def _ratio_for_target(
        self,
        model: nn.Module,
        ignored: list[nn.Module],
        dead: list[str],
        example: Inputs,
        calib_x: Inputs,
        calib_y: torch.Tensor,
        params0: int,
        macs0: int,
        where: str,
        round_to: int | None,
    ) -> float:
        """Bisection on the channel ratio until the kept params/MACs fraction meets the target."""
        cfg = self.config
        target = cfg.target_params if cfg.target_params is not None else cfg.target_macs
        assert target is not None
        ignored_names = _names_of(model, ignored)
        # Per-layer pruning removes the same counts whatever the criterion; only global needs the real one.
        criterion = cfg.importance if cfg.global_pruning else "l2"

        def kept(ratio: float) -> float:
            trial = _prune_copy(
                copy.deepcopy(model),
                example,
                ignored_names,
                dead,
                where,
                criterion=criterion,
                calibration=(calib_x, calib_y),
                pruning_ratio=ratio,
                global_pruning=cfg.global_pruning,
                round_to=round_to,
                **_head_options(cfg.head_pruning_ratio),
            )
            _check_still_runs(trial, example, where)
            params, macs = count_params_and_macs(trial, example)
            return params / params0 if cfg.target_params is not None else macs / macs0

        lo, hi = 0.0, 0.95
        if kept(hi) > target:
            raise UserError(
                f"{where}: cannot reach target {target} of the original: even ratio {hi} keeps {kept(hi):.3f}"
            )
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if kept(mid) > target else (lo, mid)
        return hi


def _names_of(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    """The dotted names of ``modules`` in ``model`` (to find them again in a deep copy)."""
    index = {id(m): n for n, m in model.named_modules()}
    return [index[id(m)] for m in modules]


def _prune_copy(
    copy_: nn.Module,
    example: Inputs,
    ignored_names: list[str],
    dead: list[str],
    where: str,
    criterion: str = "l2",
    calibration: tuple[Inputs, torch.Tensor] | None = None,
    **settings: Any,
) -> nn.Module:
    """One pruning step on a copy of the stage's model, for a look-ahead (``round_to: auto``, the latency
    table, the params/MACs bisection): the stage's graph settings, its whole layers found by name in the
    copy, torch-pruning ``settings``. Per layer, which channels go does not change the counts or the time,
    so the criterion defaults to l2; ``calibration`` feeds a criterion that needs gradients."""
    modules = dict(copy_.named_modules())
    importance = build_importance(criterion)
    pruner = _Pruner(
        copy_,
        example,
        importance=importance,
        ignored_layers=[modules[n] for n in ignored_names],
        root_module_types=list(ROOT_TYPES),
        **attention_settings(copy_),
        **graph_arguments(copy_, dead),
        **settings,
    )
    if calibration is not None:
        prepare_importance(importance, copy_, *calibration)
    _step(pruner, where)
    _after_step(copy_, pruner, {})
    return copy_


def _head_options(ratio: float) -> dict[str, Any]:
    """torch-pruning's whole-head options: heads go only when asked; head dims are pruned either way."""
    return {"prune_num_heads": True, "head_pruning_ratio": ratio} if ratio > 0 else {}


def _check_head_pruning(model: nn.Module, ignored: list[nn.Module], where: str) -> None:
    """``head_pruning_ratio`` must have heads to remove: a one-line error, not a prune that silently keeps
    every head, when torch-pruning cannot remove them (``nn.MultiheadAttention``) or finds no attention."""
    whole = {m for layer in ignored for m in layer.modules()}
    mha = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and m not in whole]
    if mha:
        raise UserError(
            f"{where}.head_pruning_ratio: torch-pruning cannot remove whole heads of nn.MultiheadAttention "
            f"({_few(mha)}), only shrink its head dims: set head_pruning_ratio: 0, or keep it whole with "
            f"{where}.ignore"
        )
    if not any(head_projections(m) is not None for m in model.modules()):
        raise UserError(
            f"{where}.head_pruning_ratio: the model has no attention whose heads torch-pruning can remove: a module "
            "with an integer num_heads and a qkv Linear (timm's layout), or num_attention_heads and "
            "query/key/value Linears (Hugging Face BERT's)"
        )


def _schedule_heads(pruner: tp.pruner.BasePruner, initial: dict[nn.Module, int], cfg: PruneConfig, step: int) -> None:
    """Heads to remove in this step of a per-layer (not global) iterative prune. torch-pruning applies
    its cumulative schedule (0.25, 0.5 for 0.5 in 2 steps) to the heads left, not the initial ones
    (4 heads -> 3 -> 1); each layer's ratio is set so that after step k, ceil(ratio * k / steps * heads)
    heads are gone, as one step would remove."""
    if cfg.head_pruning_ratio <= 0 or cfg.global_pruning or cfg.iterative_steps == 1:
        return
    for layer, heads0 in initial.items():
        left = pruner.num_heads[layer]
        need = math.ceil(cfg.head_pruning_ratio * step / cfg.iterative_steps * heads0 - 1e-9) - (heads0 - left)
        ratio = (need - 0.5) / left if need > 0 else 0.0  # torch-pruning removes ceil(ratio * left)
        pruner.head_pruning_ratio_dict[layer] = [ratio] * (cfg.iterative_steps + 1)


def _head_sizes(model: nn.Module) -> dict[nn.Module, int]:
    """BERT-style attention modules and their ``attention_head_size`` before a step."""
    sizes = {}
    for module in model.modules():
        found = head_projections(module)
        if found is not None and found[0] == "num_attention_heads":
            sizes[module] = int(module.attention_head_size)
    return sizes


def _after_step(model: nn.Module, pruner: tp.pruner.BasePruner, sizes: dict[nn.Module, int]) -> None:
    """Bring the attention modules' attributes in line with the pruned projections: the head counts
    torch-pruning kept track of while removing whole heads, then the head sizes. BERT's forward divides
    the scores by sqrt(attention_head_size), so a smaller head would sharpen every softmax: the query
    rows are scaled by sqrt(new / old) to keep the original scale (as ``vit_tiny`` keeps its ``scale``)."""
    for module in model.modules():
        found = head_projections(module)
        if found is not None and found[1][0] in pruner.num_heads:
            setattr(module, found[0], int(pruner.num_heads[found[1][0]]))
    sync_head_dims(model)
    for module, old in sizes.items():
        new = module.attention_head_size
        if new != old:
            with torch.no_grad():
                module.query.weight.mul_(math.sqrt(new / old))
                if module.query.bias is not None:
                    module.query.bias.mul_(math.sqrt(new / old))


def _head_notes(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Say how many whole heads went, when any did."""
    changed = {n: (before[n], after[n]) for n in before if after.get(n) != before[n]}
    if not changed:
        return []
    counts = sorted({f"{b} -> {a}" for b, a in changed.values()})
    return [f"removed whole attention heads in {_few(list(changed))}: {', '.join(counts)} heads"]


class _Pruner(tp.pruner.BasePruner):
    """torch-pruning's ``BasePruner`` that remembers the channel group it is working on, so that a
    failure inside torch-pruning names the layers involved."""

    current: Any = None

    def estimate_importance(self, group: Any) -> torch.Tensor:
        self.current = group
        return super().estimate_importance(group)

    def current_layers(self) -> list[str]:
        """The modules whose output channels the current group removes, by dotted name."""
        names = {m: n for n, m in self.model.named_modules()}
        if self.current is None:
            return []
        found = [
            names.get(dep.target.module) for dep, _ in self.current if self.DG.is_out_channel_pruning_fn(dep.handler)
        ]
        return list(dict.fromkeys(n for n in found if n))


def _step(pruner: _Pruner, where: str) -> None:
    """One pruning step; torch-pruning failing on a layout it cannot follow (an index out of range in a
    reshaped group, say) becomes a one-line error naming the group's layers, not a traceback."""
    try:
        for group in pruner.step(interactive=True):
            pruner.current = group
            group.prune()
    except Exception as exc:  # a third-party failure on the user's model, reported in one line
        message = first_line(exc, 1000)
        layers = pruner.current_layers()
        which = f" on the channels of {_few(layers)}" if layers else ""
        pattern = f" (e.g. '{layers[0]}')" if layers else ""
        raise UserError(
            f"{where}: torch-pruning failed{which}: {type(exc).__name__}: {message}; it could not follow how the "
            f"model reshapes or groups these channels: keep them whole with {where}.ignore{pattern}"
        ) from exc


def _check_still_runs(model: nn.Module, example: Inputs, where: str) -> None:
    """A pruned model that no longer runs is a one-line error naming where it breaks, not a traceback:
    torch-pruning removed channels that a reshape, view or head split elsewhere still counts on."""
    failure = locate_failure(model, example)
    if failure is None:
        return
    hint = failure.module or failure.after
    example_pattern = f" (e.g. '{hint}')" if hint else ""
    raise UserError(
        f"{where}: the pruned model no longer runs: {failure.describe()}; torch-pruning could not follow how the "
        f"model reshapes or groups these channels: keep the layers involved whole with {where}.ignore"
        f"{example_pattern}"
    )


def _why_so_little(
    pruner: tp.pruner.BasePruner,
    model: nn.Module,
    protected: str,
    left_whole: dict[str, list[str]],
    removed_channels: int,
    ratio: float,
) -> str:
    """Why a prune removed (almost) nothing, read from torch-pruning's own dependency graph, so the
    report says what to change instead of a silent 100% next to ``ran``."""
    graph = pruner.DG
    names = {m: n for n, m in model.named_modules()}
    whole = set(pruner.ignored_layers)  # ignored layers and everything inside them
    roots = [m for m in names if m in graph.module2node and isinstance(m, tuple(pruner.root_module_types))]
    free = [m for m in roots if m not in whole]
    if not free:
        others = [names[m] for m in roots if names[m] != protected]
        if not others:
            return f"the model's only Conv/Linear layer is its classifier '{protected}', which is never pruned"
        reasons = []
        for reason, chosen in left_whole.items():
            mine = [n for n in others if any(n == c or n.startswith(f"{c}.") for c in chosen)]
            others = [n for n in others if n not in mine]
            if mine:
                reasons.append(f"{reason} {len(mine)} ({_few(mine)})")
        return f"every Conv/Linear layer is left whole: the classifier '{protected}' is protected and " + (
            " and ".join(reasons)
        )
    groups = list(
        graph.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    )
    if not groups:
        ties: dict[str, list[str]] = {}
        for m in free:
            group = graph.get_pruning_group(
                m, graph.get_pruner_of_module(m).prune_out_channels, list(range(graph.get_out_channels(m)))
            )
            ties[names[m]] = sorted(
                {
                    names[dep.target.module]
                    for dep, _ in group
                    if graph.is_out_channel_pruning_fn(dep.handler)
                    and dep.target.module in whole
                    and dep.target.module in names
                }
            )
        tied = [f"'{n}' to {_few(t)}" for n, t in ties.items() if t]
        if tied:
            return (
                "torch-pruning found no channel group it may prune: a residual add, concat or reshape ties the "
                f"channels of {'; '.join(tied[:5])}, which stay whole (the classifier, or ignore)"
            )
        return (
            f"torch-pruning found no channel group it may prune among {_few([names[m] for m in free])}: it cannot "
            "follow how the model groups or reshapes their channels"
        )
    if removed_channels == 0:
        sizes = sorted(graph.get_out_channels(g[0].dep.target.module) or 0 for g in groups)
        return (
            f"torch-pruning removed no channel from its {len(groups)} group(s) at channel ratio {ratio:.3f}: they are "
            f"too small to shrink (channels: {_few([str(n) for n in sizes])}), or split in heads/groups that cannot"
        )
    prunable = {id(p) for m in free for p in m.parameters()}
    outside = [(n, p.numel()) for n, p in model.named_parameters() if id(p) not in prunable]
    share = sum(c for _, c in outside) / max(1, sum(p.numel() for p in model.parameters()))
    largest = sorted(outside, key=lambda item: -item[1])[:3]
    return (
        f"{share:.0%} of the parameters are outside the Conv/Linear layers torch-pruning may shrink (largest: "
        f"{', '.join(f'{n} {c:,}' for n, c in largest)}): the classifier, ignored layers, embeddings, norms or "
        "bare parameters"
    )


def _unused_notes(model: nn.Module, unused: Unused) -> list[str]:
    """Say which modules pruning left out because the model's output does not depend on them."""
    modules = dict(model.named_modules())
    notes = []
    if unused.never_called:
        count = sum(p.numel() for n in unused.never_called for p in modules[n].parameters(recurse=False))
        notes.append(
            f"left {_few(unused.never_called)} out of pruning: never used by the forward pass, yet {count:,} "
            "parameters that stay in the model (delete them from it to save that size)"
        )
    if unused.dead:
        notes.append(
            f"left the outputs of {_few(unused.dead)} whole: they run, but the model's output does not depend on "
            "them (like a pooler the head ignores); their inputs shrink with the layers that feed them"
        )
    return notes


def _few(names: list[str], limit: int = 5) -> str:
    """At most ``limit`` names, then how many more: warnings stay one readable line."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _block_savings(ctx: StageContext, model: nn.Module, example: Inputs) -> dict[str, float]:
    """Each skippable block's measured saving in the float model (host profile, cached on this host):
    where the time goes between blocks is what depth pruning by latency needs, not INT8's exact numbers."""
    blocks = skippable_blocks(model, example)
    savings, _ = block_savings(model, example, blocks, ctx.data, ctx.config.host, _table_measure(ctx.config.measure))
    return savings


def _table_measure(measure: MeasureSpec) -> MeasureSpec:
    """The run's ``measure:`` with a shorter budget per model: the table times many variants."""
    return measure.model_copy(update={"runs": min(measure.runs, 60), "max_seconds": min(measure.max_seconds, 1.5)})
