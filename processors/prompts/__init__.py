"""Prompt flow: rollup agent and registry view, registry operations, A/B comparison."""
