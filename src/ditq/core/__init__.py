"""Shared building blocks every stage uses: sites and the denoiser protocol, conditioning, the timestep-group
lookup, quantizer math, the fake-quant Linear, exact folding, the sampler, the error metrics and torch's thread
count for a block of work. Imports only ``ditq.errors`` and third-party packages."""
