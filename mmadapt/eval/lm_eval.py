"""lm-evaluation-harness adapter: the `mmadapt` model, so lm-eval tasks run on any mmadapt checkpoint.

    python -m mmadapt.eval.lm_eval --model mmadapt --model_args pretrained=DIR --tasks TASKS [lm_eval options]

(the same command line as `lm_eval`; this module registers the model first, since lm-eval finds models only
among those imported). From Python: `import mmadapt.eval.lm_eval` then `lm_eval.simple_evaluate(model="mmadapt",
model_args="pretrained=DIR", ...)`. Scoring goes through mmadapt.eval.scoring, which splits and scores
context/continuation exactly as lm-eval's `hf` model does, so on a plain HF checkpoint both give equal numbers.
Needs the `lm-eval` package (`pip install mmadapt[eval]`).
"""

from __future__ import annotations

from typing import Any

try:
    import lm_eval.models  # noqa: F401 (lm-eval loads its own models only into an empty registry: load them first)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # an optional extra: say how to get it
    raise ImportError("the lm-eval adapter needs the lm-eval package: pip install 'lm-eval>=0.4.5'") from e

from mmadapt.eval.scoring import LLRequest, generate_raw, load_eval_model, loglikelihood, rolling_loglikelihood

DEFAULT_MAX_GEN_TOKS = 256


@register_model("mmadapt")
class MMAdaptLM(LM):
    """lm-eval's LM interface over an mmadapt checkpoint (or a plain HF causal-LM directory)."""

    def __init__(self, pretrained: str, batch_size: int | str = 16, max_length: int | None = None,
                 trust_remote_code: bool = False, **_: Any) -> None:
        super().__init__()
        self.model = load_eval_model(pretrained, trust_remote_code=bool(trust_remote_code))
        # "auto" (lm-eval's option to probe memory) becomes our default: batches here are sorted and padded
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_length = int(max_length) if max_length else None

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.model.tokenizer, "name_or_path", "mmadapt").replace("/", "__")

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scored = loglikelihood(self.model, [LLRequest(*r.args) for r in requests], self.batch_size,
                               desc="lm-eval loglikelihood", max_length=self.max_length)
        return [(logp, greedy) for logp, _, greedy in scored]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        scored = rolling_loglikelihood(self.model, [r.args[0] for r in requests], self.batch_size, self.max_length)
        return [logp for logp, _ in scored]

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        tok = self.model.tokenizer
        eos = tok.decode([tok.eos_token_id]) if tok.eos_token_id is not None else ""
        groups: dict[tuple, list[int]] = {}  # requests sharing stop strings and length run as one batch
        for n, request in enumerate(requests):
            until = request.args[1].get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((until, int(request.args[1].get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))), []).append(n)
        out = [""] * len(requests)
        for (until, max_gen_toks), members in groups.items():
            stops = [list(until) + ([eos] if eos else [])] * len(members)
            texts = generate_raw(self.model, [requests[n].args[0] for n in members], stops, self.batch_size, max_gen_toks)
            for n, text in zip(members, texts):
                out[n] = text
        return out


def main() -> None:
    """`lm_eval`'s own command line, with the `mmadapt` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":  # pragma: no cover
    main()
