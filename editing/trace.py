"""Causal tracing (ROME §2): which layers' states at which tokens carry a fact.

The subject's token embeddings are corrupted with Gaussian noise (`samples` draws, 3 × the
embeddings' standard deviation by default), which destroys the answer; then one state at a time
(a block's output "hidden", an MLP's output "mlp" or an attention output "attn", at one token and
a window of layers) is restored to its clean value. The probability of the answer it brings back is
that state's contribution; the MLP layers with the largest effect at the subject's last token are
where ROME should edit.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmadapt.editing.spec import ArchSpec, num_layers, spec_for
from mmadapt.editing.tokens import device_of, encode, render
from mmadapt.errors import ConfigError
from mmadapt.hooks import TraceDict
from mmadapt.io import atomic_write_bytes

logger = logging.getLogger(__name__)
KINDS = ("hidden", "mlp", "attn")


@dataclass
class TraceResult:
    tokens: list[str]
    subject: tuple[int, int]  # [first, last] token indices of the subject
    answer: str
    clean: float  # P(answer) with nothing corrupted
    corrupted: float  # P(answer) with the subject corrupted and nothing restored
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> [n_tokens, n_layers] P(answer) restored

    def effects(self, kind: str = "mlp") -> torch.Tensor:
        """[n_layers] probability each layer's restored state at the subject's last token brings back."""
        return self.scores[kind][self.subject[1]] - self.corrupted

    def top_layers(self, kind: str = "mlp", k: int = 3, min_effect: float = 0.0) -> list[int]:
        """Layers whose restored state at the subject's last token brings back the most probability (only those
        bringing back more than `min_effect`: a layer that restores nothing carries nothing)."""
        effect = self.effects(kind)
        return [i for i in torch.argsort(effect, descending=True)[:k].tolist() if effect[i] > min_effect]

    def peak(self, kind: str) -> dict[str, Any]:
        """The brightest cell of `kind`'s heat map: token, layer, P(answer)."""
        grid = torch.nan_to_num(self.scores[kind], nan=float("-inf"))
        token, layer = divmod(int(grid.argmax()), grid.shape[1])
        return {"token": token, "token_text": self.tokens[token], "layer": layer, "p": float(grid[token, layer]),
                "at_subject_last": token == self.subject[1]}

    def summary(self) -> dict[str, Any]:
        """What the heat maps show, in numbers: per kind, the effect of each layer at the subject's last token (the
        row marked * last) and the brightest cell, so the summary never disagrees with the picture."""
        return {"tokens": self.tokens, "subject": list(self.subject), "answer": self.answer, "clean": self.clean,
                "corrupted": self.corrupted, "top_mlp_layers": self.top_layers("mlp") if "mlp" in self.scores else [],
                "subject_last_effects": {k: self.effects(k).tolist() for k in self.scores},
                "peaks": {k: self.peak(k) for k in self.scores},
                "scores": {k: v.tolist() for k, v in self.scores.items()}}


