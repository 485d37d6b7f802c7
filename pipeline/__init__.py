"""The chunk-wise causal rollout, its KV cache storage and cache policies."""
