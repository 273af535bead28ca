"""Validation of exported ONNX sets (and TensorRT engines): Polygraphy-style comparisons per timestep group.

``run.validate`` compares one set against the torch golden outputs; ``ditq.validate`` (``ditq.api``) is the public
call. (The package is named ``validation`` so that the function ``ditq.validate`` is never shadowed by it.)
"""
