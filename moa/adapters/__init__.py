"""Adapters: moa behind other interfaces, beside the `moa` command line (`moa.cli`).

- `server`: an OpenAI-compatible HTTP server (`moa serve`).
- `litellm_provider`: moa as a litellm custom provider (documented as `moa.litellm_provider`).
- `batch`: many queries from a file, resumable (`moa batch`).
- `_wire`: moa errors as OpenAI error bodies and statuses; `_streaming`: events for consumers
  that must not see an error twice.

Nothing is imported with the package: each adapter loads what it needs.
"""
