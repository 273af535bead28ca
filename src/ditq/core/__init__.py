"""Shared building blocks every stage uses: sites and the denoiser protocol, conditioning, the timestep-group
lookup, quantizer math, the fake-quant Linear, exact folding, the sampler and the error metrics. Imports only
``ditq.errors`` and third-party packages."""
