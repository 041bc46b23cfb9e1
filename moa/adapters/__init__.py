"""Adapters: moa behind other interfaces, beside the `moa` command line (`moa.cli`).

- `server`: an OpenAI-compatible HTTP server (`moa serve`).
- `litellm_provider`: moa as a litellm custom provider (documented as `moa.litellm_provider`).
- `batch`: many queries from a file, resumable (`moa batch`).
- `_wire`: a run's usage and errors in OpenAI's wire shapes (error bodies and statuses).

Nothing is imported with the package: each adapter loads what it needs.
"""
