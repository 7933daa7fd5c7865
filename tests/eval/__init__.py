"""Tests of mmadapt.eval: metrics, task kinds, reports and cache, edits that survive, the lm-eval adapter."""
