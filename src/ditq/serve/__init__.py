"""Serving: a Triton model repository for an ONNX or engine set (``triton``), its Python-backend router
(``router_model``), and a local server for one artifact through PyTriton (``server``)."""
