"""Knowledge editing: causal tracing, ROME, MEMIT and an FT-L baseline on HF causal LMs, with evaluation and exact revert.

Modules: `spec` (per-architecture module templates), `requests` (edit requests), `stats` (cached
second moments), `rome`, `memit`, `ft` (methods returning `EditResult`), `evaluate`, `trace`,
`checkpoint` (edit and revert saved checkpoints) and `cli` (`mmadapt edit ...`).
"""
