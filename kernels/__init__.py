"""Triton kernels for the policy head's hot path, each with a plain torch reference.

Module map:
- ``kernels.ponet``      PoNet pooling token mixing (``ponet_mixing``) and its three poolings;
  Triton kernels/launchers in ``kernels._ponet_triton``, torch references in ``kernels._ponet_ref``;
- ``kernels.attention``  fused attention forward (key padding, causal, prefix-LM), SDPA backward;
- ``kernels.layers``     ``PoNetLayer`` and ``AttentionBlock`` ``nn.Module``s for the policy head;
- ``kernels._dispatch``  backend choice (Triton on CUDA, interpreter on CPU under ``TRITON_INTERPRET=1``,
  torch reference otherwise), op registration, launch counters;
- ``kernels.bench``      benchmark (``python scripts/bench_kernels.py`` / ``vla bench kernels``).

Submodules are imported explicitly (``from kernels.ponet import ponet_mixing``) so that importing the
package stays free of triton.
"""