def _module_template(spec: ArchSpec, kind: str) -> str:
    return {"hidden": spec.layer, "mlp": spec.mlp, "attn": spec.attn}[kind]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def trace_fact(model: nn.Module, tok, prompt: str, subject: str, target: str | None = None, samples: int = 10,
               noise: float | None = None, kinds: tuple[str, ...] = KINDS, window: int = 1, seed: int = 0,
               spec: ArchSpec | None = None, subject_last_only: bool = False) -> TraceResult:
    """Trace `prompt` (a template with `{}`) about `subject`; the answer is `target`'s first token or the model's own.

    `subject_last_only`: restore states at the subject's last token only (what choosing a layer to edit
    needs, n_layers runs instead of n_layers x n_tokens); the other rows of the scores are NaN.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"trace kinds {bad or kinds}: valid kinds are {', '.join(KINDS)}")
    if samples < 1 or window < 1:
        raise ConfigError("trace needs samples >= 1 and window >= 1")
    spec = spec or spec_for(model)
    was_training = model.training
    model.eval()
    text, span = render("", prompt, subject)
    enc = encode(tok, text, span, target)
    n_prompt = enc.target_positions[0] if target else len(enc.input_ids)
    ids = torch.tensor([enc.input_ids[:n_prompt]], device=device_of(model)).repeat(samples + 1, 1)  # row 0 stays clean
    first, last = enc.subject_first, enc.subject_last

    def answer_prob(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits[:, -1].float(), dim=-1)[:, answer_id]  # [samples + 1]

    logits = model(input_ids=ids).logits
    answer_id = enc.input_ids[n_prompt] if target else int(logits[0, -1].argmax())
    clean = float(answer_prob(logits)[0])

    embeddings = model.get_submodule(spec.embed)
    level = noise if noise is not None else 3 * float(embeddings.weight.float().std())
    generator = torch.Generator(device="cpu").manual_seed(seed)
    offsets = (level * torch.randn(samples, last - first + 1, embeddings.embedding_dim, generator=generator)).to(ids.device)

    def corrupt(output: Any, _name: str) -> Any:
        hidden = _hidden(output).clone()
        hidden[1:, first : last + 1] += offsets.to(hidden.dtype)  # [samples, n_subject, d]
        return _replace(output, hidden)

    def run(restore: list[str], token: int | None) -> float:
        def put_back(output: Any, name: str) -> Any:
            if name == spec.embed:
                return corrupt(output, name)
            hidden = _hidden(output).clone()
            hidden[1:, token] = hidden[0, token]  # the clean row's state
            return _replace(output, hidden)

        with TraceDict(model, [spec.embed, *restore], retain_output=False, edit_output=put_back):
            return float(answer_prob(model(input_ids=ids).logits)[1:].mean())

    corrupted = run([], None)
    n_layers, n_tokens = num_layers(model), ids.shape[1]
    scores = {}
    positions = [last] if subject_last_only else list(range(n_tokens))
    progress = tqdm(total=len(kinds) * n_layers * len(positions), desc="causal trace", leave=False)
    for kind in kinds:
        template = _module_template(spec, kind)
        grid = torch.full((n_tokens, n_layers), float("nan"))
        for layer in range(n_layers):
            lo, hi = max(0, layer - window // 2), min(n_layers, layer - window // 2 + window)
            names = [template.format(i) for i in range(lo, hi)]
            for token in positions:
                grid[token, layer] = run(names, token)
                progress.update()
        scores[kind] = grid
    progress.close()
    model.train(was_training)
    tokens = [tok.decode([i]) for i in enc.input_ids[:n_prompt]]
    return TraceResult(tokens, (first, last), tok.decode([answer_id]).strip(), clean, corrupted, scores)


def locate_layer(model: nn.Module, tok, facts: list[tuple[str, str, str | None]], samples: int = 10, seed: int = 0,
                 spec: ArchSpec | None = None, min_effect: float = 0.01) -> tuple[int | None, list[float]]:
    """The MLP layer whose restored output at the subject's last token brings back most of the answer's
    probability, averaged over `facts` [(prompt template, subject, answer or None: the model's own)];
    (None, effects) when no layer brings back more than `min_effect` (the model does not recall these facts
    from the subject, so tracing cannot say where they live)."""
    total: torch.Tensor | None = None
    for prompt, subject, target in facts:
        result = trace_fact(model, tok, prompt, subject, target, samples=samples, kinds=("mlp",), seed=seed, spec=spec,
                            subject_last_only=True)
        effect = result.effects("mlp")  # [n_layers]
        total = effect if total is None else total + effect
    if total is None:
        raise ConfigError("locate_layer needs at least one fact")
    effects = (total / len(facts)).tolist()
    best = max(range(len(effects)), key=effects.__getitem__)
    return (best if effects[best] > min_effect else None), effects


def traced_edit_layer(model: nn.Module, tok, requests: list[Any], spec: ArchSpec, fallback: int,
                      max_facts: int = 4) -> tuple[int, dict[str, Any]]:
    """The layer to edit when none is given: `locate_layer` on the requests' old facts (their target_true, or the
    model's own answer), else `fallback` with a warning. Returns (layer, {source, effects}) for the edit record."""
    facts = [(r.prompt, r.subject, r.target_true) for r in requests[:max_facts]]
    layer, effects = locate_layer(model, tok, facts, spec=spec)
    if layer is None:
        logger.warning("causal tracing finds no MLP layer that carries these facts at the subject's last token "
                       "(largest effect %.4f): the model does not recall them from the subject, so an edit there may not "
                       "take; editing layer %d by default", max(effects), fallback)
        return fallback, {"source": "default", "trace_effects": effects}
    logger.info("causal tracing: MLP layer %d carries the facts (effects at the subject's last token: %s)", layer,
                ", ".join(f"{e:.3f}" for e in effects))
    return layer, {"source": "trace", "trace_effects": effects}


def plot_trace(result: TraceResult, path: str | Path, title: str = "") -> Path:
    """Heat maps (one per kind) of P(answer) after restoring each (token, layer) state, written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    kinds = list(result.scores)
    labels = [f"{t.strip()}*" if result.subject[0] <= i <= result.subject[1] else t.strip() for i, t in enumerate(result.tokens)]
    fig = Figure(figsize=(3.2 * len(kinds) + 1, 0.35 * len(labels) + 1.8))
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        image = ax.imshow(result.scores[kind].numpy(), cmap={"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}[kind],
                          vmin=min(result.corrupted, float(torch.nan_to_num(result.scores[kind], nan=result.corrupted).min())),
                          aspect="auto")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("layer")
        ax.set_title(f"restore {kind}", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.05, label=f"P({result.answer})")
    fig.suptitle(title or f"causal trace: P({result.answer}) clean {result.clean:.2f}, corrupted {result.corrupted:.2f}"
                 " (* = subject)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
